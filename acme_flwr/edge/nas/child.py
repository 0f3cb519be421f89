"""The edge's weight-shared ENAS child on a patch-token grid (ACME Part II, ACME §3.2); cells: ``device.cell``.

An *arc* is one normal cell with ``B`` nodes, written as a flat list of ``4B`` ints ``[x_id, x_op, y_id, y_op]`` per
node. Node ``i`` reads two states with ids ``< i + 2`` (ids 0 and 1 are the two layer inputs, ``k >= 2`` is node
``k - 2``), applies one op from :data:`OPS` to each and sums them. States never read by a node ("loose ends") are
concatenated, passed through ReLU, a 1×1 conv built from per-layer ``final_conv`` rows, and BN.

The child stacks ``L + 2`` such layers after a 1×1 stem; every layer runs the same arc. Conv ops own weights per
(layer, node, branch, input index, op), the standard ENAS weight sharing: every arc is a sub-graph of one super-net.
Differences from the original, on purpose: dropout only in training (ACME §7.6); average pooling excludes padding
(as TF ENAS "SAME" pooling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from acme_flwr.device.cell import (
    OPS,
    ChildConfig,
    arc_nodes,
    cell_forward,
    classify,
    init_weights,
    loose_ends,
    make_stem,
    seeded,
    validate_arc,
)

__all__ = ["ENASChild", "SharedCellLayer"]


# --------------------------------------------------------------------------------------------------------------------
# the weight-shared child


class SharedCellLayer(nn.Module):
    """One normal layer of the child: weights for every (node, branch, input, weighted op), per-layer ``final_conv``."""

    def __init__(self, num_cells: int, channels: int) -> None:
        super().__init__()
        self.num_cells = num_cells
        self.branch_ops = nn.ModuleDict({
            self.key(node, branch, inp, op): spec.build(channels)
            for node in range(num_cells) for branch in range(2) for inp in range(node + 2)
            for op, spec in enumerate(OPS) if spec.weighted
        })
        self.free_ops = nn.ModuleDict({str(op): spec.build(channels)
                                       for op, spec in enumerate(OPS) if not spec.weighted})
        # row k: the (C_out, C_in) block applied to loose end k
        self.final_conv = nn.Parameter(torch.randn(num_cells + 2, channels, channels) * 0.01)
        self.bn = nn.BatchNorm2d(channels, track_running_stats=False)

    @staticmethod
    def key(node: int, branch: int, inp: int, op: int) -> str:
        """ModuleDict key of a weighted op."""
        return f"n{node}_b{branch}_i{inp}_{OPS[op].name}"

    def op(self, node: int, branch: int, inp: int, op: int) -> nn.Module:
        """The module used for ``op`` on branch ``branch`` (0 = x, 1 = y) of ``node`` reading state ``inp``."""
        return self.branch_ops[self.key(node, branch, inp, op)] if OPS[op].weighted else self.free_ops[str(op)]

    def loose_weight(self, loose: Sequence[int]) -> torch.Tensor:
        """1×1 conv weight ``(C, len(loose)·C, 1, 1)`` from the selected ``final_conv`` rows."""
        return torch.cat([self.final_conv[k] for k in loose], dim=1)[:, :, None, None]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, arc: Sequence[int]) -> torch.Tensor:
        nodes = arc_nodes(arc)
        ops = [(self.op(i, 0, n.x_id, n.x_op), self.op(i, 1, n.y_id, n.y_op)) for i, n in enumerate(nodes)]
        loose = loose_ends(arc)
        return cell_forward(s0, s1, nodes, ops, loose, self.loose_weight(loose), self.bn)


class ENASChild(nn.Module):
    """Weight-shared ENAS micro child on a ``(B, in_channels, gh, gw)`` grid; ``forward(x, arc)`` runs one arc."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_cells: int = 3,
                 num_layers: int = 3, dropout: float = 0.1, seed: int | None = None) -> None:
        super().__init__()
        self.config = ChildConfig(in_channels, num_classes, channels, num_cells, num_layers, dropout)
        with seeded(seed):
            self.stem = make_stem(in_channels, channels)
            self.layers = nn.ModuleList(SharedCellLayer(num_cells, channels) for _ in range(num_layers + 2))
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(channels, num_classes)
            init_weights(self)

    @classmethod
    def from_config(cls, config: ChildConfig, seed: int | None = None) -> ENASChild:
        """Build from a :class:`ChildConfig`."""
        return cls(**asdict(config), seed=seed)

    def forward(self, x: torch.Tensor, arc: Sequence[int]) -> torch.Tensor:
        arc = validate_arc(arc, self.config.num_cells)
        s0 = s1 = self.stem(x)
        for layer in self.layers:
            s0, s1 = s1, layer(s0, s1, arc)
        return classify(s1, self.dropout, self.classifier)
