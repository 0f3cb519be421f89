"""FedRep, FedBABU and Ditto on the ACME harness (issue 11): aggregation by hand on 3 devices, the device-side rules,
in-process runs, header groups kept apart, and the frozen-feature cache against recomputing."""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message
from flwr.clientapp import ClientApp

from acme_flwr import protocol as P
from acme_flwr.clients import client_app as ca
from acme_flwr.clients.handlers import AcmeClient, process_feature_cache
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.device.headers import split_header_params
from acme_flwr.device.training import FeatureCache, TrainHParams, backbone_grids, train_header
from acme_flwr.packages import build_header, build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import STRATEGIES, Ditto, FedBABU, FedRep, build_strategy
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .inprocess import RecordingGrid

BASELINES = ["fedrep", "fedbabu", "ditto"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    flat = {**SMOKE, "strategy.fedrep_head_epochs": 2, "strategy.fedbabu_finetune_epochs": 2}
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)
    return flat, cfg, deployment, data


def _run(name: str, setup, tmp_path, topo: Topology, nodes: int, deployment=None, app: ClientApp | None = None,  # noqa: ANN001
         rounds: int = 2, grid: RecordingGrid | None = None):  # noqa: ANN202
    flat, cfg, default, _ = setup
    recorder = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy(name, cfg, topo, deployment or default, recorder)
    grid = grid or RecordingGrid(app or ca.app, nodes, flat)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds)
    return strategy, strategy.finalize(), grid


def _one_package(deployment):  # noqa: ANN001, ANN202
    """Every device class gets the same package: 3 devices on one edge form one mixing group of 3."""
    pkg = deployment.packages["mid"]
    return dataclasses.replace(deployment, packages={c: pkg for c in deployment.packages})


def _round(msg: Message) -> int:
    return int(msg.content[P.CONFIG]["server-round"])


def test_registered_with_their_papers_hyper_parameters(setup, tmp_path) -> None:  # noqa: ANN001
    assert {"fedrep", "fedbabu", "ditto"} <= set(STRATEGIES.names())
    s = AcmeConfig().strategy
    assert (s.fedrep_head_epochs, s.fedrep_body_epochs, s.fedbabu_finetune_epochs) == (10, 1, 5)
    assert 0.01 <= s.ditto_lambda <= 2 and s.ditto_personal_epochs == 0  # 0: the local epochs
    _, cfg, deployment, _ = setup
    topo = Topology(3, 1, "round_robin", 1)
    rec = RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed)
    fedrep = build_strategy("fedrep", cfg, topo, deployment, rec)
    assert isinstance(fedrep, FedRep) and (fedrep.head_epochs, fedrep.body_epochs) == (2, 1)  # from the config
    assert isinstance(build_strategy("fedbabu", cfg, topo, deployment, rec), FedBABU)
    ditto = build_strategy("ditto", cfg, topo, deployment, rec)
    assert isinstance(ditto, Ditto) and ditto.lam == cfg.strategy.ditto_lambda


@pytest.mark.parametrize("name", BASELINES)
def test_edge_model_is_the_hand_computed_average_of_three_devices(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """3 devices, 1 edge, one package: the edge model after round 2 is Σ n_k x_k / Σ n_k over the three replies of
    round 2 (body only for FedRep/FedBABU, the whole header w for Ditto), and it is what the evaluate messages of
    round 2 carried down. One edge, a cloud round every round: the cloud's average of one edge is that edge's model."""
    _, _, deployment, _ = setup
    strategy, block, grid = _run(name, setup, tmp_path, Topology(3, 1, "round_robin", 1), 3,
                                 deployment=_one_package(deployment))
    assert block["failures"]["count"] == 0
    replies = {strategy.pid_of[r.metadata.src_node_id]: r.content for q, r in grid.replies
               if q.metadata.message_type == P.TRAIN and _round(q) == 2}
    assert sorted(replies) == [0, 1, 2]
    header = deployment.packages["mid"].header
    body, head = split_header_params(header)
    keys = list(replies[0][P.HEADER].keys())
    assert keys == (list(header.state_dict()) if name == "ditto" else body)
    n = {p: float(c[P.METRICS][P.NUM_EXAMPLES]) for p, c in replies.items()}
    total = n[0] + n[1] + n[2]
    (model,) = strategy.edge_models.values()
    checked = 0
    for k in keys:
        if replies[0][P.HEADER][k].numpy().dtype.kind != "f":
            continue
        x = [replies[p][P.HEADER][k].numpy().astype(np.float64) for p in range(3)]
        expected = (n[0] * x[0] + n[1] * x[1] + n[2] * x[2]) / total
        np.testing.assert_allclose(model[k].numpy(), expected, rtol=1e-5, atol=1e-7)
        checked += 1
    assert checked > 0
    for msg in grid.sent:  # the averaged model goes down in the evaluate messages of round 2
        if msg.metadata.message_type == P.EVALUATE and _round(msg) == 2:
            for k in keys:
                np.testing.assert_array_equal(msg.content[P.HEADER][k].numpy(), model[k].numpy())
    for msg in grid.sent:  # the baselines never send importance, so nothing is pruned
        assert P.IMPORTANCE not in msg.content.array_records
    for q, r in grid.replies:
        if q.metadata.message_type == P.EVALUATE:
            assert r.content[P.METRICS]["pruned-gates"] == 0


def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen(setup) -> None:  # noqa: ANN001
    _, _, deployment, data = setup
    pkg = deployment.packages["mid"]
    split = data.device(1).train
    grids = backbone_grids(pkg.backbone, split.x)
    body, head = split_header_params(pkg.header)
    hp = TrainHParams(batch_size=16)
    for names, moved, still in ((head, head, body), (body, body, head)):
        h = copy.deepcopy(pkg.header)
        before = {k: v.clone() for k, v in h.state_dict().items()}
        train_header(None, h, split, hp, 0, grids=grids, phases=[(names, 1)], importance=False)
        after = h.state_dict()
        params = {n for n, _ in h.named_parameters()}
        assert all(torch.equal(before[k], after[k]) for k in still if k in params)
        assert any(not torch.equal(before[k], after[k]) for k in moved if k in params)


def test_fedbabu_head_stays_at_its_initialisation_and_evaluation_fine_tunes_it(setup, tmp_path) -> None:  # noqa: ANN001
    strategy, block, grid = _run("fedbabu", setup, tmp_path, Topology(4, 2, "round_robin", 2), 4)
    assert block["failures"]["count"] == 0
    for pid in range(4):
        tag = strategy.tag
        state = grid.contexts[strategy.node_of[pid]].state[f"{tag}.header"]
        init = strategy.package_of(pid).header.state_dict()
        _, head = split_header_params(strategy.package_of(pid).header)
        for k in head:
            np.testing.assert_array_equal(state[k].numpy().reshape(init[k].shape), init[k].numpy())
    evals = [r.content[P.METRICS] for q, r in grid.replies if q.metadata.message_type == P.EVALUATE]
    assert evals and all("global-test-acc" in m and "test-acc" in m for m in evals)  # both reported
    assert all(m["test-loss"] != m["global-test-loss"] for m in evals)  # the fine-tuned head is another model


def test_ditto_personal_step_is_sgd_on_loss_plus_proximal_term(setup) -> None:  # noqa: ANN001
    """One full-batch SGD step (no momentum, no weight decay): v' = v − lr·(∇f(v) + λ(v − w))."""
    _, _, deployment, data = setup
    pkg = deployment.packages["mid"]
    split = data.device(2).train
    grids = backbone_grids(pkg.backbone, split.x)
    lam, lr = 0.7, 0.05
    v = copy.deepcopy(pkg.header)
    for m in v.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    with torch.no_grad():
        for p in v.parameters():
            p.add_(0.01 * torch.randn_like(p))
    w = {n: p.detach().clone() for n, p in pkg.header.named_parameters()}
    ref = copy.deepcopy(v)
    ref.train()
    loss = torch.nn.functional.cross_entropy(ref(grids), split.y)
    loss.backward()
    hp = TrainHParams(lr=lr, momentum=0.0, weight_decay=0.0, batch_size=len(split))
    train_header(None, v, split, hp, 0, grids=grids, proximal=(lam, w), importance=False)
    gates = {id(g.weight) for g in ref.gate_layers()}
    for (name, p_new), p_ref in zip(v.named_parameters(), ref.parameters(), strict=True):
        if id(p_ref) in gates or p_ref.grad is None:
            continue
        expected = p_ref.detach() - lr * (p_ref.grad + lam * (p_ref.detach() - w[name]))
        torch.testing.assert_close(p_new.detach(), expected, rtol=1e-4, atol=1e-6)


def test_ditto_keeps_a_personal_header_and_evaluates_it(setup, tmp_path) -> None:  # noqa: ANN001
    strategy, block, grid = _run("ditto", setup, tmp_path, Topology(4, 2, "round_robin", 2), 4)
    assert block["failures"]["count"] == 0
    for pid in range(4):
        state = grid.contexts[strategy.node_of[pid]].state
        personal, shared = state[f"{strategy.tag}.personal"], state[f"{strategy.tag}.header"]
        assert list(personal.keys()) == list(shared.keys())
        assert any(not np.array_equal(personal[k].numpy(), shared[k].numpy()) for k in shared.keys())
    for _, r in grid.replies:  # v never leaves the device: the replies carry w (one header) only
        assert set(r.content.array_records) <= {P.HEADER}
    evals = [r.content[P.METRICS] for q, r in grid.replies if q.metadata.message_type == P.EVALUATE]
    assert all("global-test-acc" in m for m in evals)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_runs_in_process_with_no_failures_and_keeps_header_groups_apart(name: str, setup,  # noqa: ANN001
                                                                                 tmp_path) -> None:
    _, _, deployment, _ = setup
    low = deployment.packages["low"]
    spec = {**low.header_spec, "channels": 4}  # class "low" (devices 0 and 3) gets a narrower header
    hetero = dataclasses.replace(deployment, packages={
        **deployment.packages, "low": dataclasses.replace(low, header=build_header(spec), header_spec=spec)})
    strategy, block, _ = _run(name, setup, tmp_path, Topology(4, 2, "round_robin", 2), 4, deployment=hetero)
    assert block["failures"]["count"] == 0
    assert block["accuracy"]["personalized"]["mean"] is not None
    assert len(strategy.edge_models) == 4  # (edge, header group): never averaged across packages
    cloud_up = sum(r["bytes"]["cloud-edge"]["up"] for r in block["rounds"])
    assert cloud_up > 0  # round 2 is a cloud round


# ---------------------------------------------------------------------------------------------- feature cache
def _app(cache: FeatureCache | None) -> tuple[ClientApp, AcmeClient]:
    client = AcmeClient(ca.device_data, ca.profile, ca.generic_test, feature_cache=cache)
    return client.register(ClientApp()), client


@pytest.mark.parametrize("name", ["fedavg_header", "ditto", "acme"])
def test_feature_cache_gives_the_same_updates_as_recomputing(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """Same run with the grids cached and recomputed on every message: every reply is bit-identical."""
    cached_app, client = _app(FeatureCache())
    plain_app, _ = _app(None)
    topo = Topology(4, 2, "round_robin", 2)
    _, a, ga = _run(name, setup, tmp_path / "cached", topo, 4, app=cached_app, rounds=3)
    _, b, gb = _run(name, setup, tmp_path / "plain", topo, 4, app=plain_app, rounds=3)
    assert a["failures"]["count"] == b["failures"]["count"] == 0
    assert client.feature_cache.hits > 0 and len(client.feature_cache) > 0
    assert len(ga.replies) == len(gb.replies)
    timings = {"train-time-s", "train-compute-s"}
    for (_, ra), (_, rb) in zip(ga.replies, gb.replies, strict=True):
        for key, rec in ra.content.array_records.items():
            other = rb.content[key]
            for k in rec:
                np.testing.assert_array_equal(rec[k].numpy(), other[k].numpy())
        for key, rec in ra.content.metric_records.items():
            assert {k: v for k, v in rec.items() if k not in timings} == \
                   {k: v for k, v in rb.content[key].items() if k not in timings}


def test_feature_cache_survives_the_app_being_pickled_with_every_message(setup, tmp_path) -> None:  # noqa: ANN001
    """Flower's Ray backend unpickles a fresh copy of the ClientApp for every message. The default cache belongs to
    the worker process, so each (device, split) is computed once over two strategies and three rounds, and hit after;
    the devices' contexts keep one copy of their sub-backbone for both strategies."""
    flat = setup[0]
    cache = process_feature_cache()
    cache.clear()  # earlier tests in this process ran the same run id on the same data
    hits, misses, entries = cache.hits, cache.misses, len(cache)
    grid = RecordingGrid(ca.app, 4, flat, pickled=True)
    topo = Topology(4, 2, "round_robin", 2)
    for name in ("acme", "fedavg_header"):
        _, block, _ = _run(name, setup, tmp_path / name, topo, 4, rounds=3, grid=grid)
        assert block["failures"]["count"] == 0
    new = cache.misses - misses
    assert new == len(cache) - entries > 0  # every miss is a new (device, split, package) entry, never recomputed
    assert cache.hits - hits > 5 * new  # 2 strategies x 3 rounds x (train + val + test + generic) per device
    for context in grid.contexts.values():
        assert len([k for k in context.state if k.startswith("acme.backbone.")]) == 1


def test_feature_cache_is_bounded_and_keyed() -> None:
    cache = FeatureCache(max_entries=2, max_bytes=1 << 20)
    calls: list[int] = []

    def make(i: int):  # noqa: ANN202
        return lambda: calls.append(i) or torch.full((4,), float(i))

    for i in (0, 1, 0, 2, 1):  # 0 hit; 2 evicts 1 (least recently used); 1 recomputed
        cache.get(("run", i), make(i))
    assert calls == [0, 1, 2, 1] and len(cache) == 2 and cache.hits == 1
    big = FeatureCache(max_entries=8, max_bytes=8)
    big.get("k", lambda: torch.zeros(16))  # larger than the bound: returned, not kept
    assert len(big) == 0
    off = FeatureCache(max_entries=0)
    off.get("k", lambda: torch.zeros(1))
    assert len(off) == 0


def test_feature_cache_shares_grids_between_processes_through_files(tmp_path, caplog) -> None:  # noqa: ANN001
    """Two caches on one shared directory stand for two Ray workers of one machine: what one computed the other
    reads (bit-identical) without computing; a damaged file is recomputed, and the directory stays in its bound."""
    shared = tmp_path / "grids"
    first, second = FeatureCache(shared_dir=shared), FeatureCache(shared_dir=shared)
    grids = torch.randn(5, 3, 2, 2)
    first.get(("run", "train"), lambda: grids)
    assert len(list(shared.glob("*.pt"))) == 1 and not list(shared.glob("*.tmp"))

    def never() -> torch.Tensor:
        raise AssertionError("the other worker's grids were recomputed")

    got = second.get(("run", "train"), never)
    assert torch.equal(got, grids) and second.shared_hits == 1 and second.misses == 0
    assert second.get(("run", "train"), never) is got and second.hits == 1  # then from its own memory
    (path,) = shared.glob("*.pt")
    path.write_bytes(b"not a tensor")
    third = FeatureCache(shared_dir=shared)
    assert torch.equal(third.get(("run", "train"), lambda: grids + 1), grids + 1) and third.misses == 1
    small = FeatureCache(max_bytes=grids.numel() * 4 + 1, shared_dir=tmp_path / "small")
    small.get("a", lambda: grids)
    small.get("b", lambda: grids)  # would take the directory past max_bytes: kept in memory only
    assert len(list((tmp_path / "small").glob("*.pt"))) == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    lone = FeatureCache(shared_dir=blocked / "grids")  # cannot be created: warned once, then memory only
    with caplog.at_level(logging.WARNING, logger="acme_flwr.device.training"):
        for key in ("a", "b"):
            lone.shared_dir = blocked / "grids"  # the handlers set it on every message
            assert torch.equal(lone.get(key, lambda: grids), grids)
    # one record, however many handlers saw it (an earlier test's Flower logging set-up adds one)
    assert len({id(r) for r in caplog.records if "cannot share grids" in r.message}) == 1


def test_the_shared_feature_files_are_used_under_ray_and_removed_with_the_run(setup, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Inside Flower's Ray workers (``ray.is_initialized()``) the device's grids also go to ``shared_feature_dir``;
    a device alone (no Ray) writes none; the ServerApp's end of run removes the directory."""
    import types

    from acme_flwr.runtime import shared_feature_dir
    from acme_flwr.strategies import server_app

    run_dir = shared_feature_dir(1)  # InProcessGrid's run id
    shutil.rmtree(run_dir, ignore_errors=True)
    topo = Topology(4, 2, "round_robin", 2)
    _run("fedavg_header", setup, tmp_path / "alone", topo, 4, app=_app(FeatureCache())[0], rounds=1)
    assert not run_dir.exists()
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    _, block, _ = _run("fedavg_header", setup, tmp_path / "ray", topo, 4, app=_app(FeatureCache())[0], rounds=1)
    assert block["failures"]["count"] == 0 and len(list(run_dir.glob("*.pt"))) >= 4  # >= one train split per device
    monkeypatch.setattr(server_app, "_run", lambda grid, context: None)
    server_app.main(None, types.SimpleNamespace(run_id=1))
    assert not run_dir.exists()
