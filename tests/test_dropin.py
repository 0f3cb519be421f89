"""AcmeStrategy as a drop-in for FedAvg (issue 12): FedAvg's interface, no node count, the final model, quiet logs.

The in-process tests run in milliseconds; the ``e2e`` one runs a quickstart-style Flower app (tests/quickstart_app,
its own model and metric names) under ``flwr run`` twice, with FedAvg and with only the import and class name
changed to AcmeStrategy.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, Strategy

from acme_flwr.logs import use_flower_logging
from acme_flwr.strategies import AcmeStrategy, HierarchicalFedAvg
from acme_flwr.topology import Topology

from .inprocess import InProcessGrid

APP = Path(__file__).resolve().parent / "quickstart_app"
FEDAVG_ARGS = ["fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes",
               "weighted_by_key", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn",
               "evaluate_metrics_aggr_fn"]


def _plain_app() -> ClientApp:
    """Quickstart contract with other metric names: device p adds p+1, reports 10(p+1) examples and ``eval_acc``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        new = {k: v + (pid + 1) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": 10 * (pid + 1), "train_loss": 1.0})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "eval_loss": 1.0,
                                                            "eval_acc": 0.1 * pid})}), reply_to=msg)

    return app


def test_fedavg_arguments_and_start_signature_are_fedavgs() -> None:
    fedavg = inspect.signature(FedAvg.__init__).parameters
    start = inspect.signature(Strategy.start).parameters
    for cls in (AcmeStrategy, HierarchicalFedAvg):
        s = cls()  # no ACME argument is required
        for name in FEDAVG_ARGS:
            default = fedavg[name].default
            assert getattr(s, name) == default or name.endswith("aggr_fn"), (cls, name)
        positional = cls(0.5, 0.25, 3, 1, 4, "n", "a", "c")  # FedAvg's positional order
        assert (positional.fraction_train, positional.fraction_evaluate, positional.min_train_nodes,
                positional.min_evaluate_nodes, positional.min_available_nodes, positional.weighted_by_key,
                positional.arrayrecord_key, positional.configrecord_key) == (0.5, 0.25, 3, 1, 4, "n", "a", "c")
        assert list(inspect.signature(cls.start).parameters) == list(start)
        with pytest.raises(TypeError, match="topology="):
            cls(Topology(4, 2))


def test_drop_in_matches_fedavg_samples_like_fedavg_and_reads_the_apps_metrics() -> None:
    """FedAvg's arguments only: one edge over whatever connects = FedAvg; fraction_evaluate=0.5 evaluates half."""
    init = ArrayRecord({"w": torch.zeros(3)})
    strategy = AcmeStrategy(fraction_evaluate=0.5, min_available_nodes=2)
    result = strategy.start(grid=InProcessGrid(_plain_app(), 4), initial_arrays=init, num_rounds=2)
    fedavg = FedAvg(fraction_evaluate=0.5, min_available_nodes=2).start(
        grid=InProcessGrid(_plain_app(), 4), initial_arrays=init, num_rounds=2)
    np.testing.assert_allclose(result.arrays["w"].numpy(), fedavg.arrays["w"].numpy(), atol=1e-6)
    block = strategy.finalize()
    assert block["failures"]["count"] == 0 and block["mode"].startswith("drop-in")
    assert strategy.topology.num_devices == 4 and strategy.topology.num_edges == 1
    assert all(len(r["evaluate"]["device"]) == 2 for r in block["rounds"])  # int(4 * 0.5) = 2, like FedAvg
    assert block["accuracy"]["metric"] == "eval_acc" and block["accuracy"]["personalized"]["mean"] is not None
    assert block["bytes"]["references"]["fedavg_full"]["params"] == 3
    assert set(result.evaluate_metrics_clientapp[2]) == {"eval_loss", "eval_acc"}


def test_final_arrays_include_the_last_round_whatever_edge_rounds_per_cloud_says() -> None:
    seen: dict[int, float] = {}

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        seen[rnd] = float(arrays["w"].numpy()[0])
        return MetricRecord({"w": seen[rnd]})

    strategy = AcmeStrategy(topology=Topology(num_edges=2, edge_rounds_per_cloud=2))  # num_devices left open
    result = strategy.start(grid=InProcessGrid(_plain_app(), 4), initial_arrays=ArrayRecord({"w": torch.zeros(3)}),
                            num_rounds=3, evaluate_fn=evaluate_fn)
    # per round: edge 0 = {0, 2} adds (10*1 + 30*3)/40 = 2.5, edge 1 = {1, 3} adds (20*2 + 40*4)/60 = 10/3; clouds
    # at round 2 (every 2) and round 3 (the last) average the edges 40:60
    after2 = 0.4 * 5.0 + 0.6 * (20 / 3)
    expected = after2 + 0.4 * 2.5 + 0.6 * (10 / 3)
    np.testing.assert_allclose(result.arrays["w"].numpy(), expected, rtol=1e-6)
    assert seen[3] == pytest.approx(expected) and seen[2] == pytest.approx(after2)


def test_own_lines_reach_flowers_handlers_once_and_never_the_root() -> None:
    use_flower_logging()
    flower, root = logging.getLogger("flwr"), logging.getLogger()
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    keep_flower, keep_root = Keep(), Keep()
    flower.addHandler(keep_flower)
    root.addHandler(keep_root)
    try:
        logging.getLogger("acme_flwr.strategies.base").info("one line")
        logging.getLogger("strategies.base").info("one line (FAB import path)")
    finally:
        flower.removeHandler(keep_flower)
        root.removeHandler(keep_root)
    assert got.count("one line") == 2 - (not flower.propagate)  # Flower's handler (+ root only via Flower's own)
    assert "logging.basicConfig" not in (Path(__file__).resolve().parents[1] / "strategies/server_app.py").read_text()


# ---------------------------------------------------------------------------------------------- flwr run, twice
def _swap(src: str) -> str:
    return src.replace("from flwr.serverapp.strategy import FedAvg", "from acme_flwr import AcmeStrategy").replace(
        "strategy = FedAvg(", "strategy = AcmeStrategy(")


def duplicated_lines(log: str) -> list[str]:
    """Lines printed twice: the same message right after itself, or through a second root handler."""
    lines = [line.rstrip() for line in log.splitlines()]
    msgs = [line.split(":", 1)[1].strip() if ":" in line and "pid=" not in line else line for line in lines]
    twice = [lines[i] for i in range(1, len(lines)) if msgs[i] and msgs[i] == msgs[i - 1]]
    return twice + [line for line in lines if line.startswith(("INFO flwr", "INFO acme_flwr", "INFO strategies"))]


@pytest.mark.e2e
def test_quickstart_app_with_fedavg_and_with_acme_strategy(tmp_path: Path) -> None:
    from experiments.launch import _Launch, _tool

    src = (APP / "qsapp" / "server_app.py").read_text()
    changed = [d for d in difflib.unified_diff(src.splitlines(), _swap(src).splitlines(), lineterm="", n=0)
               if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    assert len(changed) == 4, changed  # one import and one class name
    logs, reports, finals = {}, {}, {}
    run = _Launch(tmp_path / "flwr-home")
    try:
        run.start_superlink()
        for name, text in (("fedavg", src), ("acme", _swap(src))):
            app, out = tmp_path / f"app-{name}", tmp_path / f"out-{name}"
            shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
            (app / "qsapp" / "server_app.py").write_text(text)
            out.mkdir()
            cmd = [_tool("flwr"), "run", str(app), "--stream", "--run-config", f"out-dir={json.dumps(str(out))}",
                   "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"]
            proc = run.spawn(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            logs[name] = proc.communicate(timeout=300)[0].decode(errors="replace")
            (tmp_path / f"{name}.log").write_text(logs[name])
            reports[name] = json.loads((out / "report.json").read_text())
            finals[name] = dict(np.load(out / "final.npz"))
    finally:
        run.close()
    for name, log in logs.items():
        assert "Traceback" not in log, (name, log[-3000:])
        assert duplicated_lines(log) == [], name
    assert reports["fedavg"]["rounds"] == reports["acme"]["rounds"] == [1, 2, 3]
    for k, v in finals["fedavg"].items():
        np.testing.assert_allclose(finals["acme"][k], v, atol=1e-6)
    acme = reports["acme"]
    assert acme["evaluate_fn_abs_sum"]["3"] == pytest.approx(acme["final_abs_sum"])  # evaluate_fn saw the final model
    summary = acme["summary"]
    assert summary["failures"]["count"] == 0
    assert summary["bytes"]["total"] > 0 and summary["bytes"]["edge-device"]["up"] > 0
    assert summary["bytes"]["references"]["fedavg_full"]["bytes"] > 0
    assert summary["accuracy"]["metric"] == "eval_acc" and summary["accuracy"]["personalized"]["mean"] is not None
    assert logs["acme"].count("ACME handlers not found on 4 of 4 nodes: running as hierarchical FedAvg") == 1
    assert "aggregate_train: Received 4 results and 0 failures" in logs["acme"]
    assert "Bytes of acme" in logs["acme"]


def test_launcher_progress_keeps_progress_tables_and_warnings_and_logs_everything() -> None:
    import io

    from experiments.launch import show_progress

    log = "\n".join([
        "\x1b[92mINFO \x1b[0m:      [STRATEGY 1/2] acme", "\x1b[92mINFO \x1b[0m:      Starting AcmeStrategy strategy:",
        "\x1b[92mINFO \x1b[0m:      [ROUND 1/2]",
        "\x1b[92mINFO \x1b[0m:      configure_train: Sampled 4 nodes (out of 4)",
        "\x1b[93mWARNING \x1b[0m:   acme round 1 train: node 2 failed: no reply",
        "\x1b[92mINFO \x1b[0m:      Bytes of acme (exact serialized sizes):",
        "\x1b[92mINFO \x1b[0m:      \ttier         direction          bytes  human",
        "\x1b[92mINFO \x1b[0m:      \tedge-device  up                19,944  19.94 kB",
        "\x1b[92mINFO \x1b[0m:      ", "\x1b[92mINFO \x1b[0m:      [STRATEGY 2/2] local",
    ]) + "\n"
    full, term = io.StringIO(), io.StringIO()
    show_progress(io.BytesIO(log.encode()), full, term)
    assert full.getvalue() == log
    shown = term.getvalue().splitlines()
    assert shown[:2] == ["strategy 1/2 acme", "  acme: round 1/2"] and "node 2 failed" in shown[2]
    assert any("edge-device  up" in s for s in shown) and shown[-1] == "strategy 2/2 local"
    assert not any("configure_train" in s for s in shown)
