"""Device similarity from feature matrices and the edge's aggregation weights (ACME §4.3).

Each device k contributes a feature matrix ``F_k`` (rows = samples, e.g. 200 CLS vectors grouped by label). The edge
computes pairwise similarities ``s_kj = 1 / (1 + dist(F_k, F_j))`` with one of the registered metrics, symmetrises
``S_sym = sqrt(S ⊙ Sᵀ)`` and turns each row into weights by a softmax. With ``temperature = 1`` the weights are the
original's (nearly uniform, ACME §6.4); lower temperatures sharpen them towards the device itself.

Metrics (as in the original, defects kept on purpose and documented — ACME §7.12):

* ``emd``: 1-D Wasserstein-1 distance between the two *pooled* sets of scalar feature values (ignores which feature
  dimension or sample a value belongs to), computed by ``scipy.stats.wasserstein_distance``.
* ``js``: negative entries clamped to 0, each matrix normalised over *all* its entries, ``+1e-6``, then
  ``d = ½[KL(M‖p) + KL(M‖q)] / rows`` with ``M = (p + q)/2`` — what ``0.5·(kl_div(log p, M, 'batchmean') +
  kl_div(log q, M, 'batchmean'))`` computes in PyTorch (a reversed KL, divided by the number of rows). Rows are
  compared positionally. The original needs both matrices to have the same shape (it fails otherwise); here, when one
  device sent fewer rows (quantity skew: fewer training images than ``strategy.feature_samples``), the larger matrix
  is cut to the same count at evenly spaced rows (:func:`evenly_spaced_rows`), so that its rows, grouped by label,
  keep their order and proportions; equal shapes are compared exactly as in the original.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from acme_flwr.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "aggregation_weights",
    "emd_similarity",
    "evenly_spaced_rows",
    "js_similarity",
    "list_metrics",
    "register_metric",
    "similarity_matrix",
    "wasserstein_1d",
]

Metric = Callable[[np.ndarray, np.ndarray], float]
METRICS: Registry[Metric] = Registry("similarity metric")
register_metric = METRICS.register  # ``fn(F_k, F_j) -> similarity in (0, 1]`` under a name
list_metrics = METRICS.names  # names accepted by :func:`similarity_matrix`

JS_EPSILON = 1e-6


def _as_features(f: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(f)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples × features) matrix; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _pair(f_k: np.ndarray, f_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_features(f_k, "F_k"), _as_features(f_j, "F_j")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature matrices have different column counts: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """W1 between the empirical distributions of the values of ``u`` and ``v``: ∫ |CDF_u − CDF_v| dx
    (``scipy.stats.wasserstein_distance``; scipy comes with scikit-learn). Imported here, not with the module:
    scipy.stats costs ~1.2 s, and only the edge's EMD needs it."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.ravel(u), np.ravel(v)))


@register_metric("emd")
def emd_similarity(f_k: np.ndarray, f_j: np.ndarray) -> float:
    """``1 / (1 + W1(vec F_k, vec F_j))`` — 1-D earth mover's distance between the pooled feature values."""
    a, b = _pair(f_k, f_j)
    return 1.0 / (1.0 + wasserstein_1d(a, b))


def _js_normalise(f: np.ndarray, name: str) -> np.ndarray:
    p = np.maximum(f, 0.0)
    total = p.sum()
    if total <= 0:
        raise ValueError(f"{name} has no positive entries; the JS metric needs some (negatives are clamped to 0)")
    return p / total + JS_EPSILON


def evenly_spaced_rows(f: np.ndarray, rows: int) -> np.ndarray:
    """``rows`` rows of ``f`` at evenly spaced positions, first and last included (``f`` itself when it has that
    many): how JS pairs two devices that sent different numbers of feature rows."""
    if f.shape[0] == rows:
        return f
    return f[np.round(np.linspace(0, f.shape[0] - 1, rows)).astype(int)]


@register_metric("js")
def js_similarity(f_k: np.ndarray, f_j: np.ndarray) -> float:
    """``1 / (1 + d)`` with the original's Jensen–Shannon-like ``d`` (see the module docstring)."""
    a, b = _pair(f_k, f_j)
    rows = min(a.shape[0], b.shape[0])
    a, b = evenly_spaced_rows(a, rows), evenly_spaced_rows(b, rows)
    p, q = _js_normalise(a, "F_k"), _js_normalise(b, "F_j")
    m = 0.5 * (p + q)
    kl_mp = np.sum(m * (np.log(m) - np.log(p))) / rows
    kl_mq = np.sum(m * (np.log(m) - np.log(q))) / rows
    return 1.0 / (1.0 + 0.5 * (kl_mp + kl_mq))


def similarity_matrix(features: Sequence[np.ndarray], metric: str = "emd") -> np.ndarray:
    """Pairwise ``S[k, j] = metric(F_k, F_j)`` for the devices in ``features`` (in the given order)."""
    fn = METRICS.get(metric)
    if len(features) == 0:
        raise ValueError("features is empty: need one feature matrix per device")
    mats = [_as_features(f, f"features[{i}]") for i, f in enumerate(features)]
    cols = {m.shape[1] for m in mats}
    if len(cols) > 1:
        shapes = [m.shape for m in mats]
        raise ValueError(f"feature matrices have different column counts: shapes {shapes}")
    n = len(mats)
    s = np.empty((n, n))
    for k in range(n):
        for j in range(n):
            s[k, j] = fn(mats[k], mats[j])
    logger.debug("similarity_matrix(%s) for %d devices", metric, n)
    return s


def aggregation_weights(s: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-softmax of ``sqrt(S ⊙ Sᵀ) / temperature``; rows sum to 1 (``temperature=1`` is the original)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"similarity matrix must be square and non-empty; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("similarity matrix contains NaN or Inf")
    if np.any(s < 0):
        raise ValueError("similarity matrix has negative entries; similarities must be >= 0")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    z = np.sqrt(s * s.T) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))  # shift for stability; softmax is shift-invariant
    return z / z.sum(axis=1, keepdims=True)
