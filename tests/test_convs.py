"""The small-grid depthwise convolution is the ordinary one: same keys, outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acme_flwr.device.convs import DepthwiseConv2d, reference_depthwise


@pytest.mark.parametrize(("k", "grid"), [(5, (4, 4)), (3, (2, 2)), (5, (3, 5)), (5, (14, 14)), (3, (8, 8))])
def test_depthwise_matches_conv2d_outputs_and_gradients(k: int, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, k)
    x = torch.randn(3, 6, *grid, requires_grad=True)
    out = conv(x)
    ref = reference_depthwise(x, conv)
    assert out.shape == ref.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), g)
    rx, rw = torch.autograd.grad(ref, (x, conv.weight), g)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)


def test_depthwise_has_the_keys_and_shapes_of_nn_conv2d() -> None:
    plain = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    fast = DepthwiseConv2d(8, 5)
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    fast.load_state_dict(plain.state_dict())  # the original's header weights load unchanged
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
