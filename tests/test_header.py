"""Headers on the patch-token grid: GatedTempCNN (ACME §3.8), LinearHead, registry, FedPer split."""

from __future__ import annotations

import pytest
import torch

from acme_flwr.device.gates import GateLayer
from acme_flwr.device.headers import (
    GatedTempCNN,
    LinearHead,
    create_header,
    list_headers,
    register_header,
    split_header_params,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_gated_temp_cnn_forward_backward_shapes() -> None:
    h = create_header("gated_temp_cnn", 32, 10, channels=16)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    out = h(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    gates = h.gate_layers()
    assert len(gates) == 4 and all(isinstance(g, GateLayer) for g in gates)
    assert h.num_gates == 4 * 16
    assert all(g.weight.grad is not None and g.weight.grad.shape == (16,) for g in gates)


def test_gated_temp_cnn_matches_original_layout() -> None:
    # original: 256 channels, 1 024 gates, ≈ 0.369 M params incl. gates (ACME §3.8), batch-statistics BNs in `five`
    h = GatedTempCNN(768, 100, bn_running_stats=False)
    assert h.num_gates == 1024
    assert sum(p.numel() for p in h.parameters()) == 368_740
    keys = h.state_dict().keys()
    assert {"five.2.weight", "five.4.weight", "five.8.weight", "five.10.weight"} <= set(keys)  # original gate names
    assert "stem_conv.1.running_mean" in keys and "five.5.running_mean" not in keys  # BN in `five`: no running stats
    fixed = GatedTempCNN(768, 100)  # default (a fix): `five` BNs keep running statistics; same parameters
    assert sum(p.numel() for p in fixed.parameters()) == 368_740 and "five.5.running_mean" in fixed.state_dict()
    assert set(keys) <= set(fixed.state_dict())  # the original's weights still load


def test_dropout_only_in_training() -> None:
    h = GatedTempCNN(32, 5, channels=8, dropout=0.9)
    x = torch.randn(4, 32, 4, 4)
    h.eval()
    with torch.no_grad():
        assert torch.equal(h(x), h(x))
    h.train()
    with torch.no_grad():
        assert not torch.equal(h(x), h(x))


@pytest.mark.parametrize("after_bn", [True, False])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_pruned_gate_silences_channel(layer: int, after_bn: bool) -> None:
    h = GatedTempCNN(32, 5, channels=8, pw_gate_after_bn=after_bn).eval()
    x = torch.randn(2, 32, 4, 4)
    mask = torch.ones(8)
    mask[3] = 0
    gate = h.gate_layers()[layer]
    gate.apply_mask(mask)
    with torch.no_grad():
        gate.weight.fill_(2.0)  # an update to the gate weights must not revive the pruned channel: the mask persists
    seen: list[torch.Tensor] = []
    handle = gate.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            assert h(x).shape == (2, 5)
    finally:
        handle.remove()
    assert len(seen) == 2  # the `five` block runs twice (n1 and n2)
    for out in seen:
        assert torch.count_nonzero(out[:, 3]) == 0  # exactly zero right after the gate
        kept = torch.cat([out[:, :3], out[:, 4:]], dim=1)
        assert torch.count_nonzero(kept) > 0.9 * kept.numel()  # the other channels still pass


def test_linear_head_mean_token_and_cls() -> None:
    h = create_header("linear", 32, 7)
    assert h.num_gates == 0 and h.gate_layers() == []
    x = torch.randn(2, 32, 4, 4)
    cls = torch.randn(2, 32)
    assert h(x).shape == (2, 7)
    torch.testing.assert_close(h(x), h.fc(h.norm(x.mean(dim=(2, 3)))))
    torch.testing.assert_close(h(x, cls=cls), h.fc(h.norm(cls)))
    with pytest.raises(ValueError, match="cls must have shape"):
        h(x, cls=torch.randn(3, 32))


def test_registry() -> None:
    assert {"gated_temp_cnn", "linear"} <= set(list_headers())
    with pytest.raises(ValueError, match="allowed"):
        create_header("mlp_mixer", 32, 10)
    with pytest.raises(ValueError, match="already registered"):
        register_header("linear")(LinearHead)
    with pytest.raises(ValueError, match="num_classes"):
        create_header("linear", 32, 0)


def test_wrong_grid_rejected() -> None:
    h = create_header("gated_temp_cnn", 32, 10, channels=8)
    with pytest.raises(ValueError, match=r"\(B, 32, gh, gw\)"):
        h(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="token grid"):
        h(torch.randn(2, 17, 32))


def test_split_header_params() -> None:
    h = create_header("gated_temp_cnn", 32, 10, channels=8)
    body, head = split_header_params(h)
    assert head == ["final_fc.weight", "final_fc.bias"]
    assert "stem_conv.0.weight" in body and "five.2.weight" in body and not set(body) & set(head)
    assert set(body) | set(head) == set(h.state_dict())
    body, head = split_header_params(create_header("linear", 32, 10))
    assert head == ["fc.weight", "fc.bias"] and body == ["norm.weight", "norm.bias"]
