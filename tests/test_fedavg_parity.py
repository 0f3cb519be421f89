"""Differential tests: the same replies through Flower's FedAvg and through AcmeStrategy / HierarchicalFedAvg.

Driven as ``Strategy.start`` drives a strategy (no hierarchy, no ACME handlers), both must give the same arrays, the
same train and evaluate MetricRecords (scalars, lists, empty ones) in ``Result``, and the same log lines a user reads.
Each case below fails when one metric behaviour of FedAvg is not reproduced (issue 23, point 1).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, Result

from acme_flwr.strategies import AcmeStrategy, HeaderFedAvg, HierarchicalFedAvg

from .inprocess import InProcessGrid, flower_log_lines

Metrics = Callable[[int, str], dict]  # (partition-id, "train"|"evaluate") -> the reply's metrics
STRATEGIES = [AcmeStrategy, HierarchicalFedAvg]


def _app(metrics: Metrics) -> ClientApp:
    """A quickstart-style ClientApp: device p adds p+1 to every array and replies with ``metrics(p, phase)``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        new = {k: v + (pid + 1) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics(pid, "train"))}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord(metrics(pid, "evaluate"))}), reply_to=msg)

    return app


def _global_sum(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """A centralized evaluation: what ``evaluate_fn`` sees of the global model."""
    return MetricRecord({"sum": float(sum(a.numpy().sum() for a in arrays.values()))})


def _run(strategy: FedAvg, metrics: Metrics, rounds: int = 2) -> tuple[Result, list[str]]:
    with flower_log_lines() as lines:
        result = strategy.start(grid=InProcessGrid(_app(metrics), 3), initial_arrays=ArrayRecord(
            {"w": torch.zeros(3), "b": torch.ones(2)}), num_rounds=rounds, evaluate_fn=_global_sum)
    return result, lines


def _same_metrics(a: dict[int, MetricRecord], b: dict[int, MetricRecord]) -> None:
    assert sorted(a) == sorted(b), (a, b)
    for rnd in a:
        assert isinstance(b[rnd], MetricRecord)
        assert sorted(a[rnd]) == sorted(b[rnd]), (rnd, a[rnd], b[rnd])
        for key, value in a[rnd].items():
            np.testing.assert_allclose(np.asarray(b[rnd][key], dtype=float), np.asarray(value, dtype=float),
                                       rtol=1e-12, err_msg=f"round {rnd} {key}")


USER_LINES = (r"configure_(train|evaluate): Sampled \d+ nodes \(out of \d+\)",
              r"aggregate_(train|evaluate): Received \d+ results and \d+ failures", r"\t└──> Aggregated MetricRecord")


def _user_lines(lines: list[str]) -> list[str]:
    """The round lines a FedAvg user reads (sampling, replies, aggregated metrics), with the numbers in them."""
    out = []
    for line in lines:
        for pattern in USER_LINES:
            m = re.match(pattern, line)
            if m:
                out.append(m.group(0) if "Aggregated" not in pattern else line.split(":", 1)[0])
    return out


def _differential(cls: type, metrics: Metrics, **kwargs) -> tuple[Result, Result]:  # noqa: ANN003
    fedavg, fed_lines = _run(FedAvg(**kwargs), metrics)
    ours, our_lines = _run(cls(**kwargs), metrics)
    for key in fedavg.arrays:
        np.testing.assert_allclose(ours.arrays[key].numpy(), fedavg.arrays[key].numpy(), rtol=1e-6)
    _same_metrics(fedavg.train_metrics_clientapp, ours.train_metrics_clientapp)
    _same_metrics(fedavg.evaluate_metrics_clientapp, ours.evaluate_metrics_clientapp)
    assert sorted(ours.evaluate_metrics_serverapp) == sorted(fedavg.evaluate_metrics_serverapp) == [0, 1, 2]
    for rnd, m in fedavg.evaluate_metrics_serverapp.items():  # evaluate_fn saw the same global model each round
        assert ours.evaluate_metrics_serverapp[rnd]["sum"] == pytest.approx(m["sum"], rel=1e-6)
    assert _user_lines(our_lines) == _user_lines(fed_lines)
    return fedavg, ours


# ---------------------------------------------------------------------------------------------- the metric cases
@pytest.mark.parametrize("cls", STRATEGIES)
def test_scalar_metrics_equal_fedavgs(cls: type) -> None:
    fedavg, _ = _differential(cls, lambda p, ph: {"num-examples": 10 * (p + 1), "loss": 0.5 * p, "acc": 0.1 * p})
    assert set(fedavg.train_metrics_clientapp[1]) == {"loss", "acc"}  # the weight key left out


@pytest.mark.parametrize("cls", STRATEGIES)
def test_replies_with_only_the_weight_key_give_an_empty_metric_record_each_round(cls: type) -> None:
    fedavg, ours = _differential(cls, lambda p, ph: {"num-examples": p + 1})
    assert sorted(ours.train_metrics_clientapp) == sorted(ours.evaluate_metrics_clientapp) == [1, 2]
    assert all(len(m) == 0 for m in ours.train_metrics_clientapp.values())


@pytest.mark.parametrize("cls", STRATEGIES)
def test_list_valued_metrics_are_averaged_element_wise(cls: type) -> None:
    _, ours = _differential(cls, lambda p, ph: {"num-examples": p + 1, "hist": [1.0 * p, 2.0, 3.0 - p]})
    # weights 1, 2, 3 (sum 6): hist[0] = (0*1 + 1*2 + 2*3)/6
    assert ours.train_metrics_clientapp[1]["hist"] == pytest.approx([8 / 6, 2.0, 3.0 - 8 / 6])


@pytest.mark.parametrize("cls", STRATEGIES)
def test_another_weight_key_leaves_num_examples_in_and_weights_by_it_zero_included(cls: type) -> None:
    """FedAvg leaves out only ``weighted_by_key``: num-examples is averaged like any metric, and a weight of 0
    counts as 0 (the device's metrics do not count), never as 1."""
    _, ours = _differential(cls, lambda p, ph: {"w8": float(p), "num-examples": 7 * (p + 1), "acc": 0.25 * p},
                            weighted_by_key="w8")
    m = ours.evaluate_metrics_clientapp[1]
    assert m["num-examples"] == pytest.approx((1 * 14 + 2 * 21) / 3) and m["acc"] == pytest.approx((0.25 + 1.0) / 3)


@pytest.mark.parametrize("cls", STRATEGIES)
def test_aggregation_functions_assigned_after_construction_are_used(cls: type) -> None:
    calls: list[str] = []

    def count(phase: str) -> Callable[[list[RecordDict], str], MetricRecord]:
        def fn(contents: list[RecordDict], key: str) -> MetricRecord:
            calls.append(phase)
            return MetricRecord({"n": len(contents), "key-len": len(key)})
        return fn

    results = []
    for strategy in (FedAvg(), cls()):
        strategy.train_metrics_aggr_fn, strategy.evaluate_metrics_aggr_fn = count("train"), count("evaluate")
        results.append(_run(strategy, lambda p, ph: {"num-examples": 1, "x": 1.0})[0])
    _same_metrics(results[0].train_metrics_clientapp, results[1].train_metrics_clientapp)
    _same_metrics(results[0].evaluate_metrics_clientapp, results[1].evaluate_metrics_clientapp)
    assert dict(results[1].train_metrics_clientapp[2]) == {"n": 3, "key-len": len("num-examples")}
    assert calls == ["train", "evaluate"] * 4  # two rounds, FedAvg then ours


# ---------------------------------------------------------------------------------------------- Flower's own test style
def _reply(pid: int, metrics: dict) -> Message:
    reply = Message(RecordDict({"arrays": ArrayRecord({"w": torch.full((2,), float(pid))}),
                                "metrics": MetricRecord(metrics)}), dst_node_id=123, message_type="train")
    return Message(reply.content, reply_to=reply)


@pytest.mark.parametrize("cls", STRATEGIES)
def test_aggregate_train_on_replies_it_never_sent_gives_fedavgs_result(cls: type) -> None:
    """Flower's strategy tests call ``aggregate_train`` on replies built by hand; a drop-in gives FedAvg's answer."""
    replies = [_reply(p, {"num-examples": p + 1, "acc": 0.5 * p, "hist": [p, 1]}) for p in range(3)]
    want_arrays, want_metrics = FedAvg().aggregate_train(1, replies)
    arrays, metrics = cls().aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), want_arrays["w"].numpy())
    _same_metrics({1: want_metrics}, {1: metrics})
    assert cls().aggregate_evaluate(1, replies) == FedAvg().aggregate_evaluate(1, replies)


def test_a_harness_strategy_refuses_replies_it_never_sent_in_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match="sent no messages.*call configure_train"):
        HeaderFedAvg().aggregate_train(1, [_reply(0, {"num-examples": 1})])


# ---------------------------------------------------------------------------------------------- the public signature
@pytest.mark.parametrize("cls", STRATEGIES)
def test_the_signature_shows_fedavgs_ten_parameters_first(cls: type) -> None:
    fedavg = list(inspect.signature(FedAvg).parameters.values())
    ours = list(inspect.signature(cls).parameters.values())
    assert len(fedavg) == 10
    assert [(p.name, p.default, p.kind) for p in ours[:10]] == [(p.name, p.default, p.kind) for p in fedavg]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in ours[10:])
    assert "Parameters\n    ----------" in (cls.__doc__ or "")
