"""Shared test settings: one torch thread (2-core machines, no oversubscription) and the smoke-sized config."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# Smallest meaningful run (flat run-config keys): synthetic data, micro ViT, short cloud stage, 4 devices, 2 edges.
SMOKE: dict[str, object] = {
    "data.name": "synthetic", "data.synthetic_samples": 400, "model.name": "vit_micro_test",
    "model.header_channels": 8, "cloud.teacher_epochs": 5, "cloud.width_epochs": 1, "cloud.depth_epochs": 1,
    "cloud.header_epochs": 5, "cloud.depths": "0.5,1.0", "topology.num_devices": 4, "topology.num_edges": 2,
    "strategy.rounds": 2, "strategy.feature_samples": 20, "strategy.prune_per_iteration": 2,
    "partition.min_size": 20,
}


@pytest.fixture(scope="session", autouse=True)
def _remove_the_in_process_runs_temp_dirs() -> Iterator[None]:
    """The in-process grids' devices keep their packages in the run's model store (run id 1): removed at the end."""
    yield
    from acme_flwr.runtime import remove_run_dirs

    remove_run_dirs(1)
