"""The cloud's output for the lower tiers: per device class, an extracted sub-backbone and a warm header.

:func:`build_deployment` runs the cloud stage (elastic backbone, cached on disk), picks each device class's
sub-backbone with PFG under that class's size constraint (snapped to a trained grid point), physically extracts it,
and warms a header on the cloud's own training data for each distinct sub-backbone (the original trains its header
centrally too, spec §3.8). Devices receive exactly these bytes once.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cloud import CloudStageConfig, build_elastic_backbone
from .config import AcmeConfig, ConfigError
from .device import TrainHParams, backbone_grids, evaluate_header
from .elastic_vit import ElasticViT, subnet_shape
from .header import Header, create_header
from .models import create_model
from .pfg import select_backbone, snap_to_grid
from .pruning import train_header_epoch, trainable_parameters
from .task import FederatedData, TensorSplit

logger = logging.getLogger(__name__)


@dataclass
class Package:
    """What one device class receives: its sub-backbone and the initial header."""

    width: float
    depth: float
    backbone: ElasticViT
    header: Header
    header_spec: dict[str, Any]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters()) + sum(p.numel() for p in self.header.parameters())


@dataclass
class Deployment:
    """Per device class: a :class:`Package`; plus the full model size for the FedAvg reference."""

    packages: dict[str, Package]
    full_params: int
    table: list[tuple[float, float, float]] | None = None
    picks: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_log: dict[str, Any] = field(default_factory=dict)

    def for_class(self, device_class: str) -> Package:
        if device_class not in self.packages:
            raise KeyError(f"device class {device_class!r} has no package; known classes: {sorted(self.packages)}")
        return self.packages[device_class]


def header_spec(cfg: AcmeConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """JSON-able recipe the device rebuilds its header from (``create_header(**spec)``)."""
    kwargs = {"channels": cfg.model.header_channels} if cfg.model.header == "gated_temp_cnn" else {}
    return {"name": cfg.model.header, "in_channels": in_channels, "num_classes": num_classes, **kwargs}


def build_header(spec: dict[str, Any]) -> Header:
    spec = dict(spec)
    return create_header(spec.pop("name"), spec.pop("in_channels"), spec.pop("num_classes"), **spec)


def cloud_stage_config(cfg: AcmeConfig) -> CloudStageConfig:
    c = cfg.cloud
    return CloudStageConfig(widths=sorted(cfg.widths, reverse=True), depths=sorted(cfg.depths, reverse=True),
                            teacher_epochs=c.teacher_epochs, width_epochs=c.width_epochs, depth_epochs=c.depth_epochs,
                            lr=c.lr, teacher_lr=c.lr, batch_size=c.batch_size, faithful=c.faithful, seed=cfg.run.seed)


def build_deployment(cfg: AcmeConfig, data: FederatedData, cache_dir: str | Path | None,
                     progress: bool = True) -> Deployment:
    """Cloud stage → PFG pick per device class → extracted sub-backbones and warm headers."""
    torch.manual_seed(cfg.run.seed)
    overrides: dict[str, Any] = {"num_labels": data.num_classes}
    if cfg.model.pretrained_path:
        overrides["pretrained_path"] = cfg.model.pretrained_path
    model = create_model(cfg.model.name, **overrides)
    check_grid(model, cfg)
    full_params = sum(p.numel() for p in model.parameters())
    train, val = data.cloud()
    table = None
    stage_log: dict[str, Any] = {}
    if cfg.cloud.enabled:
        model, table, stage_log = build_elastic_backbone(model, (train.x, train.y), (val.x, val.y),
                                                         cloud_stage_config(cfg), cache_dir, progress=progress)
    picks: dict[str, dict[str, Any]] = {}
    packages: dict[str, Package] = {}
    by_point: dict[tuple[float, float], Package] = {}
    spec = header_spec(cfg, model.config.hidden_size, data.num_classes)
    full_params += sum(p.numel() for p in build_header(spec).parameters())
    for name, budget in cfg.device_classes:
        if table is None:
            w, d, pick = 1.0, 1.0, {"method": "none (cloud.enabled=false)"}
        else:
            pick = select_backbone(table, budget, method=cfg.cloud.selection, seed=cfg.run.seed)
            try:
                snapped = snap_to_grid(pick, cfg.widths, cfg.depths, size_constraint=budget)
                w, d = float(snapped["width"]), float(snapped["depth"])
            except ValueError:  # no trained point is small enough: ship the smallest one and say so
                w, d = min(cfg.widths), min(cfg.depths)
                pick = {**pick, "over_budget": True}
                logger.warning("device class %s: no trained (width, depth) fits size budget %.2f; using the smallest, "
                               "w=%.2f d=%.2f (add smaller values to cloud.widths/depths)", name, budget, w, d)
        picks[name] = {**pick, "size_constraint": budget, "grid_width": w, "grid_depth": d}
        if (w, d) not in by_point:
            sub = model.extract_subnet(w, d).eval()
            for p in sub.parameters():
                p.requires_grad_(False)
            header = warm_header(sub, spec, train, val, cfg)
            by_point[(w, d)] = Package(w, d, sub, header, spec)
        packages[name] = by_point[(w, d)]
        logger.info("device class %s (size budget %.2f): sub-backbone w=%.2f d=%.2f", name, budget, w, d)
    return Deployment(packages, full_params, table, picks, stage_log)


def check_grid(model: ElasticViT, cfg: AcmeConfig) -> None:
    """Every configured (width, depth) must be a real sub-network of this backbone; else ConfigError, before work."""
    for key, values, axis in (("cloud.widths", cfg.widths, 0), ("cloud.depths", cfg.depths, 1)):
        for v in values:
            try:
                subnet_shape(model.config, *((v, 1.0) if axis == 0 else (1.0, v)))
            except ValueError as exc:
                raise ConfigError(f"{key}={getattr(cfg.cloud, key.split('.')[1])!r} does not fit model "
                                  f"{cfg.model.name!r}: {exc}") from exc


def warm_header(backbone: ElasticViT, spec: dict[str, Any], train: TensorSplit, val: TensorSplit,
                cfg: AcmeConfig) -> Header:
    """Train a fresh header on the cloud's data for this sub-backbone; keep the epoch with the best val accuracy."""
    torch.manual_seed(cfg.run.seed)
    header = build_header(spec)
    hp = TrainHParams(lr=cfg.strategy.lr, momentum=0.9, weight_decay=cfg.strategy.weight_decay,
                      batch_size=cfg.strategy.batch_size)
    grids = backbone_grids(backbone, train.x)
    opt = torch.optim.SGD(trainable_parameters(header), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    best = (-1.0, copy.deepcopy(header.state_dict()))
    for _ in range(cfg.cloud.header_epochs):
        order = torch.randperm(len(train), generator=gen)
        batches = [(grids[order[i:i + hp.batch_size]], train.y[order[i:i + hp.batch_size]])
                   for i in range(0, len(order), hp.batch_size)]
        train_header_epoch(header, batches, opt)
        _, acc = evaluate_header(backbone, header, val)
        if acc > best[0]:
            best = (acc, copy.deepcopy(header.state_dict()))
    header.load_state_dict(best[1])
    logger.info("warm header: val accuracy %.4f after %d epochs", max(best[0], 0.0), cfg.cloud.header_epochs)
    return header
