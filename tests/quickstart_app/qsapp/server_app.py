"""The quickstart-style ServerApp with Flower's FedAvg (tests swap the import and the class name only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from qsapp.task import Net, load_data, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    out = Path(str(context.run_config["out-dir"]))
    seen: dict[int, float] = {}

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = Net()
        net.load_state_dict(arrays.to_torch_state_dict())
        _, _, x, y = load_data(0, 1)
        loss, acc = test(net, x, y)
        seen[server_round] = float(sum(float(np.abs(a.numpy()).sum()) for a in arrays.values()))
        return MetricRecord({"central_loss": loss, "central_acc": acc})

    strategy = FedAvg(fraction_evaluate=float(context.run_config["fraction-evaluate"]), min_available_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                            train_config=ConfigRecord({"lr": float(context.run_config["lr"])}),
                            num_rounds=int(context.run_config["num-server-rounds"]), evaluate_fn=global_evaluate)
    np.savez(out / "final.npz", **{k: v.numpy() for k, v in result.arrays.items()})
    report = {"rounds": sorted(result.train_metrics_clientapp), "evaluate_fn_abs_sum": seen,
              "final_abs_sum": float(sum(float(np.abs(a.numpy()).sum()) for a in result.arrays.values())),
              "summary": strategy.finalize() if hasattr(strategy, "finalize") else None}
    (out / "report.json").write_text(json.dumps(report))
