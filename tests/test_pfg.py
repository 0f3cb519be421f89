"""PFG backbone selection: exact reproduction of the published numbers (ACME §2.8, §6.2) and cost models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from acme_flwr.cloud import pfg
from acme_flwr.cloud.cost_models import (
    MacsCostModel,
    MeasuredLatencyCostModel,
    OriginalCostModel,
    ParamCountCostModel,
    ViTArch,
    vit_macs,
    vit_param_count,
)
from acme_flwr.cloud.pfg import (
    CandidateGrid,
    build_candidates,
    fit_accuracy_surface,
    grid_front,
    list_selectors,
    register_selector,
    select_backbone,
    snap_to_grid,
)

# The 16-point "Linear" table of ACME §6.1 == eval_PFG.py:existing_data, rows (depth, width, accuracy).
LINEAR = [
    (1.0, 1.0, 0.9207),
    (1.0, 0.75, 0.906),
    (1.0, 0.5, 0.8677),
    (1.0, 0.25, 0.7054),
    (0.75, 1.0, 0.8955),
    (0.75, 0.75, 0.8723),
    (0.75, 0.5, 0.8075),
    (0.75, 0.25, 0.6206),
    (0.5, 1.0, 0.7921),
    (0.5, 0.75, 0.7337),
    (0.5, 0.5, 0.6401),
    (0.5, 0.25, 0.4236),
    (0.25, 1.0, 0.4381),
    (0.25, 0.75, 0.399),
    (0.25, 0.5, 0.3375),
    (0.25, 0.25, 0.2262),
]
GRID = [0.25, 0.5, 0.75, 1.0]


def test_beta_coefficients() -> None:
    beta, predict = fit_accuracy_surface(LINEAR)
    expected = [-0.46675, 1.92620, 1.05886, -0.98480, -0.055776, -0.54160]
    np.testing.assert_allclose(beta, expected, atol=5e-6)
    assert 0.0 <= predict(np.array(0.0), np.array(0.0)) <= 1.0  # clipped


def test_pfg_reproduces_published_optimum() -> None:
    r = select_backbone(LINEAR, 0.8)
    assert r["width"] == pytest.approx(18 / 19) and r["depth"] == pytest.approx(14 / 19)
    assert (r["heads"], r["layers"]) == (11, 8)
    assert r["accuracy"] == pytest.approx(0.895977, abs=1e-6)
    assert r["size"] == pytest.approx(0.666729, abs=1e-6)
    assert r["energy"] == pytest.approx(0.568546, abs=1e-6)
    assert r["latency"] == pytest.approx(0.6111, abs=1e-4)
    assert len(grid_front(build_candidates(LINEAR))) == 45  # ACME §2.8: 45 front points


def test_baselines_reproduce_published_numbers() -> None:
    hi = select_backbone(LINEAR, 0.8, method="highest_accuracy")
    assert hi["accuracy"] == pytest.approx(0.915464, abs=1e-6)
    assert hi["size"] == pytest.approx(0.750042, abs=1e-6) and hi["energy"] == pytest.approx(0.649021, abs=1e-6)
    assert (hi["width"], hi["depth"]) == pytest.approx((18 / 19, 15 / 19))
    big = select_backbone(LINEAR, 0.8, method="largest_size")
    assert big["accuracy"] == pytest.approx(0.913366, abs=1e-6)
    assert big["size"] == pytest.approx(0.750063, abs=1e-6) and big["energy"] == pytest.approx(0.716418, abs=1e-6)
    # trade-off acc − ½(size + energy): PFG beats both baselines (+28.9 % vs highest accuracy, ACME §6.2)
    pfg = select_backbone(LINEAR, 0.8)
    trade = {k: v["accuracy"] - 0.5 * (v["size"] + v["energy"]) for k, v in (("pfg", pfg), ("hi", hi), ("big", big))}
    assert trade["pfg"] / trade["hi"] - 1 == pytest.approx(0.289, abs=2e-3)


CONSTRAINTS = [0.3, 0.5, 0.6, 0.8, 0.9]
METHODS = ["pfg", "highest_accuracy", "largest_size", "random", "traverse", "worst"]
BETA = [-0.46675, 1.92620, 1.05886, -0.98480, -0.055776, -0.54160]  # ACME §2.8


def beta_surface(d: float, w: float) -> float:
    """Â(d, w) from the original's rounded coefficients."""
    return float(np.dot(BETA, [1, d, w, d * d, d * w, w * w]))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_respects_constraint(method: str, constraint: float) -> None:
    r = select_backbone(LINEAR, constraint, method=method, seed=3)
    assert r["method"] == method and r["size"] <= constraint
    # the reported S̃ is the pick's own normalised size under the default (original) cost model
    heads, layers = int(12 * r["width"] + 1e-9), int(12 * r["depth"] + 1e-9)
    assert (r["heads"], r["layers"]) == (heads, layers)
    assert r["size"] == pytest.approx((768 * heads + 3_060_000 * layers) / (12 * 768 + 12 * 3_060_000), abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_infeasible_constraint_behaves_as_documented(method: str) -> None:
    for bad in (0.0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match="size_constraint must be in"):
            select_backbone(LINEAR, bad, method=method)
    # S̃ <= 1e-4 admits only 0 layers and <= 4 heads: no PFG front point (those need >= 1 of each, S̃ >= 0.0834) and
    # no candidate with Â > 0, so pfg and worst raise; the other baselines still fit (w = d = 0 has S̃ = 0)
    tiny = 1e-4
    if method == "pfg":
        with pytest.raises(ValueError, match="no PFG front point"):
            select_backbone(LINEAR, tiny, method=method)
    elif method == "worst":
        with pytest.raises(ValueError, match="predicted accuracy > 0"):
            select_backbone(LINEAR, tiny, method=method)
    else:
        assert select_backbone(LINEAR, tiny, method=method)["size"] <= tiny
    assert OriginalCostModel().size(np.array([0.0]), np.array([0.0]))[0] == 0


# largest_size on the LINEAR table (original costs, linspace(0, 1, 20)): the largest (heads, layers) whose
# S̃ = (768·n_w + 3.06e6·n_d) / (12·768 + 12·3.06e6) fits, worked out by hand, and the ratios that truncate to it
# (k/19 → int(12k/19)). Several ratios share a size at 0.3, 0.5 and 0.9: the pick is the one with the higher Â.
LARGEST = {  # constraint: ((heads, layers), tied (w·19, d·19) candidates, expected (w·19, d·19))
    0.3: ((12, 3), [(19, 5), (19, 6)], (19, 6)),
    0.5: ((6, 6), [(10, 10), (10, 11), (11, 10), (11, 11)], (11, 11)),
    0.6: ((12, 7), [(19, 12)], (19, 12)),
    0.8: ((12, 9), [(19, 15)], (19, 15)),
    0.9: ((12, 10), [(19, 16), (19, 17)], (19, 17)),
}


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_largest_size_breaks_ties_toward_higher_accuracy(constraint: float) -> None:
    (heads, layers), tied, (w19, d19) = LARGEST[constraint]
    r = select_backbone(LINEAR, constraint, method="largest_size")
    assert (r["heads"], r["layers"]) == (heads, layers)
    assert (r["width"], r["depth"]) == pytest.approx((w19 / 19, d19 / 19))
    assert r["accuracy"] == pytest.approx(beta_surface(d19 / 19, w19 / 19), abs=2e-5)
    assert r["accuracy"] == pytest.approx(max(beta_surface(d / 19, w / 19) for w, d in tied), abs=2e-5)
    grid = build_candidates(LINEAR)
    same = np.flatnonzero(grid.size == r["size"])
    assert sorted((round(grid.width[i] * 19), round(grid.depth[i] * 19)) for i in same) == tied
    if constraint == 0.8:  # the original's published pick (no tie there)
        assert r["accuracy"] == pytest.approx(0.913366, abs=1e-6) and r["size"] == pytest.approx(0.750063, abs=1e-6)


def _hand_grid(size: list[float], accuracy: list[float]) -> CandidateGrid:
    n = len(size)
    zeros = np.zeros(n)
    return CandidateGrid(width=np.linspace(0.1, 1, n), depth=np.linspace(0.1, 1, n), accuracy=np.array(accuracy),
                         size=np.array(size), latency=zeros, energy=zeros, heads=np.ones(n, int),
                         layers=np.ones(n, int))


def test_tie_breaking_on_a_hand_made_grid() -> None:
    # candidates 1 and 2 tie on the largest feasible size; 2 predicts more: it wins, wherever it sits in the order
    grid = _hand_grid([0.2, 0.5, 0.5, 0.9], [0.9, 0.4, 0.6, 0.95])
    assert pfg.SELECTORS.get("largest_size")(grid, 0.6, 0) == 2
    grid = _hand_grid([0.2, 0.5, 0.5, 0.9], [0.9, 0.6, 0.4, 0.95])
    assert pfg.SELECTORS.get("largest_size")(grid, 0.6, 0) == 1
    # full tie (same size, same Â): the first candidate, as the original's idxmax
    grid = _hand_grid([0.5, 0.5], [0.7, 0.7])
    assert pfg.SELECTORS.get("largest_size")(grid, 0.6, 0) == 0
    # traverse (min Ẽ + S̃ − Â): candidates 0 and 1 tie on the score (exactly 0); 1 predicts more and wins
    grid = _hand_grid([0.25, 0.5, 0.5], [0.25, 0.5, 0.3])
    assert pfg.SELECTORS.get("traverse")(grid, 0.6, 0) == 1


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_selectors_pick_the_best_feasible_candidate(constraint: float) -> None:
    grid = build_candidates(LINEAR)
    feasible = np.flatnonzero(grid.size <= constraint)
    pick = {m: pfg.SELECTORS.get(m)(grid, constraint, 0) for m in METHODS}
    assert all(grid.size[i] <= constraint for i in pick.values())
    assert grid.accuracy[pick["highest_accuracy"]] == grid.accuracy[feasible].max()
    big = pick["largest_size"]
    assert grid.size[big] == grid.size[feasible].max()
    assert grid.accuracy[big] == grid.accuracy[feasible[grid.size[feasible] == grid.size[big]]].max()
    front = grid_front(grid)
    front = front[grid.size[front] <= constraint]
    assert pick["pfg"] in front and grid.accuracy[pick["pfg"]] == grid.accuracy[front].max()
    score = grid.energy + grid.size - grid.accuracy
    assert score[pick["traverse"]] == score[feasible].min()
    positive = feasible[grid.accuracy[feasible] > 0]
    assert grid.accuracy[pick["worst"]] == grid.accuracy[positive].min()


def test_registry_and_unknown_method() -> None:
    assert set(list_selectors()) >= {"pfg", "highest_accuracy", "largest_size", "random", "traverse", "worst"}
    with pytest.raises(ValueError, match=r"allowed.*highest_accuracy"):
        select_backbone(LINEAR, 0.8, method="best")

    def _smallest(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
        return int(np.argmin(grid.size + 10 * (grid.accuracy == 0)))

    register_selector("smallest_for_test")(_smallest)
    try:
        assert select_backbone(LINEAR, 0.8, method="smallest_for_test")["accuracy"] > 0
    finally:
        pfg.SELECTORS.unregister("smallest_for_test")
    with pytest.raises(ValueError, match="already registered"):
        register_selector("pfg")(_smallest)


@pytest.mark.parametrize(
    ("table", "constraint", "match"),
    [
        ([], 0.8, "empty"),
        (LINEAR, 0.0, "size_constraint"),
        (LINEAR, 1.5, "size_constraint"),
        ([(0.5, 1.2, 0.5), *LINEAR], 0.8, "width"),
        ([(0.0, 0.5, 0.5), *LINEAR], 0.8, "depth"),
        ([(0.5, 0.5, 85.0), *LINEAR], 0.8, "accuracies"),
        ([(0.5, 0.5, float("nan")), *LINEAR], 0.8, "NaN"),
        ([(0.5, 0.5)], 0.8, "rows"),
    ],
)
def test_bad_input(table: list, constraint: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_backbone(table, constraint)


def test_analytic_vit_counts_match_anchors() -> None:
    arch = ViTArch()
    params = vit_param_count(arch, np.array([12, 3, 6]), np.array([12, 3, 12]))
    np.testing.assert_allclose(params, [85.80e6, 6.07e6, 43.30e6], rtol=1e-3)
    macs = vit_macs(arch, np.array([12, 3]), np.array([12, 3]))
    np.testing.assert_allclose(macs, [17.56e9, 1.21e9], atol=0.005e9)  # published figures round to 0.01 GMAC


def test_alternative_cost_models() -> None:
    for cm in (ParamCountCostModel(), MacsCostModel(), ParamCountCostModel(param_fn=lambda w, d: 1 + w * d)):
        r = select_backbone(LINEAR, 0.6, cost_model=cm)
        assert r["size"] <= 0.6 and 0 < r["accuracy"] <= 1
    with pytest.raises(ValueError, match="either arch or param_fn"):
        ParamCountCostModel(arch=ViTArch(), param_fn=lambda w, d: w)


def test_measured_latency_interpolates() -> None:
    lat = {(w, d): 0.01 + 0.2 * w * d for w in GRID for d in GRID}
    cm = MeasuredLatencyCostModel(lat)
    np.testing.assert_allclose(cm.latency(np.array([0.25, 1.0]), np.array([0.25, 1.0])), [0.0225, 0.21])
    # bilinear data is reproduced exactly between and (linearly) outside the measured points
    np.testing.assert_allclose(cm.latency(np.array([0.6, 0.1]), np.array([0.9, 0.1])), [0.118, 0.012])
    assert select_backbone(LINEAR, 0.8, cost_model=cm)["size"] <= 0.8
    del lat[(0.5, 0.5)]
    with pytest.raises(ValueError, match="missing"):
        MeasuredLatencyCostModel(lat)


def test_measured_latency_from_json(tmp_path: Path) -> None:
    lat = {(w, d): 0.01 + 0.2 * w * d for w in GRID for d in GRID}
    path = tmp_path / "lat.json"
    path.write_text(json.dumps([{"width": w, "depth": d, "latency": v} for (w, d), v in lat.items()]))
    probe = np.array([0.1, 0.6, 1.0]), np.array([0.3, 0.9, 1.0])
    cm = MeasuredLatencyCostModel.from_json(path)
    np.testing.assert_allclose(cm.latency(*probe), MeasuredLatencyCostModel(lat).latency(*probe))
    np.testing.assert_allclose(cm.energy(*probe), cm.latency(*probe))  # no energy column: watts (1) · latency
    path.write_text(json.dumps([{"width": w, "depth": d, "latency": v, "energy": 3 * v} for (w, d), v in lat.items()]))
    np.testing.assert_allclose(MeasuredLatencyCostModel.from_json(path).energy(*probe), 3 * cm.latency(*probe))
    assert select_backbone(LINEAR, 0.6, cost_model=cm)["size"] <= 0.6


@pytest.mark.parametrize(("records", "needle"), [
    ({"width": 0.5}, "expected a JSON list"),
    ([], "expected a JSON list"),
    ([{"width": 0.5, "depth": 0.5, "latency": "fast"}], "record 0"),
    ([{"width": 0.5, "depth": 0.5, "latency": 1.0, "watts": 2}], "record 0"),
    ([{"width": 0.5, "depth": 0.5, "latency": 1.0}] * 2, "appears twice"),
    ([{"width": w, "depth": d, "latency": 1.0, **({"energy": 1.0} if w == 1 else {})} for w in GRID for d in GRID],
     "every record or in none"),
    ([{"width": w, "depth": d, "latency": -1.0} for w in GRID for d in GRID], "non-negative"),
    ([{"width": 2 * w, "depth": d, "latency": 1.0} for w in GRID for d in GRID], r"ratios in \(0, 1\]"),
])
def test_measured_latency_bad_json(records: object, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=needle):
        MeasuredLatencyCostModel.from_json(path)
    with pytest.raises(ValueError, match="cannot read latency table"):
        MeasuredLatencyCostModel.from_json(tmp_path / "missing.json")


def test_snap_to_grid_respects_constraint() -> None:
    pick = select_backbone(LINEAR, 0.8)
    assert snap_to_grid(pick, GRID, GRID)["width"] == 1.0
    snapped = snap_to_grid(pick, GRID, GRID, size_constraint=0.8)
    assert (snapped["width"], snapped["depth"]) == (1.0, 0.75) and snapped["size"] <= 0.8
    tight = snap_to_grid(pick, GRID, GRID, size_constraint=0.6)  # (1.0, 0.75) no longer fits
    assert tight["size"] <= 0.6 and (tight["width"], tight["depth"]) == (1.0, 0.5)
    assert snap_to_grid((0.3, 0.3), GRID, GRID)["width"] == 0.25
    with pytest.raises(ValueError, match="widths"):
        snap_to_grid(pick, [0.0, 0.5], GRID)
    with pytest.raises(ValueError, match="no trained grid point"):
        snap_to_grid(pick, GRID, GRID, size_constraint=0.01)

