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

from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .header_fedavg import HeaderFedAvg


class Ditto(HeaderFedAvg):
    """FedAvg of the global header w; personal headers v trained with a proximal term ``lam``/2·‖v − w‖²."""

    name = "ditto"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 lam: float = 0.1, personal_epochs: int = 0, **kwargs: Any) -> None:
        if not (math.isfinite(lam) and lam >= 0) or personal_epochs < 0:
            raise ValueError(f"Ditto needs lam >= 0 and personal_epochs >= 0; got {lam}, {personal_epochs}")
        super().__init__(*args, topology=topology, deployment=deployment, share="all", **kwargs)
        self.lam = float(lam)
        self.personal_epochs = int(personal_epochs)

    def _ditto(self) -> dict[str, Any]:
        return {"mode": "ditto", "ditto-lambda": self.lam, "personal-epochs": self.personal_epochs}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), send="header", **self._ditto())

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), **self._ditto())
