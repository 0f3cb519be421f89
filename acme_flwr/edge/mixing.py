"""Edge-side importance mixing (ACME §4.5): per device ``Ĩ_k = Σ_j W_kj Î_j`` with W from an aggregation variant.

Variants are registered by name (``wo_pruning``, ``pruning_alone``, ``pruning_avg``, ``pruning_per``); each builds the
mixing rows of one group of devices. Received importance vectors are validated here before they touch edge state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from acme_flwr.device.importance import validate_importance
from acme_flwr.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "VARIANTS",
    "VariantSpec",
    "build_mixing_weights",
    "get_variant",
    "list_variants",
    "mix_importance",
    "register_variant",
    "validate_importance",
]


def mix_importance(
    importances: Mapping[int, np.ndarray],
    weights: Mapping[int, Mapping[int, float]],
    on_missing: str = "error",
) -> dict[int, np.ndarray]:
    """Per-device mix ``Ĩ_k = Σ_j W_kj Î_j`` for every ``k`` in ``weights``.

    ``on_missing``: ``"error"`` (default) if a row references a device without an importance this round, or
    ``"renormalize"`` to drop such devices and rescale the row to its original sum (a failed device must not stop the
    round).
    """
    if on_missing not in _MISSING_POLICIES:
        raise ValueError(f"unknown on_missing {on_missing!r}; allowed: {sorted(_MISSING_POLICIES)}")
    if not importances:
        raise ValueError("importances is empty")
    n = int(np.asarray(next(iter(importances.values()))).size)
    vecs = {j: validate_importance(v, n).astype(np.float64) for j, v in importances.items()}
    out: dict[int, np.ndarray] = {}
    for k, row in weights.items():
        row = {int(j): float(w) for j, w in row.items()}
        if not all(np.isfinite(w) for w in row.values()):
            raise ValueError(f"mixing weights of device {k} contain NaN or Inf")
        row = _MISSING_POLICIES[on_missing](k, row, vecs)
        mixed = np.zeros(n, dtype=np.float64)
        for j, w in row.items():
            mixed += w * vecs[j]
        out[k] = mixed.astype(np.float32)
    return out


def _missing_error(k: int, row: dict[int, float], vecs: Mapping[int, np.ndarray]) -> dict[int, float]:
    missing = sorted(j for j in row if j not in vecs)
    if missing:
        raise ValueError(f"mixing weights of device {k} reference devices without importance: {missing}")
    return row


def _missing_renormalize(k: int, row: dict[int, float], vecs: Mapping[int, np.ndarray]) -> dict[int, float]:
    kept = {j: w for j, w in row.items() if j in vecs}
    total, kept_total = sum(row.values()), sum(kept.values())
    if not kept or kept_total == 0:
        raise ValueError(f"device {k}: none of its mixing partners sent an importance")
    if len(kept) < len(row):
        logger.warning("device %s: renormalising mixing weights over %d of %d devices", k, len(kept), len(row))
    return {j: w * total / kept_total for j, w in kept.items()}


_MISSING_POLICIES: dict[str, Callable[[int, dict[int, float], Mapping[int, np.ndarray]], dict[int, float]]] = {
    "error": _missing_error,
    "renormalize": _missing_renormalize,
}


# --------------------------------------------------------------------------------------------------------------------
# Aggregation variants (ACME §4.5)
# --------------------------------------------------------------------------------------------------------------------

WeightBuilder = Callable[..., dict[int, dict[int, float]] | None]


@dataclass(frozen=True)
class VariantSpec:
    """An aggregation variant: whether devices prune, and how the mixing weights are built."""

    name: str
    prunes: bool
    build: WeightBuilder


# the ladder of the paper's ablation, in registration order: no pruning, alone, data-size average, personalised
VARIANTS: Registry[VariantSpec] = Registry("aggregation variant", ordered=True)


def register_variant(*names: str, prunes: bool = True) -> Callable[[WeightBuilder], WeightBuilder]:
    """Register ``build(device_ids, *, num_examples=None, similarity=None) -> weights`` under one or more names (the
    first is the variant's name, the others aliases such as the original's ``pruning_*``)."""

    def deco(fn: WeightBuilder) -> WeightBuilder:
        VARIANTS.register(*names)(VariantSpec(names[0], prunes, fn))
        return fn

    return deco


def list_variants() -> list[str]:
    """Variant names (including the original's ``pruning_*`` aliases), in the ablation's order."""
    return VARIANTS.names()


def get_variant(name: str) -> VariantSpec:
    """The :class:`VariantSpec` registered as ``name``."""
    return VARIANTS.get(name)


def build_mixing_weights(
    variant: str,
    device_ids: Sequence[int],
    num_examples: Mapping[int, int] | None = None,
    similarity: np.ndarray | Mapping[int, Mapping[int, float]] | None = None,
) -> dict[int, dict[int, float]] | None:
    """Mixing weights ``{k: {j: W_kj}}`` of ``variant`` for ``device_ids`` (None for ``wo_pruning``: no pruning)."""
    ids = sorted(int(i) for i in device_ids)
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"device_ids must be non-empty and unique; got {list(device_ids)}")
    return get_variant(variant).build(ids, num_examples=num_examples, similarity=similarity)


@register_variant("wo_pruning", prunes=False)
def _weights_wo_pruning(ids: list[int], **_: object) -> None:
    return None


@register_variant("alone", "pruning_alone")
def _weights_alone(ids: list[int], **_: object) -> dict[int, dict[int, float]]:
    return {k: {k: 1.0} for k in ids}


@register_variant("avg", "pruning_avg")
def _weights_avg(
    ids: list[int], num_examples: Mapping[int, int] | None = None, **_: object
) -> dict[int, dict[int, float]]:
    if num_examples is None:
        raise ValueError("variant 'avg' needs num_examples (data-size weights n_j / n)")
    missing = [j for j in ids if j not in num_examples]
    if missing:
        raise ValueError(f"variant 'avg': num_examples missing for devices {missing}")
    counts = {j: float(num_examples[j]) for j in ids}
    if any(c < 0 or not np.isfinite(c) for c in counts.values()) or sum(counts.values()) <= 0:
        raise ValueError(f"variant 'avg': num_examples must be non-negative with a positive total; got {counts}")
    total = sum(counts.values())
    row = {j: c / total for j, c in counts.items()}
    return {k: dict(row) for k in ids}


@register_variant("per", "pruning_per")
def _weights_per(
    ids: list[int], similarity: np.ndarray | Mapping[int, Mapping[int, float]] | None = None, **_: object
) -> dict[int, dict[int, float]]:
    if similarity is None:
        raise ValueError("variant 'per' needs the similarity weight matrix (similarity.aggregation_weights)")
    if isinstance(similarity, Mapping):
        try:
            return {k: {j: float(similarity[k][j]) for j in ids} for k in ids}
        except KeyError as exc:
            raise ValueError(f"variant 'per': similarity weights miss device {exc}") from None
    w = np.asarray(similarity, dtype=np.float64)
    if w.shape != (len(ids), len(ids)):
        n = len(ids)
        raise ValueError(f"variant 'per': weight matrix must be {n}×{n} (rows/cols = sorted device ids); got {w.shape}")
    return {k: {j: float(w[a, b]) for b, j in enumerate(ids)} for a, k in enumerate(ids)}
