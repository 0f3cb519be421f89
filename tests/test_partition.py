"""Partitioners: sizes, class sets, determinism, termination at tiny alpha, ACME's class lists verbatim."""

from __future__ import annotations

import numpy as np
import pytest

from acme_flwr.partition import (
    ACME_CATEGORIES,
    ACME_LISTS,
    acme_class_lists,
    format_label_report,
    label_report,
    list_partitioners,
    partition,
    split_client,
)

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, 10 classes


def test_registry_lists_all_kinds() -> None:
    assert list_partitioners() == ["acme", "dirichlet", "iid", "pathological"]


def test_iid_covers_everything_once_with_equal_sizes() -> None:
    parts = partition("iid", LABELS, 7, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("alpha", [100.0, 0.5, 0.01, 1e-4])
def test_dirichlet_terminates_with_min_size_and_is_deterministic(alpha: float) -> None:
    parts = partition("dirichlet", LABELS, 20, seed=3, alpha=alpha, min_size=15)
    assert min(map(len, parts)) >= 15
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))  # disjoint and complete
    again = partition("dirichlet", LABELS, 20, seed=3, alpha=alpha, min_size=15)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_small_alpha_is_more_skewed_than_large() -> None:
    def mean_classes(alpha: float) -> float:
        parts = partition("dirichlet", LABELS, 10, seed=0, alpha=alpha, min_size=5)
        return float(np.mean([len(np.unique(LABELS[p])) for p in parts]))
    assert mean_classes(0.05) < mean_classes(100.0)


def test_dirichlet_impossible_min_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="exceeds the 600 samples"):
        partition("dirichlet", LABELS, 10, seed=0, min_size=100)


def test_pathological_gives_exactly_k_classes() -> None:
    parts = partition("pathological", LABELS, 5, seed=1, classes_per_client=2)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    with pytest.raises(ValueError, match="exceeds the 10 classes"):
        partition("pathological", LABELS, 5, seed=1, classes_per_client=11)


def test_acme_lists_are_verbatim_and_partition_cifar100() -> None:
    union = set().union(*map(set, ACME_LISTS.values()))
    assert union == set(range(100)) and all(len(v) == 25 for v in ACME_LISTS.values())
    assert ACME_LISTS["list1"][:3] == (23, 4, 7) and ACME_LISTS["list4"][-1] == 96
    lists = acme_class_lists(100, np.random.default_rng(0))
    assert len(lists["list1_3"]) == 24 and len(lists["list1_2_3"]) == 24 and len(lists["list1_4"]) == 25


@pytest.mark.parametrize("category", sorted(ACME_CATEGORIES))
def test_acme_categories_give_the_owned_classes_and_fraction(category: str) -> None:
    labels = np.repeat(np.arange(100), 50)
    parts = partition("acme", labels, 5, seed=0, category=category, per_class_fraction=0.1)
    lists = acme_class_lists(100, np.random.default_rng(0))
    for k, part in enumerate(parts):
        owned = lists[ACME_CATEGORIES[category][k]]
        assert set(np.unique(labels[part]).tolist()) == set(owned)
        assert len(part) == 5 * len(owned)  # int(0.1 * 50) per owned class
    distinct = {tuple(sorted(set(labels[p].tolist()))) for p in parts}
    assert len(distinct) == {"IID": 1, "C2": 2, "C3": 3, "C4": 4}[category]


def test_acme_on_ten_classes_keeps_the_structure() -> None:
    parts = partition("acme", LABELS, 5, seed=0, category="C4", per_class_fraction=0.2)
    assert len({tuple(np.unique(LABELS[p])) for p in parts}) == 4


def test_split_client_is_disjoint_and_nonempty() -> None:
    s = split_client(np.arange(40), 0.15, 0.2, seed=0)
    assert len(s.test) == 8 and len(s.val) == 6 and len(s.train) == 26
    assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
    with pytest.raises(ValueError, match="at least 3"):
        split_client(np.arange(2), 0.1, 0.1, seed=0)


def test_label_report_counts() -> None:
    parts = partition("pathological", LABELS, 5, seed=1, classes_per_client=2)
    rows = label_report(parts, LABELS, 10)
    assert [r["num_classes"] for r in rows] == [2] * 5
    assert sum(sum(r["label_hist"]) for r in rows) == sum(map(len, parts))
    assert "histogram" in format_label_report(rows)
