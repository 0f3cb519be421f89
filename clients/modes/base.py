"""The device-side training modes: how a device trains and evaluates its header, one registered class per mode.

The strategy names the mode in every round's config (``mode``); each baseline of ``strategies/`` that trains
differently on the device has its mode here, one file each, as the server side has one file per baseline. A mode
is looked up by name in :data:`DEVICE_MODES` (register a new one with :func:`register_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord

from acme_flwr.device.headers import Header
from acme_flwr.device.training import TrainHParams, train_header
from acme_flwr.registry import Registry
from acme_flwr.task import DeviceData

from ..features import Features
from ..state import DeviceState

Phases = list[tuple[list[str], int]]


@dataclass
class LocalRound:
    """What one train or evaluate message gives a mode: its config, the device's data, grids and state."""

    cfg: ConfigRecord
    data: DeviceData
    features: Features
    state: DeviceState

    def hparams(self, local_epochs: int | None = None) -> TrainHParams:
        """The round's local training hyper-parameters (``local_epochs`` overrides the config's)."""
        c = self.cfg
        return TrainHParams(lr=float(c["lr"]), momentum=float(c["momentum"]), weight_decay=float(c["weight-decay"]),
                            batch_size=int(c["batch-size"]),
                            local_epochs=int(c["local-epochs"]) if local_epochs is None else local_epochs,
                            accumulation=str(c.get("accumulation", "mean")))

    def seed(self, offset: int = 0) -> int:
        """The round's seed for this device (run seed, partition-id, round), plus ``offset``."""
        return int(self.cfg["seed"]) * 1_000_003 + self.data.partition_id * 1009 + int(self.cfg["server-round"]) \
            + offset


class TrainMode:
    """Standard local training of the whole header (ACME, FedAvg/FedPer headers); evaluated as trained.

    Subclasses change which parameters train in which phase (:meth:`phases`), what else trains (:meth:`train`),
    or which header is evaluated (:meth:`evaluated_header`)."""

    name = "standard"

    def phases(self, header: Header, r: LocalRound) -> Phases | None:
        """``[(state-dict keys, epochs), ...]`` trained in turn, or ``None`` for the whole header."""
        return None

    def train(self, header: Header, r: LocalRound, importance: bool) -> tuple[dict[str, Any], np.ndarray | None]:
        """Train ``header`` in place on the device's training split; metrics and (if asked) Taylor importance."""
        grids = r.features("train", r.data.train)  # before seeding: a miss rebuilds the backbone (draws from RNG)
        seed = r.seed()
        torch.manual_seed(seed)
        return train_header(None, header, r.data.train, r.hparams(), seed, grids=grids,
                            phases=self.phases(header, r), importance=importance)

    def evaluated_header(self, header: Header, r: LocalRound) -> Header:
        """The header this device is evaluated with (by default its own)."""
        return header


DEVICE_MODES: Registry[type[TrainMode]] = Registry("device train mode")
register_mode = DEVICE_MODES.register
register_mode("standard")(TrainMode)
