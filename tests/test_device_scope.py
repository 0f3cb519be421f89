"""The device training scope (``strategy.device_scope``): ``backbone+header`` fine-tunes the device's sub-backbone
with its header (everything but the gates), keeps it on the device only, never serves its grids from the cache, sends
not a byte more than ``header``, and checkpoints it; ``header`` leaves the received sub-backbone bit-identical."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from acme_flwr import protocol as P
from acme_flwr.clients import client_app as ca
from acme_flwr.clients.features import backbone_record, store_of
from acme_flwr.clients.handlers import AcmeClient
from acme_flwr.clients.state import DeviceState
from acme_flwr.cloud.elastic_vit import ElasticViT
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.device.headers import build_header, split_header_params
from acme_flwr.device.training import (
    DEVICE_SCOPES,
    FeatureCache,
    TrainHParams,
    backbone_grids,
    evaluate_header,
    train_header,
)
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import build_strategy
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .device_kit import ask, grid_for, package, setup_message
from .inprocess import RecordingGrid

BACKBONE = "backbone+header"
METHODS = ["acme", "fedavg_header", "fedper", "local", "fedrep", "fedbabu", "ditto"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    flat = {**SMOKE, "strategy.fedrep_head_epochs": 1, "strategy.fedbabu_finetune_epochs": 1}
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)
    return flat, deployment, data


def _run(name: str, scope: str, setup, tmp_path, app=None):  # noqa: ANN001, ANN202
    flat, deployment, _ = setup
    flat = {**flat, "strategy.device_scope": scope}
    cfg = AcmeConfig.from_flat(flat)
    recorder = RunRecorder(tmp_path / f"{name}-{scope.replace('+', '_')}", cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy(name, cfg, Topology(4, 2, "round_robin", 2), deployment, recorder)
    grid = RecordingGrid(app or ca.app, 4, flat)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    return strategy, strategy.finalize(), grid


def _received(strategy, pid: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {k: v.detach().cpu().numpy() for k, v in strategy.package_of(pid).backbone.state_dict().items()}


def _device_backbone(strategy, grid, pid: int) -> tuple[DeviceState, ElasticViT]:  # noqa: ANN001
    """The sub-backbone a device computes with: its tuned one if it has one, else the received one from its store."""
    context = grid.contexts[strategy.node_of[pid]]
    state = DeviceState.load(context, strategy.tag)
    backbone = ElasticViT.from_arch(json.loads(state.arch))
    P.load_arrays(backbone, state.tuned_backbone or backbone_record(store_of(context), state.backbone_fp))
    return state, backbone.eval()


@pytest.mark.parametrize("name", METHODS)
def test_backbone_scope_fine_tunes_the_sub_backbone_on_the_device_and_header_scope_keeps_it(
        name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """Every method alike: after two rounds each device's own sub-backbone differs from what it received (the model
    store still holds the received one unchanged); with ``header`` it is bit-identical and no tuned copy exists."""
    tuned, block, grid = _run(name, BACKBONE, setup, tmp_path)
    assert block["failures"]["count"] == 0
    for pid in range(4):
        context = grid.contexts[tuned.node_of[pid]]
        state = DeviceState.load(context, tuned.tag)
        received = _received(tuned, pid)
        assert state.tuned_backbone is not None and list(state.tuned_backbone.keys()) == list(received)
        moved = [k for k in received if not np.array_equal(state.tuned_backbone[k].numpy().reshape(received[k].shape),
                                                           received[k])]
        assert len(moved) > len(received) // 2, f"device {pid}: only {moved} changed"
        stored = store_of(context).get(state.backbone_fp)  # the shared store keeps what the device received
        assert all(np.array_equal(stored[k].reshape(received[k].shape), received[k]) for k in received)
    frozen, block, grid = _run(name, "header", setup, tmp_path)
    assert block["failures"]["count"] == 0
    for pid in range(4):
        context = grid.contexts[frozen.node_of[pid]]
        state = DeviceState.load(context, frozen.tag)
        assert state.tuned_backbone is None and f"{frozen.tag}.tuned_backbone" not in context.state
        stored = store_of(context).get(state.backbone_fp)
        received = _received(frozen, pid)
        assert all(np.array_equal(stored[k].reshape(received[k].shape), received[k]) for k in received)


@pytest.mark.parametrize("name", ["acme", "fedavg_header", "ditto"])
def test_backbone_scope_sends_exactly_the_bytes_of_the_header_scope(name: str, setup, tmp_path) -> None:  # noqa: ANN001
    """Per round, tier, direction and device, the serialized bytes are equal: the tuned backbone never travels."""
    header, hblock, hgrid = _run(name, "header", setup, tmp_path)
    tuned, tblock, tgrid = _run(name, BACKBONE, setup, tmp_path)
    assert hblock["failures"]["count"] == 0 and tblock["failures"]["count"] == 0
    assert header.ledger.total() > 0 and header.ledger.per_round == tuned.ledger.per_round
    assert dict(header.ledger.per_round_device) == dict(tuned.ledger.per_round_device)
    assert hblock["bytes"] == tblock["bytes"]
    for _, reply in tgrid.replies:  # no reply carries backbone weights
        assert P.BACKBONE not in reply.content.array_records
    assert len(hgrid.sent) == len(tgrid.sent)


def test_backbone_scope_never_uses_the_feature_cache_and_evaluates_with_the_tuned_backbone(
        setup, tmp_path) -> None:  # noqa: ANN001
    """The header scope fills and hits its cache; the backbone scope leaves it empty, and the accuracy it reports is
    the one of the device's tuned backbone with its header (not the received backbone's stale grids)."""
    flat, _, data = setup
    cfg = AcmeConfig.from_flat(flat)

    def app(cache: FeatureCache):  # noqa: ANN202
        from flwr.clientapp import ClientApp
        return AcmeClient(ca.device_data, ca.profile, ca.generic_test, feature_cache=cache).register(ClientApp())

    frozen_cache, tuned_cache = FeatureCache(), FeatureCache()
    _run("local", "header", setup, tmp_path, app=app(frozen_cache))
    assert len(frozen_cache) > 0 and frozen_cache.hits > 0
    strategy, block, grid = _run("local", BACKBONE, setup, tmp_path, app=app(tuned_cache))
    assert block["failures"]["count"] == 0
    assert (len(tuned_cache), tuned_cache.hits, tuned_cache.misses, tuned_cache.shared_hits) == (0, 0, 0, 0)
    last = {strategy.pid_of[r.metadata.src_node_id]: r.content[P.METRICS] for q, r in grid.replies
            if q.metadata.message_type == P.EVALUATE and int(q.content[P.CONFIG]["server-round"]) == 2}
    assert sorted(last) == [0, 1, 2, 3]
    fed = federated_data(cfg, *input_shape(cfg))
    for pid, metrics in last.items():
        state, backbone = _device_backbone(strategy, grid, pid)
        header = build_header(json.loads(state.header_spec))
        P.load_arrays(header, state.header)  # as evaluated (pruned before evaluation, then saved)
        test = fed.device(pid).test
        loss, acc = evaluate_header(backbone, header, test)
        assert metrics["test-loss"] == pytest.approx(loss, rel=1e-5) and metrics["test-acc"] == pytest.approx(acc)
        received = ElasticViT.from_arch(json.loads(state.arch))
        P.load_arrays(received, backbone_record(store_of(grid.contexts[strategy.node_of[pid]]), state.backbone_fp))
        stale_loss, _ = evaluate_header(received.eval(), header, test)
        assert stale_loss != pytest.approx(loss, rel=1e-5)  # the check can tell stale grids apart
    del data


def _train_message(node: int, server_round: int) -> Message:
    cfg = ConfigRecord({"tag": "acme", "server-round": server_round, "seed": 0, "mode": "standard", "send": "none",
                        "lr": 0.05, "momentum": 0.5, "weight-decay": 1e-4, "batch-size": 4, "local-epochs": 1})
    return Message(RecordDict({P.CONFIG: cfg}), dst_node_id=node, message_type=P.TRAIN)


def _evaluate_message(node: int, server_round: int) -> Message:
    cfg = ConfigRecord({"tag": "acme", "server-round": server_round, "seed": 0, "mode": "standard"})
    return Message(RecordDict({P.CONFIG: cfg}), dst_node_id=node, message_type=P.EVALUATE)


def test_checkpoint_then_resumed_setup_round_trips_the_tuned_backbone(tmp_path) -> None:  # noqa: ANN001
    run_config = {"strategy.device_scope": BACKBONE}
    grid, _ = grid_for(tmp_path / "store", run_config=run_config, checkpoint_fn=lambda c: tmp_path / "ckpt")
    content, arch = package()
    ask(grid, setup_message(content, arch, 1007))
    assert not ask(grid, _train_message(1007, 1)).has_error()
    assert not ask(grid, _evaluate_message(1007, 1)).has_error()
    saved = DeviceState.load(grid.contexts[1007], "acme")
    assert saved.tuned_backbone is not None
    received = content[P.BACKBONE]
    assert any(not np.array_equal(saved.tuned_backbone[k].numpy(), received[k].numpy()) for k in received.keys())
    path = tmp_path / "ckpt" / "acme" / "device-1-round1.npz"
    assert DeviceState.from_checkpoint(path) == saved
    fresh, _ = grid_for(tmp_path / "store", run_config=run_config, checkpoint_fn=lambda c: tmp_path / "ckpt")
    ask(fresh, setup_message(content, arch, 1007, **{"resume-round": 1}))
    restored = DeviceState.load(fresh.contexts[1007], "acme")
    assert restored == saved and restored.tuned_backbone is not None
    # the resumed device continues from its tuned backbone: the same round 2 as the uninterrupted device
    for g in (grid, fresh):
        assert not ask(g, _train_message(1007, 2)).has_error()
    assert DeviceState.load(fresh.contexts[1007], "acme") == DeviceState.load(grid.contexts[1007], "acme")
    # a new package (setup without resume) starts from the received backbone again
    ask(fresh, setup_message(content, arch, 1007))
    assert DeviceState.load(fresh.contexts[1007], "acme").tuned_backbone is None


def test_unknown_scope_is_one_error_line_naming_the_key(tmp_path) -> None:  # noqa: ANN001
    grid, _ = grid_for(tmp_path / "store", run_config={"strategy.device_scope": "everything"})
    content, arch = package()
    ask(grid, setup_message(content, arch, 1000))
    reply = ask(grid, _train_message(1000, 1))
    assert reply.has_error() and "strategy.device_scope='everything' is not allowed" in reply.error.reason
    with pytest.raises(ConfigError, match="strategy.device_scope"):
        AcmeConfig.from_flat({"strategy.device_scope": "everything"})
    field = {f.name: f for f in dataclasses.fields(AcmeConfig().strategy)}["device_scope"]
    assert tuple(field.metadata["choices"]) == DEVICE_SCOPES and AcmeConfig().strategy.device_scope == "header"


def test_train_header_trains_the_backbone_but_never_the_gates_and_not_in_a_classifier_only_phase(setup) -> None:  # noqa: ANN001
    _, deployment, data = setup
    pkg = deployment.packages["mid"]
    split = data.device(1).train
    hp = TrainHParams(batch_size=16)
    body, head = split_header_params(pkg.header)

    def run(phases):  # noqa: ANN001, ANN202
        backbone, header = copy.deepcopy(pkg.backbone), copy.deepcopy(pkg.header)
        for p in backbone.parameters():
            p.requires_grad_(False)  # as a device loads it
        before_b = {k: v.clone() for k, v in backbone.state_dict().items()}
        before_h = {k: v.detach().clone() for k, v in header.named_parameters()}
        _, scores = train_header(backbone, header, split, hp, 0, phases=phases, train_backbone=True)
        assert all(not p.requires_grad for p in backbone.parameters())  # frozen again afterwards
        moved_b = [k for k, v in backbone.state_dict().items() if not torch.equal(v, before_b[k])]
        gates = {f"{n}.weight" for n, m in header.named_modules() if m in set(header.gate_layers())}
        params = dict(header.named_parameters())
        assert gates and all(torch.equal(params[g], before_h[g]) for g in gates)  # gates: never trained by SGD
        moved_h = {k for k, v in params.items() if not torch.equal(v, before_h[k])}
        return moved_b, moved_h, scores

    moved_b, moved_h, scores = run(None)
    assert len(moved_b) > 0 and moved_h & set(head) and moved_h & set(body) and scores.size == pkg.header.num_gates
    moved_b, moved_h, _ = run([(head, 1)])
    assert moved_b == [] and moved_h and moved_h <= set(head)
    moved_b, _, _ = run([(body, 1)])
    assert moved_b
    with pytest.raises(ValueError, match="needs the backbone itself and no precomputed grids"):
        train_header(pkg.backbone, pkg.header, split, hp, 0, grids=backbone_grids(pkg.backbone, split.x),
                     train_backbone=True)
