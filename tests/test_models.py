"""Model registry: names, overrides, unknown names, pretrained path."""

from __future__ import annotations

import pytest
import torch

from acme_flwr.cloud import models
from acme_flwr.cloud.elastic_vit import ElasticViT, count_params_formula
from acme_flwr.cloud.models import create_model, list_models, register_model


def test_registered_names() -> None:
    assert {"vit_tiny_digits", "vit_micro_test", "vit_b16"} <= set(list_models())


def test_tiny_digits_default_geometry_and_forward() -> None:
    m = create_model("vit_tiny_digits")
    c = m.config
    assert (c.image_size, c.patch_size, c.num_channels, c.hidden_size, c.num_labels) == (8, 2, 1, 64, 10)
    assert c.heads == [4] * 4 and c.ffn == [128] * 4
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_overrides_pass_through() -> None:
    m = create_model("vit_micro_test", num_labels=3, num_channels=3, image_size=16, num_layers=3)
    assert (m.config.num_labels, m.config.num_channels, m.config.image_size, m.config.num_layers) == (3, 3, 16, 3)
    assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_vit_b16_shape_without_building_weights() -> None:
    # building ViT-B/16 is ~350 MB of init work; check the arch via the formula on its config instead
    arch = {"heads": [12] * 12, "ffn": [3072] * 12, "hidden_size": 768, "head_dim": 64, "num_labels": 100}
    assert abs(count_params_formula(arch) / 1e6 - (85.80 + (768 * 100 + 100) / 1e6)) < 0.01


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(KeyError, match="vit_tiny_digits"):
        create_model("vit_nope")


def test_register_model_decorator() -> None:
    @register_model
    def _test_only_model(**kw) -> ElasticViT:
        return create_model("vit_micro_test", **kw)

    try:
        assert "_test_only_model" in list_models()
        assert isinstance(create_model("_test_only_model", num_labels=2), ElasticViT)
    finally:
        models.MODELS.unregister("_test_only_model")


def test_vit_b16_pretrained_path_uses_from_pretrained(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_attention_heads=4,
                    num_hidden_layers=2, intermediate_size=64, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    m = create_model("vit_b16", pretrained_path=str(tmp_path), num_labels=4)
    assert m.config.num_labels == 4 and m.config.hidden_size == 32
    with pytest.raises(ValueError, match="only num_labels"):
        create_model("vit_b16", pretrained_path=str(tmp_path), image_size=16)
