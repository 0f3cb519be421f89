"""Small helpers shared by the strategies (Flower's ``strategy_utils`` pattern)."""

from __future__ import annotations

import random

import numpy as np
from flwr.app import Array, ArrayRecord


def weighted_average(records: list[tuple[ArrayRecord, float]]) -> ArrayRecord:
    """Example-weighted mean of ArrayRecords with identical keys and shapes (float arrays averaged, others kept)."""
    if not records:
        raise ValueError("weighted_average needs at least one record")
    keys = list(records[0][0].keys())
    total = float(sum(w for _, w in records))
    if total <= 0:
        raise ValueError("weighted_average: weights must sum to a positive number")
    out: dict[str, Array] = {}
    for k in keys:
        first = records[0][0][k].numpy()
        if first.dtype.kind != "f":
            out[k] = Array(np.ascontiguousarray(first))
            continue
        acc = np.zeros_like(first, dtype=np.float64)
        for rec, w in records:
            acc += rec[k].numpy().astype(np.float64) * (w / total)
        out[k] = Array(acc.astype(first.dtype))
    return ArrayRecord(out)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as plain numpy (what checkpoints store)."""
    return {k: v.numpy() for k, v in record.items()}


def from_numpy(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def check_same_layout(record: ArrayRecord, reference: ArrayRecord, what: str) -> None:
    """Raise ValueError unless ``record`` has exactly ``reference``'s keys, shapes and a finite float payload."""
    if list(record.keys()) != list(reference.keys()):
        missing = sorted(set(reference.keys()) - set(record.keys()))
        extra = sorted(set(record.keys()) - set(reference.keys()))
        raise ValueError(f"{what}: keys differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})")
    for k in reference.keys():
        a, b = record[k].numpy(), reference[k].numpy()
        if a.shape != b.shape and not (a.size == b.size == 1):  # 0-d scalars may arrive as shape (1,)
            raise ValueError(f"{what}: {k!r} has shape {a.shape}, expected {b.shape}")
        if a.dtype != b.dtype:
            raise ValueError(f"{what}: {k!r} has dtype {a.dtype}, expected {b.dtype}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: {k!r} contains NaN or Inf")


def sample_devices(pids: list[int], fraction: float, minimum: int, seed: int, server_round: int,
                   phase: str) -> list[int]:
    """The sorted partition-ids of a round, sampled as FedAvg does (``max(int(n·fraction), min_nodes)``, all if
    fewer are connected, none for fraction 0), but seeded: same seed, round and phase → same devices."""
    if fraction == 0.0 or not pids:
        return []
    k = min(len(pids), max(int(len(pids) * fraction), minimum, 1))
    if k >= len(pids):
        return list(pids)
    salt = 0 if phase == "train" else 50_021
    return sorted(random.Random(seed * 100_003 + server_round + salt).sample(pids, k))
