"""Partitioners: sizes, class sets, determinism, termination at tiny alpha, ACME's class lists verbatim."""

from __future__ import annotations

import numpy as np
import pytest

from acme_flwr.partition import (
    ACME_CATEGORIES,
    ACME_LISTS,
    acme_class_lists,
    balanced_cut,
    dirichlet_sizes,
    draw_following,
    format_label_report,
    hold_out,
    is_quantity_skew,
    label_report,
    list_partitioners,
    partition,
    split_client,
    split_clients,
)

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, 10 classes


def test_registry_lists_all_kinds() -> None:
    assert list_partitioners() == ["acme", "dirichlet", "exponential", "iid", "linear", "pathological",
                                   "quantity_dirichlet", "shard", "square"]


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


# ------------------------------------------------------------------------------ flwr-datasets behind the names
def _direct(kind: str, labels: np.ndarray, n: int, seed: int, **params: object) -> list[list[int]]:
    """The partition calling flwr-datasets directly gives, as a Flower user would write it (pool positions in an
    ``idx`` column, size laws and IID on the pool shuffled with the seed)."""
    from datasets import Dataset
    from flwr_datasets import partitioner as fp

    ds = Dataset.from_dict({"label": labels.tolist(), "idx": list(range(len(labels)))})
    shuffled = ds.shuffle(seed=seed)
    made = {
        "iid": lambda: (fp.IidPartitioner(n), shuffled),
        "dirichlet": lambda: (fp.DirichletPartitioner(n, "label", params["alpha"],
                                                      min_partition_size=params["min_size"], self_balancing=False,
                                                      seed=seed), ds),
        "pathological": lambda: (fp.PathologicalPartitioner(n, "label", params["classes_per_client"],
                                                            class_assignment_mode="first-deterministic",
                                                            seed=seed), ds),
        "shard": lambda: (fp.ShardPartitioner(n, "label", num_shards_per_partition=params["shards_per_client"],
                                              seed=seed), ds),
        "linear": lambda: (fp.LinearPartitioner(n), shuffled),
        "square": lambda: (fp.SquarePartitioner(n), shuffled),
        "exponential": lambda: (fp.ExponentialPartitioner(n), shuffled),
        "quantity_dirichlet": lambda: (fp.SizePartitioner(dirichlet_sizes(len(labels), n, params["beta"],
                                                                          params["min_size"],
                                                                          np.random.default_rng(seed))), shuffled),
    }
    part, data = made[kind]()
    part.dataset = data
    return [sorted(part.load_partition(i)["idx"]) for i in range(n)]


FLWR_KINDS = {
    "iid": {}, "dirichlet": {"alpha": 0.3, "min_size": 10}, "pathological": {"classes_per_client": 3},
    "shard": {"shards_per_client": 2}, "linear": {}, "square": {}, "exponential": {},
    "quantity_dirichlet": {"beta": 0.5, "min_size": 10},
}
SKEWED = np.concatenate([np.repeat(np.arange(10), 60), np.repeat([3, 7], 100)])  # 800 samples, uneven classes
np.random.default_rng(5).shuffle(SKEWED)


@pytest.mark.parametrize("kind", sorted(FLWR_KINDS))
def test_the_flwr_datasets_path_equals_calling_flwr_datasets_directly(kind: str) -> None:
    params = FLWR_KINDS[kind]
    ours = partition(kind, SKEWED, 6, seed=11, **params)
    assert [p.tolist() for p in ours] == _direct(kind, SKEWED, 6, 11, **params)


@pytest.mark.parametrize("kind", sorted(FLWR_KINDS))
def test_every_flwr_kind_is_disjoint_complete_and_seeded(kind: str) -> None:
    params = FLWR_KINDS[kind]
    parts = partition(kind, SKEWED, 6, seed=2, **params)
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist()))  # disjoint
    if kind not in ("shard", "pathological"):  # shards drop the last incomplete one; #C=k may leave classes out
        assert sorted(flat.tolist()) == list(range(len(SKEWED)))
    again = partition(kind, SKEWED, 6, seed=2, **params)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(kind, SKEWED, 6, seed=3, **params)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize(("kind", "law"), [("linear", lambda i: i), ("square", lambda i: i * i),
                                           ("exponential", np.exp)])
def test_size_laws_give_the_sizes_the_law_says(kind: str, law: object) -> None:
    n, total = 5, len(SKEWED)
    units = np.array([law(i) for i in range(1, n + 1)], dtype=float)  # type: ignore[operator]
    expected = (units / units.sum() * total).astype(np.int64)
    expected[-1] += total - expected.sum()  # the remainder goes to the largest, as flwr-datasets does
    parts = partition(kind, SKEWED, n, seed=0)
    assert [len(p) for p in parts] == expected.tolist()
    assert is_quantity_skew(kind) and not is_quantity_skew("dirichlet")
    big = parts[-1]  # labels stay IID: the largest device holds every class in about the pool's proportions
    share = np.bincount(SKEWED[big], minlength=10) / len(big)
    assert np.abs(share - np.bincount(SKEWED, minlength=10) / total).max() < 0.05


def test_a_size_law_that_leaves_a_device_empty_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="leaves a device without data.*topology.num_devices"):
        partition("exponential", SKEWED[:100], 12, seed=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 5.0])
def test_quantity_dirichlet_sizes_sum_up_respect_min_size_and_skew_with_beta(beta: float) -> None:
    sizes = dirichlet_sizes(800, 10, beta, 15, np.random.default_rng(0))
    assert sum(sizes) == 800 and min(sizes) >= 15
    parts = partition("quantity_dirichlet", SKEWED, 10, seed=0, beta=beta, min_size=15)
    assert [len(p) for p in parts] == sizes
    spread = np.mean([np.std(dirichlet_sizes(800, 10, beta, 1, np.random.default_rng(s))) for s in range(20)])
    assert spread > {0.1: 120, 0.5: 60, 5.0: 0}[beta]
    if beta == 5.0:
        assert spread < 40


def test_shard_gives_equal_shards_of_few_classes() -> None:
    parts = partition("shard", LABELS, 10, seed=0, shards_per_client=2)
    assert {len(p) for p in parts} == {60}  # 20 shards of 30 samples
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    with pytest.raises(ValueError, match="shards_per_client=100"):
        partition("shard", LABELS, 10, seed=0, shards_per_client=100)


def test_dirichlet_repair_is_logged_when_flwr_datasets_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="acme_flwr.partition"):
        parts = partition("dirichlet", LABELS, 20, seed=3, alpha=1e-4, min_size=15)
    assert min(map(len, parts)) >= 15 and "moving samples from the largest" in caplog.text


def test_hold_out_is_leak_free_bounded_and_seeded() -> None:
    parts = partition("acme", LABELS, 5, seed=0, category="IID", per_class_fraction=0.3)  # overlapping
    tests = hold_out(parts, 40, seed=1)
    assert all(len(t) == min(40, len(p) // 2) for t, p in zip(tests, parts, strict=True))
    assert all(set(t.tolist()) <= set(p.tolist()) for t, p in zip(tests, parts, strict=True))
    flat = np.concatenate(tests)
    assert len(flat) == len(set(flat.tolist()))  # no sample held out twice
    assert all(np.array_equal(a, b) for a, b in zip(tests, hold_out(parts, 40, seed=1), strict=True))
    assert [len(t) for t in hold_out([np.arange(10)], 40, seed=0)] == [5]  # at most half of a partition


def test_no_flwr_datasets_import_until_such_a_partition_is_built() -> None:
    """The run-time start-up stays light: importing the task (and building an own-code partition) never imports
    flwr_datasets, datasets or pyarrow."""
    import subprocess
    import sys

    code = ("import sys\nfrom acme_flwr.task import federated_data\nfrom acme_flwr.partition import partition\n"
            "import numpy as np\npartition('acme', np.repeat(np.arange(10), 20), 5, 0)\n"
            "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert not {"flwr_datasets", "datasets", "pyarrow", "pandas"} & set(out.stdout.split())
