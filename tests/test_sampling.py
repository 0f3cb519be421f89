"""Cross-device sampling at scale (issue 24): ``fraction_train``/``fraction_evaluate`` < 1 sample per round, seeded,
and a round's structures (similarity, mixes, ledger, rounds.jsonl rows, the summary's round entries, what the strategy
keeps of the messages it sent) hold only the devices that took part; 1 000 in-process devices finish quickly."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord

from acme_flwr import protocol as P
from acme_flwr.clients.client_app import app as acme_client_app
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.edge.similarity import aggregation_weights, similarity_matrix
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import build_strategy
from acme_flwr.strategies.utils import sample_devices
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .inprocess import RecordingGrid

SAMPLED = {**SMOKE, "topology.num_devices": 12, "topology.num_edges": 2, "data.synthetic_samples": 1200,
           "partition.min_size": 10, "strategy.fraction_train": 0.25, "strategy.fraction_evaluate": 0.25}


def _round_of(msg) -> int:  # noqa: ANN001
    return int(msg.content[P.CONFIG]["server-round"])


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = AcmeConfig.from_flat(SAMPLED)
    data = federated_data(cfg, *input_shape(cfg))
    return cfg, build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)


def _run(sampled, tmp_path, rounds: int = 3, evaluate_all: bool = False):  # noqa: ANN001, ANN202
    cfg, deployment = sampled
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy("acme", cfg, Topology(12, 2, "round_robin", 1), deployment, recorder)
    if evaluate_all:
        strategy.fraction_evaluate = 1.0
    grid = RecordingGrid(acme_client_app, 12, SAMPLED)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds)
    return strategy, strategy.finalize(), grid, recorder


def _asked(grid: RecordingGrid, strategy, mtype: str) -> dict[int, set[int]]:  # noqa: ANN001
    out: dict[int, set[int]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == mtype:
            out.setdefault(_round_of(msg), set()).add(strategy.pid_of[msg.metadata.dst_node_id])
    return out


def test_same_seed_same_samples_and_another_seed_others() -> None:
    pids = list(range(1000))
    first = [sample_devices(pids, 0.05, 2, 7, r, "train") for r in range(1, 6)]
    assert first == [sample_devices(pids, 0.05, 2, 7, r, "train") for r in range(1, 6)]
    assert all(len(s) == 50 and s == sorted(set(s)) for s in first)
    assert len({tuple(s) for s in first}) == 5  # rounds differ
    assert first != [sample_devices(pids, 0.05, 2, 8, r, "train") for r in range(1, 6)]
    assert first[0] != sample_devices(pids, 0.05, 2, 7, 1, "evaluate")  # evaluation is drawn apart


def test_only_sampled_devices_appear_in_a_rounds_structures(sampled, tmp_path) -> None:  # noqa: ANN001
    strategy, block, grid, recorder = _run(sampled, tmp_path)
    assert block["failures"]["count"] == 0
    trained, evaluated = _asked(grid, strategy, P.TRAIN), _asked(grid, strategy, P.EVALUATE)
    assert sorted(trained) == sorted(evaluated) == [1, 2, 3]
    assert all(len(trained[r]) == len(evaluated[r]) == 3 for r in trained)  # int(12 * 0.25)
    assert len(set().union(*trained.values())) > 3  # the sample changes from round to round
    rows = [json.loads(line) for line in (recorder.out_dir / "rounds.jsonl").read_text().splitlines()]
    for rnd in (1, 2, 3):
        for phase, asked in (("train", trained[rnd]), ("evaluate", evaluated[rnd])):
            ids = {r["id"] for r in rows if r["round"] == rnd and r["phase"] == phase and r["tier"] == "device"}
            assert ids == asked
            entry = next(e for e in block["rounds"] if e["round"] == rnd)
            assert {int(p) for p in entry[phase]["device"]} == asked
        assert {pid for (r, pid) in strategy.ledger.per_round_device if r == rnd} == trained[rnd] | evaluated[rnd]
        assert strategy.admission.asked(rnd, "train") == trained[rnd]
    # similarity is computed per round over that round's replying devices, never over all 12
    sims = block["similarity"]
    assert sims and all(set(s["devices"]) <= trained[s["round"]] for s in sims.values())
    assert not strategy.edge_weights
    # the strategy keeps only the last round's mixes, and no payloads of earlier rounds' messages
    assert set(strategy.mixed) <= trained[3] and set(strategy.mixed_round.values()) == {3}
    assert strategy.admission.message(1, "train", min(trained[1])) is None
    assert strategy.admission.message(3, "evaluate", min(evaluated[3])) is not None
    assert set(strategy.extra_state()["mixed"]) <= trained[3]  # what each checkpoint holds


def test_a_sampled_rounds_mix_is_the_full_groups_row_renormalised(sampled, tmp_path) -> None:  # noqa: ANN001
    """The per-round similarity over the sample gives exactly the mix the full N x N rows would (renormalised over
    the devices that replied): sampling changes what is computed, not the algorithm."""
    strategy, block, grid, _ = _run(sampled, tmp_path, rounds=2, evaluate_all=True)
    groups = {pid: tuple(p) for edge in block["mixing_groups"].values() for p in edge.values() for pid in p}
    full: dict[tuple[int, ...], np.ndarray] = {}
    for group in set(groups.values()):
        s = similarity_matrix([strategy.features[p] for p in group], metric=strategy.distance)
        full[group] = aggregation_weights(s, temperature=strategy.temperature)
    checked = 0
    for rnd in (1, 2):
        imps = {strategy.pid_of[r.metadata.src_node_id]: P.vector_from_record(r.content[P.IMPORTANCE])
                for q, r in grid.replies if q is not None and q.metadata.message_type == P.TRAIN
                and _round_of(q) == rnd}
        for msg in grid.sent:
            if msg.metadata.message_type != P.EVALUATE or _round_of(msg) != rnd:
                continue
            k = strategy.pid_of[msg.metadata.dst_node_id]
            if k not in imps:
                assert P.IMPORTANCE not in msg.content.array_records  # evaluated but not trained: no mix
                continue
            group = groups[k]
            w = full[group][group.index(k)]
            row = {j: w[group.index(j)] for j in group if j in imps}
            expected = sum(v / sum(row.values()) * imps[j].astype(np.float64) for j, v in row.items())
            np.testing.assert_allclose(P.vector_from_record(msg.content[P.IMPORTANCE]), expected, rtol=1e-6)
            checked += 1
    assert checked == 6  # 3 trained devices in each of 2 rounds (the 9 others were evaluated without a mix)


def test_a_thousand_in_process_devices_sample_five_percent(tmp_path) -> None:
    """1 000 devices on the tiniest model, fraction 0.05: each round trains and evaluates 50, its rows count only
    them, and the whole run (discovery and setup of all 1 000 included) stays test-friendly. ``pruning_avg`` mixes
    importance like ``pruning_per`` without the one-time feature statistics, whose backbone pass at setup would
    triple the devices' setup time here; the per-round similarity is covered on 12 devices above."""
    flat = {**SMOKE, "topology.num_devices": 1000, "topology.num_edges": 4, "data.synthetic_samples": 30_000,
            "partition.min_size": 5, "cloud.enabled": False, "cloud.widths": "1.0", "cloud.depths": "1.0",
            "strategy.fraction_train": 0.05, "strategy.fraction_evaluate": 0.05, "strategy.variant": "pruning_avg"}
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, tmp_path / "cache", progress=False)
    recorder = RunRecorder(tmp_path / "run", cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy("acme", cfg, Topology(1000, 4, "round_robin", 1), deployment, recorder)
    grid = RecordingGrid(acme_client_app, 1000, flat)
    t0 = time.monotonic()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    wall = time.monotonic() - t0
    block = strategy.finalize()
    assert block["failures"]["count"] == 0 and not block["degraded"]
    rows = [json.loads(line) for line in (recorder.out_dir / "rounds.jsonl").read_text().splitlines()]
    for rnd in (1, 2):
        for phase in ("train", "evaluate"):
            ids = [r["id"] for r in rows if r["round"] == rnd and r["phase"] == phase and r["tier"] == "device"]
            assert len(ids) == len(set(ids)) == 50
            assert set(ids) == strategy.admission.asked(rnd, phase)
            entry = next(e for e in block["rounds"] if e["round"] == rnd)
            assert len(entry[phase]["device"]) == 50
    assert 0 < len(strategy.mixed) <= 50 and set(strategy.mixed) <= strategy.admission.asked(2, "train")
    took_part = [strategy.admission.asked(r, "train") | strategy.admission.asked(r, "evaluate") for r in (1, 2)]
    assert len(strategy.ledger.per_round_device) == 1000 + sum(map(len, took_part))  # setup, then the samples
    assert wall < 300, f"1 000 in-process devices took {wall:.0f} s"


def test_a_dead_worker_is_one_line_per_round_not_one_per_device(sampled, tmp_path, caplog) -> None:  # noqa: ANN001
    """Every message a dead worker held fails with the same Ray error: one WARNING line names the devices, while the
    summary still records one failure per device."""
    from flwr.app import Error, Message

    reason = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. " + "x" * 400

    def worker_dies_in_round_2(msg: Message, node: int) -> object:
        if msg.metadata.message_type == P.TRAIN and _round_of(msg) == 2:
            return Message(Error(code=0, reason=reason), reply_to=msg)
        return None

    cfg, deployment = sampled
    strategy = build_strategy("acme", cfg, Topology(12, 2, "round_robin", 1), deployment,
                              RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed))
    grid = RecordingGrid(acme_client_app, 12, SAMPLED, intercept=worker_dies_in_round_2)
    with caplog.at_level("WARNING"):
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    asked = strategy.admission.asked(2, "train")
    failures = [f for f in strategy.finalize()["failures"]["reasons"] if f["round"] == 2 and f["phase"] == "train"]
    assert sorted(int(f["node"]) for f in failures) == sorted(asked) and len(asked) == 3
    # one log call per round and phase (distinct records: after some tests the same record reaches pytest's root
    # handler twice, via our logger and via Flower's)
    records = {id(r): r for r in caplog.records if "ActorDiedError" in r.getMessage()
               and not r.getMessage().startswith("DEGRADED")}  # the end-of-run verdict names each lost device
    lines = [r.getMessage() for r in records.values()]
    assert len(lines) == 1 and lines[0].startswith("acme round 2 train: 3 devices failed (")
    assert all(str(p) in lines[0] for p in asked) and len(lines[0]) < 500
    degraded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DEGRADED: acme")]
    assert degraded and all(line.count("ActorDiedError") == 1 for line in degraded)  # the 3 lost alike: one entry
