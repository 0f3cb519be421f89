"""Headers that sit on a sub-backbone's patch-token grid ``(B, hidden, gh, gw)`` (ACME §3.8, §3.9).

* :class:`GatedTempCNN` — the header the original's Part III personalises (``TempCNN`` in
  ``third_part/models/vit.py``): a 1×1 stem conv + BN, then two nodes ``n1 = maxpool(x) + five(x)`` and
  ``n2 = maxpool(n1) + five(n1)`` that share **one** separable-5×5 block ``five`` holding the 4 channel-gate layers
  (4 × ``channels`` prunable units), then ReLU, global average pool, dropout (training only), linear classifier.
  Module names match the original so its ``classifier.*`` weights load into it.
* :class:`LinearHead` — LayerNorm + Linear (the "Linear-EE"/"MLP-EE" baselines) on a pooled token.
* ``"searched"`` — a header found by the edge NAS (:class:`acme_flwr.edge.nas.SearchedHeader`), built from its arc.

Headers are built by name through a decorator registry (:func:`register_header`, :func:`create_header`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from acme_flwr.registry import Registry

from .convs import DepthwiseConv2d
from .gates import GateLayer, gate_layers

logger = logging.getLogger(__name__)

__all__ = [
    "GatedTempCNN",
    "Header",
    "LinearHead",
    "build_header",
    "create_header",
    "list_headers",
    "register_header",
    "split_header_params",
]

HeaderFactory = Callable[..., "Header"]
# constructors ``cls(in_channels, num_classes, **kw)`` (a class or a factory returning a :class:`Header`) by name
HEADERS: Registry[HeaderFactory] = Registry("header")
register_header = HEADERS.register
list_headers = HEADERS.names  # names accepted by :func:`create_header`


def create_header(name: str, in_channels: int, num_classes: int, **kw: object) -> Header:
    """Build the header registered as ``name`` for a backbone of width ``in_channels``."""
    factory = HEADERS.get(name)
    for arg, v in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int; got {v!r}")
    return factory(in_channels, num_classes, **kw)


def build_header(spec: dict[str, Any]) -> Header:
    """Rebuild a header from its JSON-able spec (``{"name", "in_channels", "num_classes", **kwargs}``): how a device
    builds the header it was shipped, and how the cloud builds the one it ships (``acme_flwr.packages.header_spec``)."""
    spec = dict(spec)
    return create_header(spec.pop("name"), spec.pop("in_channels"), spec.pop("num_classes"), **spec)


class Header(nn.Module):
    """Base class: a head on a ``(B, hidden, gh, gw)`` token grid with an optional set of channel gates."""

    #: attribute name of the final classifier (the "head" FedPer keeps local)
    classifier_name: str = "final_fc"

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def gate_layers(self) -> list[GateLayer]:
        """The header's gate layers in the order importance vectors use."""
        return gate_layers(self)

    @property
    def num_gates(self) -> int:
        """Total number of prunable units (gates)."""
        return sum(g.num_channels for g in self.gate_layers())

    def _check_grid(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a (B, {self.in_channels}, gh, gw) token grid; got {tuple(x.shape)}"
            )


class _Separable5(nn.Sequential):
    """ENAS separable-5×5 unit applied twice, a gate after every depthwise and pointwise conv (indices 2, 4, 8, 10).

    Module indices (hence state-dict keys) are the original's whatever the placement; ``pw_gate_after_bn`` only
    changes the order in which the pointwise gates (4, 10) and their BatchNorms (5, 11) run. A gate right before a
    batch-statistics BN is normalised away by it (Taylor importance ~0; a "pruned" channel still emits the BN bias);
    behind the BN it really switches the channel off.
    """

    def __init__(self, channels: int, pw_gate_after_bn: bool = True, bn_running_stats: bool = True) -> None:
        def unit() -> list[nn.Module]:  # ReLU, depthwise 5x5, gate, pointwise 1x1, gate, BN
            return [nn.ReLU(), DepthwiseConv2d(channels, 5),
                    GateLayer(channels), nn.Conv2d(channels, channels, 1, bias=False), GateLayer(channels),
                    nn.BatchNorm2d(channels, track_running_stats=bn_running_stats)]

        super().__init__(*unit(), *unit())
        self.pw_gate_after_bn = pw_gate_after_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pw_gate_after_bn:
            return super().forward(x)
        order = (0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 11, 10)  # BN before its pointwise gate
        for i in order:
            x = self[i](x)
        return x

    def extra_repr(self) -> str:
        return f"pw_gate_after_bn={self.pw_gate_after_bn}"


def _separable5(channels: int, pw_gate_after_bn: bool = True, bn_running_stats: bool = True) -> _Separable5:
    """The gated separable-5×5 block of :class:`GatedTempCNN`."""
    return _Separable5(channels, pw_gate_after_bn, bn_running_stats)


@register_header("gated_temp_cnn")
class GatedTempCNN(Header):
    """The original Part III header (``TempCNN``) with a configurable channel count (256 in the original).

    ``bn_running_stats`` (default ``True``, a fix): the ``five`` block's BatchNorms keep running statistics, so at
    evaluation a sample's prediction does not depend on the rest of its batch; ``False`` is the original (batch
    statistics also at evaluation). The stem BN always keeps them. Dropout2d(``dropout``) acts on the pooled
    ``(B, C, 1, 1)`` map in training mode only (the original's module form; the functional always-on dropout of the NAS
    child is not copied).

    ``pw_gate_after_bn`` (default ``True``, a fix): the pointwise gates run after their batch-statistics BN, where they
    really switch channels off; ``False`` is the original's placement (gate before BN: normalised away, Taylor
    importance ~0). State-dict keys are the same either way, so the original's weights load into both.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1,
                 pw_gate_after_bn: bool = True, bn_running_stats: bool = True) -> None:
        super().__init__(in_channels)
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels}")
        self.channels = channels
        self.pw_gate_after_bn = bool(pw_gate_after_bn)
        self.stem_conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.bn_running_stats = bool(bn_running_stats)
        self.five = _separable5(channels, self.pw_gate_after_bn, self.bn_running_stats)
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.adaptive_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout2d(dropout)
        self.final_fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_grid(x)
        x = self.stem_conv(x)
        n1 = self.max_pool(x) + self.five(x)
        n2 = self.max_pool(n1) + self.five(n1)
        z = self.dropout(self.adaptive_pool(self.relu(n2)))
        return self.final_fc(z.flatten(1))


@register_header("linear")
class LinearHead(Header):
    """LayerNorm(eps 1e-6) + Linear on one vector per image; no gates.

    ``forward(grid, cls=None)``: with ``cls`` (a ``(B, hidden)`` CLS vector taken from the backbone separately — the
    original Linear-EE/MLP-EE baselines) that vector is classified; otherwise the mean of the grid's patch tokens is.
    """

    classifier_name = "fc"

    def __init__(self, in_channels: int, num_classes: int, eps: float = 1e-6) -> None:
        super().__init__(in_channels)
        self.norm = nn.LayerNorm(in_channels, eps=eps)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        self._check_grid(x)
        if cls is not None:
            if cls.shape != (x.shape[0], self.in_channels):
                raise ValueError(f"cls must have shape {(x.shape[0], self.in_channels)}; got {tuple(cls.shape)}")
            v = cls
        else:
            v = x.mean(dim=(2, 3))
        return self.fc(self.norm(v))


def split_header_params(header: Header) -> tuple[list[str], list[str]]:
    """Split the header's ``state_dict`` keys into (body, head); head = the final classifier (FedPer keeps it local).

    Keys come from ``state_dict()`` so buffers (BN running statistics, gate masks) travel with the body.
    """
    prefix = getattr(header, "classifier_name", "final_fc") + "."
    keys = list(header.state_dict().keys())
    head = [k for k in keys if k.startswith(prefix)]
    if not head:
        raise ValueError(f"{type(header).__name__} has no classifier parameters under {prefix!r}")
    body = [k for k in keys if not k.startswith(prefix)]
    return body, head
