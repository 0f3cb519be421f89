"""Partitioners: how a labelled pool is split across devices, plus each device's train/val/test split.

A partitioner maps ``(labels, num_partitions, rng, **params)`` to one index array per device. All are deterministic
under the generator they get and registered by decorator (``PARTITIONERS``).

- ``iid``: a uniform random split.
- ``dirichlet``: per class, proportions ~ Dir(α); re-drawn until every device has ``min_size`` samples, and after a
  bounded number of draws the deficit is moved from the largest devices, so it always terminates.
- ``pathological``: each device holds ``classes_per_client`` classes.
- ``acme``: ACME's IID/C2/C3/C4 class lists (ACME §4.2) verbatim for 100 classes, per-client independent draws of
  ``per_class_fraction`` of each owned class (overlap across devices is possible, as in the original).

Held-out data never leaks into training: :func:`split_clients` cuts each device's val/test from its own partition
so that no held-out sample is in any device's training data (partitions may overlap), and :func:`draw_following`
draws a device's test set from an official test split following the device's label distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

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


def partition(kind: str, labels: np.ndarray, num_partitions: int, seed: int, **params: float) -> list[np.ndarray]:
    """Split ``labels``' indices into ``num_partitions`` index arrays with the registered partitioner ``kind``."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions} must be >= 1")
    rng = np.random.default_rng(seed)
    parts = PARTITIONERS.get(kind)(np.asarray(labels), num_partitions, rng, **params)
    return [np.sort(p.astype(np.int64)) for p in parts]


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, **_: float) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), num_partitions))


@PARTITIONERS.register("dirichlet")
def dirichlet(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, alpha: float = 0.5,
              min_size: int = 10, max_draws: int = 100, **_: float) -> list[np.ndarray]:
    """Dirichlet(α) label skew with a guaranteed minimum partition size."""
    if alpha <= 0:
        raise ValueError(f"partition.alpha={alpha} must be > 0")
    if min_size * num_partitions > len(labels):
        raise ValueError(
            f"partition.min_size={min_size} × {num_partitions} devices exceeds the {len(labels)} samples available; "
            "lower partition.min_size or topology.num_devices"
        )
    classes = np.unique(labels)
    parts: list[list[int]] = []
    for _draw in range(max_draws):
        parts = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    else:  # bounded: move samples from the largest partitions to the deficient ones
        for k in range(num_partitions):
            while len(parts[k]) < min_size:
                donor = max(range(num_partitions), key=lambda j: len(parts[j]))
                parts[k].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return [np.asarray(p) for p in parts]


@PARTITIONERS.register("pathological")
def pathological(labels: np.ndarray, num_partitions: int, rng: np.random.Generator, classes_per_client: int = 2,
                 **_: float) -> list[np.ndarray]:
    """Each device owns ``classes_per_client`` classes; a class's samples are split evenly among its owners."""
    classes = np.unique(labels)
    k = int(classes_per_client)
    if k > len(classes):
        raise ValueError(f"partition.classes_per_client={k} exceeds the {len(classes)} classes of the data set")
    order = rng.permutation(classes)
    owned = [[order[(p * k + j) % len(order)] for j in range(k)] for p in range(num_partitions)]
    owners: dict[int, list[int]] = {}
    for p, cls in enumerate(owned):
        for c in cls:
            owners.setdefault(int(c), []).append(p)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for c, holders in owners.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        for p, chunk in zip(holders, np.array_split(idx, len(holders)), strict=True):
            parts[p].extend(chunk.tolist())
    return [np.asarray(p) for p in parts]


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
         per_class_fraction: float = 0.1, **_: float) -> list[np.ndarray]:
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
    """A plain-text table of :func:`label_report` rows."""
    lines = [f"{'device':>6} {'samples':>8} {'classes':>7}  histogram"]
    lines += [f"{r['partition_id']:>6} {r['num_samples']:>8} {r['num_classes']:>7}  {r['label_hist']}" for r in rows]
    return "\n".join(lines)
