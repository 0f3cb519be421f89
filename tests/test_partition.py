"""Partitioners: sizes, class sets, determinism, termination at tiny alpha, ACME's class lists verbatim."""

from __future__ import annotations

import numpy as np
import pytest

from acme_flwr.partition import (
    ACME_CATEGORIES,
    ACME_LISTS,
    acme_class_lists,
    balanced_cut,
    draw_following,
    format_label_report,
    label_report,
    list_partitioners,
    partition,
    split_client,
    split_clients,
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


def test_split_clients_equals_split_client_on_disjoint_partitions() -> None:
    parts = partition("dirichlet", LABELS, 6, seed=0, alpha=0.5, min_size=10)
    for pid, (many, one) in enumerate(zip(split_clients(parts, 0.15, 0.2, seed=4), parts, strict=True)):
        single = split_client(one, 0.15, 0.2, seed=4 * 1000 + pid)
        assert all(np.array_equal(getattr(many, f), getattr(single, f)) for f in ("train", "val", "test"))


@pytest.mark.parametrize(("devices", "fraction"), [(5, 0.3), (2, 1.0)])
def test_split_clients_never_trains_on_held_out_samples_of_overlapping_partitions(devices: int,
                                                                                  fraction: float) -> None:
    parts = partition("acme", LABELS, devices, seed=0, category="IID", per_class_fraction=fraction)
    splits = split_clients(parts, 0.15, 0.2, seed=0)
    trained = set().union(*(set(s.train.tolist()) for s in splits))
    held = [set(s.val.tolist()) | set(s.test.tolist()) for s in splits]
    assert not trained & set().union(*held)
    assert sum(map(len, held)) == len(set().union(*held))  # no sample held out twice
    for part, s, h in zip(parts, splits, held, strict=True):
        assert h <= set(part.tolist()) and set(s.train.tolist()) <= set(part.tolist()) and len(s.train)
    assert [len(s.test) for s in splits] == [round(0.2 * len(p)) for p in parts]


def test_split_clients_without_test_cuts_only_validation() -> None:
    splits = split_clients([np.arange(20), np.arange(20, 40)], 0.2, 0.0, seed=0)
    assert all(len(s.test) == 0 and len(s.val) == 4 and len(s.train) == 16 for s in splits)


def test_split_clients_explains_when_nothing_is_left() -> None:
    with pytest.raises(ValueError, match="not held out by other devices"):
        split_clients([np.arange(4)] * 3, 0.25, 0.25, seed=0)


def test_draw_following_matches_the_histogram_and_stays_in_the_pool() -> None:
    pool = np.arange(1000, 1600)
    pool_labels = LABELS  # 60 per class
    hist = np.array([30, 0, 10, 0, 0, 0, 0, 0, 0, 20])
    drawn = draw_following(hist, pool, pool_labels, 30, np.random.default_rng(0))
    assert len(drawn) == len(set(drawn.tolist())) == 30 and set(drawn.tolist()) <= set(pool.tolist())
    counts = np.bincount(pool_labels[drawn - 1000], minlength=10)
    assert counts.tolist() == [15, 0, 5, 0, 0, 0, 0, 0, 0, 10]
    capped = draw_following(hist, pool, pool_labels, 300, np.random.default_rng(0))  # class 0 asks 150 of 60
    assert np.bincount(pool_labels[capped - 1000], minlength=10)[0] == 60


def test_balanced_cut_is_class_balanced_and_disjoint() -> None:
    labels = np.concatenate([np.repeat(np.arange(10), 60), np.zeros(40, np.int64)])  # class 0 has 100
    cut, rest = balanced_cut(labels, np.arange(len(labels)), 0.1, np.random.default_rng(0))
    assert np.bincount(labels[cut]).tolist() == [6] * 10
    assert sorted(np.concatenate([cut, rest]).tolist()) == list(range(len(labels)))
    with pytest.raises(ValueError, match="generic_test_fraction"):
        balanced_cut(np.repeat(np.arange(2), 1), np.arange(2), 0.5, np.random.default_rng(0))


def test_label_report_counts() -> None:
    parts = partition("pathological", LABELS, 5, seed=1, classes_per_client=2)
    rows = label_report(parts, LABELS, 10)
    assert [r["num_classes"] for r in rows] == [2] * 5
    assert sum(sum(r["label_hist"]) for r in rows) == sum(map(len, parts))
    assert "histogram" in format_label_report(rows)
