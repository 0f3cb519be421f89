"""One source of configuration for the strategy (issue 22): ``AcmeStrategy.from_config``, the constructor's defaults
read from the config schema, ``summary()`` logging each strategy's own settings, and the shared feature directory
removed by the strategy itself at the end of ``start()``."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr.config import AcmeConfig, StrategySection
from acme_flwr.runtime import model_store_dir, shared_feature_dir
from acme_flwr.strategies import AcmeStrategy, Ditto, FedBABU, FedRep, HeaderFedAvg, HierarchicalFedAvg
from acme_flwr.topology import Topology

from .inprocess import InProcessGrid, flower_log_lines


def test_constructor_defaults_are_the_config_schemas() -> None:
    schema = StrategySection()
    params = inspect.signature(AcmeStrategy).parameters
    for name in ("variant", "distance", "temperature", "prune_per_iteration", "prune_max_fraction",
                 "feature_samples", "timeout"):
        assert params[name].default == getattr(schema, name), name
    s = AcmeStrategy()
    assert s.train_config == {"lr": schema.lr, "momentum": schema.momentum, "weight-decay": schema.weight_decay,
                              "batch-size": schema.batch_size, "local-epochs": schema.local_epochs,
                              "accumulation": schema.importance_accumulation}


def test_from_config_applies_the_strategy_section_and_overrides_win() -> None:
    cfg = AcmeConfig.from_flat({"strategy.variant": "pruning_avg", "strategy.prune_per_iteration": 7,
                                "strategy.lr": 0.2, "strategy.timeout": 30.0, "strategy.max_reply_bytes": 1234,
                                "run.seed": 5, "topology.num_devices": 6, "topology.num_edges": 3})
    s = AcmeStrategy.from_config(cfg)
    assert (s.variant_name, s.prune_per_iteration, s.train_config["lr"], s.timeout, s.max_reply_bytes, s.seed) == \
        ("pruning_avg", 7, 0.2, 30.0, 1234, 5)
    assert (s.topology.num_devices, s.topology.num_edges) == (6, 3)
    assert AcmeStrategy.from_config(cfg, variant="wo_pruning", topology=Topology(2, 1)).variant_name == "wo_pruning"


@pytest.mark.parametrize("strategy", [AcmeStrategy(), HeaderFedAvg(share="body"), FedRep(head_epochs=3),
                                      FedBABU(finetune_epochs=2), Ditto(lam=0.5), HierarchicalFedAvg()])
def test_summary_logs_the_strategys_own_settings_and_constructors_document_their_parameters(strategy) -> None:  # noqa: ANN001
    with flower_log_lines() as lines:
        strategy.summary()
    text = "\n".join(lines)
    assert "Hierarchy:" in text and "Weighted by: 'num-examples'" in text  # ours, then FedAvg's
    own = {AcmeStrategy: "variant pruning_per", HeaderFedAvg: "share body", FedRep: "head 3",
           FedBABU: "fine-tuning 2", Ditto: "lambda 0.5", HierarchicalFedAvg: "Hierarchy"}[type(strategy)]
    assert own in text, text
    assert "Parameters\n    ----------" in (type(strategy).__doc__ or "")


class _RunGrid(InProcessGrid):
    @property
    def run(self):  # noqa: ANN201
        return types.SimpleNamespace(run_id=4242)


def _plain_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "acc": 0.5})}), reply_to=msg)

    return app


@pytest.mark.parametrize("remove", [True, False])
def test_start_removes_the_runs_shared_feature_and_model_store_directories(remove: bool) -> None:
    dirs = [shared_feature_dir(4242), model_store_dir(4242)]
    for run_dir in dirs:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "file.pt").write_bytes(b"x")
    try:
        AcmeStrategy(remove_run_files=remove).start(grid=_RunGrid(_plain_app(), 2), num_rounds=1,
                                                    initial_arrays=ArrayRecord({"w": torch.zeros(2)}))
        assert [d.exists() for d in dirs] == [not remove, not remove]
    finally:
        import shutil

        for run_dir in dirs:
            shutil.rmtree(run_dir, ignore_errors=True)


def test_drop_in_without_initial_arrays_says_what_to_pass() -> None:
    with pytest.raises(ValueError, match=r"pass start\(initial_arrays=...\)"):
        AcmeStrategy().start(grid=InProcessGrid(_plain_app(), 2), num_rounds=1)


def _adding_app() -> ClientApp:
    """Device p adds p+1 to the arrays and reports 10(p+1) examples."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        new = {k: v + (pid + 1) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        metrics = MetricRecord({"num-examples": 10 * (pid + 1)})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "acc": 0.5})}), reply_to=msg)

    return app


def test_drop_in_resumes_into_the_policy_discovery_chooses(tmp_path) -> None:  # noqa: ANN001
    """The checkpoint of a drop-in run holds the FedAvg policy's state; a resumed AcmeStrategy loads it once
    discovery has chosen that policy again, and ends where the uninterrupted run ends."""
    init = ArrayRecord({"w": torch.zeros(3)})
    topo = Topology(4, 2, edge_rounds_per_cloud=2)
    full = AcmeStrategy(topology=topo, checkpoint_dir=tmp_path / "full").start(
        grid=InProcessGrid(_adding_app(), 4), initial_arrays=init, num_rounds=3)
    AcmeStrategy(topology=topo, checkpoint_dir=tmp_path / "cut").start(
        grid=InProcessGrid(_adding_app(), 4), initial_arrays=init, num_rounds=2)
    resumed = AcmeStrategy(topology=topo, checkpoint_dir=tmp_path / "cut")
    assert resumed.restore(tmp_path / "cut" / "acme.json") == 2
    result = resumed.start(grid=InProcessGrid(_adding_app(), 4), initial_arrays=init, num_rounds=1)
    assert resumed.drop_in
    np.testing.assert_allclose(result.arrays["w"].numpy(), full.arrays["w"].numpy(), rtol=1e-6)
