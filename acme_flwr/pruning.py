"""Part III device/edge logic: Taylor gate importance, local training, importance mixing, global-rank pruning.

Spec §4.4–4.6. A device trains its header for a few local epochs while accumulating the per-gate Taylor criterion
``(g · ∂L/∂g)²``; it sends the importance vector (one float per gate) to its edge; the edge mixes the vectors of its
devices per device (``Ĩ_k = Σ_j W_kj Î_j``, W from the aggregation variant); the device feeds its mixed importance to
a :class:`GatePruner` (criteria momentum + global ranking) and applies the new keep-mask to its gates.
No Flower imports: the strategies/clients call these functions and keep the plain-numpy state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acme_flwr.gates import GateLayer, gate_layers

logger = logging.getLogger(__name__)

__all__ = [
    "GatePruner",
    "TaylorImportance",
    "VariantSpec",
    "build_mixing_weights",
    "get_variant",
    "list_accumulation_modes",
    "list_variants",
    "mix_importance",
    "register_variant",
    "train_header_epoch",
    "trainable_parameters",
    "validate_importance",
]


def _gates_of(gates: nn.Module | Sequence[GateLayer]) -> list[GateLayer]:
    found = gate_layers(gates) if isinstance(gates, nn.Module) else list(gates)
    if not found or not all(isinstance(g, GateLayer) for g in found):
        raise ValueError("expected a module containing GateLayers or a non-empty sequence of GateLayers")
    return found


# --------------------------------------------------------------------------------------------------------------------
# Importance
# --------------------------------------------------------------------------------------------------------------------


class _Accumulator:
    """Turns the per-batch criteria ``c_b`` of one round into the importance vector."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def add(self, c: np.ndarray) -> None:
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Close a local epoch (only the faithful mode cares)."""

    def value(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def batches(self) -> int:
        raise NotImplementedError


_ACCUMULATORS: dict[str, type[_Accumulator]] = {}


def _register_accumulator(name: str) -> Callable[[type[_Accumulator]], type[_Accumulator]]:
    def deco(cls: type[_Accumulator]) -> type[_Accumulator]:
        _ACCUMULATORS[name] = cls
        return cls

    return deco


def list_accumulation_modes() -> list[str]:
    """Accumulation modes accepted by :class:`TaylorImportance`."""
    return sorted(_ACCUMULATORS)


@_register_accumulator("mean")
class _MeanAccumulator(_Accumulator):
    """Plain mean of ``c_b`` over all batches of the round (the fixed default)."""

    def reset(self) -> None:
        self._sum = np.zeros(self.n, dtype=np.float64)
        self._count = 0

    def add(self, c: np.ndarray) -> None:
        self._sum += c
        self._count += 1

    def value(self) -> np.ndarray:
        return self._sum / max(self._count, 1)

    @property
    def batches(self) -> int:
        return self._count


@_register_accumulator("faithful")
class _FaithfulAccumulator(_Accumulator):
    """The original's double counting: per epoch ``(1/B) Σ_b A_b`` with ``A_b`` a running sum of ``c`` that is not
    reset between local epochs (only by :meth:`reset`, i.e. after a prune); per-epoch results averaged (spec §7.24)."""

    def reset(self) -> None:
        self._running = np.zeros(self.n, dtype=np.float64)
        self._epoch_sum = np.zeros(self.n, dtype=np.float64)
        self._epoch_batches = 0
        self._epochs: list[np.ndarray] = []
        self._count = 0

    def add(self, c: np.ndarray) -> None:
        self._running += c
        self._epoch_sum += self._running
        self._epoch_batches += 1
        self._count += 1

    def end_epoch(self) -> None:
        if self._epoch_batches:
            self._epochs.append(self._epoch_sum / self._epoch_batches)
        self._epoch_sum = np.zeros(self.n, dtype=np.float64)
        self._epoch_batches = 0

    def value(self) -> np.ndarray:
        epochs = list(self._epochs)
        if self._epoch_batches:
            epochs.append(self._epoch_sum / self._epoch_batches)
        return np.mean(epochs, axis=0) if epochs else np.zeros(self.n)

    @property
    def batches(self) -> int:
        return self._count


class TaylorImportance:
    """First-order Taylor importance of channel gates: ``c_b[u] = (g_u · ∂L/∂g_u)²`` per batch.

    Call :meth:`update` after ``loss.backward()`` (gate gradients must be present), :meth:`end_epoch` after each local
    epoch, :meth:`vector` to read the round's importance and :meth:`reset` after pruning.
    ``mode="mean"`` (default) averages ``c_b`` over batches; ``mode="faithful"`` reproduces the original's running-sum
    double counting (earlier batches weigh more).
    """

    def __init__(self, gates: nn.Module | Sequence[GateLayer], mode: str = "mean") -> None:
        if mode not in _ACCUMULATORS:
            raise ValueError(f"unknown importance accumulation mode {mode!r}; allowed: {list_accumulation_modes()}")
        self.gates = _gates_of(gates)
        self.mode = mode
        self.num_gates = sum(g.num_channels for g in self.gates)
        self._acc = _ACCUMULATORS[mode](self.num_gates)

    @torch.no_grad()
    def batch_criterion(self) -> np.ndarray:
        """This batch's ``(g · grad)²`` for all gates, concatenated in gate order (0 where a gate has no gradient)."""
        parts = []
        for g in self.gates:
            grad = g.weight.grad
            if grad is None:
                parts.append(torch.zeros(g.num_channels, dtype=torch.float64))
            else:
                parts.append((g.weight.detach() * grad).double().pow(2).cpu())
        return torch.cat(parts).numpy()

    def update(self) -> np.ndarray:
        """Accumulate the current gradients' criterion; returns it."""
        c = self.batch_criterion()
        self._acc.add(c)
        return c

    def end_epoch(self) -> None:
        """Mark the end of a local epoch."""
        self._acc.end_epoch()

    @property
    def batches(self) -> int:
        """Batches accumulated since the last reset."""
        return self._acc.batches

    def vector(self) -> np.ndarray:
        """The accumulated importance, float32 of length ``num_gates``."""
        return self._acc.value().astype(np.float32)

    def reset(self) -> None:
        """Forget everything accumulated (call after a prune step / at the start of a round)."""
        self._acc.reset()


# --------------------------------------------------------------------------------------------------------------------
# Local training
# --------------------------------------------------------------------------------------------------------------------


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters to hand to the optimizer: everything that requires grad except gate weights (never trained)."""
    gate_ids = {id(g.weight) for g in gate_layers(module)}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in gate_ids]


@torch.no_grad()
def _rezero(gates: Sequence[GateLayer]) -> None:
    for g in gates:
        g.weight.mul_(g.mask)


def train_header_epoch(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    importance: TaylorImportance | None = None,
    gates: Sequence[GateLayer] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One local epoch: per batch forward, cross-entropy, backward, step, re-zero pruned gates, update importance.

    ``model`` maps inputs to logits (a header on precomputed token grids, or backbone + header); ``batches`` yields
    ``(inputs, labels)``. The optimizer must not contain gate weights (:func:`trainable_parameters`). Gates come from
    ``gates``, else ``importance.gates``, else the model's gate layers. Returns ``loss``, ``accuracy`` (example-weighted
    means), ``num_examples`` and ``num_batches``.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    if gates is None:
        gates = (
            importance.gates if importance is not None else (gate_layers(model) if isinstance(model, nn.Module) else [])
        )
    gate_params = {id(g.weight) for g in gates}
    if any(id(p) in gate_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer contains gate weights; build it from trainable_parameters(model)")
    if isinstance(model, nn.Module):
        model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for inputs, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        for g in gates:  # gates are outside the optimizer: clear their gradients ourselves
            g.weight.grad = None
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        _rezero(gates)
        if importance is not None:
            importance.update()
        n = int(labels.shape[0])
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
        seen += n
        steps += 1
    if importance is not None:
        importance.end_epoch()
    if steps == 0:
        logger.warning("train_header_epoch: no batches")
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "num_examples": float(seen),
        "num_batches": float(steps),
    }


# --------------------------------------------------------------------------------------------------------------------
# Importance validation and mixing
# --------------------------------------------------------------------------------------------------------------------


def validate_importance(vec: object, expected_len: int) -> np.ndarray:
    """Check a (received) importance vector: 1-D float of ``expected_len``, finite, non-negative → float32 copy."""
    arr = np.asarray(vec)
    if arr.dtype.kind != "f":
        raise ValueError(f"importance must be a float array; got dtype {arr.dtype}")
    if arr.shape != (expected_len,):
        raise ValueError(f"importance must have shape ({expected_len},); got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("importance contains NaN or Inf")
    if np.any(np.abs(arr) > np.finfo(np.float32).max):
        raise ValueError("importance has values beyond the float32 range")
    if np.any(arr < 0):
        raise ValueError("importance has negative entries; Taylor importance (g·grad)² is non-negative")
    return arr.astype(np.float32)


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
# Aggregation variants (spec §4.5)
# --------------------------------------------------------------------------------------------------------------------

WeightBuilder = Callable[..., dict[int, dict[int, float]] | None]


@dataclass(frozen=True)
class VariantSpec:
    """An aggregation variant: whether devices prune, and how the mixing weights are built."""

    name: str
    prunes: bool
    build: WeightBuilder


_VARIANTS: dict[str, VariantSpec] = {}


def register_variant(*names: str, prunes: bool = True) -> Callable[[WeightBuilder], WeightBuilder]:
    """Register ``build(device_ids, *, num_examples=None, similarity=None) -> weights`` under one or more names."""

    def deco(fn: WeightBuilder) -> WeightBuilder:
        for name in names:
            if name in _VARIANTS:
                raise ValueError(f"variant {name!r} is already registered")
            _VARIANTS[name] = VariantSpec(names[0], prunes, fn)
        return fn

    return deco


def list_variants() -> list[str]:
    """Variant names (including the original's ``pruning_*`` aliases)."""
    return sorted(_VARIANTS)


def get_variant(name: str) -> VariantSpec:
    """The :class:`VariantSpec` registered as ``name``."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown aggregation variant {name!r}; allowed: {list_variants()}")
    return _VARIANTS[name]


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


# --------------------------------------------------------------------------------------------------------------------
# Pruner (spec §4.6)
# --------------------------------------------------------------------------------------------------------------------


class GatePruner:
    """Global-rank gate pruning with criteria momentum; state is plain numpy (lives in the device's context state).

    ``step(Ĩ)``: first step ``Ā = Ĩ``, later ``Ā ← m·Ā + (1−m)·Ĩ``; ``crit = Ā·mask``;
    ``t = min(N−1, pruned + prune_per_iteration − 1, prune_neurons_max − 1)``; every unit with
    ``crit ≤ sort(crit)[t]`` is pruned (ties may prune more). ``prune_neurons_max=-1`` means no cap.
    """

    def __init__(self, num_gates: int, prune_per_iteration: int, prune_neurons_max: int, momentum: float = 0.9) -> None:
        if num_gates < 1:
            raise ValueError(f"num_gates must be >= 1; got {num_gates}")
        if prune_per_iteration < 0:
            raise ValueError(f"prune_per_iteration must be >= 0; got {prune_per_iteration}")
        if prune_neurons_max != -1 and prune_neurons_max < 1:
            raise ValueError(f"prune_neurons_max must be >= 1 or -1 (no cap); got {prune_neurons_max}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        self.num_gates = int(num_gates)
        self.prune_per_iteration = int(prune_per_iteration)
        self.prune_neurons_max = int(prune_neurons_max)
        self.momentum = float(momentum)
        self.avg = np.zeros(self.num_gates, dtype=np.float64)
        self.mask = np.ones(self.num_gates, dtype=np.float32)
        self.steps = 0

    @property
    def num_pruned(self) -> int:
        """Gates pruned so far."""
        return int(np.count_nonzero(self.mask == 0))

    def step(self, mixed_importance: np.ndarray) -> np.ndarray:
        """One prune step with this round's mixed importance; returns the new keep-mask (float32 copy)."""
        imp = validate_importance(mixed_importance, self.num_gates).astype(np.float64)
        if self.steps == 0 or self.momentum == 0.0:
            self.avg = imp.copy()
        else:
            self.avg = self.momentum * self.avg + (1.0 - self.momentum) * imp
        self.steps += 1
        if self.prune_per_iteration == 0:
            return self.mask.copy()
        crit = self.avg * self.mask
        t = min(self.num_gates - 1, self.num_pruned + self.prune_per_iteration - 1)
        if self.prune_neurons_max != -1:
            t = min(t, self.prune_neurons_max - 1)
        threshold = np.sort(crit)[t]
        before = self.num_pruned
        self.mask = np.where(crit <= threshold, 0.0, self.mask).astype(np.float32)
        logger.debug(
            "GatePruner step %d: pruned %d -> %d (threshold %.3g)", self.steps, before, self.num_pruned, threshold
        )
        return self.mask.copy()

    def apply(self, target: nn.Module | Sequence[GateLayer]) -> None:
        """Write the keep-mask into the gate layers (in order) and zero the pruned gates."""
        gates = _gates_of(target)
        total = sum(g.num_channels for g in gates)
        if total != self.num_gates:
            raise ValueError(f"target has {total} gates, pruner has {self.num_gates}")
        offset = 0
        for g in gates:
            part = torch.from_numpy(self.mask[offset : offset + g.num_channels].copy())
            g.apply_mask(part)
            offset += g.num_channels

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy state (``avg`` = Ā, ``mask``, ``steps``)."""
        return {"avg": self.avg.copy(), "mask": self.mask.copy(), "steps": np.array(self.steps, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output, checking shapes and values."""
        missing = {"avg", "mask", "steps"} - set(state)
        if missing:
            raise ValueError(f"GatePruner state misses keys {sorted(missing)}")
        avg = np.asarray(state["avg"], dtype=np.float64)
        mask = np.asarray(state["mask"], dtype=np.float32)
        if avg.shape != (self.num_gates,) or mask.shape != (self.num_gates,):
            raise ValueError(f"GatePruner state shapes {avg.shape}/{mask.shape} != num_gates={self.num_gates}")
        if not np.all(np.isfinite(avg)) or not np.all((mask == 0) | (mask == 1)):
            raise ValueError("GatePruner state: avg must be finite and mask must be 0/1")
        self.avg, self.mask, self.steps = avg.copy(), mask.copy(), int(np.asarray(state["steps"]))
