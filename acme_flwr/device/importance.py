"""Taylor importance of a header's channel gates on a device (ACME §4.4): per-batch ``(g · ∂L/∂g)²`` accumulated.

The device trains its header while :class:`TaylorImportance` reads the gates' gradients; its importance vector (one
float per gate) is the only thing the device sends its edge in ACME's personalization loop. How a round's per-batch
criteria become one vector is an accumulator chosen by name (``mean``, or the original's ``faithful`` rule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from acme_flwr.registry import Registry

from .gates import GateLayer, gates_of

logger = logging.getLogger(__name__)

__all__ = ["TaylorImportance", "list_accumulation_modes", "validate_importance"]


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


ACCUMULATORS: Registry[type[_Accumulator]] = Registry("importance accumulation")


def list_accumulation_modes() -> list[str]:
    """Accumulation modes accepted by :class:`TaylorImportance`."""
    return ACCUMULATORS.names()


@ACCUMULATORS.register("mean")
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


@ACCUMULATORS.register("faithful")
class _FaithfulAccumulator(_Accumulator):
    """The original's double counting: per epoch ``(1/B) Σ_b A_b`` with ``A_b`` a running sum of ``c`` that is not
    reset between local epochs (only by :meth:`reset`, i.e. after a prune); per-epoch results averaged (ACME §7.11)."""

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
        acc = ACCUMULATORS.get(mode)  # RegistryError (a ValueError) names the allowed modes
        self.gates = gates_of(gates)
        self.mode = mode
        self.num_gates = sum(g.num_channels for g in self.gates)
        self._acc = acc(self.num_gates)

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
