"""The device's searched header: one ENAS arc as a standalone, gated :class:`Header` (registered ``"searched"``).

:class:`SearchedHeader` runs exactly one arc — stem, ``L + 2`` cell layers, classifier — holding only the ops the arc
uses, one copy per (layer, node, branch) as in the edge's child. Every depthwise and pointwise conv of a separable op
is followed by a :class:`~acme_flwr.device.gates.GateLayer` (the prunable units of Part III, like the original
``TempCNN``). ``header.arch()`` is a plain, JSON-able dict and ``SearchedHeader.from_arc(arch)`` rebuilds the module;
``create_header("searched", in_channels, num_classes, arc=..., ...)`` (and a package's JSON header spec) too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .cell import OPS, ChildConfig, arc_nodes, arc_to_str, cell_forward, classify, loose_ends, make_stem, validate_arc
from .headers import Header, register_header

__all__ = ["ArcLayer", "SearchedHeader"]

_ARCH_KEYS = ("arc", "in_channels", "num_classes", "channels", "num_layers", "dropout", "gated", "bn_running_stats",
              "pw_gate_after_bn")


class ArcLayer(nn.Module):
    """One cell layer for a fixed arc: ``branches[2·node + b]`` is the op of branch b (0 = x, 1 = y) of a node."""

    def __init__(self, arc: Sequence[int], channels: int, gated: bool = True, bn_running_stats: bool = False,
                 pw_gate_after_bn: bool = False) -> None:
        super().__init__()
        self.nodes = arc_nodes(arc)
        self.loose = loose_ends(arc)
        options = {"gated": gated, "bn_running_stats": bn_running_stats, "pw_gate_after_bn": pw_gate_after_bn}
        self.branches = nn.ModuleList(OPS[op].build(channels, **options)
                                      for node in self.nodes for op in (node.x_op, node.y_op))
        self.final_conv = nn.Parameter(torch.randn(channels, len(self.loose) * channels, 1, 1) * 0.01)
        self.bn = nn.BatchNorm2d(channels, track_running_stats=bn_running_stats)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        ops = [(self.branches[2 * i], self.branches[2 * i + 1]) for i in range(len(self.nodes))]
        return cell_forward(s0, s1, self.nodes, ops, self.loose, self.final_conv, self.bn)


class SearchedHeader(Header):
    """Standalone header for one arc on a ``(B, in_channels, gh, gw)`` patch-token grid; returns logits."""

    classifier_name = "classifier"

    def __init__(self, arc: Sequence[int], in_channels: int, num_classes: int, channels: int = 256,
                 num_layers: int = 3, dropout: float = 0.1, gated: bool = True, bn_running_stats: bool = False,
                 pw_gate_after_bn: bool = False) -> None:
        super().__init__(int(in_channels))
        self.arc = validate_arc(arc)
        ChildConfig(in_channels, num_classes, channels, len(self.arc) // 4, num_layers, dropout)  # validates
        self.in_channels, self.num_classes, self.channels = int(in_channels), int(num_classes), int(channels)
        self.num_layers, self.dropout_p = int(num_layers), float(dropout)
        self.gated, self.bn_running_stats = bool(gated), bool(bn_running_stats)
        self.pw_gate_after_bn = bool(pw_gate_after_bn)
        self.stem = make_stem(in_channels, channels)
        self.layers = nn.ModuleList(ArcLayer(self.arc, channels, gated, bn_running_stats, pw_gate_after_bn)
                                    for _ in range(num_layers + 2))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_grid(x)
        s0 = s1 = self.stem(x)
        for layer in self.layers:
            s0, s1 = s1, layer(s0, s1)
        return classify(s1, self.dropout, self.classifier)

    def arch(self) -> dict[str, Any]:
        """Everything needed to rebuild the module (plain ints/floats/bools/lists)."""
        return {"arc": list(self.arc), "in_channels": self.in_channels, "num_classes": self.num_classes,
                "channels": self.channels, "num_layers": self.num_layers, "dropout": self.dropout_p,
                "gated": self.gated, "bn_running_stats": self.bn_running_stats,
                "pw_gate_after_bn": self.pw_gate_after_bn}

    @classmethod
    def from_arc(cls, arch: Mapping[str, Any]) -> SearchedHeader:
        """Rebuild from :meth:`arch` output (e.g. loaded from JSON); weights are fresh — load a state dict next."""
        unknown = sorted(set(arch) - set(_ARCH_KEYS))
        if unknown or "arc" not in arch:
            raise ValueError(f"bad header arch: unknown keys {unknown}, 'arc' required; allowed: {list(_ARCH_KEYS)}")
        return cls(**dict(arch))

    def extra_repr(self) -> str:
        return f"arc={self.arc} ({arc_to_str(self.arc)})"


@register_header("searched")
def _searched_header(in_channels: int, num_classes: int, **arch: object) -> Header:
    """Rebuild a searched header from its arch dict (``arc``, ``channels``, ``num_layers``, ``dropout``, ``gated``,
    ``bn_running_stats``, ``pw_gate_after_bn``)."""
    return SearchedHeader.from_arc({**arch, "in_channels": in_channels, "num_classes": num_classes})
