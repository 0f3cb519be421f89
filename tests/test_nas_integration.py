"""Edge NAS wired into the run: gate placement fix, searched header in the registry, deployment with nas.enabled."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.device.headers import GatedTempCNN, create_header, list_headers
from acme_flwr.device.importance import TaylorImportance
from acme_flwr.device.training import train_header_epoch, trainable_parameters
from acme_flwr.edge.nas import SearchedHeader, random_arc
from acme_flwr.packages import build_header, build_packages, header_spec
from acme_flwr.task import federated_data

from .conftest import SMOKE

# --------------------------------------------------------------------------------------------------------------- gates


def _gate_importance(pw_gate_after_bn: bool) -> tuple[float, float]:
    """Mean Taylor importance of the depthwise gates and of the pointwise gates after one backward on a tiny batch."""
    torch.manual_seed(0)
    header = GatedTempCNN(12, 5, channels=8, pw_gate_after_bn=pw_gate_after_bn)
    x, y = torch.randn(16, 12, 4, 4), torch.randint(0, 5, (16,))
    imp = TaylorImportance(header)
    opt = torch.optim.SGD(trainable_parameters(header), lr=0.0)
    train_header_epoch(header, [(x, y)], opt, imp)
    vec = imp.vector().reshape(4, 8)  # gate order: five.2 (dw), five.4 (pw), five.8 (dw), five.10 (pw)
    return float(vec[[0, 2]].mean()), float(vec[[1, 3]].mean())


def test_pointwise_gate_after_bn_has_real_importance() -> None:
    dw, pw = _gate_importance(pw_gate_after_bn=True)
    assert dw > 0 and pw > 0
    assert 1e-2 < pw / dw < 1e2  # same order of magnitude


def test_original_placement_normalises_pointwise_gates_away() -> None:
    dw, pw = _gate_importance(pw_gate_after_bn=False)
    assert dw > 0
    assert pw / dw < 1e-4  # the BN right after the gate cancels any per-channel scale (only BN eps is left)


def test_gate_placement_keeps_state_dict_keys_and_is_threaded_through_header_spec() -> None:
    a, b = GatedTempCNN(12, 5, channels=8), GatedTempCNN(12, 5, channels=8, pw_gate_after_bn=False)
    assert list(a.state_dict()) == list(b.state_dict())
    for placement, expected in (("after_bn", True), ("original", False)):
        cfg = AcmeConfig.from_flat({"model.gate_placement": placement})
        spec = header_spec(cfg, 12, 5)
        assert spec["pw_gate_after_bn"] is expected
        assert build_header(json.loads(json.dumps(spec))).five.pw_gate_after_bn is expected


# ------------------------------------------------------------------------------------------------------------ registry


def test_searched_header_rebuilt_from_json_spec_gives_identical_outputs() -> None:
    assert "searched" in list_headers()
    torch.manual_seed(1)
    arc = [0, 1, 1, 4, 2, 0, 0, 3]  # node 0: sep5(s0) + sep1(s1); node 1: sep3(n0) + maxpool(s0)
    header = create_header("searched", 12, 5, arc=arc, channels=8, num_layers=1, pw_gate_after_bn=True)
    assert isinstance(header, SearchedHeader) and header.num_gates > 0
    spec = json.loads(json.dumps({"name": "searched", **header.arch()}))
    rebuilt = build_header(spec)
    rebuilt.load_state_dict(header.state_dict())
    x = torch.randn(6, 12, 4, 4)
    header.eval(), rebuilt.eval()
    assert torch.equal(header(x), rebuilt(x))
    assert header.classifier_name == "classifier"


def test_searched_header_gates_after_bn_are_not_normalised_away() -> None:
    torch.manual_seed(2)
    arc = random_arc(2, torch.Generator().manual_seed(3))
    arc[1] = 0  # make sure there is a separable op
    header = SearchedHeader(arc, 12, 5, channels=8, num_layers=0, pw_gate_after_bn=True)
    imp = TaylorImportance(header)
    train_header_epoch(header, [(torch.randn(16, 12, 4, 4), torch.randint(0, 5, (16,)))],
                       torch.optim.SGD(trainable_parameters(header), lr=0.0), imp)
    assert (imp.vector() > 0).mean() > 0.5


# -------------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("flat", "needle"), [
    ({"nas.reward": "devices"}, "nas.reward='devices' is not allowed; allowed values: ['edge-proxy', 'federated']"),
    ({"nas.device_steps": 0}, "nas.device_steps=0 is out of range"),
    ({"nas.epochs": 0}, "nas.epochs=0 is out of range"),
    ({"nas.child_channels": 0}, "nas.child_channels=0 is out of range"),
    ({"nas.header_rule_threshold": 1.5}, "nas.header_rule_threshold=1.5 is out of range"),
    ({"nas.lr": 0.0}, "nas.lr=0.0 is out of range"),
    ({"nas.enabled": "maybe"}, "nas.enabled='maybe': expected true or false"),
    ({"nas.budget": 3}, "unknown config key 'nas.budget'"),
    ({"model.gate_placement": "before_bn"}, "allowed values: ['after_bn', 'original']"),
    ({"model.header": "searched"}, "model.header='searched' cannot be built from the config alone"),
])
def test_bad_nas_config_names_the_key(flat: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        AcmeConfig.from_flat(flat)
    assert needle in str(err.value)


def test_nas_keys_round_trip_flat() -> None:
    cfg = AcmeConfig.from_flat({"nas.enabled": "true", "nas.epochs": 3.0, "model.gate_placement": "original"})
    assert cfg.nas.enabled is True and cfg.nas.epochs == 3 and cfg.model.gate_placement == "original"
    assert AcmeConfig.from_flat(cfg.to_flat()) == cfg


# ---------------------------------------------------------------------------------------------------------- deployment

NAS_SMOKE = {**SMOKE, "cloud.teacher_epochs": 2, "cloud.header_epochs": 1, "nas.enabled": True, "nas.epochs": 2,
             "nas.controller_steps": 3, "nas.child_channels": 4, "nas.finetune_epochs": 2}


def test_build_deployment_with_nas_ships_searched_gated_headers_and_caches(tmp_path, caplog) -> None:  # noqa: ANN001
    cfg = AcmeConfig.from_flat(NAS_SMOKE)
    data = federated_data(cfg, *input_shape(cfg))
    dep = build_packages(cfg, data, tmp_path, progress=False)
    assert dep.stage_log["nas"] and all(i["cache"] == "miss" for i in dep.stage_log["nas"].values())
    for name, pkg in dep.packages.items():
        assert isinstance(pkg.header, SearchedHeader) and pkg.header.num_gates > 0
        assert pkg.header.pw_gate_after_bn is True
        assert pkg.header_spec["name"] == "searched" and pkg.header_spec["arc"] == dep.picks[name]["header_arc"]
        # the device rebuilds the same module from the JSON spec
        rebuilt = build_header(json.loads(json.dumps(pkg.header_spec)))
        rebuilt.load_state_dict(pkg.header.state_dict())
        grid = torch.randn(4, pkg.header.in_channels, 2, 2)
        assert torch.equal(rebuilt.eval()(grid), pkg.header.eval()(grid))
        assert F.softmax(rebuilt(grid), 1).shape == (4, data.num_classes)
        # running-statistics BNs (nas.bn_running_stats): a sample's logits do not depend on its evaluation batch
        assert pkg.header.bn_running_stats is True
        assert torch.allclose(pkg.header(grid[:1]), pkg.header(grid)[:1], atol=1e-5)
    json.dumps(dep.picks)  # summary.json must be able to hold the picks
    with caplog.at_level(logging.INFO, logger="acme_flwr.edge.nas.header_search"):
        again = build_packages(cfg, data, tmp_path, progress=False)
    assert all(i["cache"] == "hit" for i in again.stage_log["nas"].values())
    assert "NAS cache hit" in caplog.text
    for name in dep.packages:
        a, b = dep.packages[name].header.state_dict(), again.packages[name].header.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_scope_gives_every_class_one_header_architecture_and_the_acme_loop_runs(tmp_path) -> None:  # noqa: ANN001
    from flwr.app import ArrayRecord

    from acme_flwr.clients.client_app import app as acme_client_app
    from acme_flwr.results import RunRecorder
    from acme_flwr.strategies import build_strategy
    from acme_flwr.topology import Topology

    from .inprocess import InProcessGrid

    # largest_size: distinct budgets give distinct sub-backbones whatever the (tiny, noisy) accuracy table says
    flat = {**NAS_SMOKE, "nas.scope": "shared", "cloud.selection": "largest_size"}
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    dep = build_packages(cfg, data, tmp_path / "cache", progress=False)
    specs = {json.dumps({k: v for k, v in p.header_spec.items()}, sort_keys=True) for p in dep.packages.values()}
    assert len(specs) == 1
    assert len({p.header.num_gates for p in dep.packages.values()}) == 1
    assert len({(p.width, p.depth) for p in dep.packages.values()}) >= 2  # still distinct sub-backbones
    recorder = RunRecorder(tmp_path / "out", cfg.to_dict(), cfg.run.seed)
    strategy = build_strategy("acme", cfg, Topology(4, 2, "round_robin", 2), dep, recorder)
    strategy.start(grid=InProcessGrid(acme_client_app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=2)
    block = strategy.finalize()
    assert block["failures"]["count"] == 0
    assert strategy.num_gates(0) == next(iter(dep.packages.values())).header.num_gates
    last = block["rounds"][-1]["evaluate"]["device"]
    assert all(m["pruned-gates"] >= 4 for m in last.values())


# ----------------------------------------------------------------------------------------------------- federated parts


def test_average_states_weights_floats_and_keeps_int_buffers() -> None:
    from acme_flwr.edge.nas.federated import average_states

    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(9)}
    out = average_states([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([3.0, 5.0])) and int(out["n"]) == 3


def test_federated_reward_search_runs_end_to_end_on_in_memory_devices() -> None:
    from acme_flwr.edge.nas import ENASChild, SearchConfig, search, validate_arc
    from acme_flwr.edge.nas.federated import FederatedReward, device_evaluate_arcs, device_train_child

    gen = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, 2, 2, generator=gen) * 2
    devices = []
    for k in range(2):  # non-IID: each device sees two of the three classes
        y_tr = torch.tensor([k, k + 1] * 12)
        y_va = torch.tensor([k, k + 1] * 4)
        devices.append({"train": (means[y_tr] + torch.randn(24, 6, 2, 2, generator=gen), y_tr),
                        "val": (means[y_va] + torch.randn(8, 6, 2, 2, generator=gen), y_va)})
    seen_actions: list[str] = []

    def transport(action, payload, state):  # noqa: ANN001, ANN202 - one device = one local child copy
        seen_actions.append(action)
        replies = []
        for dev in devices:
            child = ENASChild(6, 3, channels=4, num_cells=2, num_layers=0)
            child.load_state_dict(state)
            if action == "train":
                m = device_train_child(child, payload["arcs"], *dev["train"], lr=payload["lr"],
                                       batch_size=payload["batch-size"], seed=payload["seed"])
                replies.append({"num_examples": m["num_examples"], "acc": m["acc"], "state": child.state_dict()})
            else:
                correct, total = device_evaluate_arcs(child, payload["arcs"], *dev["val"])
                replies.append({"correct": correct, "total": total})
        return replies

    cfg = SearchConfig(epochs=2, controller_steps=4, batch_size=8, num_cells=2, num_layers=0, out_filters=4,
                       arcs_per_reward_call=2, num_eval_arcs=1, select_requires_gates=True, child_lr_max=0.05)
    child = ENASChild(6, 3, channels=4, num_cells=2, num_layers=0, seed=0)
    before = {k: v.clone() for k, v in child.state_dict().items()}
    source = FederatedReward(child, transport, cfg, steps_per_round=3)
    result = search(source, cfg, progress=False)
    validate_arc(result.best_arc, 2)
    assert 0.0 <= result.best_score <= 1.0
    assert source.calls["train"] == 2 and source.calls["evaluate"] >= 2 * 2  # 4 steps / 2 arcs per call, per epoch
    assert set(seen_actions) == {"train", "evaluate"}
    assert any(not torch.equal(before[k], v) for k, v in child.state_dict().items())  # merged updates arrived


def test_federated_reward_search_over_the_grid_installs_a_searched_header(tmp_path) -> None:  # noqa: ANN001
    from flwr.app import ArrayRecord

    from acme_flwr.clients.client_app import app as acme_client_app
    from acme_flwr.protocol import NAS_MESSAGE
    from acme_flwr.results import RunRecorder
    from acme_flwr.strategies import build_strategy
    from acme_flwr.topology import Topology

    from .inprocess import InProcessGrid

    flat = {**NAS_SMOKE, "nas.reward": "federated", "nas.controller_steps": 2, "nas.device_steps": 2}
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    dep = build_packages(cfg, data, tmp_path / "cache", progress=False)
    assert dep.nas_federated is not None and "nas" not in dep.stage_log  # nothing searched on the cloud's data
    topo = Topology(4, 2, "round_robin", 2)
    blocks = {}
    for name in ("acme", "local"):
        recorder = RunRecorder(tmp_path / name, cfg.to_dict(), cfg.run.seed)
        strategy = build_strategy(name, cfg, topo, dep, recorder)
        grid = InProcessGrid(acme_client_app, 4, flat)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=1)
        blocks[name] = (strategy.finalize(), grid, strategy)
    block, grid, strategy = blocks["acme"]
    assert block["failures"]["count"] == 0
    info = strategy.record.extra["nas"]
    assert info["reward"] == "federated" and info["devices"] == 4 and info["num_gates"] > 0
    assert info["train_rounds"] == 2 and info["evaluate_rounds"] >= 4  # per epoch: rewards + selection
    nas_msgs = [m for m in grid.sent if m.metadata.message_type == NAS_MESSAGE]
    assert len(nas_msgs) == 4 * (info["train_rounds"] + info["evaluate_rounds"] + 1)  # + install
    assert dep.nas_federated is None
    for name, pkg in dep.packages.items():
        assert isinstance(pkg.header, SearchedHeader) and pkg.header_spec["arc"] == info["arc"]
        assert dep.picks[name]["header_arc"] == info["arc"]
    # the devices now run the searched header: their importance vectors have its gate count
    assert strategy.num_gates(0) == info["num_gates"]
    # the next strategy ships the searched header directly, without searching again
    local_block, local_grid, local_strategy = blocks["local"]
    assert local_block["failures"]["count"] == 0 and "nas" not in local_strategy.record.extra
    assert not [m for m in local_grid.sent if m.metadata.message_type == NAS_MESSAGE]
