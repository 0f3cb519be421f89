"""Hostile replies, a growing corpus: whatever a device sends back is rejected and recorded, never reaches edge state
and never crashes the server. Nothing a device sends is unpickled or executed (checkpoints included).

Each case rewrites the genuine reply of device 1 (node 1007) to one message type; the run must then end with exactly
the edge state of a run in which that reply was lost in transit (the "drop" baseline; "clean" for cases whose
genuine reply still counts), a one-line "rejected" failure for device 1 in that round and phase, and no exception.
Add a case to ``CASES`` (any strategy) or ``ACME_CASES`` (the ACME protocol's own records) when a new reply shape
turns up.
"""

from __future__ import annotations

import io
import math
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr import protocol as P
from acme_flwr.checkpoints import CheckpointError, load_state, paths, save_state
from acme_flwr.clients.client_app import app as acme_client_app
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import AcmeStrategy, HierarchicalFedAvg, build_strategy
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .inprocess import InProcessGrid

TARGET = 1007  # node of partition-id 1
HARNESS = ["acme", "fedavg_header", "fedper", "local"]
DROP_IN = ["hier_fedavg", "acme_dropin"]
Hostile = Callable[[Message, Message, "HostileGrid"], list[Message]]


class HostileGrid(InProcessGrid):
    """Assigns message ids as Flower's grids do, runs the real ClientApp, then lets ``hostile`` rewrite the replies
    of ``TARGET`` to messages of type ``mtype`` (``"*"``: any) from ``from_round`` on (setup/profile: round 0)."""

    def __init__(self, app: ClientApp, hostile: Hostile | None, mtype: str, from_round: int = 1,
                 run_config: dict | None = None) -> None:
        super().__init__(app, 4, run_config)
        self.hostile, self.mtype, self.from_round = hostile, mtype, from_round
        self.history: list[Message] = []  # every message sent, ids assigned

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(msg)
            self.history.append(msg)
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - as Flower: an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            rnd = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
            if (self.hostile is not None and node == TARGET and self.mtype in ("*", msg.metadata.message_type)
                    and rnd >= self.from_round):
                replies += self.hostile(msg, reply, self)
            else:
                replies.append(reply)
        return replies


# ------------------------------------------------------------------------------------------------- building blocks
def _with(request: Message, content: RecordDict, src: int | None = None) -> Message:
    """A reply to ``request`` carrying ``content`` (from node ``src`` if given: a forged sender)."""
    out = Message(content, reply_to=request)
    if src is not None:
        out.metadata.__dict__["_src_node_id"] = src
    return out


def _copy(content: RecordDict) -> RecordDict:
    return RecordDict({k: v for k, v in content.items()})


def _map_arrays(content: RecordDict, fn: Callable[[str, np.ndarray], np.ndarray | None]) -> RecordDict:
    out = RecordDict()
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            arrays = {}
            for k, a in rec.items():
                new = fn(k, a.numpy())
                if new is not None:
                    arrays[k] = Array(np.ascontiguousarray(new))
            out[key] = ArrayRecord(arrays)
        else:
            out[key] = rec
    return out


def _map_metrics(content: RecordDict, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> RecordDict:
    out = _copy(content)
    for key, rec in content.metric_records.items():
        out[key] = MetricRecord(fn(dict(rec)))
    return out


def _float_arrays(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[str, np.ndarray], np.ndarray]:
    return lambda k, a: fn(a) if a.dtype.kind == "f" else a


def _raw_array(data: bytes, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype="float32", shape=(4,), stype=stype, data=data)


class _Canary:
    """Unpickling this writes a file: if it ever exists, something unpickled a device's bytes."""

    path = ""

    def __reduce__(self):  # noqa: ANN204
        return (Path(self.path).write_text, ("unpickled!",))


def _pickled_object_array() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_Canary()], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _replace_payload(content: RecordDict, make: Callable[[], Array]) -> RecordDict:
    """Every ArrayRecord's first array replaced by ``make()``; without ArrayRecords, an extra one."""
    out = _copy(content)
    recs = content.array_records
    if not recs:
        out["arrays"] = ArrayRecord({"v": make()})
    for key, rec in recs.items():
        items = dict(rec.items())
        first = next(iter(items))
        items[first] = make()
        out[key] = ArrayRecord(items)
    return out


def _configs_for_arrays(content: RecordDict) -> RecordDict:
    out = RecordDict()
    for key, rec in content.items():
        out[key] = ConfigRecord({"x": 1.0}) if isinstance(rec, ArrayRecord) else rec
    if not content.array_records:  # nothing to swap: metrics become a ConfigRecord
        for key in content.metric_records:
            out[key] = ConfigRecord({"x": 1.0})
    return out


def _fake_request(req: Message) -> Message:
    fake = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=req.metadata.dst_node_id,
                   message_type=req.metadata.message_type)
    fake.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return fake


RAY_TRACEBACK = ("<class 'flwr.client.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
                 "Message: \nTraceback (most recent call last):\n  File \"/x/ray_actor.py\", line 50, in run\n    "
                 "out = app(msg, ctx)\n          ^^^^^^^^^^^^\nRuntimeError: CUDA error: device-side assert\nline two"
                 "\n'>")

# name -> (hostile rewrite, baseline: "drop" or "clean"); each gets (request, genuine reply, grid)
CASES: dict[str, tuple[Hostile, str]] = {
    "no_metrics": (lambda q, r, g: [_with(q, RecordDict({k: v for k, v in r.content.items()
                                                        if not isinstance(v, MetricRecord)}))], "drop"),
    "empty_reply": (lambda q, r, g: [_with(q, RecordDict())], "drop"),
    "extra_array_record": (lambda q, r, g: [_with(q, RecordDict({**dict(r.content.items()),
                                                                 "evil": ArrayRecord({"x": Array(np.ones(3))})}))],
                           "drop"),
    "extra_config_record": (lambda q, r, g: [_with(q, RecordDict({**dict(r.content.items()),
                                                                  "cfg": ConfigRecord({"run": "rm -rf /"})}))],
                            "drop"),
    "config_instead_of_arrays": (lambda q, r, g: [_with(q, _configs_for_arrays(r.content))], "drop"),
    "nan_metric": (lambda q, r, g: [_with(q, _map_metrics(r.content, lambda m: {**m, "loss": math.nan}))], "drop"),
    "inf_metric": (lambda q, r, g: [_with(q, _map_metrics(r.content, lambda m: {**m, "x": [1.0, math.inf]}))],
                   "drop"),
    "zero_examples": (lambda q, r, g: [_with(q, _map_metrics(r.content, lambda m: {**m, P.NUM_EXAMPLES: 0}))],
                      "drop"),
    "huge_examples": (lambda q, r, g: [_with(q, _map_metrics(r.content, lambda m: {**m, P.NUM_EXAMPLES: 2**40}))],
                      "drop"),
    "nan_payload": (lambda q, r, g: [_with(q, _map_arrays(r.content, _float_arrays(lambda a: a * np.nan)))],
                    "drop"),
    "inf_payload": (lambda q, r, g: [_with(q, _map_arrays(r.content, _float_arrays(lambda a: a + np.inf)))],
                    "drop"),
    "wrong_shape": (lambda q, r, g: [_with(q, _map_arrays(r.content, lambda k, a: np.ones(a.size + 3, a.dtype)))],
                    "drop"),
    "wrong_dtype": (lambda q, r, g: [_with(q, _map_arrays(r.content, lambda k, a: a.astype(np.float64)
                                                          if a.dtype.kind == "f" else a.astype(np.float32)))],
                    "drop"),
    "missing_array_key": (lambda q, r, g: [_with(q, _map_arrays(r.content, lambda k, a: None))], "drop"),
    "undecodable_bytes": (lambda q, r, g: [_with(q, _replace_payload(r.content, lambda: _raw_array(b"\x93NUMPY")))],
                          "drop"),
    "foreign_stype": (lambda q, r, g: [_with(q, _replace_payload(r.content, lambda: _raw_array(b"\0" * 16,
                                                                                               "torch.Tensor")))],
                      "drop"),
    "pickled_object_array": (lambda q, r, g: [_with(q, _replace_payload(
        r.content, lambda: _raw_array(_pickled_object_array())))], "drop"),
    "oversized": (lambda q, r, g: [_with(q, _map_metrics(r.content, lambda m: {**m, "pad": [0.0] * 40_000}))],
                  "drop"),
    "error_with_traceback": (lambda q, r, g: [Message(Error(code=1, reason=RAY_TRACEBACK), reply_to=q)], "drop"),
    "reply_to_another_strategy": (lambda q, r, g: [Message(_copy(r.content), reply_to=_fake_request(q))], "drop"),
    "from_undiscovered_node": (lambda q, r, g: [_with(q, _copy(r.content), src=424242)], "drop"),
    "spoofs_another_device": (lambda q, r, g: [_with(q, _copy(r.content), src=1014)], "drop"),
    "second_reply": (lambda q, r, g: [r, _with(q, _map_arrays(r.content, _float_arrays(lambda a: a * 2)))],
                     "clean"),
}
PAYLOAD_CASES = {"nan_payload", "inf_payload", "wrong_shape", "wrong_dtype", "missing_array_key", "second_reply"}
# the devices' frozen-feature cache is off: its hits and misses are not bit-identical, and which runs hit it
# depends on test order, while each comparison here needs two runs that differ only in the hostile reply
RUN_CONFIG = {**SMOKE, "run.feature_cache_mb": 0}
MAX_REPLY_BYTES = 64 * 1024  # the cap these runs use: far above any genuine reply here, below "oversized"


def _replay_round_1(q: Message, r: Message, g: HostileGrid) -> list[Message]:
    """Round 2: the device answers with its round-1 reply (a replay, answering the round-1 message)."""
    first = next(m for m in g.history if m.metadata.dst_node_id == TARGET
                 and m.metadata.message_type == q.metadata.message_type)
    return [Message(_copy(r.content), reply_to=first)]


# ------------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = AcmeConfig.from_flat(dict(SMOKE))
    data = federated_data(cfg, *input_shape(cfg))
    out = cfg, build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)
    # the first in-process run of a fresh process differs slightly from every later one (lazy one-time state on the
    # client side: the feature cache): warm each strategy up once, so each comparison is between two "later" runs
    for name in HARNESS:
        _run(name, out, tmp_path_factory.mktemp("warmup"), None)
    return out


def _quickstart_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        state = msg.content["arrays"].to_torch_state_dict()
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"arrays": ArrayRecord({k: v + pid + 1 for k, v in state.items()}),
                                   "metrics": MetricRecord({"num-examples": 10 * (pid + 1), "loss": 1.0})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "test-acc": 0.5})}), reply_to=msg)

    return app


def _run(name: str, packages, tmp_path: Path, hostile: Hostile | None, mtype: str | None = None,  # noqa: ANN001
         rounds: int = 1, from_round: int = 1):  # noqa: ANN202
    cfg, deployment = packages
    if name in DROP_IN:
        topo = Topology(4, 2, edge_rounds_per_cloud=1)
        strategy = (HierarchicalFedAvg(topology=topo) if name == "hier_fedavg" else AcmeStrategy(topology=topo))
        grid = HostileGrid(_quickstart_app(), hostile, mtype or "train", from_round)
        initial = ArrayRecord({"w": torch.zeros(3), "b": torch.ones(2)})
    else:
        recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
        strategy = build_strategy(name, cfg, Topology(4, 2, "round_robin", 2), deployment, recorder)
        grid = HostileGrid(acme_client_app, hostile, mtype or P.TRAIN, from_round, RUN_CONFIG)
        initial = ArrayRecord()
    strategy.max_reply_bytes = MAX_REPLY_BYTES
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
    return strategy, strategy.finalize()


def _edge_state(strategy) -> dict[str, Any]:  # noqa: ANN001
    return {"extra": strategy.policy.extra_state(), "features": getattr(strategy, "features", {}),
            "eval": strategy.eval_history, "devices": sorted(strategy.node_of)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return a == b


_BASELINES: dict[tuple, dict[str, Any]] = {}


def _baseline(name: str, kind: str, packages, tmp_path: Path, mtype: str | None, rounds: int,  # noqa: ANN001
              from_round: int) -> dict[str, Any]:
    key = (name, kind, mtype, rounds, from_round)
    if key not in _BASELINES:
        lost = (lambda q, r, g: []) if kind == "drop" else (lambda q, r, g: [r])
        _BASELINES[key] = _edge_state(_run(name, packages, tmp_path / "base", lost, mtype, rounds, from_round)[0])
    return _BASELINES[key]


def _check(name: str, case: str, hostile: Hostile, kind: str, packages, tmp_path: Path,  # noqa: ANN001
           mtype: str | None = None, rounds: int = 1, from_round: int = 1, phase: str | None = None,
           node: str = "1", needle: str = "rejected") -> dict[str, Any]:
    strategy, block = _run(name, packages, tmp_path, hostile, mtype, rounds, from_round)
    phase = phase or ("train" if mtype in (None, P.TRAIN, "train") else "evaluate")
    mine = [f for f in block["failures"]["reasons"] if f["node"] == node and f["phase"] == phase
            and f["round"] >= (from_round if phase in ("train", "evaluate") else 0)]
    assert mine, (case, block["failures"]["reasons"])
    assert all(needle in f["reason"] for f in mine), (case, mine)
    assert all("\n" not in f["reason"] and len(f["reason"]) <= 420 for f in block["failures"]["reasons"]), mine
    assert _same(_edge_state(strategy), _baseline(name, kind, packages, tmp_path, mtype, rounds, from_round)), case
    return block


# ------------------------------------------------------------------------------------------------- the corpus
@pytest.mark.parametrize("name", HARNESS + DROP_IN)
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_train_reply_is_rejected_and_never_reaches_edge_state(case: str, name: str, packages,  # noqa: ANN001
                                                                       tmp_path: Path) -> None:
    hostile, kind = CASES[case]
    if name == "local" and case in PAYLOAD_CASES:
        pytest.skip("local sends no arrays: nothing to corrupt")
    if case == "pickled_object_array":
        _Canary.path = str(tmp_path / "canary")
    node = "424242" if case == "from_undiscovered_node" else "1"
    needle = {"error_with_traceback": "client error: RuntimeError: CUDA error: device-side assert",
              "oversized": "exceeds the cap", "from_undiscovered_node": "never discovered"}.get(case, "rejected")
    if case == "spoofs_another_device":  # reported for the device it claims to be
        node = "2"
    _check(name, case, hostile, kind, packages, tmp_path, node=node, needle=needle)
    if case == "pickled_object_array":
        assert not Path(_Canary.path).exists(), "a device's bytes were unpickled"


@pytest.mark.parametrize("name", ["acme", "fedavg_header", "hier_fedavg"])
def test_a_replayed_reply_from_an_earlier_round_is_rejected(name: str, packages, tmp_path: Path) -> None:  # noqa: ANN001
    _check(name, "replay", _replay_round_1, "drop", packages, tmp_path, rounds=2, from_round=2)


def _features(fn: Callable[[np.ndarray], np.ndarray | None]) -> Hostile:
    return lambda q, r, g: [_with(q, _map_arrays(r.content, lambda k, a: fn(a)))]


def _profile(fn: Callable[[dict], dict]) -> Hostile:
    return lambda q, r, g: [_with(q, RecordDict({P.PROFILE_REC: ConfigRecord(fn(dict(r.content[P.PROFILE_REC])))}))]


# the ACME protocol's own records: (message type, phase, rewrite)
ACME_CASES: dict[str, tuple[str, str, Hostile]] = {
    "importance_too_short": (P.TRAIN, "train", _features(lambda a: a[:-1])),
    "importance_negative": (P.TRAIN, "train", _features(lambda a: -np.ones_like(a))),
    "importance_under_another_key": (P.TRAIN, "train", lambda q, r, g: [_with(q, RecordDict({
        P.METRICS: r.content[P.METRICS], P.IMPORTANCE: ArrayRecord({"w": r.content[P.IMPORTANCE]["v"]})}))]),
    "eval_accuracy_out_of_range": (P.EVALUATE, "evaluate", lambda q, r, g: [_with(q, _map_metrics(
        r.content, lambda m: {**m, "test-acc": 5.0}))]),
    "eval_nan_accuracy": (P.EVALUATE, "evaluate", lambda q, r, g: [_with(q, _map_metrics(
        r.content, lambda m: {**m, "val-acc": math.nan}))]),
    "eval_extra_arrays": (P.EVALUATE, "evaluate", lambda q, r, g: [_with(q, RecordDict({
        **dict(r.content.items()), P.IMPORTANCE: ArrayRecord({"v": Array(np.ones(4, np.float32))})}))]),
    "features_nan": (P.SETUP, "setup", _features(lambda a: a * np.nan)),
    "features_wrong_width": (P.SETUP, "setup", _features(lambda a: a[:, :-1])),
    "features_too_many_rows": (P.SETUP, "setup", _features(lambda a: np.concatenate([a] * 50))),
    "features_missing": (P.SETUP, "setup", lambda q, r, g: [_with(q, RecordDict({P.METRICS: r.content[P.METRICS]}))]),
    "profile_partition_out_of_range": (P.PROFILE, "discover", _profile(lambda p: {**p, "partition-id": 99})),
    "profile_partition_not_int": (P.PROFILE, "discover", _profile(lambda p: {**p, "partition-id": "1; rm"})),
    "profile_unknown_class": (P.PROFILE, "discover", _profile(lambda p: {**p, "device-class": "huge"})),
    "profile_negative_size": (P.PROFILE, "discover", _profile(lambda p: {**p, "raw-train-bytes": -5})),
    "profile_as_metrics": (P.PROFILE, "discover", lambda q, r, g: [_with(q, RecordDict({
        P.PROFILE_REC: MetricRecord({"partition-id": 1})}))]),
}


@pytest.mark.parametrize("case", sorted(ACME_CASES))
def test_hostile_acme_record_is_rejected_and_never_reaches_edge_state(case: str, packages, tmp_path: Path) -> None:  # noqa: ANN001
    mtype, phase, hostile = ACME_CASES[case]
    # a discovery failure names the device by the partition-id it validly claims, else by its node
    node = "node 1007" if phase == "discover" and case not in ("profile_unknown_class", "profile_negative_size") \
        else "1"
    block = _check("acme", case, hostile, "drop", packages, tmp_path, mtype=mtype, phase=phase, node=node,
                   from_round=0 if phase in ("setup", "discover") else 1)
    if phase in ("setup", "discover"):  # a device that fails setup or discovery takes no part at all
        assert "1" not in block["accuracy"]["personalized"]["per_device"]


def test_header_baseline_checks_the_header_layout_in_round_one(packages, tmp_path: Path) -> None:  # noqa: ANN001
    """Before any edge model exists, a header of the wrong layout is still refused (checked against the package)."""
    hostile = _features(lambda a: np.ones((2, 2), a.dtype) if a.ndim > 1 else a)
    _check("fedavg_header", "header_layout", hostile, "drop", packages, tmp_path)


# ------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_round_trip_without_pickle(tmp_path: Path) -> None:
    state = {"round": 3, "eval": {1: {0: {"acc": 0.5}}}, "keys": {(0, "w1-d1-ab"): np.arange(3.0)},
             "none": None, "nan": math.nan, "t": (1, "a"), "flags": np.array([True, False]), "i": np.int64(7)}
    path = save_state(tmp_path / "s.json", state)
    back = load_state(path)
    assert back["keys"][(0, "w1-d1-ab")].tolist() == [0.0, 1.0, 2.0] and back["eval"][1][0]["acc"] == 0.5
    assert back["t"] == (1, "a") and math.isnan(back["nan"]) and back["i"] == 7 and back["none"] is None
    assert b"pickle" not in path.read_bytes()
    with pytest.raises(CheckpointError, match="not stored"):
        save_state(tmp_path / "bad.json", {"obj": np.array([object()], dtype=object)})


def test_a_checkpoint_holding_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    _Canary.path = str(tmp_path / "canary")
    doc, npz = paths(tmp_path / "acme.json")
    save_state(doc, {"a": np.ones(2)})
    npz.write_bytes(_npz_with_pickle())  # a tampered arrays file
    with pytest.raises(CheckpointError, match="unreadable"):
        load_state(doc)
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(_Canary()))  # an old-format checkpoint is not read either
    with pytest.raises(CheckpointError, match="never loaded"):
        load_state(tmp_path / "old.pkl")
    assert not Path(_Canary.path).exists()


def _npz_with_pickle() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a0=np.array([_Canary()], dtype=object))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- lost devices
def test_a_device_that_stops_answering_is_lost_loudly(packages, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from acme_flwr.results import format_table
    from experiments.launch import lost_devices_verdict

    strategy, block = _run("acme", packages, tmp_path, lambda q, r, g: [], "*", rounds=3, from_round=2)
    assert block["lost_devices"] == [{"partition-id": 1, "round": 2, "phase": "train",
                                      "reason": "no reply (timeout or lost)"}]
    assert block["devices"] == {"expected": 4, "reported": 3} and block["degraded"] is True
    assert set(block["rounds"][-1]["train"]["device"]) == {"0", "2", "3"}  # the round completed with the others
    summary = {"strategies": {"acme": block}, "config": {"run": {"on_lost_devices": "fail"}}}
    assert "3/4 DEGRADED" in format_table(summary)
    assert lost_devices_verdict(summary) == 3
    assert lost_devices_verdict({**summary, "config": {"run": {"on_lost_devices": "warn"}}}) == 0
    err = capsys.readouterr().err
    assert "DEGRADED: acme reports on 3/4 devices; lost 1 (round 2 train: no reply (timeout or lost))" in err


def test_a_device_missing_from_discovery_is_lost_and_a_transient_failure_is_not(packages, tmp_path: Path) -> None:  # noqa: ANN001
    _, block = _run("local", packages, tmp_path, lambda q, r, g: [], P.PROFILE, from_round=0)
    assert [(d["partition-id"], d["phase"]) for d in block["lost_devices"]] == [(1, "discover")]
    assert "3 of 4 devices found" in block["lost_devices"][0]["reason"] and block["devices"]["reported"] == 3
    _, block = _run("fedavg_header", packages, tmp_path / "t", lambda q, r, g: [] if _round(q) == 1 else [r],
                    P.TRAIN, rounds=2)
    assert block["failures"]["count"] == 1 and block["lost_devices"] == [] and block["degraded"] is False


def _round(msg: Message) -> int:
    return int(msg.content[P.CONFIG]["server-round"])
