"""PFG: pick a sub-backbone (width, depth) per device class on an accuracy/latency/energy grid front (ACME §2.8).

The cloud holds a measured accuracy table of the trained (depth, width) sub-networks. PFG

1. fits a quadratic accuracy surface ``Â(d, w)`` to that table (least squares, clipped to [0, 1]);
2. evaluates it and a cost model (size, latency, energy) on a ``grid_points × grid_points`` candidate grid in [0, 1]²;
3. min-max normalises size, latency and energy over the candidates (accuracy is *not* normalised, as in the original);
4. splits the (Â, T̃, Ẽ) cube into K³ cells between the ideal point (1, 0, 0) and the nadir (0, 1, 1) and keeps, per
   occupied cell, the candidate nearest to the ideal point (the "front"; cells with index outside 1..K are dropped,
   which silently removes the empty and the full model — a documented quirk of the original, ACME §7.16);
5. returns the front candidate with the highest Â among those with normalised size S̃ ≤ ``size_constraint``.

The original baselines (highest accuracy, largest size, random, traverse, worst) are selectors in the same registry.
Where several candidates tie on the quantity a selector optimises (``largest_size``: the unit counts are integers, so
several (w, d) share one size), the tie goes to the higher Â, then to the first candidate in grid order. With
:class:`OriginalCostModel` (the default) the published numbers of ACME §2.8 / §6.2 are reproduced exactly. The pick
is a point of the continuous candidate grid; :func:`snap_to_grid` maps it to a trained grid point.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from acme_flwr.registry import Registry

from .cost_models import (
    CostModel,
    OriginalCostModel,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CandidateGrid",
    "build_candidates",
    "fit_accuracy_surface",
    "grid_front",
    "list_selectors",
    "register_selector",
    "select_backbone",
    "snap_to_grid",
]


# --------------------------------------------------------------------------------------------------------------------
# Accuracy surface and candidate grid
# --------------------------------------------------------------------------------------------------------------------


def _poly_features(d: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray:
    """sklearn ``PolynomialFeatures`` order for two inputs (d, w): 1, d, w, d², d·w, w², d³, …"""
    cols = [d ** (k - j) * w**j for k in range(degree + 1) for j in range(k + 1)]
    return np.stack(cols, axis=-1)


def _validate_table(accuracy_table: Sequence[Sequence[float]]) -> np.ndarray:
    table = np.asarray(accuracy_table, dtype=float) if len(accuracy_table) else np.zeros((0, 3))
    if table.size == 0:
        raise ValueError("accuracy_table is empty: need (depth, width, accuracy) rows of the trained sub-networks")
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"accuracy_table rows must be (depth, width, accuracy); got array of shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError("accuracy_table contains NaN or Inf")
    for col, name in ((0, "depth"), (1, "width")):
        bad = table[(table[:, col] <= 0) | (table[:, col] > 1), col]
        if bad.size:
            raise ValueError(f"accuracy_table {name} ratios must lie in (0, 1]; got {bad.tolist()}")
    bad = table[(table[:, 2] < 0) | (table[:, 2] > 1), 2]
    if bad.size:
        raise ValueError(f"accuracy_table accuracies must be fractions in [0, 1]; got {bad.tolist()}")
    return table


def fit_accuracy_surface(
    accuracy_table: Sequence[Sequence[float]], degree: int = 2
) -> tuple[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Least-squares polynomial ``Â(d, w)`` (sklearn feature order) → ``(beta, predict(d, w) clipped to [0, 1])``.

    With fewer distinct (d, w) points than coefficients the degree is lowered (logged) so the fit stays determined.
    """
    table = _validate_table(accuracy_table)
    distinct = len({(r[0], r[1]) for r in table})
    while degree > 0 and (degree + 1) * (degree + 2) // 2 > distinct:
        degree -= 1
        logger.warning("accuracy_table has only %d distinct points; surface degree lowered to %d", distinct, degree)
    x = _poly_features(table[:, 0], table[:, 1], degree)
    beta, *_ = np.linalg.lstsq(x, table[:, 2], rcond=None)

    def predict(d: np.ndarray, w: np.ndarray) -> np.ndarray:
        d, w = np.asarray(d, dtype=float), np.asarray(w, dtype=float)
        return np.clip(_poly_features(d, w, degree) @ beta, 0.0, 1.0)

    return beta, predict


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x, dtype=float)


@dataclass(frozen=True)
class CandidateGrid:
    """All candidates in the original's order (width outer, depth inner) with normalised costs."""

    width: np.ndarray
    depth: np.ndarray
    accuracy: np.ndarray
    size: np.ndarray  # normalised S̃
    latency: np.ndarray  # normalised T̃
    energy: np.ndarray  # normalised Ẽ
    heads: np.ndarray
    layers: np.ndarray

    def row(self, i: int) -> dict[str, float | int]:
        """One candidate as the result dict."""
        return {
            "width": float(self.width[i]),
            "depth": float(self.depth[i]),
            "accuracy": float(self.accuracy[i]),
            "size": float(self.size[i]),
            "energy": float(self.energy[i]),
            "latency": float(self.latency[i]),
            "heads": int(self.heads[i]),
            "layers": int(self.layers[i]),
        }


def build_candidates(
    accuracy_table: Sequence[Sequence[float]], cost_model: CostModel | None = None, grid_points: int = 20
) -> CandidateGrid:
    """Evaluate the accuracy surface and the cost model on ``linspace(0, 1, grid_points)²``."""
    if int(grid_points) != grid_points or grid_points < 2:
        raise ValueError(f"grid_points must be an integer >= 2; got {grid_points}")
    cost_model = cost_model or OriginalCostModel()
    _, predict = fit_accuracy_surface(accuracy_table)
    ratios = np.linspace(0.0, 1.0, int(grid_points))
    w, d = (a.ravel() for a in np.meshgrid(ratios, ratios, indexing="ij"))  # width outer, depth inner
    costs = {name: np.asarray(getattr(cost_model, name)(w, d), dtype=float) for name in ("size", "latency", "energy")}
    for name, values in costs.items():
        if values.shape != w.shape or not np.all(np.isfinite(values)):
            raise ValueError(f"cost model {type(cost_model).__name__}.{name} returned non-finite or mis-shaped values")
    return CandidateGrid(
        width=w,
        depth=d,
        accuracy=predict(d, w),
        size=_minmax(costs["size"]),
        latency=_minmax(costs["latency"]),
        energy=_minmax(costs["energy"]),
        heads=np.asarray(cost_model.heads(w)),
        layers=np.asarray(cost_model.layers(d)),
    )


def grid_front(grid: CandidateGrid, cells: int = 10, sigma: float = 1e-6) -> np.ndarray:
    """Indices of the per-cell representatives (nearest to the ideal point) in cell order (l, m, n), as the original.

    Cell index per axis is ``ceil((I − x + σ) / r)`` with ``r = (I − N + 2σ) / K``; out-of-range cells are dropped.
    """
    pts = np.stack([grid.accuracy, grid.latency, grid.energy], axis=1)
    ideal, nadir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0])
    r = (ideal - nadir + 2 * sigma) / cells
    idx = np.ceil((ideal - pts + sigma) / r).astype(int)
    inside = np.all((idx >= 1) & (idx <= cells), axis=1)
    dist = np.linalg.norm(pts - ideal, axis=1)
    best: dict[tuple[int, int, int], int] = {}
    for i in np.flatnonzero(inside):
        key = (int(idx[i, 0]), int(idx[i, 1]), int(idx[i, 2]))
        if key not in best or dist[i] < dist[best[key]]:  # strict: first candidate wins ties (pandas idxmin)
            best[key] = int(i)
    return np.array([best[k] for k in sorted(best)], dtype=int)


# --------------------------------------------------------------------------------------------------------------------
# Selectors (registry by decorator)
# --------------------------------------------------------------------------------------------------------------------

Selector = Callable[[CandidateGrid, float, int], int]
SELECTORS: Registry[Selector] = Registry("backbone selection method")
register_selector = SELECTORS.register  # ``fn(grid, size_constraint, seed) -> candidate index`` under a name
list_selectors = SELECTORS.names  # names accepted by ``select_backbone(method=...)``


def _feasible(grid: CandidateGrid, size_constraint: float) -> np.ndarray:
    idx = np.flatnonzero(grid.size <= size_constraint)
    if idx.size == 0:
        raise ValueError(f"no candidate has normalised size <= size_constraint={size_constraint}")
    return idx


def _first_argmax(idx: np.ndarray, key: np.ndarray) -> int:
    return int(idx[np.argmax(key[idx])])


def _argmax_then_accuracy(idx: np.ndarray, key: np.ndarray, grid: CandidateGrid) -> int:
    """Candidate of ``idx`` with the largest ``key``; exact ties go to the higher Â, then to the first in grid order.

    Ties are common: the unit counts are integers, so several ratios share one (heads, layers) and the same cost.
    """
    best = idx[key[idx] == key[idx].max()]
    return _first_argmax(best, grid.accuracy)


@register_selector("pfg")
def _select_pfg(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    front = grid_front(grid)
    front = front[grid.size[front] <= size_constraint]
    if front.size == 0:
        raise ValueError(f"no PFG front point has normalised size <= size_constraint={size_constraint}")
    return _first_argmax(front, grid.accuracy)


@register_selector("highest_accuracy")
def _select_highest_accuracy(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    return _first_argmax(_feasible(grid, size_constraint), grid.accuracy)


@register_selector("largest_size")
def _select_largest_size(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    return _argmax_then_accuracy(_feasible(grid, size_constraint), grid.size, grid)


@register_selector("random")
def _select_random(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    # pandas ``DataFrame.sample(n=1, random_state=seed)`` == ``RandomState(seed).permutation(len)[0]``.
    idx = _feasible(grid, size_constraint)
    return int(idx[np.random.RandomState(seed).permutation(idx.size)[0]])


@register_selector("traverse")
def _select_traverse(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    idx = _feasible(grid, size_constraint)
    return _argmax_then_accuracy(idx, -(grid.energy + grid.size - grid.accuracy), grid)  # min Ẽ + S̃ − Â


@register_selector("worst")
def _select_worst(grid: CandidateGrid, size_constraint: float, seed: int) -> int:
    idx = _feasible(grid, size_constraint)
    idx = idx[grid.accuracy[idx] > 0]
    if idx.size == 0:
        raise ValueError("worst: no feasible candidate with predicted accuracy > 0")
    order = np.lexsort((-grid.size[idx], -grid.energy[idx], grid.accuracy[idx]))  # last key is primary
    return int(idx[order[0]])


def select_backbone(
    accuracy_table: Sequence[Sequence[float]],
    size_constraint: float,
    method: str = "pfg",
    cost_model: CostModel | None = None,
    grid_points: int = 20,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Pick a sub-backbone; returns ``width, depth, accuracy (Â), size (S̃), energy (Ẽ), latency (T̃), heads, layers``.

    ``accuracy_table`` is a list of ``(depth, width, accuracy)`` rows (as the original); ``size_constraint`` is the
    normalised-size bound in (0, 1]; ``method`` one of :func:`list_selectors`. Raises ``ValueError`` for a bound
    outside (0, 1] or when nothing the method may pick fits it (``pfg``: no front point, ``worst``: no candidate with
    Â > 0; the baselines always fit, since the smallest candidate has S̃ = 0).
    """
    selector = SELECTORS.get(method)
    if (
        isinstance(size_constraint, bool)
        or not isinstance(size_constraint, numbers.Real)
        or not 0 < size_constraint <= 1
    ):
        raise ValueError(f"size_constraint must be in (0, 1]; got {size_constraint!r}")
    grid = build_candidates(accuracy_table, cost_model, grid_points)
    i = selector(grid, float(size_constraint), seed)
    result: dict[str, float | int | str] = {**grid.row(i), "method": method}
    logger.info(
        "select_backbone(%s): w=%.4f d=%.4f Â=%.6f S̃=%.6f Ẽ=%.6f",
        method,
        result["width"],
        result["depth"],
        result["accuracy"],
        result["size"],
        result["energy"],
    )
    return result


# --------------------------------------------------------------------------------------------------------------------
# Sub-backbone helpers for the packages
# --------------------------------------------------------------------------------------------------------------------


def _check_ratios(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(sorted({float(v) for v in values}))
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = arr[(arr <= 0) | (arr > 1) | ~np.isfinite(arr)]
    if bad.size:
        raise ValueError(f"{name} must lie in (0, 1]; got {bad.tolist()}")
    return arr


def snap_to_grid(
    choice: Mapping[str, float] | tuple[float, float],
    widths: Sequence[float],
    depths: Sequence[float],
    size_constraint: float | None = None,
    cost_model: CostModel | None = None,
    grid_points: int = 20,
) -> dict[str, float]:
    """Nearest trained grid point (Euclidean in (w, d); ties → the smaller one) to a PFG pick.

    ``choice`` is a :func:`select_backbone` result or a ``(width, depth)`` tuple. With ``size_constraint``, only grid
    points whose normalised size (same normalisation as :func:`select_backbone`: min-max over the candidate grid of
    ``cost_model``) is within the constraint are eligible, so snapping never exceeds the device budget.
    """
    w0, d0 = (choice["width"], choice["depth"]) if isinstance(choice, Mapping) else choice
    ws, ds = _check_ratios(widths, "widths"), _check_ratios(depths, "depths")
    gw, gd = (a.ravel() for a in np.meshgrid(ws, ds, indexing="ij"))
    eligible = np.ones(gw.size, dtype=bool)
    sizes = np.full(gw.size, np.nan)
    if size_constraint is not None:
        if not 0 < size_constraint <= 1:
            raise ValueError(f"size_constraint must be in (0, 1]; got {size_constraint!r}")
        cm = cost_model or OriginalCostModel()
        ratios = np.linspace(0.0, 1.0, int(grid_points))
        cw, cd = (a.ravel() for a in np.meshgrid(ratios, ratios, indexing="ij"))
        all_sizes = np.asarray(cm.size(cw, cd), dtype=float)
        lo, hi = all_sizes.min(), all_sizes.max()
        sizes = (np.asarray(cm.size(gw, gd), dtype=float) - lo) / (hi - lo if hi > lo else 1.0)
        eligible = sizes <= size_constraint + 1e-12
        if not eligible.any():
            raise ValueError(f"no trained grid point fits size_constraint={size_constraint}")
    dist = np.hypot(gw - w0, gd - d0)
    key = np.where(eligible, dist, np.inf)
    order = np.lexsort((gw + gd, key))
    i = int(order[0])
    return {"width": float(gw[i]), "depth": float(gd[i]), "distance": float(dist[i]), "size": float(sizes[i])}

