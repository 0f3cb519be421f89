"""The device's gate pruner (ACME §4.6): criteria momentum over the mixed importance, then global-rank pruning.

A device feeds the personalised importance its edge returns to :class:`GatePruner`, whose plain-numpy state lives in
the device's context state, and applies the new keep-mask to its header's gates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .gates import GateLayer, gates_of
from .importance import validate_importance

logger = logging.getLogger(__name__)

__all__ = ["GatePruner"]


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
        gates = gates_of(target)
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
