"""ElasticViT: run-time switch, extraction, merging, re-ordering, arch round trip, HF loading, bad input."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from acme_flwr.cloud.elastic_vit import (
    ElasticViT,
    ElasticViTConfig,
    count_macs_formula,
    count_params_formula,
    kept_layers,
)

GRID = [0.25, 0.5, 0.75, 1.0]


def tiny(num_layers: int = 4, num_heads: int = 4, hidden: int = 32, ffn: int = 64, **kw) -> ElasticViT:
    torch.manual_seed(0)
    cfg = ElasticViTConfig.uniform(
        num_layers, num_heads, ffn, hidden, image_size=8, patch_size=2, num_channels=1, num_labels=10, **kw
    )
    return ElasticViT(cfg).eval()


def images(n: int = 3, c: int = 1, size: int = 8) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("num_layers", "depth", "expected"),
    [
        (12, 0.25, [0, 4, 8]),
        (12, 0.5, [0, 2, 4, 6, 8, 10]),
        (12, 0.75, [0, 1, 2, 4, 5, 6, 8, 9, 10]),
        (12, 1.0, list(range(12))),
        (12, 0.67, [0, 1, 2, 4, 5, 7, 8, 10]),
        (12, 0.33, [0, 3, 6, 9]),
        (12, 0.83, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]),
        (12, 0.17, [0, 5]),
        (4, 0.5, [0, 2]),
    ],
)
def test_depth_rule_matches_spec_table(num_layers: int, depth: float, expected: list[int]) -> None:
    assert kept_layers(num_layers, depth) == expected


def test_extraction_equals_switched_model_and_param_formula_over_grid() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        for w, d in itertools.product(GRID, GRID):
            switched = model.set_subnet(w, d)(x)
            sub = model.extract_subnet(w, d)
            assert sub.num_parameters() == count_params_formula(model.arch(), w, d)
            assert sub.num_parameters() == count_params_formula(sub.arch(), 1.0, 1.0)
            assert len(sub.layers) == round(4 * d)
            assert (sub(x) - switched).abs().max().item() <= 1e-5, (w, d)
            # hidden states pair up too (embedding output + each kept layer)
            _, h_sw = model(x, output_hidden_states=True)
            _, h_sub = sub(x, output_hidden_states=True)
            assert len(h_sw) == len(h_sub) == round(4 * d) + 1
    model.set_subnet(1.0, 1.0)
    assert model.num_parameters() == count_params_formula(model.arch())


def test_forward_width_depth_kwargs_do_not_touch_the_switch() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        a = model(x, width=0.5, depth=0.5)
        assert model.width == 1.0 and model.depth == 1.0
        b = model.set_subnet(0.5, 0.5)(x)
    torch.testing.assert_close(a, b)


def test_vit_b16_param_formula_matches_spec() -> None:
    cfg = ElasticViTConfig.uniform(12, 12, 3072, 768, num_labels=0)
    # ACME §2.2: backbone (no classifier) full = 85.80 M, (d=0.25, w=0.25) = 6.07 M, one layer 7.088 M
    assert abs(count_params_formula(cfg) / 1e6 - 85.80) < 0.01
    assert abs(count_params_formula(cfg, 0.25, 0.25) / 1e6 - 6.07) < 0.01
    assert abs(count_params_formula(cfg, 1.0, 0.5) / 1e6 - 43.27) < 0.01
    assert count_macs_formula(cfg, 0.5, 0.5) < count_macs_formula(cfg)


def test_reorder_preserves_full_model_and_puts_important_heads_first() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        before = model(x)
        q_before = model.layers[0].attention.q_proj.weight.clone()
        b1_before = model.layers[2].mlp.fc1.bias.clone()
        head_imp = torch.tensor([[0.1, 0.9, 0.5, 0.3]] * 4)
        neuron_imp = torch.rand(4, 64, generator=torch.Generator().manual_seed(2))
        model.reorder(head_imp, neuron_imp)
        after = model(x)
    assert (before - after).abs().max().item() <= 1e-5
    d = model.config.head_dim
    torch.testing.assert_close(model.layers[0].attention.q_proj.weight[:d], q_before[d : 2 * d])  # head 1 first
    order = torch.argsort(neuron_imp[2], descending=True)
    torch.testing.assert_close(model.layers[2].mlp.fc1.bias, b1_before[order])


def test_arch_dict_round_trip_is_json() -> None:
    model = tiny()
    sub = model.extract_subnet(0.75, 0.5)
    for m in (model, sub):
        arch = json.loads(json.dumps(m.arch()))
        again = ElasticViT.from_arch(arch)
        assert again.arch() == m.arch()
        again.load_state_dict(m.state_dict())
        x = images()
        with torch.no_grad():
            torch.testing.assert_close(again(x), m(x))
    with pytest.raises(ValueError, match="unknown ElasticViT arch keys"):
        ElasticViT.from_arch({**model.arch(), "bogus": 1})


def test_features_shapes_and_grid_layout() -> None:
    model = tiny()
    x = images(2)
    feats = model.forward_features(x, width=0.5, depth=0.5)
    assert feats.cls.shape == (2, 32)
    assert feats.grid.shape == (2, 32, 4, 4)
    last = feats.hidden_states[-1]
    torch.testing.assert_close(feats.cls, last[:, 0])
    # token 1 + r*gw + c lands at grid[..., r, c]
    torch.testing.assert_close(feats.grid[:, :, 1, 2], last[:, 1 + 1 * 4 + 2])


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_width_and_depth_raise(bad: object) -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"width=.*allowed range \(0, 1\]"):
        model.set_subnet(bad, 1.0)
    with pytest.raises(ValueError, match=r"depth=.*allowed range \(0, 1\]"):
        model.set_subnet(1.0, bad)
    with pytest.raises(ValueError, match="width="):
        model.extract_subnet(bad, 1.0)
    assert model.width == 1.0


def test_width_giving_zero_heads_raises() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="0 attention heads"):
        model.set_subnet(0.1, 1.0)
    sub = model.extract_subnet(0.25, 1.0)  # 1 head per layer: any width < 1 rounds to 0 or 1 heads
    with pytest.raises(ValueError, match="0 attention heads"):
        sub.set_subnet(0.25, 1.0)


def _save_hf(tmp_path, cls_name: str = "ViTForImageClassification", safe: bool = True):
    import transformers
    from transformers import ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_attention_heads=4,
                    num_hidden_layers=2, intermediate_size=64, num_labels=5)
    hf = getattr(transformers, cls_name)(cfg).eval()
    hf.save_pretrained(tmp_path)
    if not safe:  # transformers 5 always writes safetensors; rewrite as the 4.x pytorch_model.bin the original used
        from safetensors.torch import load_file

        torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    return hf


@pytest.mark.parametrize("safe", [True, False])
def test_from_pretrained_matches_hf_logits(tmp_path, safe: bool) -> None:
    hf = _save_hf(tmp_path, safe=safe)
    if not safe:
        assert (tmp_path / "pytorch_model.bin").is_file()
    model = ElasticViT.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert model.config.num_labels == 5 and model.config.heads == [4, 4]


def test_from_pretrained_vit_model_and_new_labels(tmp_path) -> None:
    hf = _save_hf(tmp_path, "ViTModel")
    model = ElasticViT.from_pretrained(tmp_path, num_labels=7).eval()
    assert model.config.num_labels == 7
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        feats = model.forward_features(x)
        torch.testing.assert_close(model.layernorm(feats.hidden_states[-1]), ref.last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_from_pretrained_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json"):
        ElasticViT.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        ElasticViT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ElasticViT.from_pretrained(tmp_path)
