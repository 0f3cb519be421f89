"""The ENAS cell vocabulary a searched header is built from: ops, arcs, the cell forward pass (ACME §3.2).

An *arc* is one normal cell with ``B`` nodes, written as a flat list of ``4B`` ints ``[x_id, x_op, y_id, y_op]`` per
node. Node ``i`` reads two states with ids ``< i + 2`` (ids 0 and 1 are the two layer inputs, ``k >= 2`` is node
``k - 2``), applies one op from :data:`OPS` to each and sums them. States never read by a node ("loose ends") are
concatenated, passed through ReLU, a 1×1 conv, and BN. Both the edge's weight-shared child
(:mod:`acme_flwr.edge.nas.child`) and the device's :class:`~acme_flwr.device.searched_header.SearchedHeader` run
cells through these pieces, so a header found at the edge computes on the device exactly what the child computed.
Differences from the original, on purpose: dropout only in training (ACME §7.6); average pooling excludes padding
(as TF ENAS "SAME" pooling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .convs import DepthwiseConv2d
from .gates import GateLayer

__all__ = [
    "NUM_BRANCHES",
    "OPS",
    "ChildConfig",
    "Node",
    "OpSpec",
    "SepConv",
    "arc_nodes",
    "arc_to_str",
    "has_separable_op",
    "loose_ends",
    "random_arc",
    "tokens_to_grid",
    "validate_arc",
]


# --------------------------------------------------------------------------------------------------------------------
# ops


class SepConv(nn.Module):
    """ENAS separable unit, twice: ``[ReLU, dw k×k, pw 1×1, BN]``; gates after every dw and pw conv if ``gated``.

    Without gates the ``gate_*`` slots are parameter-free identities, so a gated copy loads a plain one's state dict
    (only the gate keys are missing). ``pw_gate_after_bn`` moves each pw gate behind its BN: a gate right before a
    batch-statistics BN is scaled away by it (its Taylor importance is ~0 and a pruned channel still emits BN's bias),
    behind the BN it really switches the channel off. Default ``False`` = the original ``TempCNN`` placement.
    """

    def __init__(self, channels: int, kernel_size: int, gated: bool = False, bn_running_stats: bool = False,
                 pw_gate_after_bn: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.pw_gate_after_bn = pw_gate_after_bn
        for unit in (1, 2):
            self.add_module(f"dw{unit}", DepthwiseConv2d(channels, kernel_size))
            self.add_module(f"gate_dw{unit}", GateLayer(channels) if gated else nn.Identity())
            self.add_module(f"pw{unit}", nn.Conv2d(channels, channels, 1, bias=False))
            self.add_module(f"gate_pw{unit}", GateLayer(channels) if gated else nn.Identity())
            self.add_module(f"bn{unit}", nn.BatchNorm2d(channels, track_running_stats=bn_running_stats))

    def _unit(self, x: torch.Tensor, dw: nn.Module, gate_dw: nn.Module, pw: nn.Module, gate_pw: nn.Module,
              bn: nn.Module) -> torch.Tensor:
        x = pw(gate_dw(dw(F.relu(x))))
        return gate_pw(bn(x)) if self.pw_gate_after_bn else bn(gate_pw(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._unit(x, self.dw1, self.gate_dw1, self.pw1, self.gate_pw1, self.bn1)
        return self._unit(x, self.dw2, self.gate_dw2, self.pw2, self.gate_pw2, self.bn2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"


@dataclass(frozen=True)
class OpSpec:
    """One entry of the op table: its name, a builder ``(channels, **options) -> module`` (options: ``gated``,
    ``bn_running_stats``, ``pw_gate_after_bn``; ignored by parameter-free ops), and whether it owns weights (weighted
    ops get one copy per (layer, node, branch, input) in the child and carry the gates of an exported header)."""

    name: str
    build: Callable[..., nn.Module]
    weighted: bool


def _sep(kernel_size: int) -> Callable[..., nn.Module]:
    return lambda channels, **options: SepConv(channels, kernel_size, **options)


#: The six ENAS micro ops, indexed by the op ids of an arc.
OPS: tuple[OpSpec, ...] = (
    OpSpec("sep3", _sep(3), True),
    OpSpec("sep5", _sep(5), True),
    OpSpec("avgpool3", lambda c, **_: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), False),
    OpSpec("maxpool3", lambda c, **_: nn.MaxPool2d(3, stride=1, padding=1), False),
    OpSpec("sep1", _sep(1), True),
    OpSpec("identity", lambda c, **_: nn.Identity(), False),
)
NUM_BRANCHES = len(OPS)


# --------------------------------------------------------------------------------------------------------------------
# arcs


class Node(NamedTuple):
    """One node of a cell: ``op[x_op](state[x_id]) + op[y_op](state[y_id])``."""

    x_id: int
    x_op: int
    y_id: int
    y_op: int


def validate_arc(arc: Sequence[int], num_cells: int | None = None) -> list[int]:
    """Return ``arc`` as a list of plain ints; raise ``ValueError`` naming the bad position if it is invalid."""
    values = [int(a) for a in arc]
    if not values or len(values) % 4:
        raise ValueError(f"arc must hold 4 ints per node, got {len(values)} values")
    if num_cells is not None and len(values) != 4 * num_cells:
        raise ValueError(f"arc has {len(values) // 4} nodes, expected num_cells={num_cells}")
    for pos, value in enumerate(values):
        node, slot = divmod(pos, 4)
        bound = node + 2 if slot in (0, 2) else NUM_BRANCHES
        if not 0 <= value < bound:
            kind = "input id" if slot in (0, 2) else "op id"
            raise ValueError(f"arc[{pos}] (node {node} {kind}) = {value}, allowed 0..{bound - 1}")
    return values


def arc_nodes(arc: Sequence[int]) -> list[Node]:
    """Split a flat arc into :class:`Node` tuples."""
    values = [int(a) for a in arc]
    return [Node(*values[i:i + 4]) for i in range(0, len(values), 4)]


def loose_ends(arc: Sequence[int]) -> list[int]:
    """State ids (0..B+1) never read by any node; their concatenation is the layer output. Never empty."""
    nodes = arc_nodes(arc)
    used = {n.x_id for n in nodes} | {n.y_id for n in nodes}
    return [k for k in range(len(nodes) + 2) if k not in used]


def has_separable_op(arc: Sequence[int]) -> bool:
    """Whether the arc uses a weighted (separable) op, i.e. whether its exported header has gates to prune."""
    return any(OPS[op].weighted for op in [int(a) for a in arc][1::2])


def random_arc(num_cells: int, generator: torch.Generator | None = None) -> list[int]:
    """A uniformly random valid arc (for tests and baselines)."""
    arc: list[int] = []
    for node in range(num_cells):
        for _ in range(2):
            arc.append(int(torch.randint(node + 2, (1,), generator=generator)))
            arc.append(int(torch.randint(NUM_BRANCHES, (1,), generator=generator)))
    return arc


def arc_to_str(arc: Sequence[int]) -> str:
    """Human-readable cell, e.g. ``n2 = sep3(s0) + maxpool3(s1); out = cat(s2)``."""
    parts = [f"n{i + 2} = {OPS[n.x_op].name}(s{n.x_id}) + {OPS[n.y_op].name}(s{n.y_id})"
             for i, n in enumerate(arc_nodes(arc))]
    return "; ".join(parts) + f"; out = cat({', '.join(f's{k}' for k in loose_ends(arc))})"


def tokens_to_grid(tokens: torch.Tensor, grid_size: tuple[int, int] | None = None,
                   has_cls: bool = True) -> torch.Tensor:
    """ViT tokens ``(B, [1 +] N, D)`` → channels-first grid ``(B, D, gh, gw)`` (row-major patches, correct permute).

    ``grid_size`` defaults to a square grid. The original's baselines used ``.view(B, D, gh, gw)`` without the permute,
    which scrambles channels and positions (ACME §7.10).
    """
    patches = tokens[:, 1:] if has_cls else tokens
    n = patches.shape[1]
    if grid_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid_size")
        grid_size = (side, side)
    gh, gw = grid_size
    if gh * gw != n:
        raise ValueError(f"grid_size {grid_size} does not match {n} patch tokens")
    return patches.reshape(patches.shape[0], gh, gw, patches.shape[2]).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------------------------
# shared pieces of the child and of exported headers


def cell_forward(s0: torch.Tensor, s1: torch.Tensor, nodes: Sequence[Node], ops: Sequence[tuple[nn.Module, nn.Module]],
                 loose: Sequence[int], weight: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """Run one cell layer: nodes (with their (x, y) op modules), loose-end concat, ReLU, 1×1 conv ``weight``, BN."""
    states = [s0, s1]
    for node, (op_x, op_y) in zip(nodes, ops, strict=True):
        states.append(op_x(states[node.x_id]) + op_y(states[node.y_id]))
    out = F.relu(torch.cat([states[k] for k in loose], dim=1))
    return bn(F.conv2d(out, weight))


def make_stem(in_channels: int, channels: int) -> nn.Sequential:
    """1×1 conv (no bias) + BN with running statistics."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))


def classify(x: torch.Tensor, dropout: nn.Module, classifier: nn.Linear) -> torch.Tensor:
    """ReLU → global average pool → dropout (an ``nn.Dropout``: active only in training) → Linear."""
    return classifier(dropout(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal for Conv2d/Linear weights, zero Linear bias (ACME §3.2)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed the global torch RNG inside the block (if ``seed`` is given) without disturbing the caller's state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class ChildConfig:
    """Shape of a child/header: input channels (backbone hidden size), cell width C, B cells, L (+2) layers."""

    in_channels: int
    num_classes: int
    channels: int = 256
    num_cells: int = 3
    num_layers: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for key in ("in_channels", "num_classes", "channels", "num_cells"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"ChildConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_layers < 0:
            raise ValueError(f"ChildConfig.num_layers must be >= 0, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ChildConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], dropout: float = 0.1) -> ChildConfig:
        """Infer the shape of an :class:`ENASChild` from its state dict."""
        try:
            stem = state["stem.0.weight"]
            num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
            return cls(in_channels=stem.shape[1], num_classes=state["classifier.weight"].shape[0],
                       channels=stem.shape[0], num_cells=state["layers.0.final_conv"].shape[0] - 2,
                       num_layers=num_layers - 2, dropout=dropout)
        except (KeyError, ValueError) as err:
            raise ValueError(f"not an ENASChild state dict (missing/odd key: {err})") from err


