"""Elastic ViT: one weight set, width x depth sub-networks (ACME Part I, ACME §2.2, §2.3, §2.7).

The model is ViT-B/16-shaped (pre-LN blocks, [CLS] classifier after the final LayerNorm, HF weight names), so a
transformers ``ViTForImageClassification`` checkpoint loads 1:1 (tests check the outputs match). The attention and FFN
blocks are our own because a sub-network keeps ``h`` heads of ``head_dim`` each and ``h * head_dim`` need not equal
``hidden_size``, which the stock ``ViTAttention`` cannot express. The embeddings are a copy of transformers'
``ViTEmbeddings`` (same parameters, same construction order, same forward) so that no process imports transformers to
build a model: it cost ~5 s in every ServerApp and Ray worker of every run.

Two ways to get a sub-network (w, d):

* ``set_subnet(w, d)`` switches the shared model at run time: forward slices the leading heads / FFN neurons of each
  kept layer (the ``DynaLinear`` prefix rule) and runs only the DynaBERT layers ``[floor(i/d) for i < round(L*d)]``.
* ``extract_subnet(w, d)`` returns a real, smaller ``ElasticViT`` with exactly those weights, so what a device
  receives is small.

Widths are head-granular: ``heads = round(H*w)`` and ``ffn = heads/H * F`` per layer. ``reorder`` permutes heads and
neurons (most important first) without changing the function, so that prefix slicing keeps the important ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ElasticViT",
    "ElasticViTConfig",
    "ViTFeatures",
    "count_macs_formula",
    "count_params_formula",
    "kept_layers",
    "subnet_shape",
]


# --------------------------------------------------------------------------------------------------------------------
# Configuration: a plain, JSON-able architecture description
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ElasticViTConfig:
    """Architecture of an ``ElasticViT``; per-layer ``heads``/``ffn`` lists let extracted sub-models describe
    themselves. ``to_dict()``/``from_dict()`` round-trip through JSON-able scalars and lists only."""

    heads: list[int]
    ffn: list[int]
    hidden_size: int = 768
    head_dim: int = 64
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_labels: int = 1000
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        self.heads = [int(h) for h in self.heads]
        self.ffn = [int(f) for f in self.ffn]
        if not self.heads or len(self.heads) != len(self.ffn):
            raise ValueError(
                f"heads ({len(self.heads)} entries) and ffn ({len(self.ffn)} entries) must be non-empty lists with "
                "one entry per layer"
            )
        if min(self.heads) < 1 or min(self.ffn) < 1:
            raise ValueError(f"every layer needs >= 1 head and >= 1 FFN neuron, got heads={self.heads} ffn={self.ffn}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @classmethod
    def uniform(
        cls, num_layers: int, num_heads: int, intermediate_size: int, hidden_size: int, **kwargs: Any
    ) -> ElasticViTConfig:
        """The usual ViT: every layer has ``num_heads`` heads of ``hidden_size // num_heads`` and the same FFN."""
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        return cls(
            heads=[num_heads] * num_layers,
            ffn=[intermediate_size] * num_layers,
            hidden_size=hidden_size,
            head_dim=hidden_size // num_heads,
            **kwargs,
        )

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, arch: dict[str, Any]) -> ElasticViTConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(arch) - allowed)
        if unknown:
            raise ValueError(f"unknown ElasticViT arch keys {unknown}; allowed keys are {sorted(allowed)}")
        return cls(**arch)


# --------------------------------------------------------------------------------------------------------------------
# Sub-network geometry (pure functions, shared by the runtime switch, the extractor and the formulas)
# --------------------------------------------------------------------------------------------------------------------


def _check_multiplier(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{name}={value!r} is outside the allowed range (0, 1]")
    return float(value)


def kept_layers(num_layers: int, depth: float) -> list[int]:
    """DynaBERT depth rule: ``[floor(i/d) for i in range(round(L*d))]`` (L=12, d=0.25 -> [0, 4, 8])."""
    depth = _check_multiplier("depth", depth)
    n = round(num_layers * depth)
    if n < 1:
        raise ValueError(
            f"depth={depth} keeps round({num_layers}*{depth}) = 0 layers; use depth >= {1 / num_layers:.4g}"
        )
    return [min(num_layers - 1, math.floor(i / depth + 1e-9)) for i in range(n)]


def kept_heads(num_heads: int, width: float, layer: int = 0) -> int:
    """Head-granular width: ``round(H*w)`` heads; zero heads is an error, not a silent clamp."""
    width = _check_multiplier("width", width)
    h = round(num_heads * width)
    if h < 1:
        raise ValueError(
            f"width={width} keeps round({num_heads}*{width}) = 0 attention heads in layer {layer}; "
            f"use width >= {1 / num_heads:.4g} (one head of {num_heads})"
        )
    return h


def subnet_shape(config: ElasticViTConfig, width: float, depth: float) -> tuple[list[int], list[int], list[int]]:
    """(kept layer indices, heads per kept layer, FFN neurons per kept layer) of sub-network (width, depth)."""
    layers = kept_layers(config.num_layers, depth)
    heads = [kept_heads(config.heads[i], width, i) for i in layers]
    ffn = [max(1, h * config.ffn[i] // config.heads[i]) for h, i in zip(heads, layers, strict=True)]
    return layers, heads, ffn


def _as_config(arch: ElasticViTConfig | dict[str, Any]) -> ElasticViTConfig:
    return arch if isinstance(arch, ElasticViTConfig) else ElasticViTConfig.from_dict(arch)


def count_params_formula(arch: ElasticViTConfig | dict[str, Any], width: float = 1.0, depth: float = 1.0) -> int:
    """Analytic parameter count of sub-network (width, depth), classifier included."""
    c = _as_config(arch)
    hid, bias = c.hidden_size, int(c.qkv_bias)
    n = c.grid_size**2
    total = hid + (n + 1) * hid + c.num_channels * c.patch_size**2 * hid + hid  # cls, pos, patch conv
    for h, f in zip(*subnet_shape(c, width, depth)[1:], strict=True):
        inner = h * c.head_dim
        total += 4 * hid  # two LayerNorms
        total += 3 * (hid * inner + bias * inner) + inner * hid + hid  # q, k, v, o
        total += hid * f + f + f * hid + hid  # fc1, fc2
    total += 2 * hid  # final LayerNorm
    total += hid * c.num_labels + c.num_labels if c.num_labels > 0 else 0
    return total


def count_macs_formula(arch: ElasticViTConfig | dict[str, Any], width: float = 1.0, depth: float = 1.0) -> int:
    """Analytic multiply-accumulates of one image through sub-network (width, depth) (matmuls and patch conv)."""
    c = _as_config(arch)
    hid, n = c.hidden_size, c.grid_size**2
    t = n + 1
    total = n * c.num_channels * c.patch_size**2 * hid
    for h, f in zip(*subnet_shape(c, width, depth)[1:], strict=True):
        inner = h * c.head_dim
        total += 3 * t * hid * inner + 2 * t * t * inner + t * inner * hid + 2 * t * hid * f
    return total + hid * max(c.num_labels, 0)


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class ElasticAttention(nn.Module):
    """Multi-head self-attention whose forward uses only the first ``heads`` heads (prefix slices of Q/K/V rows and
    output-projection columns). Names follow transformers 5 ``ViTAttention`` (q_proj, k_proj, v_proj, o_proj)."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, qkv_bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, inner, bias=qkv_bias)
        self.o_proj = nn.Linear(inner, hidden_size)

    def _project(self, proj: nn.Linear, x: torch.Tensor, inner: int) -> torch.Tensor:
        bias = proj.bias[:inner] if proj.bias is not None else None
        out = F.linear(x, proj.weight[:inner], bias)
        return out.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def forward(self, x: torch.Tensor, heads: int, head_mask: torch.Tensor | None = None) -> torch.Tensor:
        inner = heads * self.head_dim
        q, k, v = (self._project(p, x, inner) for p in (self.q_proj, self.k_proj, self.v_proj))
        ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        if head_mask is not None:  # == multiplying each head's attention probabilities (context is linear in them)
            ctx = ctx * head_mask[:heads].view(1, -1, 1, 1).to(ctx.dtype)
        ctx = ctx.transpose(1, 2).reshape(*x.shape[:-1], inner)
        return F.linear(ctx, self.o_proj.weight[:, :inner], self.o_proj.bias)


# transformers' activation names (``hidden_act`` in a ViT config.json) -> modules; "gelu" is the exact (erf) GELU
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU,
                                                 "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh")}


class ViTPatchEmbeddings(nn.Module):
    """Non-overlapping ``patch_size`` patches -> ``hidden_size`` tokens (transformers' ``ViTPatchEmbeddings``)."""

    def __init__(self, config: ElasticViTConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        self.num_patches = config.grid_size ** 2
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                    stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"input has {pixel_values.shape[1]} channels; the model expects {self.num_channels}")
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    """[CLS] token + patch tokens + learned position embeddings (transformers' ``ViTEmbeddings``, no mask token)."""

    def __init__(self, config: ElasticViTConfig) -> None:
        super().__init__()
        # the same creation order as transformers' (cls, patches, positions): same RNG draws, same initial weights
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.randn(1, self.patch_embeddings.num_patches + 1,
                                                            config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if height != self.image_size or width != self.image_size:
            raise ValueError(f"input image size ({height}*{width}) doesn't match the model "
                             f"({self.image_size}*{self.image_size})")
        embeddings = self.patch_embeddings(pixel_values)
        embeddings = torch.cat((self.cls_token.expand(embeddings.shape[0], -1, -1), embeddings), dim=1)
        return self.dropout(embeddings + self.position_embeddings)


class ElasticMLP(nn.Module):
    """FFN whose forward uses only the first ``neurons`` hidden units (fc1 rows, fc2 columns)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act = ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor, neurons: int) -> torch.Tensor:
        x = self.act(F.linear(x, self.fc1.weight[:neurons], self.fc1.bias[:neurons]))
        return F.linear(x, self.fc2.weight[:, :neurons], self.fc2.bias)


class ElasticViTLayer(nn.Module):
    """Pre-LN transformer block, same structure and names as transformers' ``ViTLayer``."""

    def __init__(self, config: ElasticViTConfig, num_heads: int, intermediate_size: int) -> None:
        super().__init__()
        hid = config.hidden_size
        self.attention = ElasticAttention(
            hid, num_heads, config.head_dim, config.qkv_bias, config.attention_probs_dropout_prob
        )
        self.layernorm_before = nn.LayerNorm(hid, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(hid, eps=config.layer_norm_eps)
        self.mlp = ElasticMLP(hid, intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, heads: int, neurons: int, head_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.layernorm_before(x), heads, head_mask))
        return x + self.dropout(self.mlp(self.layernorm_after(x), neurons))


@dataclass
class ViTFeatures:
    """Backbone features for headers and feature statistics.

    ``cls``: [CLS] of the last kept layer's output *before* the final LayerNorm, ``(B, hidden)``.
    ``grid``: the patch tokens of that same tensor as an image, ``(B, hidden, gh, gw)`` (row-major patches).
    ``hidden_states``: embedding output followed by each kept layer's output.
    """

    cls: torch.Tensor
    grid: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = field(default_factory=tuple)


# HF checkpoint names -> ElasticViT names. transformers 5 in-memory names map 1:1 after the "vit." prefix; the
# save_pretrained / google/vit-base-patch16-224 layout uses the legacy 4.x names below.
_LEGACY_NAMES = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
]
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class ElasticViT(nn.Module):
    """ViT image classifier with a run-time (width, depth) switch, physical sub-model extraction, merging back, and
    function-preserving head/neuron re-ordering."""

    def __init__(self, config: ElasticViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList(
            ElasticViTLayer(config, h, f) for h, f in zip(config.heads, config.ffn, strict=True)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.width, self.depth = 1.0, 1.0
        self._shape = subnet_shape(config, 1.0, 1.0)
        self.reset_parameters()

    # --- construction -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF ViT initialisation: normal(0, 0.02) linears/conv with zero bias, unit LayerNorms, trunc-normal tokens."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=std)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=std)

    def arch(self) -> dict[str, Any]:
        """The JSON-able architecture dict (str/int/float/bool/lists) that ``from_arch`` rebuilds the model from."""
        return self.config.to_dict()

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> ElasticViT:
        return cls(ElasticViTConfig.from_dict(arch))

    # --- the run-time switch ----------------------------------------------------------------------------------------

    def set_subnet(self, width: float = 1.0, depth: float = 1.0) -> ElasticViT:
        """Make forward run sub-network (width, depth) of the shared weights; returns self."""
        self._shape = subnet_shape(self.config, width, depth)  # validates before changing anything
        self.width, self.depth = float(width), float(depth)
        return self

    def _run(
        self,
        pixel_values: torch.Tensor,
        head_mask: torch.Tensor | None,
        width: float | None,
        depth: float | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Embeddings + kept layers; returns the last kept layer's output and all hidden states."""
        if width is None and depth is None:
            layers, heads, ffn = self._shape
        else:
            layers, heads, ffn = subnet_shape(
                self.config, self.width if width is None else width, self.depth if depth is None else depth
            )
        x = self.embeddings(pixel_values.to(self.embeddings.cls_token.dtype))
        hidden = [x]
        for i, h, f in zip(layers, heads, ffn, strict=True):
            x = self.layers[i](x, h, f, None if head_mask is None else head_mask[i])
            hidden.append(x)
        return x, tuple(hidden)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        head_mask: torch.Tensor | None = None,
        width: float | None = None,
        depth: float | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits of the current sub-network (or of ``width``/``depth`` if given, without changing the switch).

        ``head_mask`` is ``(L, H)`` indexed by original layer (importance estimation). With ``output_hidden_states``
        returns ``(logits, hidden_states)`` where hidden_states = embedding output + each kept layer's output.
        """
        x, hidden = self._run(pixel_values, head_mask, width, depth)
        logits = self.classifier(self.layernorm(x)[:, 0])
        return (logits, hidden) if output_hidden_states else logits

    def forward_features(
        self, pixel_values: torch.Tensor, width: float | None = None, depth: float | None = None
    ) -> ViTFeatures:
        """[CLS] and patch-token grid of the last kept layer (before the final LayerNorm), plus hidden states."""
        x, hidden = self._run(pixel_values, None, width, depth)
        g = self.config.grid_size
        grid = x[:, 1:].reshape(x.shape[0], g, g, x.shape[-1]).permute(0, 3, 1, 2)
        return ViTFeatures(cls=x[:, 0], grid=grid, hidden_states=hidden)

    # --- extraction -------------------------------------------------------------------------------------------------

    def subnet_arch(self, width: float, depth: float) -> dict[str, Any]:
        """Arch dict of the standalone sub-model (width, depth)."""
        _, heads, ffn = subnet_shape(self.config, width, depth)
        return dataclasses.replace(self.config, heads=heads, ffn=ffn).to_dict()

    def subnet_slices(self, width: float, depth: float) -> dict[str, tuple[str, tuple[slice, ...]]]:
        """For every sub-model state-dict entry: (name in this model, slices selecting its coordinates here).

        What ``extract_subnet`` copies.
        """
        layers, heads, ffn = subnet_shape(self.config, width, depth)
        everything = (slice(None),)
        names = set(self.state_dict())
        out: dict[str, tuple[str, tuple[slice, ...]]] = {}
        for name in sorted(names):
            if not name.startswith("layers."):
                out[name] = (name, everything)
        for j, (i, h, f) in enumerate(zip(layers, heads, ffn, strict=True)):
            inner = h * self.config.head_dim
            rows, cols = (slice(0, inner),), (slice(None), slice(0, inner))
            per_layer = {
                "attention.q_proj.weight": rows, "attention.q_proj.bias": rows,
                "attention.k_proj.weight": rows, "attention.k_proj.bias": rows,
                "attention.v_proj.weight": rows, "attention.v_proj.bias": rows,
                "attention.o_proj.weight": cols, "attention.o_proj.bias": everything,
                "mlp.fc1.weight": (slice(0, f),), "mlp.fc1.bias": (slice(0, f),),
                "mlp.fc2.weight": (slice(None), slice(0, f)), "mlp.fc2.bias": everything,
                "layernorm_before.weight": everything, "layernorm_before.bias": everything,
                "layernorm_after.weight": everything, "layernorm_after.bias": everything,
            }  # fmt: skip
            for suffix, sl in per_layer.items():
                if f"layers.{i}.{suffix}" in names:  # q/k/v biases are absent when qkv_bias=False
                    out[f"layers.{j}.{suffix}"] = (f"layers.{i}.{suffix}", sl)
        return out

    @torch.no_grad()
    def extract_subnet(self, width: float, depth: float) -> ElasticViT:
        """A real, smaller standalone model computing exactly sub-network (width, depth) of this one."""
        sub = ElasticViT.from_arch(self.subnet_arch(width, depth)).to(self.embeddings.cls_token.device)
        full = self.state_dict()
        sub.load_state_dict({k: full[n][sl].clone() for k, (n, sl) in self.subnet_slices(width, depth).items()})
        sub.train(self.training)
        return sub

    # --- re-ordering ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def reorder(
        self, head_importance: Sequence[torch.Tensor] | torch.Tensor, neuron_importance: Sequence[torch.Tensor]
    ) -> None:
        """Permute each layer's heads and FFN neurons by descending importance (function-preserving), so that
        prefix slicing keeps the most important ones. Importance: one 1-D tensor per layer (or a 2-D tensor)."""
        if len(head_importance) != self.config.num_layers or len(neuron_importance) != self.config.num_layers:
            raise ValueError(
                f"need one importance vector per layer ({self.config.num_layers}), got {len(head_importance)} "
                f"head and {len(neuron_importance)} neuron vectors"
            )
        d = self.config.head_dim
        for layer, hi, ni in zip(self.layers, head_importance, neuron_importance, strict=True):
            att, mlp = layer.attention, layer.mlp
            if hi.numel() != att.num_heads or ni.numel() != mlp.fc1.out_features:
                raise ValueError(
                    f"importance sizes {hi.numel()}/{ni.numel()} != heads {att.num_heads}/neurons "
                    f"{mlp.fc1.out_features}"
                )
            order = torch.argsort(hi.detach().flatten().cpu(), descending=True, stable=True)
            rows = (order[:, None] * d + torch.arange(d)).flatten().to(att.q_proj.weight.device)
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                proj.weight.copy_(proj.weight[rows])
                if proj.bias is not None:
                    proj.bias.copy_(proj.bias[rows])
            att.o_proj.weight.copy_(att.o_proj.weight[:, rows])
            idx = torch.argsort(ni.detach().flatten().cpu(), descending=True, stable=True).to(mlp.fc1.weight.device)
            mlp.fc1.weight.copy_(mlp.fc1.weight[idx])
            mlp.fc1.bias.copy_(mlp.fc1.bias[idx])
            mlp.fc2.weight.copy_(mlp.fc2.weight[:, idx])

    # --- sizes ------------------------------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- loading HF checkpoints -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, num_labels: int | None = None) -> ElasticViT:
        """Load a local ``save_pretrained`` directory of ``ViTForImageClassification`` or ``ViTModel`` (e.g.
        google/vit-base-patch16-224: config.json + model.safetensors or pytorch_model.bin). Never touches the network.

        ``num_labels`` different from the checkpoint's (or a ``ViTModel`` without classifier) gives a freshly
        initialised classifier, like ``ignore_mismatched_sizes=True``.
        """
        path = Path(path)
        hint = (
            f"put a Hugging Face save_pretrained directory there: {path}/config.json plus one of "
            f"{', '.join(_WEIGHT_FILES)} (e.g. google/vit-base-patch16-224 downloaded on a machine with network)"
        )
        if not path.is_dir():
            raise FileNotFoundError(f"ViT checkpoint directory {path} does not exist; {hint}")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}/config.json is missing; {hint}")
        weight_file = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
        if weight_file is None:
            raise FileNotFoundError(f"no weights file in {path}; {hint}")

        hf = json.loads((path / "config.json").read_text())
        ckpt_labels = len(hf["id2label"]) if "id2label" in hf else int(hf.get("num_labels", 2))
        config = ElasticViTConfig.uniform(
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            hidden_size=hf["hidden_size"],
            image_size=hf["image_size"],
            patch_size=hf["patch_size"],
            num_channels=hf.get("num_channels", 3),
            num_labels=ckpt_labels if num_labels is None else num_labels,
            hidden_act=hf.get("hidden_act", "gelu"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            qkv_bias=hf.get("qkv_bias", True),
            hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.0),
            attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.0),
            initializer_range=hf.get("initializer_range", 0.02),
        )
        model = cls(config)
        state = {}
        for key, value in _read_weights(weight_file).items():
            name = key.removeprefix("vit.")
            for pattern, repl in _LEGACY_NAMES:
                name = re.sub(pattern, repl, name)
            state[name] = value
        own = model.state_dict()
        drop = {k for k in state if k.startswith("pooler.")}
        drop |= {k for k in state if k.startswith("classifier.") and (k not in own or state[k].shape != own[k].shape)}
        for k in drop:
            state.pop(k)
        unexpected = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        if unexpected or [k for k in missing if not k.startswith("classifier.")]:
            raise ValueError(
                f"{weight_file} does not look like a ViT checkpoint: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        if missing:
            logger.warning(
                "classifier not in %s for num_labels=%d: initialised at random", weight_file, config.num_labels
            )
        model.load_state_dict(state, strict=False)
        logger.info("loaded %s into ElasticViT (%d parameters)", weight_file, model.num_parameters())
        return model


def _read_weights(weight_file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a sharded safetensors index, or a pytorch_model.bin."""
    if weight_file.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weight_file.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_read_weights(weight_file.parent / shard))
        return out
    if weight_file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weight_file))
    return torch.load(weight_file, map_location="cpu", weights_only=True)
