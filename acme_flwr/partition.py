"""Partitioners: how a labelled pool is split across devices, plus each device's train/val/test split.

A partitioner maps ``(labels, num_partitions, rng, **params)`` to one index array per device. All are deterministic
under the seed they get and registered by decorator (``PARTITIONERS``). Wherever flwr-datasets has the partitioner,
it does the work (what Flower users and Flower's baselines use, so a partition can be reproduced outside this
project): the labels become an in-memory ``datasets.Dataset`` (no network) and its partitioner's index lists come
back. flwr-datasets is imported only when such a partition is built.

Label skew (NIID-Bench):
- ``iid``: ``IidPartitioner`` on the pool shuffled with the seed (equal sizes).
- ``dirichlet``: ``DirichletPartitioner`` (per class, proportions ~ Dir(α); re-drawn until every device has
  ``min_size``). Where its 10 draws cannot reach ``min_size`` (tiny α, many devices) the last draw is repaired by
  moving samples from the largest devices (logged), so it always terminates.
- ``pathological``: ``PathologicalPartitioner`` (#C = k: ``classes_per_client`` classes per device, assigned as
  ``class_assignment`` says; ``first-deterministic`` is NIID-Bench's).
- ``shard``: ``ShardPartitioner`` (McMahan et al.: the pool sorted by label, cut into equal shards,
  ``shards_per_client`` shards per device).
- ``acme``: ACME's IID/C2/C3/C4 class lists (ACME §4.2) verbatim for 100 classes, per-client independent draws of
  ``per_class_fraction`` of each owned class (overlap across devices is possible, as in the original). Own code.

Quantity skew (labels IID, sizes skewed; marked ``quantity_skew`` so ``partition.max_samples`` sets the mean size):
- ``linear`` / ``square`` / ``exponential``: flwr-datasets' size-law partitioners (device i of N gets a share
  proportional to i, i² or e^i) on the shuffled pool.
- ``quantity_dirichlet``: sizes ~ Dir_N(β) (NIID-Bench), at least ``min_size`` each, cut by ``SizePartitioner`` from
  the shuffled pool.

Feature skew (noise, rotation) is not a partition: it is a per-device transform (``acme_flwr.shift``) over any of
these, so "mixed" is e.g. ``kind=dirichlet`` with ``feature=rotation``.

Held-out data never leaks into training: :func:`split_clients` cuts each device's val/test from its own partition
so that no held-out sample is in any device's training data (partitions may overlap), :func:`hold_out` sets aside
fixed-size test sets the same way, and :func:`draw_following` draws a device's test set from an official test split
following the device's label distribution.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acme_flwr.registry import Registry

logger = logging.getLogger(__name__)

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")

# ACME's CIFAR-100 class lists (ACME §4.2), verbatim; list1..list4 partition the 100 classes.
ACME_LISTS: dict[str, tuple[int, ...]] = {
    "list1": (23, 4, 7, 27, 89, 48, 9, 15, 66, 94, 36, 39, 60, 13, 50, 29, 38, 8, 52, 18, 90, 21, 81, 62, 99),
    "list2": (61, 34, 14, 88, 76, 67, 78, 59, 20, 74, 65, 2, 70, 92, 97, 19, 28, 83, 11, 95, 32, 56, 53, 17, 91),
    "list3": (12, 85, 42, 35, 64, 24, 98, 25, 45, 33, 10, 75, 26, 1, 3, 84, 87, 40, 37, 30, 54, 58, 16, 68, 93),
    "list4": (79, 77, 82, 72, 41, 47, 31, 73, 49, 55, 5, 69, 86, 80, 22, 57, 0, 46, 43, 6, 71, 51, 44, 63, 96),
}
# Mixed lists by (source list, count of its classes); the original gives counts, we take each list's first classes.
ACME_MIXES: dict[str, tuple[tuple[str, int], ...]] = {
    "list1_3": (("list1", 13), ("list3", 11)),
    "list1_2_3": (("list1", 9), ("list2", 8), ("list3", 7)),
    "list1_4": (("list1", 11), ("list4", 14)),
}
# Which list each of the 5 clients owns per category (ACME §4.2 table); client k uses entry k % 5.
ACME_CATEGORIES: dict[str, tuple[str, ...]] = {
    "IID": ("list1", "list1", "list1", "list1", "list1"),
    "C2": ("list1", "list1", "list1", "list2", "list2"),
    "C3": ("list1", "list2", "list1_3", "list1", "list2"),
    "C4": ("list1", "list2", "list1_2_3", "list1", "list1_4"),
}


def list_partitioners() -> list[str]:
    return PARTITIONERS.names()


def source_digest() -> str:
    """SHA-256 of this module's source: part of a stored partition's key, so editing a partitioner invalidates it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def is_quantity_skew(kind: str) -> bool:
    """Whether ``kind`` skews sizes by a law over the whole pool (``partition.max_samples`` then sets the mean size
    by shrinking the pool, instead of capping each device)."""
    return bool(getattr(PARTITIONERS.get(kind), "quantity_skew", False))


def _quantity_skew(fn: Partitioner) -> Partitioner:
    fn.quantity_skew = True  # type: ignore[attr-defined]
    return fn


def partition(kind: str, labels: np.ndarray, num_partitions: int, seed: int, **params: Any) -> list[np.ndarray]:
    """Split ``labels``' indices into ``num_partitions`` index arrays with the registered partitioner ``kind``."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions} must be >= 1")
    if num_partitions > len(labels):
        raise ValueError(f"{num_partitions} devices but only {len(labels)} samples to share; lower "
                         "topology.num_devices")
    rng = np.random.default_rng(seed)
    parts = PARTITIONERS.get(kind)(np.asarray(labels), num_partitions, rng, seed=seed, **params)
    return [np.sort(np.asarray(p).astype(np.int64)) for p in parts]


# ------------------------------------------------------------------------------------------- flwr-datasets path
def label_dataset(labels: np.ndarray) -> Any:
    """The in-memory ``datasets.Dataset`` flwr-datasets' partitioners see: a ``label`` column and the pool position
    in ``index`` (partitioners that sort or shuffle the rows still give back pool positions)."""
    from datasets import Dataset

    labels = np.asarray(labels, dtype=np.int64)
    return Dataset.from_dict({"label": labels, "index": np.arange(len(labels), dtype=np.int64)})


def run_flwr_partitioner(partitioner: Any, dataset: Any) -> list[np.ndarray]:
    """Every partition of ``partitioner`` over ``dataset`` as arrays of ``index`` values (pool positions); the
    library's warnings go to the log (the first one, and how many more)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        partitioner.dataset = dataset
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)
                 for i in range(partitioner.num_partitions)]
    caught = [w for w in caught if issubclass(w.category, UserWarning) and "flwr_datasets" in w.filename]
    if caught:
        more = f" (and {len(caught) - 1} more)" if len(caught) > 1 else ""
        logger.warning("flwr-datasets %s: %s%s", type(partitioner).__name__, caught[0].message, more)
    return parts


def _flwr(name: str) -> Any:
    import flwr_datasets.partitioner as fp  # lazy: only a run that builds such a partition pays for the import

    return getattr(fp, name)


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
        **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``IidPartitioner`` on the pool shuffled with ``seed``."""
    return run_flwr_partitioner(_flwr("IidPartitioner")(num_partitions), label_dataset(labels).shuffle(seed=seed))


@PARTITIONERS.register("dirichlet")
def dirichlet(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0, alpha: float = 0.5,
              min_size: int = 10, **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``DirichletPartitioner`` (no self-balancing, as NIID-Bench), with a bounded repair when its
    re-draws cannot reach ``min_size``."""
    if alpha <= 0:
        raise ValueError(f"partition.alpha={alpha} must be > 0")
    if min_size * num_partitions > len(labels):
        raise ValueError(
            f"partition.min_size={min_size} × {num_partitions} devices exceeds the {len(labels)} samples available; "
            "lower partition.min_size or topology.num_devices"
        )
    cls = _flwr("DirichletPartitioner")
    ds = label_dataset(labels)
    try:
        return run_flwr_partitioner(cls(num_partitions, "label", alpha, min_partition_size=min_size,
                                        self_balancing=False, seed=seed), ds)
    except ValueError as exc:
        if "max number of attempts" not in str(exc):
            raise
    logger.warning("Dirichlet(alpha=%g): 10 draws left a device under partition.min_size=%d; moving samples from "
                   "the largest devices to the smallest", alpha, min_size)
    parts = [p.tolist() for p in run_flwr_partitioner(cls(num_partitions, "label", alpha, min_partition_size=0,
                                                          self_balancing=False, seed=seed), ds)]
    for k in range(num_partitions):
        while len(parts[k]) < min_size:
            donor = max(range(num_partitions), key=lambda j: len(parts[j]))
            parts[k].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return [np.asarray(p) for p in parts]


@PARTITIONERS.register("pathological")
def pathological(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
                 classes_per_client: int = 2, class_assignment: str = "first-deterministic",
                 **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``PathologicalPartitioner``: each device holds exactly ``classes_per_client`` classes."""
    k, num_classes = int(classes_per_client), len(np.unique(labels))
    if k > num_classes:
        raise ValueError(f"partition.classes_per_client={k} exceeds the {num_classes} classes of the data set")
    return run_flwr_partitioner(_flwr("PathologicalPartitioner")(
        num_partitions, "label", k, class_assignment_mode=class_assignment, seed=seed), label_dataset(labels))


@PARTITIONERS.register("shard")
def shard(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
          shards_per_client: int = 2, **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``ShardPartitioner``: label-sorted shards, ``shards_per_client`` per device."""
    if num_partitions * shards_per_client > len(labels):
        raise ValueError(f"partition.shards_per_client={shards_per_client} × {num_partitions} devices exceeds the "
                         f"{len(labels)} samples; lower one of them")
    return run_flwr_partitioner(_flwr("ShardPartitioner")(
        num_partitions, "label", num_shards_per_partition=int(shards_per_client), seed=seed), label_dataset(labels))


def _size_law(name: str, labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    try:
        return run_flwr_partitioner(_flwr(name)(num_partitions), label_dataset(labels).shuffle(seed=seed))
    except ValueError as exc:  # a law that leaves the first device empty
        raise ValueError(f"partition.kind={name.removesuffix('Partitioner').lower()!r} over {num_partitions} devices "
                         f"and {len(labels)} samples leaves a device without data ({exc}); lower "
                         "topology.num_devices or raise partition.max_samples") from None


@PARTITIONERS.register("linear")
@_quantity_skew
def linear(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
           **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``LinearPartitioner``: device i (of 1..N) gets a share proportional to i."""
    return _size_law("LinearPartitioner", labels, num_partitions, seed)


@PARTITIONERS.register("square")
@_quantity_skew
def square(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
           **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``SquarePartitioner``: device i (of 1..N) gets a share proportional to i²."""
    return _size_law("SquarePartitioner", labels, num_partitions, seed)


@PARTITIONERS.register("exponential")
@_quantity_skew
def exponential(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
                **_: Any) -> list[np.ndarray]:
    """flwr-datasets' ``ExponentialPartitioner``: device i (of 1..N) gets a share proportional to e^i."""
    return _size_law("ExponentialPartitioner", labels, num_partitions, seed)


def dirichlet_sizes(total: int, num_partitions: int, beta: float, min_size: int,
                    rng: np.random.Generator) -> list[int]:
    """Sizes q ~ Dir_N(β)·total (floored, the remainder to the largest), each raised to ``min_size`` by taking from
    the largest; they sum to ``total``."""
    if min_size * num_partitions > total:
        raise ValueError(f"partition.min_size={min_size} × {num_partitions} devices exceeds the {total} samples "
                         "available; lower partition.min_size or topology.num_devices")
    sizes = np.floor(rng.dirichlet(np.full(num_partitions, beta)) * total).astype(np.int64)
    sizes[int(np.argmax(sizes))] += total - int(sizes.sum())
    for k in np.flatnonzero(sizes < min_size):
        while sizes[k] < min_size:
            donor = int(np.argmax(sizes))
            take = min(min_size - int(sizes[k]), int(sizes[donor]) - min_size)
            sizes[donor] -= take
            sizes[k] += take
    return [int(s) for s in sizes]


@PARTITIONERS.register("quantity_dirichlet")
@_quantity_skew
def quantity_dirichlet(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, seed: int = 0,
                       beta: float = 0.5, min_size: int = 10, **_: Any) -> list[np.ndarray]:
    """NIID-Bench's quantity skew: sizes ~ Dir_N(β) (:func:`dirichlet_sizes`), cut from the shuffled pool by
    flwr-datasets' ``SizePartitioner`` (labels IID)."""
    sizes = dirichlet_sizes(len(labels), num_partitions, beta, min_size, rng)
    return run_flwr_partitioner(_flwr("SizePartitioner")(sizes), label_dataset(labels).shuffle(seed=seed))


def acme_class_lists(num_classes: int, rng: np.random.Generator) -> dict[str, tuple[int, ...]]:
    """ACME's class lists: verbatim for 100 classes; for other counts, four equal groups of a seeded permutation
    with mixes of the same proportions (so C2/C3/C4-style splits exist on any data set with ≥ 4 classes)."""
    if num_classes == 100:
        lists = dict(ACME_LISTS)
        scale = 1.0
    else:
        if num_classes < 4:
            raise ValueError(f"partition.kind='acme' needs at least 4 classes, the data set has {num_classes}")
        groups = np.array_split(rng.permutation(num_classes), 4)
        lists = {f"list{i + 1}": tuple(int(c) for c in g) for i, g in enumerate(groups)}
        scale = len(groups[0]) / 25.0
    for mix, sources in ACME_MIXES.items():
        lists[mix] = tuple(c for src, n in sources for c in lists[src][: max(1, round(n * scale))])
    return lists


@PARTITIONERS.register("acme")
def acme(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, category: str = "C2",
         per_class_fraction: float = 0.1, **_: Any) -> list[np.ndarray]:
    """ACME's IID/C2/C3/C4 splits: client k owns list ``ACME_CATEGORIES[category][k % 5]`` and draws, independently
    of the others, ``per_class_fraction`` of each owned class's samples."""
    if category not in ACME_CATEGORIES:
        raise ValueError(f"partition.category={category!r}; allowed: {sorted(ACME_CATEGORIES)}")
    num_classes = int(labels.max()) + 1
    lists = acme_class_lists(num_classes, rng)
    by_class = {c: np.flatnonzero(labels == c) for c in range(num_classes)}
    parts = []
    for p in range(num_partitions):
        owned = lists[ACME_CATEGORIES[category][p % 5]]
        chosen = [rng.choice(by_class[c], size=max(1, int(per_class_fraction * len(by_class[c]))), replace=False)
                  for c in owned if len(by_class[c])]
        parts.append(np.concatenate(chosen))
    return parts


@dataclass(frozen=True)
class ClientSplit:
    """Indices (into the pool) of one device's train, validation and test samples."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_client(indices: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> ClientSplit:
    """Shuffle one device's indices and cut train/val/test; val and test get at least one sample each."""
    if len(indices) < 3:
        raise ValueError(f"a device holds {len(indices)} samples; it needs at least 3 for train/val/test")
    idx = np.random.default_rng(seed).permutation(indices)
    n_test = max(1, int(round(test_fraction * len(idx))))
    n_val = max(1, int(round(val_fraction * len(idx))))
    return ClientSplit(train=idx[n_test + n_val:], val=idx[n_test:n_test + n_val], test=idx[:n_test])


def split_clients(parts: list[np.ndarray], val_fraction: float, test_fraction: float,
                  seed: int) -> list[ClientSplit]:
    """Cut every device's val (and, if ``test_fraction`` > 0, test) from its own partition, leak-free.

    Partitions may overlap (``acme`` draws devices independently). A device takes its held-out samples first from
    those no other device holds, never one another device already holds out, and every held-out sample is removed
    from every device's training data. For disjoint partitions this is :func:`split_client` per device."""
    if not parts:
        return []
    size = max((int(p.max()) + 1 for p in parts if len(p)), default=0)
    owners = np.bincount(np.concatenate(parts).astype(np.int64), minlength=size)
    held = np.zeros(size, dtype=bool)
    cuts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for pid, part in enumerate(parts):
        if len(part) < 3:
            raise ValueError(f"device {pid} holds {len(part)} samples; it needs at least 3 for train/val/test")
        idx = np.random.default_rng(seed * 1000 + pid).permutation(part)
        n_test = max(1, int(round(test_fraction * len(idx)))) if test_fraction > 0 else 0
        n_val = max(1, int(round(val_fraction * len(idx))))
        free = idx[~held[idx]]
        free = free[np.argsort(owners[free] > 1, kind="stable")]  # samples only this device holds come first
        if len(free) < n_test + n_val + 1:
            raise ValueError(f"device {pid}: only {len(free)} of its {len(idx)} samples are not held out by other "
                             f"devices, {n_test + n_val + 1} needed; lower partition.per_class_fraction or "
                             "topology.num_devices")
        test, val = free[:n_test], free[n_test:n_test + n_val]
        held[test] = True
        held[val] = True
        cuts.append((idx, val, test))
    splits = [ClientSplit(train=idx[~held[idx]], val=val, test=test) for idx, val, test in cuts]
    empty = [pid for pid, s in enumerate(splits) if len(s.train) == 0]
    if empty:
        raise ValueError(f"devices {empty} have no training data left after the other devices' held-out samples "
                         "were removed; lower partition.per_class_fraction, val_fraction or test_fraction")
    return splits


def hold_out(parts: list[np.ndarray], n: int, seed: int, max_share: float = 0.5) -> list[np.ndarray]:
    """Per device, up to ``n`` samples of its own partition (never more than ``max_share`` of it) set aside as its
    test set, leak-free as in :func:`split_clients`: a device takes samples only it holds first, never one another
    device set aside. Remove the result from every partition before training on any of them."""
    if not parts:
        return []
    size = max((int(p.max()) + 1 for p in parts if len(p)), default=0)
    owners = np.bincount(np.concatenate(parts).astype(np.int64), minlength=size)
    held = np.zeros(size, dtype=bool)
    tests = []
    for pid, part in enumerate(parts):
        idx = np.random.default_rng([seed, 41, pid]).permutation(part)
        free = idx[~held[idx]]
        free = free[np.argsort(owners[free] > 1, kind="stable")]
        take = free[: max(0, min(int(n), int(max_share * len(part))))]
        held[take] = True
        tests.append(np.sort(take))
    return tests


def draw_following(hist: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` distinct indices from ``pool`` (labels ``pool_labels``) with class counts proportional to ``hist``
    (largest remainder); a class gets at most what the pool holds of it."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.sum() <= 0 or n < 1:
        raise ValueError("draw_following needs a non-empty label histogram and n >= 1")
    share = hist / hist.sum() * n
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: n - int(counts.sum())]] += 1
    chosen, short = [], 0
    for c in np.flatnonzero(counts):
        avail = pool[pool_labels == c]
        k = min(int(counts[c]), len(avail))
        short += int(counts[c]) - k
        chosen.append(rng.choice(avail, size=k, replace=False))
    if short:
        logger.warning("the test pool lacks %d of the %d samples a device's label distribution asks for", short, n)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def balanced_cut(labels: np.ndarray, indices: np.ndarray, fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced subset of ``indices`` (the same count, ``fraction`` of the rarest class and at least 1, per
    class) and the rest, both sorted."""
    classes, counts = np.unique(labels[indices], return_counts=True)
    if len(classes) == 0:
        return np.empty(0, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    per_class = max(1, int(fraction * counts.min()))
    if per_class >= counts.min():
        raise ValueError(f"a class-balanced cut of {per_class} per class would take all of the rarest class "
                         f"({counts.min()} samples); lower data.generic_test_fraction")
    cut = np.concatenate([rng.permutation(indices[labels[indices] == c])[:per_class] for c in classes])
    return np.sort(cut), np.setdiff1d(indices, cut)


def label_report(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> list[dict[str, object]]:
    """Per device: sample count, number of classes present and the label histogram."""
    rows = []
    for pid, p in enumerate(parts):
        hist = np.bincount(labels[p], minlength=num_classes)
        rows.append({"partition_id": pid, "num_samples": int(len(p)), "num_classes": int((hist > 0).sum()),
                     "label_hist": hist.tolist()})
    return rows


def format_label_report(rows: list[dict[str, object]]) -> str:
    """A plain-text table of :func:`label_report` rows (plus ``num_test`` and ``shift`` columns when the rows have
    them, as ``FederatedData.report`` adds)."""
    extra = [k for k in ("num_test", "shift") if rows and k in rows[0]]
    head = {"num_test": f"{'test':>5}", "shift": f"{'shift':>12}"}
    lines = [f"{'device':>6} {'samples':>8} {'classes':>7}" + "".join(f" {head[k]}" for k in extra) + "  histogram"]
    lines += [f"{r['partition_id']:>6} {r['num_samples']:>8} {r['num_classes']:>7}"
              + "".join(f" {r[k]:>5}" if k == "num_test" else f" {r[k]:>12}" for k in extra)
              + f"  {r['label_hist']}" for r in rows]
    return "\n".join(lines)
