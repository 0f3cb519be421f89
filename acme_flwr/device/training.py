"""Local header training and evaluation on a device (no Flower): a frozen sub-backbone feeding a gated header.

The device never updates its sub-backbone (it is the cloud's elastic weights, shipped once); it refines the header on
its own training split, accumulating Taylor importance of the header's channel gates, and evaluates on its own
validation and test splits. Backbone features are computed once per call under ``no_grad``: with a frozen backbone
this is exactly the same computation as running it inside every step, at a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acme_flwr import accel
from acme_flwr.cloud.elastic_vit import ElasticViT
from acme_flwr.task import TensorSplit

from .gates import GateLayer, gate_layers
from .headers import Header
from .importance import TaylorImportance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainHParams:
    """Local training hyper-parameters (ACME §4.7 defaults: SGD, momentum 0.5, wd 1e-4, 1 local epoch)."""

    lr: float = 1e-2
    momentum: float = 0.5
    weight_decay: float = 1e-4
    batch_size: int = 32
    local_epochs: int = 1
    accumulation: str = "mean"


@torch.no_grad()
def backbone_grids(backbone: ElasticViT, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Patch-token grids ``(N, hidden, g, g)`` of the frozen backbone for all of ``x``, on the backbone's device."""
    backbone.eval()
    out = []
    for i in range(0, len(x), batch_size):
        (xb,) = accel.to_model(backbone, x[i:i + batch_size])
        with accel.autocast(backbone):
            out.append(backbone.forward_features(xb).grid.float())
    return torch.cat(out)


def _place(device: torch.device | None, *modules: nn.Module) -> None:
    """Move ``modules`` to ``device`` (``None``: leave them where they are)."""
    if device is not None:
        for m in modules:
            m.to(device)


Phase = tuple[Collection[str] | None, int]  # (names of the parameters to train, None = all; epochs)


def train_header(backbone: ElasticViT | None, header: Header, data: TensorSplit, hp: TrainHParams,
                 seed: int, device: torch.device | None = None, *, grids: torch.Tensor | None = None,
                 phases: Sequence[Phase] | None = None, proximal: tuple[float, dict[str, torch.Tensor]] | None = None,
                 importance: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Local epochs of header training (on ``device``, default where the models are); returns metrics and the gate
    importance accumulated over them (CPU numpy; zeros of length 0 when ``importance`` is false).

    ``grids``: the frozen backbone's token grids of ``data.x`` computed beforehand (:class:`FeatureCache`), else they
    are computed here (``backbone`` may then be ``None``). ``phases``: ``(parameter names, epochs)`` run one after the
    other, each with a fresh optimizer over its own parameters, the others frozen (FedRep: head then body; FedBABU:
    body only); default: every parameter for ``hp.local_epochs``. ``proximal``: ``(λ, w)`` adds ``λ/2·‖θ − w‖²`` over
    the trained parameters (Ditto's personal header; ``w`` by parameter name)."""
    _place(device, *(m for m in (backbone, header) if m is not None))
    if grids is None:
        if backbone is None:
            raise ValueError("train_header needs a backbone or precomputed grids")
        grids = backbone_grids(backbone, data.x)
    labels = data.y.to(grids.device)
    tracker = TaylorImportance(header, mode=hp.accumulation) if importance and header.num_gates else None
    gen = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    for names, epochs in phases if phases is not None else [(None, hp.local_epochs)]:
        params = trainable_parameters(header, names)
        if not params or epochs <= 0:
            continue
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        loss_fn = _proximal_loss(header, params, *proximal) if proximal is not None else None
        with _frozen_except(header, params, keep_gates=tracker is not None):
            for _ in range(epochs):
                order = torch.randperm(len(data), generator=gen)
                batches = [(grids[order[i:i + hp.batch_size]], labels[order[i:i + hp.batch_size]])
                           for i in range(0, len(order), hp.batch_size)]
                metrics = train_header_epoch(header, batches, optimizer, tracker, loss_fn=loss_fn)
    vec = tracker.vector() if tracker is not None else np.zeros(0, dtype=np.float32)
    return metrics, vec


@contextlib.contextmanager
def _frozen_except(module: nn.Module, params: Sequence[nn.Parameter], keep_gates: bool = True) -> Iterator[None]:
    """Within the block only ``params`` (and, with ``keep_gates``, the gate weights whose gradients importance reads)
    require grad; without importance a head-only phase then skips the body's backward pass entirely."""
    keep = {id(p) for p in params} | ({id(g.weight) for g in gate_layers(module)} if keep_gates else set())
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _proximal_loss(module: nn.Module, params: Sequence[nn.Parameter], lam: float,
                   reference: dict[str, torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy + ``lam/2·‖θ − w‖²`` over ``params`` (``w``: ``reference`` by parameter name, detached)."""
    ids = {id(p) for p in params}
    pairs = [(p, reference[n].detach().to(p.device, p.dtype)) for n, p in module.named_parameters() if id(p) in ids]

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        prox = sum(((p - w) ** 2).sum() for p, w in pairs)
        return F.cross_entropy(logits, labels) + 0.5 * lam * prox

    return loss_fn


@torch.no_grad()
def evaluate_header(backbone: ElasticViT | None, header: Header, data: TensorSplit,
                    batch_size: int = 256, device: torch.device | None = None, *,
                    grids: torch.Tensor | None = None) -> tuple[float, float]:
    """(loss, accuracy) of backbone + header on ``data`` (on ``device``, default where the models are); ``grids``:
    the backbone's token grids of ``data.x`` computed beforehand (then ``backbone`` may be ``None``)."""
    _place(device, *(m for m in (backbone, header) if m is not None))
    header.eval()
    if grids is None:
        if backbone is None:
            raise ValueError("evaluate_header needs a backbone or precomputed grids")
        grids = backbone_grids(backbone, data.x, batch_size)
    with accel.autocast(header):
        logits = torch.cat([header(grids[i:i + batch_size]) for i in range(0, len(grids), batch_size)]).float()
    y = data.y.to(logits.device)
    loss = float(F.cross_entropy(logits, y))
    acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc


@torch.no_grad()
def cls_feature_matrix(backbone: ElasticViT, data: TensorSplit, k: int, seed: int) -> np.ndarray:
    """The [CLS] features (pre-final-LN) of ``k`` random training samples, rows grouped by label ascending
    (ACME §4.3); fewer rows if the device has fewer than ``k`` samples."""
    backbone.eval()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[: min(k, len(data))]
    idx = idx[torch.argsort(data.y[idx], stable=True)]
    (xb,) = accel.to_model(backbone, data.x[idx])
    return backbone.forward_features(xb).cls.double().cpu().numpy().astype(np.float32)


def trainable_parameters(module: nn.Module, names: Collection[str] | None = None) -> list[nn.Parameter]:
    """Parameters to hand to the optimizer: everything that requires grad except gate weights (never trained);
    with ``names``, only the parameters of those names (e.g. the head or the body of :func:`split_header_params`)."""
    gate_ids = {id(g.weight) for g in gate_layers(module)}
    return [p for n, p in module.named_parameters()
            if p.requires_grad and id(p) not in gate_ids and (names is None or n in names)]


@torch.no_grad()
def _rezero(gates: Sequence[GateLayer]) -> None:
    for g in gates:
        g.weight.mul_(g.mask)


def train_header_epoch(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    importance: TaylorImportance | None = None,
    gates: Sequence[GateLayer] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One local epoch: per batch forward, cross-entropy, backward, step, re-zero pruned gates, update importance.

    ``model`` maps inputs to logits (a header on precomputed token grids, or backbone + header); ``batches`` yields
    ``(inputs, labels)``. The optimizer must not contain gate weights (:func:`trainable_parameters`). Gates come from
    ``gates``, else ``importance.gates``, else the model's gate layers. Returns ``loss``, ``accuracy`` (example-weighted
    means), ``num_examples`` and ``num_batches``.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    if gates is None:
        gates = (
            importance.gates if importance is not None else (gate_layers(model) if isinstance(model, nn.Module) else [])
        )
    gate_params = {id(g.weight) for g in gates}
    if any(id(p) in gate_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("optimizer contains gate weights; build it from trainable_parameters(model)")
    if isinstance(model, nn.Module):
        model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for inputs, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        for g in gates:  # gates are outside the optimizer: clear their gradients ourselves
            g.weight.grad = None
        with accel.autocast(inputs.device):
            logits = model(inputs).float()
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        _rezero(gates)
        if importance is not None:
            importance.update()
        n = int(labels.shape[0])
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
        seen += n
        steps += 1
    if importance is not None:
        importance.end_epoch()
    if steps == 0:
        logger.warning("train_header_epoch: no batches")
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "num_examples": float(seen),
        "num_batches": float(steps),
    }




def split_fingerprint(x: torch.Tensor, samples: int = 4096) -> str:
    """A cheap fingerprint of a fixed data tensor: dtype, shape, sum and ``samples`` strided elements (a cache key
    part that changes when the data does, without hashing megabytes on every message)."""
    flat = x.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}{float(flat.double().sum())!r}".encode())
    h.update(flat[::step].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """A bounded LRU of a frozen backbone's token grids on fixed images, so a device computes them once per run.

    Devices refine only the header on a frozen sub-backbone, so the grids of their fixed training, validation and
    test images never change. Keys must name everything the grids depend on (the client uses run, backbone
    fingerprint, split, data fingerprint, device and precision, so strategies and devices that share a package share
    its grids, e.g. of the generic test set); entries are evicted least recently used beyond ``max_entries`` or
    ``max_bytes``. ``max_entries=0`` disables caching. The entry bound is generous on purpose: a worker cycles through
    every device it serves each round, and an LRU smaller than that cycle misses on every access.

    ``shared_dir``: a second tier that several processes of one machine share (one file per key, written atomically,
    at most ``max_bytes`` in all): in Flower's Ray simulation a device's messages go to whichever worker is free, and
    without it every worker computes each device's grids again (measured: 7 of 20 later-round messages did). CPU
    tensors only; a file that cannot be read is recomputed, never trusted."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 1 << 30, shared_dir: Path | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.shared_dir = shared_dir
        self._unwritable: Path | None = None  # a shared_dir that failed once: not retried (callers reassign it)
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.shared_hits = 0

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached tensor of ``key``, or ``compute()`` (stored unless it alone exceeds the byte bound)."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        value = self._load_shared(key)
        if value is None:
            self.misses += 1
            value = compute()
            self._store_shared(key, value)
        else:
            self.shared_hits += 1
        size = value.element_size() * value.numel()
        if self.max_entries <= 0 or size > self.max_bytes:
            return value
        self._items[key] = value
        while len(self._items) > self.max_entries or self.nbytes > self.max_bytes:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def _shared_path(self, key: Hashable) -> Path | None:
        if self.shared_dir is None or self.max_entries <= 0 or Path(self.shared_dir) == self._unwritable:
            return None
        return Path(self.shared_dir) / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.pt"

    def _load_shared(self, key: Hashable) -> torch.Tensor | None:
        path = self._shared_path(key)
        if path is None or not path.is_file():
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - damaged or foreign file: recompute, never trust it
            logger.debug("feature cache: ignoring unreadable %s (%s)", path, exc)
            return None
        return value if isinstance(value, torch.Tensor) else None

    def _store_shared(self, key: Hashable, value: torch.Tensor) -> None:
        path = self._shared_path(key)
        size = value.element_size() * value.numel()
        if path is None or value.device.type != "cpu" or size > self.max_bytes:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if sum(f.stat().st_size for f in path.parent.glob("*.pt")) + size > self.max_bytes:
                return
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
            torch.save(value, tmp)
            os.replace(tmp, path)  # atomic: another process sees the whole file or none
        except OSError as exc:
            logger.warning("feature cache: cannot share grids in %s (%s); each worker computes its own",
                           path.parent, exc)
            self._unwritable = path.parent
