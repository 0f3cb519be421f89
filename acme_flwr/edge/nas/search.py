"""ENAS search loop (ACME §3.4–3.6) with a pluggable reward source.

Per epoch: the child is trained with one freshly sampled arc per batch at the SGDR learning rate
(``RewardSource.train_child``), then the controller takes ``controller_steps`` REINFORCE steps on rewards from
``RewardSource.reward(arc)`` (accuracy in [0, 1]), then a few candidate arcs (the greedy one plus samples) are scored on
a *validation* split (``RewardSource.validate``) and the best arc over the whole search is kept — never the test split
(ACME §7.8). :class:`ProxyReward` is the original edge-proxy-data mode; the federated mode is another
:class:`RewardSource` supplied by the Flower strategy.

Fixes relative to the original: SGDR restarts at exactly ``lr_max`` (ACME §7.7); reward/selection run the child in
eval mode, where dropout is off (ACME §7.6); the best arc is chosen on validation (§7.8).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from acme_flwr.device.cell import arc_to_str, has_separable_op, seeded, validate_arc
from acme_flwr.edge.nas.child import ENASChild
from acme_flwr.edge.nas.controller import Controller
from acme_flwr.logs import Progress

__all__ = [
    "ProxyReward",
    "Reinforce",
    "RewardSource",
    "SearchConfig",
    "SearchResult",
    "header_size_for",
    "search",
    "sgdr_lr",
]

log = logging.getLogger(__name__)

ArcSampler = Callable[[], list[int]]


# --------------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class SearchConfig:
    """Every hyper-parameter of the search (ACME §3.5 defaults)."""

    epochs: int = 130
    controller_steps: int = 300
    batch_size: int = 128
    # child network
    num_cells: int = 3  # B
    num_layers: int = 3  # L (the child has L + 2 layers)
    out_filters: int = 256  # C
    dropout: float = 0.1
    child_lr_max: float = 0.1
    child_lr_min: float = 5e-4
    child_lr_t0: int = 10
    child_lr_t_mul: int = 2
    child_momentum: float = 0.9
    child_weight_decay: float = 1e-4
    # controller
    controller_lr: float = 2.5e-3
    controller_betas: tuple[float, float] = (0.1, 0.999)
    controller_eps: float = 1e-3
    lstm_size: int = 100
    temperature: float = 5.0
    tanh_constant: float = 1.10
    op_tanh_reduce: float = 2.5
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    reward_scale: float = 100.0  # reward = reward_scale·accuracy (+ entropy bonus); 100 = the original's percent
    arcs_per_reward_call: int = 1  # >1 batches arcs into one RewardSource.rewards call (one federated round)
    # selection of the best arc (validation split)
    eval_every: int = 1
    num_eval_arcs: int = 4  # sampled candidates scored besides the greedy arc
    select_requires_gates: bool = False  # only arcs with a separable op (an exported header with gates) may win
    finetune_epochs: int = 50  # used by the caller after export
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "num_cells", "out_filters", "child_lr_t0", "child_lr_t_mul", "lstm_size",
                    "arcs_per_reward_call", "eval_every")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"SearchConfig.{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("controller_steps", "num_layers", "num_eval_arcs", "finetune_epochs"):
            if int(getattr(self, key)) < 0:
                raise ValueError(f"SearchConfig.{key} must be >= 0, got {getattr(self, key)!r}")
        if not 0 < self.child_lr_min <= self.child_lr_max:
            raise ValueError(f"SearchConfig needs 0 < child_lr_min <= child_lr_max, got "
                             f"{self.child_lr_min!r}, {self.child_lr_max!r}")
        for key in ("temperature", "tanh_constant", "op_tanh_reduce", "controller_lr", "controller_eps",
                    "reward_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"SearchConfig.{key} must be > 0, got {getattr(self, key)!r}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"SearchConfig.baseline_decay must be in [0, 1), got {self.baseline_decay!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SearchConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.controller_betas = (float(self.controller_betas[0]), float(self.controller_betas[1]))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` listing the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown SearchConfig key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (JSON-able)."""
        out = asdict(self)
        out["controller_betas"] = list(self.controller_betas)
        return out


def sgdr_lr(epoch: int, lr_max: float, lr_min: float, t0: int, t_mul: int) -> float:
    """SGDR (cosine with warm restarts) learning rate for a 0-based epoch; restarts (epochs 0, t0, t0+t0·t_mul, …)
    are at exactly ``lr_max`` (the original used the old T_cur with the new period there, ACME §7.7)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    start, period = 0, t0
    while epoch >= start + period:
        start, period = start + period, period * t_mul
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * (epoch - start) / period))


def header_size_for(width: float, depth: float, threshold: float = 0.25, small: tuple[int, int] = (1, 1),
                    large: tuple[int, int] = (1, 3)) -> tuple[int, int]:
    """Header size (cells B, layers L) for a sub-backbone (ACME §3.6): ``small`` if ``width·depth > threshold``
    (big backbones need little header), else ``large``."""
    if not (0 < width <= 1 and 0 < depth <= 1):
        raise ValueError(f"width and depth must be in (0, 1], got width={width}, depth={depth}")
    return tuple(small) if width * depth > threshold else tuple(large)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# reward sources


@runtime_checkable
class RewardSource(Protocol):
    """Where the search gets child training and rewards. Accuracies are fractions in [0, 1].

    Optionally a source may also define ``rewards(arcs) -> list[float]``; the loop then scores arcs through it, in
    chunks of ``SearchConfig.arcs_per_reward_call`` (e.g. one federated round per chunk), instead of ``reward``; and
    ``validate_many(arcs) -> list[float]``, used to score all selection candidates at once instead of ``validate``.
    """

    def train_child(self, arc_sampler: ArcSampler, lr: float) -> dict[str, float]:
        """Train the shared child for one epoch, calling ``arc_sampler()`` for each step's arc; return metrics."""
        ...

    def reward(self, arc: Sequence[int]) -> float:
        """Accuracy of the shared child running ``arc`` on one reward batch (held-out from child training)."""
        ...

    def validate(self, arc: Sequence[int]) -> float:
        """Accuracy of ``arc`` on the validation split used to pick the best arc (never the test split)."""
        ...


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


class ProxyReward:
    """Edge-proxy mode (the original): the edge holds labelled grids (backbone features) for child training, reward
    batches and arc selection, and trains the shared child with SGD itself.

    ``x_*`` are ``(N, in_channels, gh, gw)`` grids (or anything ``transform`` maps to such grids, e.g. images through
    a frozen sub-backbone and :func:`tokens_to_grid`). The reward split ``x_val`` is cycled one batch per
    ``reward`` call, reshuffled per pass; ``x_select`` (default: the reward split) is scored in full by ``validate``.
    """

    def __init__(self, child: ENASChild, x_val: torch.Tensor, y_val: torch.Tensor, batch_size: int = 128, *,
                 x_train: torch.Tensor, y_train: torch.Tensor, x_select: torch.Tensor | None = None,
                 y_select: torch.Tensor | None = None, momentum: float = 0.9, weight_decay: float = 1e-4,
                 max_train_steps: int | None = None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seed: int = 0) -> None:
        for name, (x, y) in {"val": (x_val, y_val), "train": (x_train, y_train),
                             "select": (x_select, y_select)}.items():
            if (x is None) != (y is None) or (x is not None and len(x) != len(y)):
                raise ValueError(f"ProxyReward: x_{name} and y_{name} must both be given with equal length")
            if x is not None and len(x) == 0:
                raise ValueError(f"ProxyReward: x_{name} is empty")
        if batch_size < 1:
            raise ValueError(f"ProxyReward: batch_size must be >= 1, got {batch_size}")
        self.child = child
        self.batch_size = batch_size
        self.x_train, self.y_train = x_train, y_train
        self.x_val, self.y_val = x_val, y_val
        self.x_select = x_val if x_select is None else x_select
        self.y_select = y_val if y_select is None else y_select
        self.max_train_steps = max_train_steps
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.SGD(child.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay)
        self._reward_queue: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, child: ENASChild, config: SearchConfig, *, x_train: torch.Tensor, y_train: torch.Tensor,
                    x_val: torch.Tensor, y_val: torch.Tensor, **kwargs: Any) -> ProxyReward:
        """Build with the batch size, momentum, weight decay and seed of ``config``."""
        return cls(child, x_val, y_val, config.batch_size, x_train=x_train, y_train=y_train,
                   momentum=config.child_momentum, weight_decay=config.child_weight_decay, seed=config.seed, **kwargs)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.child.parameters()).device
        x = x.to(device)
        return self.transform(x) if self.transform is not None else x

    def train_child(self, arc_sampler: ArcSampler, lr: float) -> dict[str, float]:
        """One epoch of SGD over the train split, a fresh arc per batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.child.train()
        device = next(self.child.parameters()).device
        total_loss, correct, seen, steps = 0.0, 0, 0, 0
        for idx in _batches(len(self.x_train), self.batch_size, self.generator):
            if self.max_train_steps is not None and steps >= self.max_train_steps:
                break
            arc = arc_sampler()
            y = self.y_train[idx].to(device)
            logits = self.child(self._inputs(self.x_train[idx]), arc)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            steps += 1
        return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "steps": float(steps)}

    @torch.no_grad()
    def _accuracy(self, arc: Sequence[int], x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        self.child.eval()
        logits = self.child(self._inputs(x), arc)
        return int((logits.argmax(1).cpu() == y.cpu()).sum()), len(y)

    def reward(self, arc: Sequence[int]) -> float:
        """Accuracy on the next reward batch."""
        if not self._reward_queue:
            self._reward_queue = _batches(len(self.x_val), self.batch_size, self.generator)[::-1]
        idx = self._reward_queue.pop()
        correct, n = self._accuracy(arc, self.x_val[idx], self.y_val[idx])
        return correct / n

    def validate(self, arc: Sequence[int]) -> float:
        """Accuracy over the whole selection split."""
        correct = total = 0
        for idx in _batches(len(self.x_select), self.batch_size, None):
            c, n = self._accuracy(arc, self.x_select[idx], self.y_select[idx])
            correct, total = correct + c, total + n
        return correct / total


# --------------------------------------------------------------------------------------------------------------------
# REINFORCE


class Reinforce:
    """REINFORCE for the controller (ACME §3.4): ``R = reward_scale·acc + entropy_weight·entropy``, moving baseline
    ``b ← b − (1−decay)(b − R)`` (initialised to the first R, updated before use, as ENAS), loss ``−log p·(R − b)``.

    ``update(arc, accuracy)`` re-scores ``arc`` under the current controller (teacher forcing), so rewards may come from
    anywhere (a proxy batch, or devices a round later).
    """

    def __init__(self, controller: Controller, *, lr: float = 2.5e-3, betas: tuple[float, float] = (0.1, 0.999),
                 eps: float = 1e-3, entropy_weight: float = 1e-4, baseline_decay: float = 0.99,
                 reward_scale: float = 100.0) -> None:
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr, betas=betas, eps=eps)
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.reward_scale = reward_scale
        self.baseline: float | None = None

    @classmethod
    def from_config(cls, controller: Controller, config: SearchConfig) -> Reinforce:
        """Build with the controller hyper-parameters of ``config``."""
        return cls(controller, lr=config.controller_lr, betas=config.controller_betas, eps=config.controller_eps,
                   entropy_weight=config.entropy_weight, baseline_decay=config.baseline_decay,
                   reward_scale=config.reward_scale)

    def update(self, arc: Sequence[int], accuracy: float) -> dict[str, float]:
        """One controller step for ``arc`` that scored ``accuracy``; returns reward, baseline, advantage, loss."""
        self.controller.train()
        sample = self.controller(arc)
        reward = self.reward_scale * float(accuracy) + self.entropy_weight * float(sample.entropy)
        if self.baseline is None:
            self.baseline = reward
        self.baseline -= (1.0 - self.baseline_decay) * (self.baseline - reward)
        advantage = reward - self.baseline
        loss = -sample.log_prob * advantage
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"reward": reward, "baseline": self.baseline, "advantage": advantage, "loss": float(loss.detach()),
                "entropy": float(sample.entropy), "log_prob": float(sample.log_prob.detach())}

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state and baseline (the controller's own state is separate)."""
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


# --------------------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class SearchResult:
    """Best arc (by validation accuracy), its score, per-epoch history, and the trained controller."""

    best_arc: list[int]
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    controller: Controller | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the controller)."""
        return {"best_arc": list(self.best_arc), "best_score": self.best_score, "history": self.history}


def _rewards(source: RewardSource, arcs: list[list[int]]) -> list[float]:
    batched = getattr(source, "rewards", None)
    if callable(batched):
        values = [float(v) for v in batched(arcs)]
        if len(values) != len(arcs):
            raise ValueError(f"{type(source).__name__}.rewards returned {len(values)} values for {len(arcs)} arcs")
        return values
    return [float(source.reward(arc)) for arc in arcs]


def _candidates(controller: Controller, count: int, eligible: Callable[[list[int]], bool]) -> list[list[int]]:
    """The greedy arc and up to ``count`` distinct sampled arcs that pass ``eligible`` (at most 20·count draws)."""
    unique: list[list[int]] = []
    with torch.no_grad():
        greedy = controller(greedy=True).arc
        if eligible(greedy):
            unique.append(greedy)
        for _ in range(20 * max(count, 1)):
            if len(unique) >= count + 1:
                break
            arc = controller().arc
            if eligible(arc) and arc not in unique:
                unique.append(arc)
    return unique


def search(reward_source: RewardSource, config: SearchConfig, controller: Controller | None = None, *,
           progress: bool = True,
           on_epoch: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Run the ENAS search; the best arc is the one with the highest ``reward_source.validate`` score (ties: latest)
    among the greedy arc and ``num_eval_arcs`` samples per evaluation (only arcs with a separable op if
    ``config.select_requires_gates``).

    ``controller`` defaults to a fresh one from ``config``; ``on_epoch(record)`` is called after each epoch (e.g. to
    checkpoint). The global torch RNG (child dropout) is seeded from ``config.seed`` inside the call only.
    """
    if not isinstance(reward_source, RewardSource):
        raise TypeError(f"{type(reward_source).__name__} does not implement RewardSource (train_child/reward/validate)")
    if controller is None:
        controller = Controller(config.num_cells, config.lstm_size, config.temperature, config.tanh_constant,
                                config.op_tanh_reduce, seed=config.seed)
    elif controller.num_cells != config.num_cells:
        raise ValueError(f"controller has num_cells={controller.num_cells}, config.num_cells={config.num_cells}")
    updater = Reinforce.from_config(controller, config)

    def arc_sampler() -> list[int]:
        controller.eval()
        with torch.no_grad():
            return controller().arc

    def eligible(arc: list[int]) -> bool:
        return has_separable_op(arc) or not config.select_requires_gates

    best_arc: list[int] | None = None
    best_score = -math.inf
    history: list[dict[str, Any]] = []
    with seeded(config.seed):
        bar = tqdm(range(config.epochs), desc="NAS search", unit="epoch", disable=not progress)
        report = Progress("header search", config.epochs, unit="epoch", log=log)
        for epoch in bar:
            t_start = time.perf_counter()
            lr = sgdr_lr(epoch, config.child_lr_max, config.child_lr_min, config.child_lr_t0, config.child_lr_t_mul)
            child_stats = reward_source.train_child(arc_sampler, lr)
            t_child = time.perf_counter()

            steps: list[dict[str, float]] = []
            while len(steps) < config.controller_steps:
                count = min(config.arcs_per_reward_call, config.controller_steps - len(steps))
                arcs = [arc_sampler() for _ in range(count)]
                for arc, acc in zip(arcs, _rewards(reward_source, arcs), strict=True):
                    steps.append({**updater.update(arc, acc), "acc": acc})
            t_ctrl = time.perf_counter()

            record: dict[str, Any] = {"epoch": epoch, "lr": lr, **{f"child_{k}": v for k, v in child_stats.items()}}
            if steps:
                record.update({f"controller_{k}": sum(s[k] for s in steps) / len(steps)
                               for k in ("acc", "reward", "entropy", "loss")})
                record["controller_baseline"] = updater.baseline
            if (epoch + 1) % config.eval_every == 0 or epoch == config.epochs - 1:
                candidates = _candidates(controller, config.num_eval_arcs, eligible)
                batched_val = getattr(reward_source, "validate_many", None)
                scores = ([float(v) for v in batched_val(candidates)] if callable(batched_val) and candidates
                          else [reward_source.validate(arc) for arc in candidates])
                scored = list(zip(scores, candidates, strict=True))
                record["val_candidates"] = len(scored)
                if scored:
                    score, arc = max(scored, key=lambda s: s[0])
                    record.update({"val_acc": score, "val_arc": arc})
                    if score >= best_score:
                        best_arc, best_score = arc, score
            t_end = time.perf_counter()
            record.update({"time_child_s": t_child - t_start, "time_controller_s": t_ctrl - t_child,
                           "time_eval_s": t_end - t_ctrl, "time_epoch_s": t_end - t_start})
            history.append(record)
            bar.set_postfix(lr=f"{lr:.4f}", child_acc=f"{child_stats.get('acc', float('nan')):.3f}",
                            val=f"{best_score:.3f}")
            log.info("NAS epoch %d lr=%.4g child=%s controller_acc=%.4f val=%s best=%.4f", epoch, lr,
                     {k: round(v, 4) for k, v in child_stats.items()}, record.get("controller_acc", float("nan")),
                     record.get("val_acc"), best_score)
            report.step(best_val=best_score if best_score > -math.inf else float("nan"))
            if on_epoch is not None:
                on_epoch(record)
    if best_arc is None:
        raise RuntimeError("NAS search found no eligible arc (select_requires_gates=True and the controller sampled no "
                           "arc with a separable op); lower the constraint or search longer")
    log.info("NAS best arc (val %.4f): %s", best_score, arc_to_str(best_arc))
    return SearchResult(validate_arc(best_arc), best_score, history, controller)
