"""Device similarity (EMD / JS) and softmax aggregation weights against hand-computed values (ACME §4.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acme_flwr.edge.similarity import (
    aggregation_weights,
    emd_similarity,
    evenly_spaced_rows,
    js_similarity,
    list_metrics,
    similarity_matrix,
    wasserstein_1d,
)


def test_emd_hand_computed() -> None:
    # pooled values {0, 1} vs {1, 2}: a shift by 1 → W1 = 1 → s = 1/2
    assert emd_similarity(np.array([[0.0, 1.0]]), np.array([[1.0, 2.0]])) == pytest.approx(0.5)
    # {0, 0, 0, 4} vs {1, 1, 1, 1}: equal sizes → mean |sorted diff| = (1 + 1 + 1 + 3)/4 = 1.5 → s = 0.4
    assert emd_similarity(np.array([[0, 0], [0, 4.0]]), np.ones((2, 2))) == pytest.approx(0.4)
    # unequal sample counts: {0, 1} vs {0}: CDFs differ by 1/2 on [0, 1) → W1 = 0.5 → s = 2/3
    assert emd_similarity(np.array([[0.0], [1.0]]), np.array([[0.0]])) == pytest.approx(2 / 3)
    # identical distributions, whatever the order of the values
    assert emd_similarity(np.array([[3.0, 1.0]]), np.array([[1.0], [3.0]]).T) == pytest.approx(1.0)


def test_emd_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 8)), rng.normal(0.3, 2.0, size=(13, 8))
    assert wasserstein_1d(a, b) == pytest.approx(stats.wasserstein_distance(a.ravel(), b.ravel()), rel=1e-12)


def test_js_hand_computed() -> None:
    eps = 1e-6
    f_k, f_j = np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])
    p = np.array([0.5 + eps, 0.5 + eps])
    q = np.array([1.0 + eps, 0.0 + eps])
    m = (p + q) / 2
    kl_mp = m[0] * math.log(m[0] / p[0]) + m[1] * math.log(m[1] / p[1])
    kl_mq = m[0] * math.log(m[0] / q[0]) + m[1] * math.log(m[1] / q[1])
    expected = 1 / (1 + 0.5 * (kl_mp + kl_mq) / 1)  # one row
    assert js_similarity(f_k, f_j) == pytest.approx(expected, rel=1e-12)


def test_js_clamps_normalises_and_divides_by_rows() -> None:
    # negatives clamp to 0 and the whole matrix is normalised: [[-3, 1], [1, 2]] → [[0, 1], [1, 2]] / 4
    f_k = np.array([[-3.0, 1.0], [1.0, 2.0]])
    f_j = np.array([[1.0, 1.0], [1.0, 1.0]])
    p = np.array([0.0, 0.25, 0.25, 0.5]) + 1e-6
    q = np.full(4, 0.25) + 1e-6
    m = (p + q) / 2
    d = 0.5 * (np.sum(m * np.log(m / p)) + np.sum(m * np.log(m / q))) / 2  # / rows
    assert js_similarity(f_k, f_j) == pytest.approx(1 / (1 + d), rel=1e-12)
    # the original's torch expression gives the same number
    torch = pytest.importorskip("torch")
    kl = torch.nn.functional.kl_div
    pt, qt, mt = (torch.tensor(x, dtype=torch.float64).reshape(2, 2) for x in (p, q, m))
    d_torch = 0.5 * (kl(pt.log(), mt, reduction="batchmean") + kl(qt.log(), mt, reduction="batchmean"))
    assert js_similarity(f_k, f_j) == pytest.approx(1 / (1 + d_torch.item()), rel=1e-12)
    assert js_similarity(f_k, f_k) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["emd", "js"])
def test_similarity_matrix_properties(metric: str) -> None:
    rng = np.random.default_rng(1)
    feats = [rng.normal(loc, 1.0, size=(10, 6)) for loc in (0.0, 0.1, 2.0)]
    s = similarity_matrix(feats, metric)
    assert s.shape == (3, 3)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert np.all((s > 0) & (s <= 1))
    if metric == "emd":  # W1 is symmetric; device 2 is far from 0 and 1
        np.testing.assert_allclose(s, s.T)
        assert s[0, 1] > s[0, 2]


def test_aggregation_weights_hand_computed() -> None:
    s = np.array([[1.0, 0.25], [1.0, 1.0]])  # asymmetric: sqrt(0.25 · 1) = 0.5 off the diagonal
    w = aggregation_weights(s)
    e1, e5 = math.exp(1.0), math.exp(0.5)
    np.testing.assert_allclose(w, [[e1 / (e1 + e5), e5 / (e1 + e5)], [e5 / (e1 + e5), e1 / (e1 + e5)]])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w, w.T)


def test_temperature_sharpens_diagonal() -> None:
    rng = np.random.default_rng(2)
    s = similarity_matrix([rng.normal(i, 1.0, size=(8, 4)) for i in range(4)], "emd")
    w1, w_sharp = aggregation_weights(s, 1.0), aggregation_weights(s, 0.05)
    assert np.all(np.diag(w_sharp) > np.diag(w1))
    assert np.all(np.diag(w1) < 0.5)  # temperature 1 is nearly uniform, as in the original
    np.testing.assert_allclose(w_sharp.sum(axis=1), 1.0)


def test_js_pairs_devices_with_different_row_counts_at_evenly_spaced_rows() -> None:
    """Quantity skew: a device with 8 training images sends 8 feature rows, another 36. The original fails on the
    shape mismatch (and so did this project in a regime-grid job); JS now cuts the larger matrix to evenly spaced rows
    (first and last kept, order kept) and is otherwise unchanged."""
    rng = np.random.default_rng(0)
    small, big = rng.random((8, 5)), rng.random((36, 5))
    rows = evenly_spaced_rows(big, 8)
    assert rows.shape == (8, 5) and np.array_equal(rows[0], big[0]) and np.array_equal(rows[-1], big[-1])
    assert evenly_spaced_rows(small, 8) is small
    assert js_similarity(small, big) == pytest.approx(js_similarity(small, rows))
    assert js_similarity(big, small) == pytest.approx(js_similarity(small, big))
    s = similarity_matrix([small, big, rng.random((20, 5))], metric="js")
    assert s.shape == (3, 3) and np.all((s > 0) & (s <= 1)) and np.allclose(np.diag(s), 1.0)


def test_validation_errors() -> None:
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="column counts"):
        emd_similarity(a, np.ones((3, 5)))
    with pytest.raises(ValueError, match="column counts"):
        similarity_matrix([a, np.ones((3, 5))])
    with pytest.raises(ValueError, match="NaN or Inf"):
        similarity_matrix([a, np.full((3, 4), np.nan)])
    with pytest.raises(ValueError, match="NaN or Inf"):
        js_similarity(a, np.full((3, 4), np.inf))
    with pytest.raises(ValueError, match="no positive entries"):
        js_similarity(a, -a)
    with pytest.raises(ValueError, match="2-D"):
        emd_similarity(np.ones(4), a)
    with pytest.raises(ValueError, match="allowed: \\['emd', 'js'\\]"):
        similarity_matrix([a], "cosine")
    with pytest.raises(ValueError, match="empty"):
        similarity_matrix([])
    with pytest.raises(ValueError, match="temperature"):
        aggregation_weights(np.eye(2), temperature=0.0)
    with pytest.raises(ValueError, match="square"):
        aggregation_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        aggregation_weights(np.array([[1.0, np.nan], [1.0, 1.0]]))
    assert set(list_metrics()) >= {"emd", "js"}
