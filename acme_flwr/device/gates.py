"""Channel gates: the prunable units of a header (ACME Part III, ACME §4.1).

A gate is a per-channel scalar multiplier initialised to 1. Pruning a channel sets its gate to 0 and keeps it there
through a persistent mask, so later optimizer steps cannot revive it. Gates are *not* trained by the optimizer; only
their gradients are read to compute Taylor importance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GateLayer(nn.Module):
    """Multiply each channel of a ``(B, C, H, W)`` (or ``(B, C)``) tensor by a gate in {pruned: 0, kept: weight}."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("mask", torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * (self.weight * self.mask).view(shape)

    @torch.no_grad()
    def apply_mask(self, mask: torch.Tensor) -> None:
        """Set the persistent keep-mask (1 = keep, 0 = pruned) and zero pruned gates."""
        if mask.shape != self.mask.shape:
            raise ValueError(f"gate mask has shape {tuple(mask.shape)}, expected {tuple(self.mask.shape)}")
        self.mask.copy_(mask.to(self.mask.dtype))
        self.weight.mul_(self.mask)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"


def gate_layers(module: nn.Module) -> list[GateLayer]:
    """All gate layers of ``module`` in registration order (the order importance vectors use)."""
    return [m for m in module.modules() if isinstance(m, GateLayer)]


def gates_of(gates: nn.Module | Sequence[GateLayer]) -> list[GateLayer]:
    """The GateLayers of a module, or a checked non-empty sequence of them."""
    found = gate_layers(gates) if isinstance(gates, nn.Module) else list(gates)
    if not found or not all(isinstance(g, GateLayer) for g in found):
        raise ValueError("expected a module containing GateLayers or a non-empty sequence of GateLayers")
    return found

