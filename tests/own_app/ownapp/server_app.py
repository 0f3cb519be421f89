"""The app's ServerApp: its own cloud data -> ACME packages -> AcmeStrategy over the app's devices."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from acme_flwr import AcmeStrategy
from acme_flwr.config import AcmeConfig
from acme_flwr.packages import CloudData, build_packages
from acme_flwr.runtime import remove_run_dirs
from acme_flwr.task import TensorSplit
from acme_flwr.topology import Topology
from ownapp.task import cloud_splits

app = ServerApp()

# what ACME needs to know on the cloud side: the backbone, the sub-network grid, the device classes and budgets
ACME = {"model.name": "vit_micro_test", "model.header_channels": 8, "cloud.teacher_epochs": 2,
        "cloud.width_epochs": 1, "cloud.depth_epochs": 1, "cloud.header_epochs": 2, "cloud.depths": "0.5,1.0",
        "profile.classes": "small,large", "profile.size_constraints": "0.5,1.0"}


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    out = Path(str(context.run_config["out-dir"]))
    cfg = AcmeConfig.from_flat(ACME)
    (train_x, train_y), (val_x, val_y) = cloud_splits()
    packages = build_packages(cfg, CloudData(TensorSplit(train_x, train_y), TensorSplit(val_x, val_y)),
                              cache_dir=None, progress=False)
    # AcmeStrategy.from_config(cfg, ...) is the one-source alternative to spelling the settings out here
    strategy = AcmeStrategy(topology=Topology(int(context.run_config["num-devices"]), num_edges=2),
                            deployment=packages, prune_per_iteration=2, feature_samples=20, min_available_nodes=4)
    try:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=int(context.run_config["num-server-rounds"]))
    finally:
        remove_run_dirs(context.run_id)  # this machine's temporary files of the run (simulation)
    summary = strategy.finalize()
    picks = {name: {"width": pkg.width, "depth": pkg.depth} for name, pkg in packages.packages.items()}
    (out / "report.json").write_text(json.dumps({"summary": summary, "picks": picks}, default=str))
