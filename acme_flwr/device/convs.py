"""A depthwise convolution that is fast on the small token grids headers see (4x4 for the embedded and Fashion-MNIST
backbones), with the weights, state-dict keys and results of ``nn.Conv2d(C, C, k, padding=k // 2, groups=C)``.

On a grid of ``P = H·W`` positions a depthwise k×k convolution is, per channel, a ``P×P`` linear map whose entries
are kernel weights (or zero where the kernel falls off the grid). When ``P ≤ k²`` that map is no larger than the
kernel's work, and one batched matmul beats PyTorch's CPU depthwise kernel, whose backward dominates a header step
(5 ms of a 37 ms step per convolution at batch 32, 64 channels, 4×4; the matmul takes 1.7 ms). Larger grids (e.g.
ViT-B/16's 14×14) take the ordinary convolution. The two agree to float rounding (sums in another order).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=32)
def _shift_basis(h: int, w: int, k: int, pad: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``S[t, p, q] = 1`` where kernel tap ``t`` links output position ``p`` to input position ``q``: ``(k², P, P)``."""
    basis = torch.zeros(k * k, h * w, h * w)
    for pi in range(h):
        for pj in range(w):
            for qi in range(h):
                for qj in range(w):
                    di, dj = qi - pi + pad, qj - pj + pad
                    if 0 <= di < k and 0 <= dj < k:
                        basis[di * k + dj, pi * w + pj, qi * w + qj] = 1.0
    return basis.to(device=device, dtype=dtype)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)`` whose
    forward is a per-channel matmul on grids with at most ``kernel_size²`` positions (same parameters and keys)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        b, c, h, w = x.shape
        if h * w > k * k:
            return super().forward(x)
        basis = _shift_basis(h, w, k, self.padding[0], x.device, x.dtype)
        maps = (self.weight.reshape(c, k * k).to(x.dtype) @ basis.reshape(k * k, -1)).reshape(c, h * w, h * w)
        out = torch.bmm(x.reshape(b, c, h * w).transpose(0, 1), maps.transpose(1, 2))  # (C, B, P)
        return out.transpose(0, 1).reshape(b, c, h, w)


def reference_depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The ordinary convolution with ``conv``'s weights (what :class:`DepthwiseConv2d` must agree with)."""
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
