"""Cloud tier, Part I of ACME: turn a ViT into an elastic backbone (ACME §2.1, §2.3–2.6, §7.2–7.3).

Stages, in order, each optional:

1. ``teacher`` - task fine-tuning at full size (plain CE, AdamW, constant LR; ACME §2.1).
2. ``width``   - DynaViTw: head/neuron importance on held-out data (per-batch zeroed gradients), function-preserving
   re-ordering, then every width trained per batch with gradients accumulated over widths, loss
   ``λ1·soft-CE(logits, teacher) + λ2·Σ_l MSE(hidden_l, teacher_l)`` against the un-reordered fine-tuned model.
3. ``depth``   - DynaViT: all width x depth sub-nets per batch, DynaBERT stage-2 distillation from the width-elastic
   model at full size, hidden states paired through ``κ = kept ++ [L]``.

``faithful=True`` reproduces what the shipped code ran instead (ACME §7.2): no re-ordering, no teacher, plain CE
summed over the sub-nets in both elastic stages. ``distill=False`` keeps re-ordering but drops the teacher (the "no
teacher" arm of the distillation comparison).

Everything takes tensors (``x`` float ``(N, C, H, W)``, ``y`` long ``(N,)``) and plain config, never Flower objects.
``build_elastic_backbone`` runs the stages and caches the result on disk keyed by everything that determines it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from acme_flwr import accel
from acme_flwr.logs import Progress
from acme_flwr.runtime import fingerprint

from .elastic_vit import ElasticViT, kept_layers

logger = logging.getLogger(__name__)

__all__ = [
    "CloudStageConfig",
    "build_elastic_backbone",
    "finetune_teacher",
    "head_neuron_importance",
    "load_backbone",
    "save_backbone",
    "subnet_accuracy_table",
    "train_width_depth_stage",
    "train_width_stage",
]

STAGE_ORDER = ("teacher", "width", "depth")
CACHE_FORMAT = 1
Data = tuple[torch.Tensor, torch.Tensor]
AccuracyTable = list[tuple[float, float, float]]


@dataclass
class CloudStageConfig:
    """Everything that determines the elastic backbone besides the model and the data (ACME §2.4 defaults)."""

    stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER))
    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    depths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    teacher_epochs: int = 10
    width_epochs: int = 3
    depth_epochs: int = 3
    lr: float = 2e-5
    teacher_lr: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 256
    importance_batch_size: int = 8
    width_lambda1: float = 1.0
    width_lambda2: float = 0.1
    depth_lambda1: float = 1.0
    depth_lambda2: float = 1.0
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    faithful: bool = False
    distill: bool = True
    reorder: bool = True
    table_each_stage: bool = True
    seed: int = 0
    max_steps: int | None = None  # cap on optimiser steps per stage (tests, smoke runs)

    def __post_init__(self) -> None:
        self.stages, self.widths, self.depths = list(self.stages), list(self.widths), list(self.depths)
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown or self.stages != [s for s in STAGE_ORDER if s in self.stages]:
            raise ValueError(f"stages={self.stages} must be an ordered subset of {list(STAGE_ORDER)}")
        for name in ("widths", "depths"):
            values = getattr(self, name)
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1]
            if not values or bad:
                raise ValueError(f"{name}={values} must be a non-empty list of values in the allowed range (0, 1]")
        for name in ("teacher_epochs", "width_epochs", "depth_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("lr", "teacher_lr", "batch_size", "eval_batch_size", "importance_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1 or None")

    @property
    def use_teacher(self) -> bool:
        return self.distill and not self.faithful

    @property
    def use_reorder(self) -> bool:
        return self.reorder and not self.faithful

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------------------------


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``-mean_batch Σ_c softmax(teacher)_c · log_softmax(student)_c`` (temperature 1, ACME §2.4)."""
    return -(F.softmax(teacher_logits, dim=-1) * F.log_softmax(student_logits, dim=-1)).sum(-1).mean()


def _batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def _steps(n: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    total = epochs * math.ceil(n / batch_size)
    return total if max_steps is None else min(total, max_steps)


def _optimizer(model: torch.nn.Module, lr: float, cfg: CloudStageConfig) -> torch.optim.AdamW:
    """AdamW with biases and LayerNorm weights excluded from weight decay (as in DynaBERT)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "layernorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=cfg.adam_eps)


def _train_loop(
    name: str,
    model: ElasticViT,
    data: Data,
    cfg: CloudStageConfig,
    epochs: int,
    lr: float,
    step_loss: Callable[[torch.Tensor, torch.Tensor], float],
    linear_decay: bool,
    progress: bool,
) -> dict[str, Any]:
    """Shared optimiser loop: ``step_loss(xb, yb)`` runs the backward passes and returns the logged loss."""
    x, y = data
    total = _steps(len(y), cfg.batch_size, epochs, cfg.max_steps)
    opt = _optimizer(model, lr, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(total, 1)) if linear_decay else 1.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    report = Progress(f"cloud stage {name}", total, per_epoch=math.ceil(len(y) / cfg.batch_size), log=logger)
    with tqdm(total=total, desc=f"cloud:{name}", disable=not progress, leave=False) as bar:
        while len(losses) < total:
            for idx in _batches(len(y), cfg.batch_size, gen):
                if len(losses) >= total:
                    break
                opt.zero_grad(set_to_none=True)
                xb, yb = accel.to_model(model, x[idx], y[idx])
                with accel.autocast(model):
                    losses.append(step_loss(xb, yb))
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                report.step(loss=losses[-1])
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("cloud stage %s: %d steps, loss %.4f -> %.4f, %.1f s", name, total,
                losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"), seconds)
    return {"steps": total, "loss": losses, "seconds": seconds}


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------


def finetune_teacher(model: ElasticViT, train: Data, cfg: CloudStageConfig, progress: bool = True) -> dict[str, Any]:
    """Stage I-a: full-size task fine-tuning with cross-entropy (ACME §2.1: AdamW, constant LR)."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        loss = F.cross_entropy(model(xb, width=1.0, depth=1.0), yb)
        loss.backward()
        return loss.item()

    return _train_loop("teacher", model, train, cfg, cfg.teacher_epochs, cfg.teacher_lr, step, False, progress)


def head_neuron_importance(
    model: ElasticViT, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Head and FFN-neuron importance of the full model (ACME §2.3, Michel et al. / DynaBERT).

    Head ``(l, h)``: Σ_batches |∂L/∂m_{l,h}| for a head mask m of ones. Neuron ``(l, j)``:
    Σ_batches |Σ_i W1[j,i]·g + b1[j]·g| + |Σ_k W2[k,j]·g|. Unlike the original, gradients are fresh per batch
    (``autograd.grad``), and callers pass training or validation data, never test data.
    """
    was_training = model.training
    model.eval()
    cfg = model.config
    device = accel.device_of(model)
    head_mask = torch.ones(cfg.num_layers, max(cfg.heads), requires_grad=True, device=device)
    params = [p for layer in model.layers for p in (layer.mlp.fc1.weight, layer.mlp.fc1.bias, layer.mlp.fc2.weight)]
    head_imp = torch.zeros(cfg.num_layers, max(cfg.heads), device=device)
    neuron_imp = [torch.zeros(f, device=device) for f in cfg.ffn]
    for idx in torch.arange(len(y)).split(batch_size):
        xb, yb = accel.to_model(model, x[idx], y[idx])
        with accel.autocast(model):
            loss = F.cross_entropy(model(xb, head_mask=head_mask, width=1.0, depth=1.0).float(), yb)
        grads = torch.autograd.grad(loss, [head_mask, *params])
        head_imp += grads[0].abs().detach()
        for layer_i in range(cfg.num_layers):
            w1, b1, w2 = params[3 * layer_i : 3 * layer_i + 3]
            g1, gb1, g2 = grads[1 + 3 * layer_i : 4 + 3 * layer_i]
            neuron_imp[layer_i] += ((w1 * g1).sum(1) + b1 * gb1).abs().detach()
            neuron_imp[layer_i] += (w2 * g2).sum(0).abs().detach()
    model.train(was_training)
    return [head_imp[i, : cfg.heads[i]] for i in range(cfg.num_layers)], neuron_imp


def _hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], pairs: Sequence[int]) -> torch.Tensor:
    return sum(F.mse_loss(s, teacher[j]) for s, j in zip(student, pairs, strict=True))


def train_width_stage(
    model: ElasticViT, teacher: ElasticViT | None, train: Data, cfg: CloudStageConfig, progress: bool = True
) -> dict[str, Any]:
    """Stage I-b (DynaViTw): all widths per batch at depth 1, gradients accumulated over widths, one clipped step.

    With a teacher: ``λ1·SCE + λ2·Σ_l MSE(hidden_l)``; without (``faithful`` / no-teacher arm): CE per width.
    """
    widths = sorted(cfg.widths, reverse=True)
    full = list(range(model.config.num_layers + 1))

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        t_logits, t_hidden = _teacher_outputs(teacher, xb)
        total = 0.0
        for w in widths:
            logits, hidden = model(xb, output_hidden_states=True, width=w, depth=1.0)
            if teacher is None:
                loss = F.cross_entropy(logits, yb)
            else:
                loss = cfg.width_lambda1 * soft_cross_entropy(logits, t_logits)
                loss = loss + cfg.width_lambda2 * _hidden_mse(hidden, t_hidden, full)
            loss.backward()
            total += loss.item()
        return total

    return _train_loop("width", model, train, cfg, cfg.width_epochs, cfg.lr, step, True, progress)


def train_width_depth_stage(
    model: ElasticViT, teacher: ElasticViT | None, train: Data, cfg: CloudStageConfig, progress: bool = True
) -> dict[str, Any]:
    """Stage I-c (DynaViT): every (depth, width) sub-net per batch, DynaBERT stage-2 distillation.

    The student's j-th hidden state is matched with the teacher's at ``κ(j)``, ``κ = kept ++ [L]`` (ACME §2.5).
    Without a teacher: plain CE per sub-net (what the shipped code ran).
    """
    num_layers = model.config.num_layers
    depths, widths = sorted(cfg.depths, reverse=True), sorted(cfg.widths, reverse=True)
    pairs = {d: kept_layers(num_layers, d) + [num_layers] for d in depths}

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        t_logits, t_hidden = _teacher_outputs(teacher, xb)
        total = 0.0
        for d in depths:
            for w in widths:
                logits, hidden = model(xb, output_hidden_states=True, width=w, depth=d)
                if teacher is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    loss = cfg.depth_lambda1 * soft_cross_entropy(logits, t_logits)
                    loss = loss + cfg.depth_lambda2 * _hidden_mse(hidden, t_hidden, pairs[d])
                loss.backward()
                total += loss.item()
        return total

    return _train_loop("depth", model, train, cfg, cfg.depth_epochs, cfg.lr, step, True, progress)


def _teacher_outputs(
    teacher: ElasticViT | None, xb: torch.Tensor
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
    if teacher is None:
        return None, ()
    with torch.no_grad():
        return teacher(xb, output_hidden_states=True, width=1.0, depth=1.0)


@torch.no_grad()
def subnet_accuracy_table(
    model: ElasticViT,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    widths: Sequence[float],
    depths: Sequence[float],
    batch_size: int = 256,
) -> AccuracyTable:
    """Top-1 accuracy of every sub-net as ``(depth, width, acc)`` rows, depth then width descending (the original's
    order, the input of PFG). Evaluate on validation data; model selection on test data is a defect (ACME §7.3)."""
    was_training = model.training
    model.eval()
    table = []
    for d in sorted(depths, reverse=True):
        for w in sorted(widths, reverse=True):
            correct = 0
            for idx in torch.arange(len(y_val)).split(batch_size):
                xb, yb = accel.to_model(model, x_val[idx], y_val[idx])
                with accel.autocast(model):
                    correct += (model(xb, width=w, depth=d).argmax(-1) == yb).sum().item()
            table.append((float(d), float(w), correct / max(1, len(y_val))))
    model.train(was_training)
    return table


# --------------------------------------------------------------------------------------------------------------------
# The pipeline with its disk cache
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the stages share while ``build_elastic_backbone`` runs."""

    model: ElasticViT
    train: Data
    val: Data
    cfg: CloudStageConfig
    progress: bool


def _stage_teacher(run: _Run) -> dict[str, Any]:
    return finetune_teacher(run.model, run.train, run.cfg, run.progress)


def _stage_width(run: _Run) -> dict[str, Any]:
    cfg, model = run.cfg, run.model
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if cfg.use_teacher else None  # un-reordered copy
    info: dict[str, Any] = {}
    if cfg.use_reorder:
        start = time.perf_counter()
        heads, neurons = head_neuron_importance(model, *run.val, batch_size=cfg.importance_batch_size)
        model.reorder(heads, neurons)
        info["importance"] = {"heads": [h.tolist() for h in heads], "seconds": time.perf_counter() - start}
        logger.info("re-ordered heads/neurons by importance on %d held-out samples", len(run.val[1]))
    return {**info, **train_width_stage(model, teacher, run.train, cfg, run.progress)}


def _stage_depth(run: _Run) -> dict[str, Any]:
    model = run.model
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if run.cfg.use_teacher else None
    return train_width_depth_stage(model, teacher, run.train, run.cfg, run.progress)


_STAGES: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "teacher": _stage_teacher,
    "width": _stage_width,
    "depth": _stage_depth,
}


def cache_meta(model: ElasticViT, train: Data, val: Data, cfg: CloudStageConfig) -> dict[str, Any]:
    """Everything that determines the result: arch, initial weights, data, config, the intra-op thread count the
    stages run with (float sums are split by it) and the cache format."""
    return {
        "format": CACHE_FORMAT,
        "threads": torch.get_num_threads(),
        "arch": model.arch(),
        "init_weights": fingerprint(*model.state_dict().values()),
        "train": fingerprint(*train),
        "val": fingerprint(*val),
        "cfg": cfg.to_dict(),
    }


def _meta_key(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _differences(stored: dict[str, Any], expected: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(expected)):
        a, b = stored.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint has {str(a)[:60]}, expected {str(b)[:60]}")
    return out


def save_backbone(
    path: str | Path, model: ElasticViT, table: AccuracyTable, stage_log: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Write the elastic backbone, its sub-net table, the stage log and its cache meta (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"key": _meta_key(meta), "meta": meta, "arch": model.arch(), "state_dict": model.state_dict(),
                "table": [list(r) for r in table], "stage_log": stage_log}, tmp)
    tmp.replace(path)


def load_backbone(
    path: str | Path, expected_meta: dict[str, Any] | None = None
) -> tuple[ElasticViT, AccuracyTable, dict[str, Any]]:
    """Load a ``save_backbone`` checkpoint; with ``expected_meta``, refuse one built from another config/data/model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no elastic backbone checkpoint at {path}; run build_elastic_backbone first")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if expected_meta is not None and ckpt.get("key") != _meta_key(expected_meta):
        diffs = _differences(ckpt.get("meta", {}), expected_meta)
        raise ValueError(
            f"checkpoint {path} was built from another configuration ({'; '.join(diffs[:6]) or 'unknown meta'}); "
            "delete it or use another cache_dir"
        )
    model = ElasticViT.from_arch(ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), [tuple(r) for r in ckpt["table"]], ckpt["stage_log"]


def build_elastic_backbone(
    model: ElasticViT,
    train: Data,
    val: Data,
    cfg: CloudStageConfig,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[ElasticViT, AccuracyTable, dict[str, Any]]:
    """Run ``cfg.stages`` on ``model`` (in place) and return ``(model, sub-net table on val, stage log)``.

    With ``cache_dir``, the result is stored under ``sha256(arch, initial weights, data, cfg)``; a later call with
    the same inputs loads it instead of training (logged as a cache hit).
    """
    meta = cache_meta(model, train, val, cfg)
    key = _meta_key(meta)
    path = Path(cache_dir) / f"elastic_backbone_{key[:24]}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        cached, table, stage_log = load_backbone(path, meta)
        model.load_state_dict(cached.state_dict())
        logger.info("cloud cache hit: loaded elastic backbone %s (key %s)", path, key[:12])
        return model.eval(), table, stage_log

    torch.manual_seed(cfg.seed)
    run = _Run(model, train, val, cfg, progress)
    stage_log: dict[str, Any] = {}
    for name in cfg.stages:
        stage_log[name] = _STAGES[name](run)
        if cfg.table_each_stage:
            stage_log[name]["table"] = subnet_accuracy_table(model, *val, cfg.widths, cfg.depths, cfg.eval_batch_size)
    table = subnet_accuracy_table(model, *val, cfg.widths, cfg.depths, cfg.eval_batch_size)
    model.set_subnet(1.0, 1.0).eval()
    if path is not None:
        save_backbone(path, model, table, stage_log, meta)
        logger.info("cloud cache miss: saved elastic backbone to %s", path)
    return model, table, stage_log
