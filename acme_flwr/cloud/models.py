"""Backbone registry (timm style): ``@register_model`` functions build an ``ElasticViT``; ``create_model(name, **kw)``.

Each registered function takes keyword overrides of ``ElasticViTConfig`` fields (``num_labels``, ``num_channels``,
``image_size``, ...) so configs and experiments pick models by name, never by an if/elif on names.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acme_flwr.config import AcmeConfig
from acme_flwr.registry import Registry

from .elastic_vit import ElasticViT, ElasticViTConfig

logger = logging.getLogger(__name__)

__all__ = ["MODELS", "create_model", "input_shape", "list_models", "register_model"]

ModelFn = Callable[..., ElasticViT]
MODELS: Registry[ModelFn] = Registry("model")


def register_model(fn: ModelFn) -> ModelFn:
    """Register ``fn`` under its ``__name__`` (timm's ``@register_model``); a taken name is an error."""
    return MODELS(fn)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, **overrides: Any) -> ElasticViT:
    """Build registered model ``name``; ``overrides`` replace config fields (e.g. ``num_labels=100``).

    An unknown name raises :class:`~acme_flwr.registry.RegistryError` (a ``KeyError``) listing the registered ones.
    """
    return MODELS.get(name)(**overrides)


def _uniform(
    num_layers: int, num_heads: int, intermediate_size: int, hidden_size: int, defaults: dict[str, Any],
    overrides: dict[str, Any],
) -> ElasticViT:
    """Uniform ViT from registry defaults updated by user overrides (geometry overrides allowed too)."""
    geometry = {
        "num_layers": overrides.pop("num_layers", num_layers),
        "num_heads": overrides.pop("num_heads", num_heads),
        "intermediate_size": overrides.pop("intermediate_size", intermediate_size),
        "hidden_size": overrides.pop("hidden_size", hidden_size),
    }
    return ElasticViT(ElasticViTConfig.uniform(**geometry, **{**defaults, **overrides}))


@register_model
def vit_tiny_digits(**overrides: Any) -> ElasticViT:
    """Embedded default: 8x8 grey digits, patch 2 (16 tokens + CLS), 4 layers x 4 heads, hidden 64, FFN 128."""
    defaults = {"image_size": 8, "patch_size": 2, "num_channels": 1, "num_labels": 10}
    return _uniform(4, 4, 128, 64, defaults, overrides)


@register_model
def vit_micro_test(**overrides: Any) -> ElasticViT:
    """Smallest useful ViT for unit tests: 8x8 grey, patch 4 (4 tokens + CLS), 2 layers x 4 heads, hidden 32."""
    defaults = {"image_size": 8, "patch_size": 4, "num_channels": 1, "num_labels": 10}
    return _uniform(2, 4, 64, 32, defaults, overrides)


@register_model
def vit_b16_sub_test(**overrides: Any) -> ElasticViT:
    """A ViT-B/16 sub-backbone's size on tiny inputs, for scale tests and benchmarks (no download): 8x8 grey, patch 4
    (4 tokens + CLS), 3 layers x 12 heads, hidden 768, FFN 3072 (21 M parameters, 85 MB): what ViT-B/16 at width
    1, depth 0.25 weighs, with the compute of a 5-token input."""
    defaults = {"image_size": 8, "patch_size": 4, "num_channels": 1, "num_labels": 10}
    return _uniform(3, 12, 3072, 768, defaults, overrides)


@register_model
def vit_fmnist(**overrides: Any) -> ElasticViT:
    """Fashion-MNIST benchmark: 28x28 grey, patch 7 (4x4 grid, 16 tokens + CLS), 6 layers x 4 heads, hidden 128,
    FFN 256 (0.8 M parameters): sub-nets differ, and the cloud stage of conf/experiment/fmnist.yaml fits ~20 min
    on 2 CPU cores."""
    defaults = {"image_size": 28, "patch_size": 7, "num_channels": 1, "num_labels": 10}
    return _uniform(6, 4, 256, 128, defaults, overrides)


@register_model
def vit_b16(pretrained_path: str | None = None, **overrides: Any) -> ElasticViT:
    """ViT-B/16 at 224: 12 layers x 12 heads, hidden 768, FFN 3072. Random init unless ``pretrained_path`` points to
    a local ``save_pretrained`` directory (google/vit-base-patch16-224 layout); then only ``num_labels`` may change."""
    if pretrained_path is not None:
        extra = sorted(set(overrides) - {"num_labels"})
        if extra:
            raise ValueError(f"with pretrained_path only num_labels can be overridden, got {extra}")
        return ElasticViT.from_pretrained(pretrained_path, num_labels=overrides.get("num_labels"))
    defaults = {"image_size": 224, "patch_size": 16, "num_channels": 3, "num_labels": 1000}
    return _uniform(12, 12, 3072, 768, defaults, overrides)


@functools.lru_cache(maxsize=8)
def _shape(name: str, pretrained_path: str) -> tuple[int, int]:
    if pretrained_path:
        cfg_file = Path(pretrained_path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"model.pretrained_path={pretrained_path!r} has no config.json; point it at a "
                                    "save_pretrained directory (config.json + model.safetensors)")
        hf = json.loads(cfg_file.read_text())
        return int(hf.get("image_size", 224)), int(hf.get("num_channels", 3))
    model = create_model(name)
    return model.config.image_size, model.config.num_channels


def input_shape(cfg: AcmeConfig) -> tuple[int, int]:
    """(image_size, num_channels) the backbone expects."""
    return _shape(cfg.model.name, cfg.model.pretrained_path)
