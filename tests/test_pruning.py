"""Part III: Taylor gate importance, local training, mixing variants, GatePruner (ACME §4.4–4.6)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acme_flwr.device.gates import GateLayer
from acme_flwr.device.headers import create_header
from acme_flwr.device.importance import TaylorImportance, list_accumulation_modes
from acme_flwr.device.pruner import GatePruner
from acme_flwr.device.training import train_header_epoch, trainable_parameters
from acme_flwr.edge.mixing import build_mixing_weights, get_variant, list_variants, mix_importance, validate_importance


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class _Toy(nn.Module):
    """y = Σ_i a_i · g_i · x_i  →  ∂L/∂g_i = a_i · Σ_b x_bi for L = Σ_b y_b."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = GateLayer(3)
        self.register_buffer("a", torch.tensor([1.0, -2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gate(x) * self.a).sum(dim=1)


def _set_grads(gates: list[GateLayer], grads: list[list[float]]) -> None:
    for g, gr in zip(gates, grads, strict=True):
        g.weight.grad = torch.tensor(gr)


def test_importance_equals_hand_computed_taylor() -> None:
    toy = _Toy()
    with torch.no_grad():
        toy.gate.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
    x = torch.tensor([[1.0, 2.0, -1.0], [3.0, 0.0, 2.0]])
    toy(x).sum().backward()
    # grad_i = a_i Σ_b x_bi = [1·4, −2·2, 3·1] = [4, −4, 3]; c = (g·grad)² = [16, 4, 36]
    imp = TaylorImportance(toy)
    np.testing.assert_allclose(imp.update(), [16.0, 4.0, 36.0])
    assert imp.vector().dtype == np.float32 and imp.vector().shape == (3,)


def test_mean_and_faithful_accumulation() -> None:
    gates = [GateLayer(2)]
    c = [np.array([1.0, 4.0]), np.array([9.0, 0.0]), np.array([4.0, 1.0])]  # grads 1,2 / 3,0 / 2,1 with g = 1
    grads = [[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]]
    mean, faithful = TaylorImportance(gates, "mean"), TaylorImportance(gates, "faithful")
    for gr in grads:
        _set_grads(gates, [gr])
        mean.update()
        faithful.update()
    mean.end_epoch()
    faithful.end_epoch()
    np.testing.assert_allclose(mean.vector(), (c[0] + c[1] + c[2]) / 3)
    np.testing.assert_allclose(faithful.vector(), (3 * c[0] + 2 * c[1] + c[2]) / 3, rtol=1e-6)  # running-sum weights

    # two local epochs: the running sum is *not* reset between them; per-epoch results are averaged
    faithful.reset()
    for gr in grads[:2]:
        _set_grads(gates, [gr])
        faithful.update()
    faithful.end_epoch()
    _set_grads(gates, [grads[2]])
    faithful.update()
    faithful.end_epoch()
    epoch1 = (2 * c[0] + c[1]) / 2
    epoch2 = c[0] + c[1] + c[2]
    np.testing.assert_allclose(faithful.vector(), (epoch1 + epoch2) / 2, rtol=1e-6)
    faithful.reset()
    assert faithful.batches == 0 and not faithful.vector().any()
    with pytest.raises(ValueError, match="allowed"):
        TaylorImportance(gates, "sum")
    assert list_accumulation_modes() == ["faithful", "mean"]


def test_trainable_parameters_exclude_gates() -> None:
    h = create_header("gated_temp_cnn", 32, 5, channels=8)
    params = trainable_parameters(h)
    gate_ids = {id(g.weight) for g in h.gate_layers()}
    assert not gate_ids & {id(p) for p in params}
    assert len(params) == len(list(h.parameters())) - 4


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(6, 32, 4, 4), torch.randint(0, 5, (6,))) for _ in range(n)]


def test_pruned_gates_stay_zero_after_training() -> None:
    h = create_header("gated_temp_cnn", 32, 5, channels=8)
    pruner = GatePruner(h.num_gates, prune_per_iteration=5, prune_neurons_max=30)
    rng = np.random.default_rng(0)
    pruner.step(rng.random(h.num_gates).astype(np.float32))
    pruner.apply(h)
    pruned = pruner.mask == 0
    assert pruned.sum() == 5
    opt = torch.optim.SGD(trainable_parameters(h), lr=0.1, momentum=0.5, weight_decay=1e-4)
    imp = TaylorImportance(h)
    stats = train_header_epoch(h, _batches(), opt, imp)
    assert stats["num_batches"] == 3 and stats["num_examples"] == 18 and 0 <= stats["accuracy"] <= 1
    assert np.isfinite(stats["loss"])
    gate_values = torch.cat([g.weight.detach() for g in h.gate_layers()]).numpy()
    assert np.all(gate_values[pruned] == 0)
    assert np.all(gate_values[~pruned] == 1)  # gates are never trained
    vec = imp.vector()
    assert vec.shape == (h.num_gates,) and np.all(vec[pruned] == 0) and vec[~pruned].sum() > 0


def test_train_rejects_optimizer_with_gates() -> None:
    h = create_header("gated_temp_cnn", 32, 5, channels=8)
    with pytest.raises(ValueError, match="gate weights"):
        train_header_epoch(h, _batches(1), torch.optim.SGD(h.parameters(), lr=0.1))


def test_pruner_count_per_step_and_cap() -> None:
    rng = np.random.default_rng(1)
    p = GatePruner(100, prune_per_iteration=10, prune_neurons_max=25, momentum=0.9)
    counts = []
    for _ in range(4):
        p.step(rng.random(100).astype(np.float32))
        counts.append(p.num_pruned)
    assert counts == [10, 20, 25, 25]


def test_pruner_prunes_least_important_and_momentum() -> None:
    i1 = np.arange(10, dtype=np.float32)  # unit 0 least important
    p = GatePruner(10, prune_per_iteration=2, prune_neurons_max=-1, momentum=0.9)
    mask = p.step(i1)
    np.testing.assert_array_equal(np.flatnonzero(mask == 0), [0, 1])
    np.testing.assert_allclose(p.avg, i1)  # first step: Ā = Ĩ
    i2 = i1[::-1].copy()  # now unit 9 looks least important, but momentum keeps the history
    mask = p.step(i2)
    np.testing.assert_allclose(p.avg, 0.9 * i1 + 0.1 * i2)
    np.testing.assert_array_equal(np.flatnonzero(mask == 0), [0, 1, 2, 3])
    q = GatePruner(10, prune_per_iteration=2, prune_neurons_max=-1, momentum=0.0)
    q.step(i1)
    np.testing.assert_array_equal(np.flatnonzero(q.step(i2) == 0), [0, 1, 8, 9])  # no momentum: follows i2


def test_pruner_ties_and_zero_rate() -> None:
    p = GatePruner(6, prune_per_iteration=2, prune_neurons_max=-1)
    assert p.step(np.ones(6, dtype=np.float32)).sum() == 0  # crit ≤ threshold: all tied units go
    z = GatePruner(6, prune_per_iteration=0, prune_neurons_max=-1)
    assert z.step(np.arange(6, dtype=np.float32)).sum() == 6 and z.steps == 1


def test_pruner_state_roundtrip_and_apply() -> None:
    rng = np.random.default_rng(2)
    imps = [rng.random(32).astype(np.float32) for _ in range(3)]
    a = GatePruner(32, 4, 20)
    a.step(imps[0])
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = GatePruner(32, 4, 20)
    b.load_state_dict(state)
    for imp in imps[1:]:
        np.testing.assert_array_equal(a.step(imp), b.step(imp))
    np.testing.assert_allclose(a.avg, b.avg)
    h = create_header("gated_temp_cnn", 32, 5, channels=8)
    a.apply(h)
    masks = torch.cat([g.mask for g in h.gate_layers()]).numpy()
    np.testing.assert_array_equal(masks, a.mask)
    with pytest.raises(ValueError, match="gates"):
        GatePruner(16, 4, 20).apply(h)
    with pytest.raises(ValueError, match="shapes"):
        b.load_state_dict({"avg": np.zeros(3), "mask": np.ones(3), "steps": np.array(1)})


def test_mix_importance_hand_computed() -> None:
    imps = {
        0: np.array([1.0, 0.0], np.float32),
        1: np.array([0.0, 1.0], np.float32),
        2: np.array([2.0, 2.0], np.float32),
    }
    w = {0: {0: 0.5, 1: 0.25, 2: 0.25}, 2: {2: 1.0}}
    out = mix_importance(imps, w)
    np.testing.assert_allclose(out[0], [0.5 + 0.5, 0.25 + 0.5])
    np.testing.assert_allclose(out[2], [2.0, 2.0])
    assert set(out) == {0, 2} and out[0].dtype == np.float32
    del imps[1]
    with pytest.raises(ValueError, match=r"without importance: \[1\]"):
        mix_importance(imps, w)
    renorm = mix_importance(imps, w, on_missing="renormalize")  # 0.5, 0.25 → 2/3, 1/3
    np.testing.assert_allclose(renorm[0], [2 / 3 + 2 / 3, 2 / 3])


def test_variants() -> None:
    ids = [3, 1, 2]
    assert build_mixing_weights("alone", ids) == {1: {1: 1.0}, 2: {2: 1.0}, 3: {3: 1.0}}
    avg = build_mixing_weights("pruning_avg", ids, num_examples={1: 10, 2: 30, 3: 60})
    assert avg[1] == avg[3] == pytest.approx({1: 0.1, 2: 0.3, 3: 0.6})
    sim = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])  # rows/cols = sorted ids 1, 2, 3
    per = build_mixing_weights("per", ids, similarity=sim)
    assert per[2] == pytest.approx({1: 0.1, 2: 0.8, 3: 0.1})
    assert build_mixing_weights("wo_pruning", ids) is None and not get_variant("wo_pruning").prunes
    assert {"alone", "avg", "per", "wo_pruning", "pruning_per"} <= set(list_variants())
    imps = {i: np.full(2, float(i), np.float32) for i in ids}
    np.testing.assert_allclose(mix_importance(imps, avg)[2], [0.1 + 0.6 + 1.8] * 2)
    with pytest.raises(ValueError, match="allowed"):
        build_mixing_weights("fedavg", ids)
    with pytest.raises(ValueError, match="num_examples"):
        build_mixing_weights("avg", ids)
    with pytest.raises(ValueError, match="3×3"):
        build_mixing_weights("per", ids, similarity=np.eye(2))


@pytest.mark.parametrize(
    ("vec", "match"),
    [
        (np.zeros((4, 256), np.float32), "shape"),
        (np.zeros(1023, np.float32), "shape"),
        (np.array([np.nan] * 1024, np.float32), "NaN"),
        (np.array([np.inf] * 1024, np.float32), "Inf"),
        (np.full(1024, 1e300), "float32"),
        (np.zeros(1024, np.int64), "dtype"),
        (np.zeros(1024, bool), "dtype"),
        (np.array(["a"] * 1024), "dtype"),
        (-np.ones(1024, np.float32), "negative"),
    ],
)
def test_validate_importance_rejects(vec: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_importance(vec, 1024)


def test_validate_importance_accepts_float64() -> None:
    out = validate_importance(np.ones(8), 8)
    assert out.dtype == np.float32 and out.shape == (8,)


def test_a_head_only_phase_without_importance_skips_the_body_backward() -> None:
    """FedRep's head epochs and FedBABU's fine-tuning track no importance: the gates are frozen with the body, so
    no gradient reaches the body, and the header ends exactly where the gate-keeping version ends."""
    from acme_flwr.device.headers import split_header_params
    from acme_flwr.device.training import TrainHParams, _frozen_except, train_header
    from acme_flwr.task import TensorSplit

    torch.manual_seed(0)
    header = create_header("gated_temp_cnn", 16, 5, channels=8)
    grids, y = torch.randn(40, 16, 4, 4), torch.randint(0, 5, (40,))
    _, head = split_header_params(header)
    params = trainable_parameters(header, head)
    with _frozen_except(header, params, keep_gates=False):
        F.cross_entropy(header(grids), y).backward()
    assert all(p.grad is None for n, p in header.named_parameters() if n not in head)
    assert all(p.grad is not None for n, p in header.named_parameters() if n in head)
    twins = [copy.deepcopy(header) for _ in range(2)]
    for t in twins:
        t.zero_grad(set_to_none=True)
    data = TensorSplit(torch.zeros(40, 1), y)
    hp = TrainHParams(batch_size=8)
    torch.manual_seed(0)  # dropout draws
    train_header(None, twins[0], data, hp, 0, grids=grids, phases=[(head, 2)], importance=False)
    torch.manual_seed(0)
    train_header(None, twins[1], data, hp, 0, grids=grids, phases=[(head, 2)], importance=True)
    for a, b in zip(twins[0].state_dict().values(), twins[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
