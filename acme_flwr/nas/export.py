"""Export a searched arc as a standalone, gated header (fixes spec §7.21: the original never exported its arcs).

:class:`SearchedHeader` runs exactly one arc — stem, ``L + 2`` cell layers, classifier — holding only the ops the arc
uses, one copy per (layer, node, branch) as in the child. Every depthwise and pointwise conv of a separable op is
followed by a :class:`~acme_flwr.gates.GateLayer` (the prunable units of Part III, like the original ``TempCNN``).
With gates at 1 it computes the same function as the shared child running that arc. ``header.arch()`` is a plain,
JSON-able dict and ``SearchedHeader.from_arc(arch)`` rebuilds the module. It is a
:class:`~acme_flwr.header.Header` registered as ``"searched"``, so ``create_header("searched", in_channels,
num_classes, arc=..., ...)`` (and a deployment's JSON header spec) rebuilds it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from acme_flwr.header import Header
from acme_flwr.nas.child import (
    OPS,
    ChildConfig,
    ENASChild,
    SharedCellLayer,
    arc_nodes,
    arc_to_str,
    cell_forward,
    classify,
    has_separable_op,
    loose_ends,
    make_stem,
    validate_arc,
)

__all__ = ["ArcLayer", "SearchedHeader", "export_header"]

log = logging.getLogger(__name__)

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


def _copy_into(dst: nn.Module, src_state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``src_state`` into ``dst``; only gate parameters and BN running stats may be missing."""
    result = dst.load_state_dict(dict(src_state), strict=False)
    allowed = ("gate_", "running_mean", "running_var", "num_batches_tracked")
    missing = [k for k in result.missing_keys if not any(a in k for a in allowed)]
    if missing or result.unexpected_keys:
        raise ValueError(f"cannot copy {what}: missing {missing}, unexpected {result.unexpected_keys}")


def export_header(arc: Sequence[int], child_or_state: ENASChild | Mapping[str, torch.Tensor], *, gated: bool = True,
                  bn_running_stats: bool = False, pw_gate_after_bn: bool = False,
                  dropout: float | None = None) -> SearchedHeader:
    """Build a :class:`SearchedHeader` for ``arc`` with weights copied from a shared child (module or state dict).

    ``bn_running_stats=False`` (default) keeps the child's batch-statistics BNs inside the cells, so outputs equal the
    child's; ``True`` gives cell BNs running statistics for per-sample inference (they must then be fine-tuned).
    ``pw_gate_after_bn``: see :class:`~acme_flwr.nas.child.SepConv`. ``dropout`` defaults to the child's.
    Logs a warning if the arc has no separable op (the header then has no gates for Part III to prune).
    """
    if isinstance(child_or_state, ENASChild):
        config, state = child_or_state.config, child_or_state.state_dict()
    else:
        state = dict(child_or_state)
        config = ChildConfig.from_state_dict(state, dropout=0.1 if dropout is None else dropout)
    arc = validate_arc(arc, config.num_cells)
    header = SearchedHeader(arc, config.in_channels, config.num_classes, config.channels, config.num_layers,
                            config.dropout if dropout is None else dropout, gated, bn_running_stats, pw_gate_after_bn)
    if gated and not has_separable_op(arc):
        log.warning("exported header for arc %s has no separable op, hence no gates to prune", arc_to_str(arc))
    header = header.to(device=state["stem.0.weight"].device, dtype=state["stem.0.weight"].dtype)

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    with torch.no_grad():
        _copy_into(header.stem, sub("stem."), "stem")
        _copy_into(header.classifier, sub("classifier."), "classifier")
        for li, layer in enumerate(header.layers):
            prefix = f"layers.{li}."
            for i, node in enumerate(layer.nodes):
                for branch, (inp, op) in enumerate(((node.x_id, node.x_op), (node.y_id, node.y_op))):
                    if OPS[op].weighted:
                        key = f"{prefix}branch_ops.{SharedCellLayer.key(i, branch, inp, op)}."
                        _copy_into(layer.branches[2 * i + branch], sub(key), f"layer {li} node {i} branch {branch}")
            rows = state[prefix + "final_conv"]
            layer.final_conv.copy_(torch.cat([rows[k] for k in layer.loose], dim=1)[:, :, None, None])
            _copy_into(layer.bn, sub(prefix + "bn."), f"layer {li} bn")
    return header
