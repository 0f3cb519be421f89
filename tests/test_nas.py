"""Edge NAS: controller validity/determinism, every op and arc, REINFORCE on a toy reward, export equivalence,
rebuild from arc, SGDR restarts, header size rule, and a tiny end-to-end search with ProxyReward."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest
import torch

from acme_flwr.device.gates import gate_layers
from acme_flwr.edge.nas import (
    NUM_BRANCHES,
    OPS,
    ChildConfig,
    Controller,
    ENASChild,
    ProxyReward,
    Reinforce,
    RewardSource,
    SearchConfig,
    SearchedHeader,
    arc_nodes,
    export_header,
    has_separable_op,
    header_size_for,
    loose_ends,
    random_arc,
    search,
    sgdr_lr,
    tokens_to_grid,
    validate_arc,
)

HIDDEN, C, CLASSES = 16, 8, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, HIDDEN, 4, 4, generator=torch.Generator().manual_seed(seed))


def child(num_cells: int = 2, num_layers: int = 1, dropout: float = 0.1) -> ENASChild:
    return ENASChild(HIDDEN, CLASSES, channels=C, num_cells=num_cells, num_layers=num_layers, dropout=dropout, seed=0)


# ---------------------------------------------------------------------------------------------------------- arcs


def test_validate_arc_rejects_bad_arcs() -> None:
    assert validate_arc([0, 5, 1, 0]) == [0, 5, 1, 0]
    for bad, match in [([0, 6, 1, 0], "op id"), ([2, 0, 1, 0], "input id"), ([0, 0, 1], "4 ints"), ([], "4 ints"),
                       ([0, 0, 1, 0, 3, 0, 0, 0], "node 1 input id")]:
        with pytest.raises(ValueError, match=match):
            validate_arc(bad)
    with pytest.raises(ValueError, match="num_cells=2"):
        validate_arc([0, 0, 1, 0], num_cells=2)


def test_has_separable_op() -> None:
    assert has_separable_op([0, 2, 1, 4]) and has_separable_op([0, 0, 1, 5])
    assert not has_separable_op([0, 2, 1, 3, 2, 5, 0, 2])


def test_loose_ends() -> None:
    assert loose_ends([0, 0, 0, 1]) == [1, 2]
    assert loose_ends([0, 0, 1, 1, 2, 3, 2, 3]) == [3]
    assert loose_ends([0, 0, 0, 0, 1, 0, 1, 0]) == [2, 3]


def test_tokens_to_grid_permutes_correctly() -> None:
    b, gh, gw, d = 2, 3, 4, 5
    tokens = torch.randn(b, 1 + gh * gw, d)
    g = tokens_to_grid(tokens, (gh, gw))
    assert g.shape == (b, d, gh, gw)
    for r in range(gh):
        for c in range(gw):
            torch.testing.assert_close(g[:, :, r, c], tokens[:, 1 + r * gw + c, :])
    assert tokens_to_grid(torch.randn(1, 17, 2)).shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.randn(1, 13, 2))


# ---------------------------------------------------------------------------------------------------- controller


@pytest.mark.parametrize("num_cells", [1, 3])
def test_controller_samples_valid_arcs_deterministically(num_cells: int) -> None:
    ctrl = Controller(num_cells=num_cells, lstm_size=32, seed=0)
    arcs = [ctrl().arc for _ in range(100)]
    for arc in arcs:
        assert len(arc) == 4 * num_cells
        for i, node in enumerate(arc_nodes(arc)):
            assert 0 <= node.x_id < i + 2 and 0 <= node.y_id < i + 2
            assert 0 <= node.x_op < NUM_BRANCHES and 0 <= node.y_op < NUM_BRANCHES
    assert len({tuple(a) for a in arcs}) > 10  # actually stochastic
    assert {a[1] for a in arcs} == set(range(NUM_BRANCHES))  # every op reachable

    again = Controller(num_cells=num_cells, lstm_size=32, seed=0)
    assert [again().arc for _ in range(100)] == arcs
    other = Controller(num_cells=num_cells, lstm_size=32, seed=1)
    assert [other().arc for _ in range(100)] != arcs
    # explicit generator: same seed, same arcs, independent of the controller's own generator
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [ctrl(generator=g1).arc for _ in range(5)] == [again(generator=g2).arc for _ in range(5)]
    # greedy is the argmax, repeatable
    assert ctrl(greedy=True).arc == ctrl(greedy=True).arc


def test_controller_teacher_forcing_matches_sampling() -> None:
    ctrl = Controller(num_cells=2, seed=3)
    sample = ctrl()
    scored = ctrl(sample.arc)
    assert scored.arc == sample.arc
    torch.testing.assert_close(scored.log_prob, sample.log_prob)
    torch.testing.assert_close(scored.entropy, sample.entropy)
    torch.testing.assert_close(scored.step_log_probs.sum(), sample.log_prob)
    assert sample.log_prob.requires_grad and not sample.entropy.requires_grad
    # initial op prior: sep3/sep5 favoured by b_soft [10, 10, 0, ...] and the fixed bias
    p = scored.step_log_probs.exp()
    assert 0 < p.min() and p.max() <= 1
    assert list(ctrl.b_soft.detach()) == [10.0, 10.0, 0.0, 0.0, 0.0, 0.0]


def test_reinforce_moves_probability_to_rewarded_op() -> None:
    ctrl = Controller(num_cells=1, seed=0)
    trainer = Reinforce(ctrl)

    def p_op4() -> float:  # P(x_op of node 0 == 4); node 0's anchors are both zeros so x_id does not matter
        with torch.no_grad():
            return float(ctrl([0, 4, 0, 0]).step_log_probs[1].exp())

    before = p_op4()
    for _ in range(300):
        with torch.no_grad():
            arc = ctrl().arc
        stats = trainer.update(arc, 1.0 if arc[1] == 4 else 0.0)
    after = p_op4()
    assert before < 0.12 and after > 0.22 and after > 2 * before  # tanh bound caps it near 0.28
    with torch.no_grad():
        op_probs = [float(ctrl([0, op, 0, 0]).step_log_probs[1].exp()) for op in range(NUM_BRANCHES)]
    assert max(range(NUM_BRANCHES), key=op_probs.__getitem__) == 4
    assert trainer.baseline is not None and set(stats) >= {"reward", "baseline", "advantage", "loss"}


def test_reinforce_baseline_starts_at_first_reward() -> None:
    trainer = Reinforce(Controller(num_cells=1, seed=0), entropy_weight=0.0, baseline_decay=0.9)
    first = trainer.update([0, 0, 0, 0], 0.5)
    assert first["baseline"] == pytest.approx(50.0) and first["advantage"] == pytest.approx(0.0)
    second = trainer.update([0, 0, 0, 0], 1.0)
    assert second["baseline"] == pytest.approx(50.0 - 0.1 * (50.0 - 100.0))
    assert second["advantage"] == pytest.approx(100.0 - 55.0)


# ---------------------------------------------------------------------------------------------------------- child


@pytest.mark.parametrize("op", range(NUM_BRANCHES), ids=[s.name for s in OPS])
def test_every_op_forward_backward(op: int) -> None:
    net = child(num_cells=2)
    arc = [0, op, 1, op, 2, op, 0, op]  # node 1 reads node 0 through the op
    out = net(grid(), arc)
    assert out.shape == (2, CLASSES)
    out.square().sum().backward()
    assert net.stem[0].weight.grad is not None and torch.isfinite(net.stem[0].weight.grad).all()
    if OPS[op].weighted:
        used = net.layers[0].op(1, 0, 2, op)
        assert used.dw1.weight.grad is not None and used.dw1.weight.grad.abs().sum() > 0
    # an op module the arc does not use gets no gradient (weight sharing: only the sampled sub-graph is trained)
    assert net.layers[0].op(0, 0, 0, 1 - op % 2).pw1.weight.grad is None


def test_random_arcs_forward_backward_and_sharing() -> None:
    gen = torch.Generator().manual_seed(0)
    net = child(num_cells=3, num_layers=1)
    for _ in range(4):
        arc = random_arc(3, gen)
        net.zero_grad(set_to_none=True)
        out = net(grid(), arc)
        out.sum().backward()
        assert torch.isfinite(out).all()
        assert net.classifier.weight.grad is not None
        loose = loose_ends(arc)
        grads = net.layers[0].final_conv.grad
        assert all(grads[k].abs().sum() > 0 for k in loose)
        assert all(grads[k].abs().sum() == 0 for k in range(5) if k not in loose)
    # same (layer, node, branch, input, op) → same module in every arc; different input → different weights
    layer = net.layers[0]
    assert layer.op(1, 0, 2, 0) is layer.op(1, 0, 2, 0)
    assert layer.op(1, 0, 2, 0) is not layer.op(1, 0, 1, 0)
    assert layer.op(1, 0, 2, 2) is layer.op(0, 1, 0, 2)  # pools are parameter-free and shared


def test_dropout_only_in_training() -> None:
    net = child(dropout=0.5)
    x, arc = grid(4), [0, 5, 1, 2, 2, 3, 0, 4]
    net.eval()
    torch.testing.assert_close(net(x, arc), net(x, arc))
    net.train()
    assert not torch.equal(net(x, arc), net(x, arc))


# ---------------------------------------------------------------------------------------------------------- export


ARCS = [[0, 0, 1, 1], [0, 4, 1, 2, 2, 3, 0, 5], [1, 1, 0, 0, 2, 4, 2, 0], [0, 5, 0, 5, 2, 2, 1, 3]]


def _trained_child(num_cells: int) -> ENASChild:
    """A child whose BN affine params and weights are not at init (so a copying bug would show)."""
    net = child(num_cells=num_cells, num_layers=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.train()
    net(grid(8, seed=3), [0, 0, 1, 1] * num_cells if num_cells == 1 else ARCS[1])  # update stem running stats
    return net.eval()


@pytest.mark.parametrize("arc", ARCS)
def test_export_matches_child_and_rebuilds_from_arc(arc: list[int]) -> None:
    net = _trained_child(len(arc) // 4)
    header = export_header(arc, net).eval()
    x = grid(4, seed=1)
    with torch.no_grad():
        expected = net(x, arc)
        torch.testing.assert_close(header(x), expected, rtol=1e-5, atol=1e-6)
        # from a state dict (e.g. sent over the wire) instead of the module
        torch.testing.assert_close(export_header(arc, net.state_dict()).eval()(x), expected, rtol=1e-5, atol=1e-6)
        # rebuild from the JSON-able arch + state dict
        arch = json.loads(json.dumps(header.arch()))
        rebuilt = SearchedHeader.from_arc(arch)
        rebuilt.load_state_dict(header.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), header(x), rtol=0, atol=0)

    # gates after every dw and pw conv of every separable op, in every layer; only the used ops are built
    n_sep = sum(OPS[op].weighted for op in arc[1::2])
    assert len(gate_layers(header)) == 4 * n_sep * len(header.layers)
    assert all(g.num_channels == C for g in gate_layers(header))
    n_params_ops = sum(p.numel() for layer in header.layers for p in layer.branches.parameters())
    shared = sum(p.numel() for p in net.parameters())
    assert n_params_ops < shared
    if n_sep:  # gates are on the path: pruning one changes the output
        gate = gate_layers(header)[0]
        mask = torch.ones(C)
        mask[0] = 0
        gate.apply_mask(mask)
        with torch.no_grad():
            assert not torch.allclose(header(x), expected)


def test_pw_gate_after_bn_is_equivalent_at_init_and_has_real_importance() -> None:
    net = _trained_child(2)
    arc = ARCS[1]
    x, y = grid(8, seed=4), torch.arange(8) % CLASSES
    before, after = export_header(arc, net), export_header(arc, net, pw_gate_after_bn=True)
    assert SearchedHeader.from_arc(after.arch()).pw_gate_after_bn
    with torch.no_grad():
        torch.testing.assert_close(after.eval()(x), net(x, arc), rtol=1e-5, atol=1e-6)
    importance = {}
    for name, header in (("before", before), ("after", after)):
        header.train()
        torch.nn.functional.cross_entropy(header(x), y).backward()
        importance[name] = {n.rsplit(".", 1)[-1][:7]: 0.0 for n, _ in header.named_modules() if "gate_" in n}
        for n, m in header.named_modules():
            if "gate_" in n:
                importance[name][n.rsplit(".", 1)[-1][:7]] += float((m.weight * m.weight.grad).detach().abs().sum())
    # a gate right before a batch-statistics BN is scaled away: ~0 Taylor importance; behind the BN it is real
    assert importance["before"]["gate_pw"] < 1e-3 * importance["before"]["gate_dw"]
    assert importance["after"]["gate_pw"] > 0.1 * importance["after"]["gate_dw"]


def test_export_rejects_wrong_arc_and_bad_arch() -> None:
    net = child(num_cells=2)
    with pytest.raises(ValueError, match="num_cells=2"):
        export_header([0, 0, 1, 1], net)
    with pytest.raises(ValueError, match="unknown keys"):
        SearchedHeader.from_arc({"arc": [0, 0, 1, 1], "in_channels": 4, "num_classes": 2, "colour": 1})
    with pytest.raises(ValueError, match="num_classes"):
        ChildConfig(in_channels=4, num_classes=0)


def test_export_running_stats_variant_runs_per_sample() -> None:
    header = export_header([0, 1, 1, 3], child(num_cells=1), bn_running_stats=True)
    header.train()
    header(grid(4)).sum().backward()
    header.eval()
    assert header(grid(1)).shape == (1, CLASSES)  # batch of one works: BNs use running statistics
    assert SearchedHeader.from_arc(header.arch()).bn_running_stats


# ----------------------------------------------------------------------------------------------- schedule, sizes


def test_sgdr_restarts_at_lr_max() -> None:
    lrs = [sgdr_lr(e, 0.1, 5e-4, 10, 2) for e in range(80)]
    for restart in (0, 10, 30, 70):
        assert lrs[restart] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[10:29], lrs[11:30], strict=True))  # decreasing within a cycle
    assert lrs[29] < 0.002 and lrs[29] > 5e-4
    assert lrs[5] == pytest.approx(5e-4 + 0.5 * (0.1 - 5e-4))


def test_header_size_rule() -> None:
    assert header_size_for(0.25, 0.25) == (1, 3)
    assert header_size_for(0.5, 0.5) == (1, 3)  # 0.25 is not > 0.25
    assert header_size_for(1.0, 1.0) == (1, 1)
    assert header_size_for(0.75, 0.5, threshold=0.4, small=(2, 1), large=(3, 3)) == (3, 3)
    with pytest.raises(ValueError, match="width"):
        header_size_for(0.0, 1.0)


def test_search_config_validation() -> None:
    assert SearchConfig().to_dict()["controller_betas"] == [0.1, 0.999]
    with pytest.raises(ValueError, match="SearchConfig.epochs"):
        SearchConfig(epochs=0)
    with pytest.raises(ValueError, match="baseline_decay"):
        SearchConfig(baseline_decay=1.0)
    with pytest.raises(ValueError, match="unknown SearchConfig key"):
        SearchConfig.from_dict({"epochz": 3})


# ---------------------------------------------------------------------------------------------------------- search


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, HIDDEN, 1, 1, generator=torch.Generator().manual_seed(99))
    y = torch.randint(CLASSES, (n,), generator=gen)
    return means[y] + 0.8 * torch.randn(n, HIDDEN, 4, 4, generator=gen), y


def tiny_config(**kw: object) -> SearchConfig:
    base = dict(epochs=3, controller_steps=6, batch_size=16, num_cells=2, num_layers=0, out_filters=C,
                lstm_size=16, child_lr_t0=2, num_eval_arcs=2, seed=0)
    return SearchConfig(**{**base, **kw})


def run_proxy_search(cfg: SearchConfig) -> tuple[object, ENASChild]:
    x_tr, y_tr = synthetic(64, 0)
    x_val, y_val = synthetic(32, 1)
    x_sel, y_sel = synthetic(32, 2)
    net = ENASChild(HIDDEN, CLASSES, channels=cfg.out_filters, num_cells=cfg.num_cells, num_layers=cfg.num_layers,
                    seed=cfg.seed)
    source = ProxyReward.from_config(net, cfg, x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val,
                                     x_select=x_sel, y_select=y_sel)
    assert isinstance(source, RewardSource)
    return search(source, cfg, progress=False), net


def test_tiny_search_with_proxy_reward() -> None:
    cfg = tiny_config()
    result, net = run_proxy_search(cfg)
    assert validate_arc(result.best_arc, cfg.num_cells) == result.best_arc
    assert len(result.history) == cfg.epochs
    assert result.best_score == max(r["val_acc"] for r in result.history)
    assert result.history[-1]["child_acc"] > 0.5  # easy synthetic classes are learnt
    assert result.history[0]["lr"] == pytest.approx(cfg.child_lr_max)
    json.dumps(result.to_dict())
    header = export_header(result.best_arc, net).eval()
    assert header(grid(2)).shape == (2, CLASSES)
    # same seed → same search
    again, _ = run_proxy_search(cfg)
    assert again.best_arc == result.best_arc
    assert [r["val_acc"] for r in again.history] == [r["val_acc"] for r in result.history]


class CountingSource:
    """A reward source that is not ProxyReward: toy rewards, batched reward calls, records what the loop calls."""

    def __init__(self) -> None:
        self.train_calls: list[float] = []
        self.batches: list[int] = []
        self.validated: list[list[int]] = []

    def train_child(self, arc_sampler, lr: float) -> dict[str, float]:  # noqa: ANN001
        self.train_calls.append(lr)
        validate_arc(arc_sampler())
        return {"loss": 0.0}

    def reward(self, arc: Sequence[int]) -> float:
        raise AssertionError("batched source: rewards() expected")

    def rewards(self, arcs: list[list[int]]) -> list[float]:
        self.batches.append(len(arcs))
        return [float(arc[1] == 4) for arc in arcs]

    def validate(self, arc: Sequence[int]) -> float:
        self.validated.append(list(arc))
        return float(arc[1] == 4) + 0.01 * arc[3]


class NoConvPreferred(CountingSource):
    """Validation prefers arcs without any separable op."""

    def reward(self, arc: Sequence[int]) -> float:
        return 0.0

    rewards = None  # type: ignore[assignment]

    def validate(self, arc: Sequence[int]) -> float:
        return 0.0 if has_separable_op(arc) else 1.0


def test_search_uses_only_the_source_hooks_and_batches_rewards() -> None:
    source = CountingSource()
    cfg = tiny_config(epochs=4, controller_steps=7, arcs_per_reward_call=3, num_cells=1, eval_every=2)
    result = search(source, cfg, progress=False)
    assert source.batches == [3, 3, 1] * 4
    assert len(source.train_calls) == 4 and source.train_calls[0] == pytest.approx(cfg.child_lr_max)
    assert "val_acc" not in result.history[0] and "val_acc" in result.history[1]
    assert result.best_arc in source.validated
    assert result.best_score == max(source.validate(a) for a in list(source.validated))
    assert not any("val_acc" in r and r["val_arc"] is None for r in result.history)

    # only arcs with a separable op (an exported header with gates) may win when asked
    cfg_gated = tiny_config(epochs=2, controller_steps=2, num_cells=1, select_requires_gates=True)
    gated = search(NoConvPreferred(), cfg_gated, progress=False)
    assert has_separable_op(gated.best_arc)
    plain = search(NoConvPreferred(), tiny_config(epochs=2, controller_steps=2, num_cells=1, num_eval_arcs=30),
                   progress=False)
    assert not has_separable_op(plain.best_arc)
    with pytest.raises(TypeError, match="RewardSource"):
        search(object(), cfg, progress=False)  # type: ignore[arg-type]
