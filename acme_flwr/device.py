"""Device-tier logic (no Flower): a frozen sub-backbone feeding a gated header, trained on local data.

The device never updates its sub-backbone (it is the cloud's elastic weights, shipped once); it refines the header on
its own training split, accumulating Taylor importance of the header's channel gates, and evaluates on its own
validation and test splits. Backbone features are computed once per call under ``no_grad``: with a frozen backbone
this is exactly the same computation as running it inside every step, at a fraction of the cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .elastic_vit import ElasticViT
from .header import Header
from .pruning import TaylorImportance, train_header_epoch, trainable_parameters
from .task import TensorSplit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainHParams:
    """Local training hyper-parameters (spec §4.7 defaults: SGD, momentum 0.5, wd 1e-4, 1 local epoch)."""

    lr: float = 1e-2
    momentum: float = 0.5
    weight_decay: float = 1e-4
    batch_size: int = 32
    local_epochs: int = 1
    accumulation: str = "mean"


@torch.no_grad()
def backbone_grids(backbone: ElasticViT, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Patch-token grids ``(N, hidden, g, g)`` of the frozen backbone for all of ``x``."""
    backbone.eval()
    return torch.cat([backbone.forward_features(x[i:i + batch_size]).grid for i in range(0, len(x), batch_size)])


def train_header(backbone: ElasticViT, header: Header, data: TensorSplit, hp: TrainHParams,
                 seed: int) -> tuple[dict[str, float], np.ndarray]:
    """Local epochs of header training; returns metrics and the gate importance accumulated over them."""
    grids = backbone_grids(backbone, data.x)
    importance = TaylorImportance(header, mode=hp.accumulation) if header.num_gates else None
    params = trainable_parameters(header)
    optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    for _ in range(hp.local_epochs):
        order = torch.randperm(len(data), generator=gen)
        batches = [(grids[order[i:i + hp.batch_size]], data.y[order[i:i + hp.batch_size]])
                   for i in range(0, len(order), hp.batch_size)]
        metrics = train_header_epoch(header, batches, optimizer, importance)
    vec = importance.vector() if importance is not None else np.zeros(0, dtype=np.float32)
    return metrics, vec


@torch.no_grad()
def evaluate_header(backbone: ElasticViT, header: Header, data: TensorSplit,
                    batch_size: int = 256) -> tuple[float, float]:
    """(loss, accuracy) of backbone + header on ``data``."""
    header.eval()
    grids = backbone_grids(backbone, data.x, batch_size)
    logits = torch.cat([header(grids[i:i + batch_size]) for i in range(0, len(grids), batch_size)])
    loss = float(F.cross_entropy(logits, data.y))
    acc = float((logits.argmax(1) == data.y).float().mean())
    return loss, acc


@torch.no_grad()
def cls_feature_matrix(backbone: ElasticViT, data: TensorSplit, k: int, seed: int) -> np.ndarray:
    """The [CLS] features (pre-final-LN) of ``k`` random training samples, rows grouped by label ascending
    (spec §4.3); fewer rows if the device has fewer than ``k`` samples."""
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[: min(k, len(data))]
    idx = idx[torch.argsort(data.y[idx], stable=True)]
    return backbone.forward_features(data.x[idx]).cls.double().numpy().astype(np.float32)
