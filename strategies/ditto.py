"""Ditto (Li et al., ICML 2021) on the header: a global header by FedAvg, a personal header per device.

Each round a device trains the global header w it holds for ``local_epochs`` exactly as FedAvg-header does and sends
it back; the edge averages the w's of each mixing group (example-weighted) and the cloud the edges' every
``edge_rounds_per_cloud`` rounds. Beside it the device keeps a personal header v (in its ``context.state``, never
sent), trained for ``personal_epochs`` (0: ``local_epochs``) on its loss plus ``lam``/2·‖v − w‖² towards the w the
round started from. Evaluation uses v (``val-acc``/``test-acc``) and also reports w (``global-val-acc``/
``global-test-acc``). Bytes are FedAvg-header's: the whole header each way. Nothing is pruned.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr.config import StrategySection
from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .header_fedavg import HeaderFedAvg

_S = StrategySection()  # defaults from the config schema


class Ditto(HeaderFedAvg):
    """FedAvg of the global header w; personal headers v trained with a proximal term ``lam``/2·‖v − w‖².

    Parameters
    ----------
    topology : Topology, optional (keyword-only)
        Devices, edges, assignment and ``edge_rounds_per_cloud``.
    deployment : CloudPackages, optional (keyword-only)
        The cloud's packages (sub-backbone and warm header per device class); needed to run.
    lam : float (default: ``strategy.ditto_lambda``, 0.1)
        Weight of the proximal term pulling the personal header towards the global one.
    personal_epochs : int (default: ``strategy.ditto_personal_epochs``, 0)
        Epochs on the personal header per round (0: ``local_epochs``).
    *args, **kwargs :
        FedAvg's arguments (positional in FedAvg's order, or by name) and the harness's keyword-only settings
        (``recorder``, ``record_name``, ``seed``, ``timeout``, ``train_config``, ``checkpoint_dir``, ...), as for
        :class:`~.acme.AcmeStrategy`.
    """

    name = "ditto"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 lam: float = _S.ditto_lambda, personal_epochs: int = _S.ditto_personal_epochs,
                 **kwargs: Any) -> None:
        if not (math.isfinite(lam) and lam >= 0) or personal_epochs < 0:
            raise ValueError(f"Ditto needs lam >= 0 and personal_epochs >= 0; got {lam}, {personal_epochs}")
        super().__init__(*args, topology=topology, deployment=deployment, share="all", **kwargs)
        self.lam = float(lam)
        self.personal_epochs = int(personal_epochs)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "Ditto": f"lambda {self.lam}, personal epochs {self.personal_epochs}"}

    def _ditto(self) -> dict[str, Any]:
        return {"mode": "ditto", "ditto-lambda": self.lam, "personal-epochs": self.personal_epochs}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), send="header", **self._ditto())

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), **self._ditto())
