"""Cost models PFG trades accuracy against: size, latency and energy of sub-networks ``(w, d)`` (ACME §2.8).

:class:`OriginalCostModel` is the original's constants (it reproduces the published PFG numbers);
:class:`ParamCountCostModel` and :class:`MacsCostModel` are this backbone's analytic parameter count and MACs;
:class:`MeasuredLatencyCostModel` interpolates a measured latency (and energy) table, e.g. one read from a JSON file
(:meth:`MeasuredLatencyCostModel.from_json`, ``cloud.cost_model=measured:<path>``).
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CostModel",
    "MacsCostModel",
    "MeasuredLatencyCostModel",
    "OriginalCostModel",
    "ParamCountCostModel",
    "ViTArch",
    "vit_macs",
    "vit_param_count",
]


class CostModel(ABC):
    """Size, latency and energy of sub-networks ``(w, d)``; arrays in, arrays out (same shape).

    Only relative values matter to PFG (everything is min-max normalised over the candidates), so units are free.
    ``heads``/``layers`` say how a ratio is turned into a unit count; they are reported with the pick.
    """

    num_heads: int = 12
    num_layers: int = 12

    def heads(self, w: np.ndarray) -> np.ndarray:
        """Number of attention heads kept at width ratio ``w`` (elastic rule: ``max(1, round(H·w))``)."""
        return np.maximum(1, np.round(self.num_heads * np.asarray(w, dtype=float))).astype(int)

    def layers(self, d: np.ndarray) -> np.ndarray:
        """Number of layers kept at depth ratio ``d`` (elastic rule: ``max(1, round(L·d))``)."""
        return np.maximum(1, np.round(self.num_layers * np.asarray(d, dtype=float))).astype(int)

    @abstractmethod
    def size(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Model size (parameters, bytes, …) per candidate."""

    @abstractmethod
    def latency(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Inference/training latency per candidate."""

    @abstractmethod
    def energy(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Energy per candidate."""


class OriginalCostModel(CostModel):
    """The constants hard-coded in the original ``eval_PFG.py`` (reproduces the published numbers).

    ``S = 768·n_w + 3 060 000·n_d``; ``P = (G + ΔG·n_w·n_d) + p·G_β``; ``T = L + ΔL·n_w·n_d``; ``E = k·P·T`` with
    ``n_w = int(12w)``, ``n_d = int(12d)`` (truncation, as the original). Crude: a head weighs only 768 "params".
    """

    def __init__(
        self,
        params_per_head: float = 768,
        params_per_layer: float = 3_060_000,
        g: float = 100,
        delta_g: float = 10,
        l0: float = 1,
        delta_l: float = 0.1,
        p: float = 128,
        g_beta: float = 50,
        k: float = 10,
        num_heads: int = 12,
        num_layers: int = 12,
    ) -> None:
        self.params_per_head, self.params_per_layer = params_per_head, params_per_layer
        self.g, self.delta_g, self.l0, self.delta_l, self.p, self.g_beta, self.k = g, delta_g, l0, delta_l, p, g_beta, k
        self.num_heads, self.num_layers = num_heads, num_layers

    def heads(self, w: np.ndarray) -> np.ndarray:
        return np.trunc(self.num_heads * np.asarray(w, dtype=float)).astype(int)

    def layers(self, d: np.ndarray) -> np.ndarray:
        return np.trunc(self.num_layers * np.asarray(d, dtype=float)).astype(int)

    def size(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.heads(w) * self.params_per_head + self.layers(d) * self.params_per_layer

    def latency(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.l0 + self.delta_l * self.heads(w) * self.layers(d)

    def energy(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        power = (self.g + self.delta_g * self.heads(w) * self.layers(d)) + self.p * self.g_beta
        return self.k * power * self.latency(w, d)


@dataclass(frozen=True)
class ViTArch:
    """Geometry of the full ViT that the elastic sub-networks are cut from (defaults: ViT-B/16 @ 224)."""

    hidden: int = 768
    num_heads: int = 12
    ffn: int = 3072
    num_layers: int = 12
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3

    @property
    def num_tokens(self) -> int:
        """Patches + CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1


def _sub_dims(arch: ViTArch, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention width ``a`` and FFN width ``f`` of a sub-layer with ``heads`` heads (FFN scales with the heads)."""
    heads = np.asarray(heads, dtype=float)
    a = (arch.hidden // arch.num_heads) * heads
    f = heads / arch.num_heads * arch.ffn
    return a, f


def vit_param_count(arch: ViTArch, heads: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Backbone parameters (embeddings + kept layers + final LN, no classifier) of a sub-ViT.

    Per layer ``3(h·a + a) + (a·h + h) + (h·f + f + f·h + h) + 4h`` (QKV, out-proj, FFN, two LayerNorms); embeddings
    ``h·c·p² + h`` (patch conv) ``+ h`` (CLS) ``+ N·h`` (positions); final LN ``2h`` (ACME §2.2; 85.80 M for B/16).
    """
    h = arch.hidden
    a, f = _sub_dims(arch, heads)
    per_layer = 3 * (h * a + a) + (a * h + h) + (h * f + f + f * h + h) + 4 * h
    embeddings = h * arch.in_chans * arch.patch_size**2 + h + h + arch.num_tokens * h
    return embeddings + np.asarray(layers, dtype=float) * per_layer + 2 * h


def vit_macs(arch: ViTArch, heads: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Forward multiply-accumulates of a sub-ViT for one image (17.56 GMAC for the full B/16)."""
    h, n = arch.hidden, arch.num_tokens
    a, f = _sub_dims(arch, heads)
    per_layer = 3 * n * h * a + 2 * n**2 * a + n * a * h + 2 * n * h * f
    patch = (n - 1) * h * arch.in_chans * arch.patch_size**2
    return patch + np.asarray(layers, dtype=float) * per_layer


class ParamCountCostModel(CostModel):
    """Size = analytic parameter count; latency and energy ∝ parameters (memory-bound device: each weight read once).

    Pass either ``arch`` (a :class:`ViTArch`) or ``param_fn(w, d) -> params`` (vectorised over numpy arrays).
    """

    def __init__(
        self,
        arch: ViTArch | None = None,
        param_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        bytes_per_param: float = 4.0,
        seconds_per_param: float = 1e-9,
        watts: float = 1.0,
    ) -> None:
        if arch is not None and param_fn is not None:
            raise ValueError("ParamCountCostModel: pass either arch or param_fn, not both")
        self.arch = arch if arch is not None or param_fn is not None else ViTArch()
        self.param_fn = param_fn
        if self.arch is not None:
            self.num_heads, self.num_layers = self.arch.num_heads, self.arch.num_layers
        self.bytes_per_param, self.seconds_per_param, self.watts = bytes_per_param, seconds_per_param, watts

    def params(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Parameter count per candidate."""
        if self.param_fn is not None:
            return np.asarray(self.param_fn(np.asarray(w, dtype=float), np.asarray(d, dtype=float)), dtype=float)
        return vit_param_count(self.arch, self.heads(w), self.layers(d))

    def size(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.params(w, d) * self.bytes_per_param

    def latency(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.params(w, d) * self.seconds_per_param

    def energy(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.latency(w, d) * self.watts


class MacsCostModel(CostModel):
    """Size = analytic parameters; latency = MACs / throughput; energy = MACs·J/MAC + static power · latency."""

    def __init__(
        self,
        arch: ViTArch | None = None,
        bytes_per_param: float = 4.0,
        macs_per_second: float = 1e10,
        joules_per_mac: float = 1e-10,
        static_watts: float = 0.0,
    ) -> None:
        self.arch = arch or ViTArch()
        self.num_heads, self.num_layers = self.arch.num_heads, self.arch.num_layers
        self.bytes_per_param, self.macs_per_second = bytes_per_param, macs_per_second
        self.joules_per_mac, self.static_watts = joules_per_mac, static_watts

    def macs(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Forward MACs per candidate."""
        return vit_macs(self.arch, self.heads(w), self.layers(d))

    def size(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return vit_param_count(self.arch, self.heads(w), self.layers(d)) * self.bytes_per_param

    def latency(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.macs(w, d) / self.macs_per_second

    def energy(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.macs(w, d) * self.joules_per_mac + self.static_watts * self.latency(w, d)


class MeasuredLatencyCostModel(CostModel):
    """Latency measured on the trained grid points, bilinearly interpolated (linearly extrapolated, clipped ≥ 0).

    ``latencies`` maps ``(width, depth) -> seconds`` and must cover a full rectilinear grid (every width × every
    depth, ≥ 2 of each). Energy is ``watts · latency`` unless ``energies`` (same keys, joules) is given; size comes
    from ``size_model`` (default :class:`ParamCountCostModel` of a ViT-B/16).
    """

    def __init__(
        self,
        latencies: Mapping[tuple[float, float], float],
        size_model: CostModel | None = None,
        watts: float = 1.0,
        energies: Mapping[tuple[float, float], float] | None = None,
    ) -> None:
        self.size_model = size_model or ParamCountCostModel()
        self.num_heads, self.num_layers = self.size_model.num_heads, self.size_model.num_layers
        self.watts = watts
        self._lat = _RectGrid.from_mapping(latencies, "latencies")
        self._energy = _RectGrid.from_mapping(energies, "energies") if energies is not None else None

    @classmethod
    def from_json(cls, path: str | Path, size_model: CostModel | None = None) -> MeasuredLatencyCostModel:
        """Read a latency table: a JSON list of ``{"width": w, "depth": d, "latency": seconds}`` records, optionally
        each with ``"energy"`` (joules; all records or none). Raises ``ValueError`` (one line) if it cannot be used."""
        try:
            records = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read latency table {path}: {exc}") from exc
        hint = 'expected a JSON list of {"width": w, "depth": d, "latency": seconds[, "energy": joules]} records'
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"latency table {path}: {hint}")
        latencies: dict[tuple[float, float], float] = {}
        energies: dict[tuple[float, float], float] = {}
        for i, r in enumerate(records):
            keys = {"width", "depth", "latency"} | ({"energy"} & set(r))
            values = [r.get(k) for k in ("width", "depth", "latency", "energy") if k in keys]
            if set(r) != keys or not all(_is_number(v) for v in values):
                raise ValueError(f"latency table {path}: record {i} is {r!r}; {hint}")
            key = (float(r["width"]), float(r["depth"]))
            if key in latencies:
                raise ValueError(f"latency table {path}: (width, depth) = {key} appears twice")
            latencies[key] = float(r["latency"])
            if "energy" in r:
                energies[key] = float(r["energy"])
        if energies and len(energies) != len(latencies):
            raise ValueError(f"latency table {path}: give 'energy' in every record or in none")
        try:
            return cls(latencies, size_model=size_model, energies=energies or None)
        except ValueError as exc:
            raise ValueError(f"latency table {path}: {exc}") from exc

    def heads(self, w: np.ndarray) -> np.ndarray:
        return self.size_model.heads(w)

    def layers(self, d: np.ndarray) -> np.ndarray:
        return self.size_model.layers(d)

    def size(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.size_model.size(w, d)

    def latency(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.maximum(self._lat(w, d), 0.0)

    def energy(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        if self._energy is not None:
            return np.maximum(self._energy(w, d), 0.0)
        return self.watts * self.latency(w, d)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class _RectGrid:
    """Values on a rectilinear (w, d) grid with piecewise-bilinear interpolation and linear extrapolation."""

    ws: np.ndarray
    ds: np.ndarray
    values: np.ndarray  # shape (len(ws), len(ds))

    @classmethod
    def from_mapping(cls, table: Mapping[tuple[float, float], float], what: str) -> _RectGrid:
        if not table:
            raise ValueError(f"MeasuredLatencyCostModel: {what} is empty")
        ws = np.array(sorted({float(k[0]) for k in table}))
        ds = np.array(sorted({float(k[1]) for k in table}))
        if np.any((ws <= 0) | (ws > 1)) or np.any((ds <= 0) | (ds > 1)):
            raise ValueError(f"MeasuredLatencyCostModel: {what} widths and depths must be ratios in (0, 1]")
        if len(ws) < 2 or len(ds) < 2:
            raise ValueError(f"MeasuredLatencyCostModel: {what} needs at least 2 widths and 2 depths")
        lookup = {(float(k[0]), float(k[1])): float(v) for k, v in table.items()}
        missing = [(float(w), float(d)) for w in ws for d in ds if (w, d) not in lookup]
        if missing:
            raise ValueError(f"MeasuredLatencyCostModel: {what} is not a full grid; missing (w, d) = {missing}")
        values = np.array([[lookup[(w, d)] for d in ds] for w in ws])
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"MeasuredLatencyCostModel: {what} must be finite and non-negative")
        return cls(ws, ds, values)

    def __call__(self, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        w, d = np.asarray(w, dtype=float), np.asarray(d, dtype=float)
        i = np.clip(np.searchsorted(self.ws, w, side="right") - 1, 0, len(self.ws) - 2)
        j = np.clip(np.searchsorted(self.ds, d, side="right") - 1, 0, len(self.ds) - 2)
        tw = (w - self.ws[i]) / (self.ws[i + 1] - self.ws[i])
        td = (d - self.ds[j]) / (self.ds[j + 1] - self.ds[j])
        v = self.values
        return (
            v[i, j] * (1 - tw) * (1 - td)
            + v[i + 1, j] * tw * (1 - td)
            + v[i, j + 1] * (1 - tw) * td
            + v[i + 1, j + 1] * tw * td
        )


