"""FedBABU (Oh et al., ICLR 2022) on the header: train and average the body only; fine-tune the head to evaluate.

During all federated rounds each device's classifier (the head) stays frozen at its initialisation (the warm header
of its package, the same for every device of a mixing group); devices train the body for ``local_epochs`` and send
it; edges and cloud average bodies as FedPer does. At evaluation a device fine-tunes a copy of the head on its own
training data for ``finetune_epochs`` and reports that (``val-acc``/``test-acc``, the personalized accuracy) next to
the federated model without fine-tuning (``global-val-acc``/``global-test-acc``). The fine-tuned copy is not kept.
Nothing is pruned.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr.config import StrategySection
from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .header_fedavg import HeaderFedAvg

_S = StrategySection()  # defaults from the config schema


class FedBABU(HeaderFedAvg):
    """Body averaged with the head frozen; ``finetune_epochs`` of head fine-tuning before each evaluation.

    Parameters
    ----------
    topology : Topology, optional (keyword-only)
        Devices, edges, assignment and ``edge_rounds_per_cloud``.
    deployment : CloudPackages, optional (keyword-only)
        The cloud's packages (sub-backbone and warm header per device class); needed to run.
    finetune_epochs : int (default: ``strategy.fedbabu_finetune_epochs``, 5)
        Epochs a device fine-tunes a copy of the head before it evaluates.
    *args, **kwargs :
        FedAvg's arguments (positional in FedAvg's order, or by name) and the harness's keyword-only settings
        (``recorder``, ``record_name``, ``seed``, ``timeout``, ``train_config``, ``checkpoint_dir``, ...), as for
        :class:`~.acme.AcmeStrategy`.
    """

    name = "fedbabu"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 finetune_epochs: int = _S.fedbabu_finetune_epochs, **kwargs: Any) -> None:
        if finetune_epochs < 0:
            raise ValueError(f"FedBABU needs finetune_epochs >= 0; got {finetune_epochs}")
        super().__init__(*args, topology=topology, deployment=deployment, share="body", **kwargs)
        self.finetune_epochs = int(finetune_epochs)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "FedBABU": f"head frozen, fine-tuning {self.finetune_epochs} epoch(s)"}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), send="body", mode="fedbabu")

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), mode="fedbabu",
                            **{"finetune-epochs": self.finetune_epochs})
