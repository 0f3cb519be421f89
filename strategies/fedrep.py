"""FedRep (Collins et al., ICML 2021) on the header: a shared body (representation), a personal head.

Each round a device first trains its classifier (the head) for ``head_epochs`` with the body frozen, then the body
for ``body_epochs`` with the head frozen, and sends the body only; the edge averages the bodies of the devices that
received the same package (example-weighted), the cloud averages the edges' bodies every ``edge_rounds_per_cloud``
rounds. Same devices, sub-backbones, byte accounting and edge-model delivery as FedPer (:class:`HeaderFedAvg`
with ``share="body"``); nothing is pruned.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr.config import StrategySection
from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .header_fedavg import HeaderFedAvg

_S = StrategySection()  # defaults from the config schema


class FedRep(HeaderFedAvg):
    """Body averaged, head personal; per round ``head_epochs`` on the head, then ``body_epochs`` on the body.

    Parameters
    ----------
    topology : Topology, optional (keyword-only)
        Devices, edges, assignment and ``edge_rounds_per_cloud``.
    deployment : CloudPackages, optional (keyword-only)
        The cloud's packages (sub-backbone and warm header per device class); needed to run.
    head_epochs : int (default: ``strategy.fedrep_head_epochs``, 10)
        Epochs on the head (body frozen) per round.
    body_epochs : int (default: ``strategy.fedrep_body_epochs``, 1)
        Epochs on the body (head frozen) per round.
    *args, **kwargs :
        FedAvg's arguments (positional in FedAvg's order, or by name) and the harness's keyword-only settings
        (``recorder``, ``record_name``, ``seed``, ``timeout``, ``train_config``, ``checkpoint_dir``, ...), as for
        :class:`~.acme.AcmeStrategy`.
    """

    name = "fedrep"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 head_epochs: int = _S.fedrep_head_epochs, body_epochs: int = _S.fedrep_body_epochs,
                 **kwargs: Any) -> None:
        if head_epochs < 0 or body_epochs < 1:
            raise ValueError(f"FedRep needs head_epochs >= 0 and body_epochs >= 1; got {head_epochs}, {body_epochs}")
        super().__init__(*args, topology=topology, deployment=deployment, share="body", **kwargs)
        self.head_epochs = int(head_epochs)
        self.body_epochs = int(body_epochs)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "FedRep": f"head {self.head_epochs} epoch(s), then body {self.body_epochs}"}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), send="body", mode="fedrep",
                            **{"head-epochs": self.head_epochs, "body-epochs": self.body_epochs})
