"""Strategies on an in-process grid: the ACME loop, baselines, drop-in mode, heterogeneous and bad replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr import protocol as P
from acme_flwr.clients.client_app import app as acme_client_app
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import AcmeStrategy, HierarchicalFedAvg, build_strategy
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .inprocess import DROP, InProcessGrid, RecordingGrid, flower_log_lines


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    flat = dict(SMOKE)
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)
    topo = Topology(4, 2, "round_robin", 2)
    return flat, cfg, deployment, topo


def _run(name: str, setup, tmp_path, intercept=None):  # noqa: ANN001, ANN202
    flat, cfg, deployment, topo = setup
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy(name, cfg, topo, deployment, recorder)
    grid = InProcessGrid(acme_client_app, 4, flat, intercept)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    return strategy, strategy.finalize(), grid


def test_acme_loop_exchanges_only_importance_and_personalises(setup, tmp_path) -> None:  # noqa: ANN001
    strategy, block, grid = _run("acme", setup, tmp_path)
    assert block["failures"]["count"] == 0
    assert set(block["accuracy"]["personalized"]["per_device"]) == {"0", "1", "2", "3"}
    # similarity weights per edge: rows are probability vectors over the edge's devices
    for edge in block["similarity"].values():
        w = np.array(edge["weights"])
        assert np.allclose(w.sum(axis=1), 1.0) and (w > 0).all()
    # uplink of a training round carries the importance vector and metrics, nothing else
    train_replies_up = [r["bytes"]["edge-device"]["up"] for r in block["rounds"]]
    gates = strategy.num_gates(0)
    assert all(4 * 4 * gates <= up <= 4 * (4 * gates + 400) + 2000 for up in train_replies_up)
    # devices pruned with the edge's mix: prune_per_iteration=2 gates per round, two rounds
    last = block["rounds"][-1]["evaluate"]["device"]
    assert all(m["pruned-gates"] >= 4 for m in last.values())
    sent_types = {m.metadata.message_type for m in grid.sent}
    assert sent_types == {P.PROFILE, P.SETUP, P.TRAIN, P.EVALUATE}
    # heterogeneous devices: class "low" (devices 0, 3) got a smaller extracted sub-backbone than "mid"/"high"
    backbone_sizes = {grid.sent.index(m): sum(a.numpy().size for a in m.content[P.BACKBONE].values())
                      for m in grid.sent if m.metadata.message_type == P.SETUP}
    assert len(set(backbone_sizes.values())) == 2
    assert block["bytes"]["references"]["fedavg_full"]["bytes"] > block["bytes"]["total"]


@pytest.mark.parametrize("name", ["fedavg_header", "fedper", "local"])
def test_baselines_run_on_the_same_harness(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """They finish on the same devices and packages as ACME (what they average is checked below)."""
    _, block, _ = _run(name, setup, tmp_path)
    assert block["failures"]["count"] == 0
    assert block["accuracy"]["personalized"]["mean"] is not None
    cloud_up = sum(r["bytes"]["cloud-edge"]["up"] for r in block["rounds"])  # rounds 1.., not the setup
    assert (cloud_up > 0) == (name != "local")  # round 2 is a cloud round for the averaging baselines


@pytest.mark.parametrize("name", ["acme", "fedavg_header", "fedper"])
def test_devices_with_different_header_architectures_are_never_mixed(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    import dataclasses

    from acme_flwr.packages import build_header

    flat, cfg, deployment, topo = setup
    low = deployment.packages["low"]
    spec = {**low.header_spec, "channels": 4}  # class "low" (devices 0 and 3) gets a narrower header
    packages = {**deployment.packages, "low": dataclasses.replace(low, header=build_header(spec), header_spec=spec)}
    hetero = dataclasses.replace(deployment, packages=packages)
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy(name, cfg, topo, hetero, recorder)
    strategy.start(grid=InProcessGrid(acme_client_app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=2)
    block = strategy.finalize()
    assert block["failures"]["count"] == 0
    assert len(strategy.by_header_group(range(4))) == 2
    if name == "acme":
        assert {p: v.size for p, v in strategy.mixed.items()} == {0: 16, 1: 32, 2: 32, 3: 16}
    else:  # one model per (edge, header architecture): edge 0 = {0: narrow, 2: wide}, edge 1 = {1: wide, 3: narrow}
        assert len(strategy.edge_models) == 4


def _corrupt(kind: str):  # noqa: ANN202
    def intercept(msg: Message, node: int) -> Message | None:
        if msg.metadata.message_type != P.TRAIN or node != 1007:
            return None
        if kind == "error":
            return Message(Error(code=1, reason="device crashed"), reply_to=msg)
        vec = {"nan": np.full(32, np.nan, np.float32), "shape": np.ones(7, np.float32),
               "dtype": np.ones(32, np.int64)}[kind]
        return Message(RecordDict({P.IMPORTANCE: ArrayRecord({"v": Array(vec)}),
                                   P.METRICS: MetricRecord({P.NUM_EXAMPLES: 10})}), reply_to=msg)
    return intercept


@pytest.mark.parametrize("kind", ["error", "nan", "shape", "dtype"])
def test_bad_device_reply_is_recorded_and_never_reaches_edge_state(kind: str, setup, tmp_path) -> None:  # noqa: ANN001
    strategy, block, _ = _run("acme", setup, tmp_path, intercept=_corrupt(kind))
    reasons = [f for f in block["failures"]["reasons"] if f["phase"] == "train"]
    assert len(reasons) == 2 and all(f["node"] == "1" for f in reasons)  # device 1 (node 1007), both rounds
    assert all(np.isfinite(v).all() and v.shape == (strategy.num_gates(p),) for p, v in strategy.mixed.items())
    assert len(block["accuracy"]["personalized"]["per_device"]) == 4  # the round completed for everyone


def test_a_device_that_times_out_is_a_failure_and_the_round_completes(setup, tmp_path) -> None:  # noqa: ANN001
    def lose_device_2_in_round_1(msg: Message, node: int) -> object:
        if msg.metadata.message_type != P.TRAIN or node != 1014:
            return None
        return DROP if msg.content[P.CONFIG]["server-round"] == 1 else None

    strategy, block, _ = _run("acme", setup, tmp_path, intercept=lose_device_2_in_round_1)
    assert [(f["round"], f["node"], f["reason"]) for f in block["failures"]["reasons"]] == [
        (1, "2", "no reply (timeout or lost)")]
    assert block["rounds"][0]["train"]["device"].keys() == {"0", "1", "3"}
    assert block["rounds"][1]["train"]["device"].keys() == {"0", "1", "2", "3"}  # back in round 2


# ---------------------------------------------------------------------------------------------- drop-in mode
def _quickstart_app() -> ClientApp:
    """A Flower-quickstart-style ClientApp that knows nothing about ACME (standard arrays/metrics contract)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        state = msg.content["arrays"].to_torch_state_dict()
        pid = int(context.node_config["partition-id"])
        new = {k: v + (pid + 1) for k, v in state.items()}
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": 10 * (pid + 1), "train_loss": 1.0})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        w = float(msg.content["arrays"].to_torch_state_dict()["w"].mean())
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "test-acc": 0.5, "w": w})}),
                       reply_to=msg)

    return app


def test_drop_in_acme_strategy_runs_hierarchical_fedavg_on_a_plain_flower_app(tmp_path) -> None:  # noqa: ANN001
    topo = Topology(num_devices=4, num_edges=2, edge_rounds_per_cloud=2)
    strategy = AcmeStrategy(topology=topo)  # no deployment: nothing ACME-specific is needed for plain clients
    grid = InProcessGrid(_quickstart_app(), 4)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": torch.zeros(3)}), num_rounds=2)
    block = strategy.finalize()
    assert strategy.drop_in and block["mode"].startswith("drop-in")
    assert block["failures"]["count"] == 0
    # device p adds p+1 and reports 10(p+1) examples. Round 1: edge 0 = devices {0,2} -> (10*1 + 30*3)/40 = 2.5;
    # edge 1 = {1,3} -> (20*2 + 40*4)/60 = 10/3. Round 2 adds the same again (5 and 20/3), then the cloud round
    # averages the edges weighted by their examples (40 vs 60).
    w = result.arrays.to_torch_state_dict()["w"]
    expected = 0.4 * 5.0 + 0.6 * (20 / 3)
    assert torch.allclose(w, torch.full((3,), expected))
    assert block["bytes"]["edge-device"]["up"] > 0 and block["bytes"]["cloud-edge"]["down"] > 0


def test_hierarchical_fedavg_rejects_mismatched_arrays(tmp_path) -> None:  # noqa: ANN001
    app = _quickstart_app()

    def intercept(msg: Message, node: int) -> Message | None:
        if msg.metadata.message_type == "train" and node == 1000:
            return Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(5)}),
                                       "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
        return None

    strategy = HierarchicalFedAvg(topology=Topology(4, 2, edge_rounds_per_cloud=1))
    strategy.start(grid=InProcessGrid(app, 4, intercept=intercept), initial_arrays=ArrayRecord({"w": torch.zeros(3)}),
                   num_rounds=1)
    block = strategy.finalize()
    assert block["failures"]["count"] == 1 and "shape (5,)" in block["failures"]["reasons"][0]["reason"]


def test_resume_reproduces_the_uninterrupted_run(setup, tmp_path) -> None:  # noqa: ANN001
    flat, cfg, deployment, topo = setup

    def run(out, rounds: int, resume: bool = False):  # noqa: ANN001, ANN202
        recorder = RunRecorder(out, cfg.to_dict(), cfg.run.seed, resume=resume)
        strategy = build_strategy("acme", cfg, topo, deployment, recorder)
        done = strategy.restore(out / "checkpoints" / "acme.pkl") if resume else 0
        grid = InProcessGrid(acme_client_app, 4, {**flat, "run.out_dir": str(out)})  # fresh device contexts
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds - done)
        return strategy.finalize(), recorder

    full, full_rec = run(tmp_path / "full", 3)
    run(tmp_path / "cut", 2)  # the run stops after round 2 ...
    resumed, resumed_rec = run(tmp_path / "cut", 3, resume=True)  # ... and a new run continues it
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["bytes"]["total"] == full["bytes"]["total"] and resumed["resume_setup_bytes"] > 0
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    timings = {"wall_time", "train-time-s", "train-compute-s"}  # the only fields allowed to differ

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in timings} for r in rows]

    assert strip(resumed_rec.rows) == strip(full_rec.rows)
    assert len((tmp_path / "cut" / "rounds.jsonl").read_text().splitlines()) == len(full_rec.rows)


def test_resume_refuses_to_restore_another_strategy(setup, tmp_path) -> None:  # noqa: ANN001
    flat, cfg, deployment, topo = setup
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy("local", cfg, topo, deployment, recorder)
    strategy.start(grid=InProcessGrid(acme_client_app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=1)
    other = build_strategy("acme", cfg, topo, deployment, recorder)
    with pytest.raises(ValueError, match="belongs to strategy 'local'"):
        other.restore(tmp_path / "checkpoints" / "local.pkl")


def test_resume_with_a_changed_config_is_refused(tmp_path) -> None:  # noqa: ANN001
    from acme_flwr.config import ConfigError
    from acme_flwr.strategies.server_app import check_resumable

    check_resumable(AcmeConfig(), tmp_path)
    with pytest.raises(ConfigError, match=r"different values of \['partition.alpha'\]"):
        check_resumable(AcmeConfig.from_flat({"run.resume": True, "partition.alpha": 0.1}), tmp_path)
    check_resumable(AcmeConfig.from_flat({"run.resume": True}), tmp_path)  # same config: fine


# ---------------------------------------------------------------------------------------------- fairness (issue 10)
def _recorded(name: str, setup, tmp_path, topo: Topology, rounds: int = 2, intercept=None):  # noqa: ANN001, ANN202
    flat, cfg, deployment, _ = setup
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy(name, cfg, topo, deployment, recorder)
    grid = RecordingGrid(acme_client_app, 4, flat, intercept)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds)
    return strategy, strategy.finalize(), grid


def _round_of(msg: Message) -> int:
    return int(msg.content[P.CONFIG]["server-round"])


def test_mix_is_the_renormalised_similarity_row_over_the_devices_package_group(setup, tmp_path) -> None:  # noqa: ANN001
    """One edge, two packages ("low" = devices 0, 3; "mid"/"high" share one = devices 1, 2): a device's mix is
    Σ_j W_kj Î_j over its own group only, with the row renormalised over the devices that replied; a device that
    did not train in a round (device 1, lost in round 2) gets no mix and does not prune again."""
    def lose_device_1_in_round_2(msg: Message, node: int) -> object:
        return DROP if msg.metadata.message_type == P.TRAIN and node == 1007 and _round_of(msg) == 2 else None

    strategy, block, grid = _recorded("acme", setup, tmp_path, Topology(4, 1, "round_robin", 1),
                                      intercept=lose_device_1_in_round_2)
    groups = block["mixing_groups"]["0"]
    assert sorted(groups.values()) == [[0, 3], [1, 2]]
    assert {len(s["devices"]) for s in block["similarity"].values()} == {2}  # similarity per group, not per edge
    group_of = {pid: tuple(pids) for pids in groups.values() for pid in pids}
    checked = 0
    for rnd in (1, 2):
        imps = {strategy.pid_of[r.metadata.src_node_id]: P.vector_from_record(r.content[P.IMPORTANCE])
                for q, r in grid.replies if q.metadata.message_type == P.TRAIN and _round_of(q) == rnd}
        for msg in grid.sent:
            if msg.metadata.message_type != P.EVALUATE or _round_of(msg) != rnd:
                continue
            k = strategy.pid_of[msg.metadata.dst_node_id]
            if k not in imps:  # lost this round: no (stale) mix
                assert P.IMPORTANCE not in msg.content.array_records
                checked += 1
                continue
            row = {j: strategy.edge_weights[0][k][j] for j in group_of[k] if j in imps}
            total = sum(row.values())
            expected = sum(w / total * imps[j].astype(np.float64) for j, w in row.items())
            np.testing.assert_allclose(P.vector_from_record(msg.content[P.IMPORTANCE]), expected, rtol=1e-6)
            checked += 1
    assert checked == 8
    assert (2, "1") in {(f["round"], f["node"]) for f in block["failures"]["reasons"]}


@pytest.mark.parametrize("name", ["acme", "fedavg_header", "fedper", "local"])
def test_every_message_reaches_the_ledger_once(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    from acme_flwr.comm import message_bytes

    strategy, block, grid = _recorded(name, setup, tmp_path, Topology(4, 2, "round_robin", 2))
    down = sum(message_bytes(m.content) for m in grid.sent)
    up = sum(message_bytes(r.content) for _, r in grid.replies if not r.has_error())
    assert block["bytes"]["edge-device"] == {"down": down, "up": up}
    per_device = block["bytes"]["per_device"]
    for pid in range(4):
        node = strategy.node_of[pid]
        assert per_device[str(pid)]["down"] == sum(message_bytes(m.content) for m in grid.sent
                                                   if m.metadata.dst_node_id == node)


def test_fedavg_header_sends_each_edge_model_once(setup, tmp_path) -> None:  # noqa: ANN001
    """The evaluate message of round r carries round r's edge model; the device trains from it in round r + 1, so the
    train message of round r + 1 carries no header (before the fix it was sent twice: 2x the downlink)."""
    strategy, block, grid = _recorded("fedavg_header", setup, tmp_path, Topology(4, 2, "round_robin", 2), rounds=3)
    headers = [(m.metadata.message_type, _round_of(m)) for m in grid.sent
               if m.metadata.message_type in (P.TRAIN, P.EVALUATE) and P.HEADER in m.content.array_records]
    assert sorted(set(headers)) == [(P.EVALUATE, 1), (P.EVALUATE, 2), (P.EVALUATE, 3)]
    assert len(headers) == 3 * 4
    for rnd in (2, 3):  # per device and round, down ≈ up (one header each way)
        r = block["rounds"][rnd - 1]["bytes"]["edge-device"]
        assert 0.8 < r["down"] / r["up"] < 1.25


@pytest.mark.parametrize("name", ["fedavg_header", "fedper"])
def test_baselines_average_exactly_what_their_devices_sent(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """Edge model = example-weighted mean of its group's replies; at a cloud round, the edges' models of a group are
    averaged again weighted by the edges' examples (checked by hand against the replies of the last round)."""
    strategy, block, grid = _recorded(name, setup, tmp_path, Topology(4, 2, "round_robin", 2), rounds=2)
    last = [(strategy.pid_of[r.metadata.src_node_id], r.content) for q, r in grid.replies
            if q.metadata.message_type == P.TRAIN and _round_of(q) == 2]
    assert len(last) == 4
    edge_avg: dict[tuple[int, str], tuple[dict[str, np.ndarray], float]] = {}
    for (edge, group) in {(strategy.topology.edge_of(p), strategy.header_group(p)) for p, _ in last}:
        mine = [(c[P.HEADER], float(c[P.METRICS][P.NUM_EXAMPLES])) for p, c in last
                if strategy.topology.edge_of(p) == edge and strategy.header_group(p) == group]
        n = sum(w for _, w in mine)
        keys = list(mine[0][0].keys())
        if name == "fedper":
            assert not any(k.startswith("final_fc.") for k in keys)  # FedPer keeps the classifier local
        edge_avg[(edge, group)] = ({k: sum(r[k].numpy().astype(np.float64) * w / n for r, w in mine)
                                    for k in keys if mine[0][0][k].numpy().dtype.kind == "f"}, n)
    for group in {g for _, g in edge_avg}:
        parts = [v for (e, g), v in edge_avg.items() if g == group]
        n = sum(w for _, w in parts)
        expected = {k: sum(m[k] * w / n for m, w in parts) for k in parts[0][0]}
        for (_, g), model in strategy.edge_models.items():
            if g != group:
                continue
            for k, v in expected.items():
                np.testing.assert_allclose(model[k].numpy(), v, rtol=1e-5, atol=1e-6)


def test_local_sends_no_weights(setup, tmp_path) -> None:  # noqa: ANN001
    strategy, block, grid = _recorded("local", setup, tmp_path, Topology(4, 2, "round_robin", 2))
    assert not strategy.edge_models
    assert not [m for m in grid.sent if m.metadata.message_type in (P.TRAIN, P.EVALUATE)
                and P.HEADER in m.content.array_records]
    assert not [r for _, r in grid.replies if not r.has_error() and P.HEADER in r.content.array_records]
    assert all(r["bytes"]["cloud-edge"]["up"] == 0 for r in block["rounds"])  # after discovery nothing goes up


def test_acme_sends_nothing_to_the_cloud_after_setup(setup, tmp_path) -> None:  # noqa: ANN001
    _, block, _ = _recorded("acme", setup, tmp_path, Topology(4, 2, "round_robin", 1))
    assert all(r["bytes"]["cloud-edge"] == {"up": 0, "down": 0} for r in block["rounds"])


def test_feature_statistics_use_the_configured_rows_per_device(setup, tmp_path) -> None:  # noqa: ANN001
    flat, cfg, deployment, topo = setup
    sizes = {pid: len(federated_data(cfg, *input_shape(cfg)).device(pid).train) for pid in range(4)}
    k = sorted(sizes.values())[1]  # more than the smallest device has, fewer than the others
    strategy = AcmeStrategy(topology=topo, deployment=deployment, feature_samples=k)
    strategy.start(grid=InProcessGrid(acme_client_app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=1)
    assert {p: f.shape[0] for p, f in strategy.features.items()} == {p: min(k, n) for p, n in sizes.items()}
    short = strategy.finalize()["feature_samples_short"]
    assert short == {"requested": k, "devices": {str(p): n for p, n in sizes.items() if n < k}}


def test_drop_in_never_selects_a_round_on_test_accuracy(tmp_path) -> None:  # noqa: ANN001
    strategy = AcmeStrategy(topology=Topology(num_devices=4, num_edges=1))
    strategy.start(grid=InProcessGrid(_quickstart_app(), 4), initial_arrays=ArrayRecord({"w": torch.zeros(3)}),
                   num_rounds=3)
    acc = strategy.finalize()["accuracy"]
    assert acc["chosen_round"] == 3 and acc["chosen_by"].startswith("final round")


@pytest.mark.parametrize(("name", "variant", "distance"), [
    ("acme_wo_pruning", "wo_pruning", "emd"), ("acme_pruning_alone", "pruning_alone", "emd"),
    ("acme_pruning_avg", "pruning_avg", "emd"), ("acme_pruning_per_emd", "pruning_per", "emd"),
    ("acme_pruning_per_js", "pruning_per", "js")])
def test_acme_ablation_names_fix_their_variant(name: str, variant: str, distance: str, setup, tmp_path) -> None:  # noqa: ANN001
    """The ablation runs beside ``acme`` in one run: each name fixes its variant and distance whatever the config
    says, records under its own name (its own device state tag), and ``acme`` still follows the config."""
    _, cfg, deployment, topology = setup
    recorder = RunRecorder(tmp_path, cfg.to_dict(), 0)
    strategy = build_strategy(name, cfg, topology, deployment, recorder)
    assert isinstance(strategy, AcmeStrategy)
    assert (strategy.variant_name, strategy.distance, strategy.tag) == (variant, distance, name)
    plain = build_strategy("acme", cfg, topology, deployment, recorder)
    assert (plain.variant_name, plain.distance) == (cfg.strategy.variant, cfg.strategy.distance)


# ---------------------------------------------------------------------------------------------- rounds.jsonl per phase
def _row_sums(rows: list[dict], name: str) -> tuple[dict, dict]:
    """Per tier and direction: the sum of the cloud rows' bytes, and of the device rows' edge-device bytes."""
    cloud = {t: {d: sum(r.get(f"bytes_{t}_{d}", 0) for r in rows if r["strategy"] == name and r["tier"] == "cloud")
                 for d in ("up", "down")} for t in ("cloud-edge", "edge-device")}
    device = {d: sum(r[f"bytes_{d}"] for r in rows if r["strategy"] == name and r["tier"] == "device")
              for d in ("up", "down")}
    return cloud, device


@pytest.mark.parametrize("name", ["acme", "fedavg_header"])
def test_rounds_jsonl_rows_are_per_phase_and_sum_to_the_summary_totals(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    import json

    strategy, block, _ = _run(name, setup, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    cloud, device = _row_sums(rows, name)
    assert cloud == {t: block["bytes"][t] for t in ("cloud-edge", "edge-device")}
    assert device == block["bytes"]["edge-device"]
    # round 0 holds discovery and setup (most of the downlink); an evaluate row holds only the evaluate phase's bytes
    setup_rows = [r for r in rows if r["tier"] == "cloud" and r["round"] == 0]
    assert {r["phase"] for r in setup_rows} >= {"discover", "setup"}
    assert sum(r["bytes_edge-device_down"] for r in setup_rows) > block["bytes"]["edge-device"]["down"] / 2
    for rnd in (1, 2):
        train = next(r for r in rows if r["tier"] == "cloud" and r["round"] == rnd and r["phase"] == "train")
        evaluate = next(r for r in rows if r["tier"] == "cloud" and r["round"] == rnd and r["phase"] == "evaluate")
        total = strategy.ledger.round_totals(rnd)
        for t in ("cloud-edge", "edge-device"):
            for d in ("up", "down"):
                assert train[f"bytes_{t}_{d}"] + evaluate[f"bytes_{t}_{d}"] == total[t][d]
        ups = [r["bytes_up"] for r in rows if r["tier"] == "device" and r["round"] == rnd and r["phase"] == "evaluate"]
        assert ups and max(ups) < 2000  # an evaluate reply is metrics only, not the round's running total


# ------------------------------------------------------------------------------------------ full ACME in a user's app
def test_start_train_config_reaches_the_devices_and_result_holds_fedavgs_metrics(setup, tmp_path) -> None:  # noqa: ANN001

    from flwr.app import ConfigRecord

    flat, cfg, deployment, topo = setup
    strategy = AcmeStrategy.from_config(cfg, topology=topo, deployment=deployment)
    grid = InProcessGrid(acme_client_app, 4, flat)
    with flower_log_lines() as lines:  # no initial_arrays: personalization has no global model
        result = strategy.start(grid=grid, num_rounds=2, train_config=ConfigRecord({"lr": 0.05, "my-key": 3}))
    train = [dict(m.content[P.CONFIG]) for m in grid.sent if m.metadata.message_type == P.TRAIN]
    evaluate = [dict(m.content[P.CONFIG]) for m in grid.sent if m.metadata.message_type == P.EVALUATE]
    assert len(train) == 8 and all(c["lr"] == 0.05 and c["my-key"] == 3 for c in train)
    assert all(c["lr"] == cfg.strategy.lr and "my-key" not in c for c in evaluate)  # evaluate_config was not given
    assert sorted(result.train_metrics_clientapp) == sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert "train-loss" in result.train_metrics_clientapp[2] and "test-acc" in result.evaluate_metrics_clientapp[2]
    assert len(result.arrays) == 0 and any("personalization has no global model" in line for line in lines)
    assert sum(line.startswith("\t└──> Aggregated MetricRecord") for line in lines) == 4
    with pytest.raises(ValueError, match=r"sets \['tag'\], which the strategy sets itself"):
        AcmeStrategy.from_config(cfg, topology=topo, deployment=deployment).start(
            grid=InProcessGrid(acme_client_app, 4, flat), num_rounds=1, train_config=ConfigRecord({"tag": "x"}))


def test_a_device_rejected_at_discovery_is_expected_named_by_partition_id_and_reported_by_the_strategy(
        setup, tmp_path) -> None:  # noqa: ANN001

    from flwr.app import ConfigRecord

    flat, cfg, deployment, _ = setup

    def bad_class(msg: Message, node: int):  # noqa: ANN202 - partition 3 claims a device class the cloud never built
        if msg.metadata.message_type != P.PROFILE or node != 1000 + 7 * 3:
            return None
        reply = acme_client_app(msg, grid.contexts[node])
        prof = dict(reply.content[P.PROFILE_REC])
        return Message(RecordDict({P.PROFILE_REC: ConfigRecord({**prof, "device-class": "huge"})}), reply_to=msg)

    grid = InProcessGrid(acme_client_app, 4, flat, bad_class)
    strategy = AcmeStrategy.from_config(cfg, topology=Topology(None, 2), deployment=deployment)
    with flower_log_lines() as lines:
        strategy.start(grid=grid, num_rounds=1)
    block = strategy.finalize()
    assert block["devices"] == {"expected": 4, "reported": 3} and block["degraded"] is True
    assert [(f["node"], f["phase"]) for f in block["failures"]["reasons"]] == [("3", "discover")]
    assert "rejected profile: device-class 'huge'" in block["lost_devices"][0]["reason"]
    assert any(line.startswith("configure_train: Sampled 3 nodes (out of 3) | 4 expected, 1 lost before this round")
               for line in lines)
    degraded = [line for line in lines if line.startswith("DEGRADED: acme reports on 3/4 devices; lost 3 (round 0")]
    assert len(degraded) == 1
