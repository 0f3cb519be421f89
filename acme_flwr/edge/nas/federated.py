"""Federated rewards for the edge search (issue 6, ``nas.reward=federated``): the transport-free building blocks.

The edge keeps the controller and the shared child; its devices keep their data. Per search epoch the edge sends the
child weights and a list of sampled arcs; each device trains the child on its own training split (one arc per step)
and replies its updated weights, which the edge averages weighted by examples (:meth:`FederatedReward.train_child`).
For rewards and arc selection the edge sends arcs; each device scores them on its own *validation* split and replies
(correct, total) counts, summed over devices (:meth:`FederatedReward.rewards`, ``validate``). No data leaves a device.

How messages travel is the caller's business: a ``Transport`` is ``transport(action, payload, state) -> replies``
with ``action`` in {"train", "evaluate"}, ``payload`` a JSON-able dict, ``state`` the child's state dict (or None)
and ``replies`` one dict per device: ``{"num_examples", "state"}`` for train, ``{"correct": [...], "total": [...]}``
for evaluate. The device side of both actions is :func:`device_train_child` / :func:`device_evaluate_arcs`.
The Flower side is ``strategies/nas_search.py`` (edge → devices via ``query.acme_nas``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from acme_flwr.edge.nas.child import ENASChild
from acme_flwr.edge.nas.search import ArcSampler, SearchConfig

__all__ = ["FederatedReward", "Transport", "average_states", "device_evaluate_arcs", "device_train_child"]

Transport = Callable[[str, dict[str, Any], "dict[str, torch.Tensor] | None"], list[dict[str, Any]]]


def device_train_child(child: ENASChild, arcs: Sequence[Sequence[int]], grids: torch.Tensor, y: torch.Tensor, *,
                       lr: float, batch_size: int, momentum: float = 0.9, weight_decay: float = 1e-4,
                       seed: int = 0) -> dict[str, float]:
    """Device side of "train": one SGD step per arc (cycling shuffled local batches); returns metrics."""
    if not arcs:
        raise ValueError("device_train_child needs at least one arc")
    child.to(grids.device)  # the step runs where the device's grids are
    y = y.to(grids.device)
    opt = torch.optim.SGD(child.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    child.train()
    order: list[torch.Tensor] = []
    loss_sum, correct, seen = 0.0, 0, 0
    for arc in arcs:
        if not order:
            order = list(torch.randperm(len(y), generator=gen).split(batch_size))[::-1]
        idx = order.pop()
        logits = child(grids[idx], arc)
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y[idx]).sum())
        seen += len(idx)
    return {"loss": loss_sum / seen, "acc": correct / seen, "num_examples": float(seen)}


@torch.no_grad()
def device_evaluate_arcs(child: ENASChild, arcs: Sequence[Sequence[int]], grids: torch.Tensor, y: torch.Tensor,
                         batch_size: int = 256) -> tuple[list[int], list[int]]:
    """Device side of "evaluate": (correct, total) of each arc on the local validation grids."""
    child.to(grids.device).eval()
    y = y.to(grids.device)
    correct = []
    for arc in arcs:
        c = 0
        for i in range(0, len(y), batch_size):
            c += int((child(grids[i:i + batch_size], arc).argmax(1) == y[i:i + batch_size]).sum())
        correct.append(c)
    return correct, [len(y)] * len(arcs)


def average_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Example-weighted mean of floating-point entries; non-float buffers are taken from the first state."""
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise ValueError("average_states needs matching non-empty states and positive total weight")
    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].to(torch.float64) * (w / total) for s, w in zip(states, weights, strict=True))
            out[key] = out[key].to(first.dtype)
        else:
            out[key] = first.clone()
    return out


class FederatedReward:
    """A :class:`~acme_flwr.edge.nas.search.RewardSource` whose child training and rewards happen on devices.

    ``steps_per_round`` arcs are sampled per ``train_child`` call (each device takes that many local SGD steps).
    Rewards and selection both use the devices' validation splits (their test splits are never touched).
    """

    def __init__(self, child: ENASChild, transport: Transport, config: SearchConfig, steps_per_round: int = 4) -> None:
        if steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {steps_per_round}")
        self.child = child
        self.transport = transport
        self.config = config
        self.steps_per_round = steps_per_round
        self.calls = {"train": 0, "evaluate": 0}

    def train_child(self, arc_sampler: ArcSampler, lr: float) -> dict[str, float]:
        arcs = [arc_sampler() for _ in range(self.steps_per_round)]
        payload = {"arcs": arcs, "lr": lr, "batch-size": self.config.batch_size,
                   "momentum": self.config.child_momentum, "weight-decay": self.config.child_weight_decay,
                   "seed": self.config.seed + self.calls["train"]}
        replies = self.transport("train", payload, self.child.state_dict())
        self.calls["train"] += 1
        if not replies:
            raise RuntimeError("federated NAS: no device replied to a child-training round")
        weights = [float(r["num_examples"]) for r in replies]
        self.child.load_state_dict(average_states([r["state"] for r in replies], weights))
        return {"devices": float(len(replies)), "num_examples": float(sum(weights)),
                "acc": sum(float(r.get("acc", 0.0)) * w for r, w in zip(replies, weights, strict=True)) / sum(weights)}

    def rewards(self, arcs: Sequence[Sequence[int]]) -> list[float]:
        """Pooled validation accuracy of each arc over the devices that replied."""
        arcs = [list(a) for a in arcs]
        replies = self.transport("evaluate", {"arcs": arcs}, self.child.state_dict())
        self.calls["evaluate"] += 1
        if not replies:
            raise RuntimeError("federated NAS: no device replied to an evaluation round")
        correct = [sum(int(r["correct"][i]) for r in replies) for i in range(len(arcs))]
        total = [sum(int(r["total"][i]) for r in replies) for i in range(len(arcs))]
        return [c / t if t else 0.0 for c, t in zip(correct, total, strict=True)]

    def reward(self, arc: Sequence[int]) -> float:
        return self.rewards([arc])[0]

    def validate(self, arc: Sequence[int]) -> float:
        return self.rewards([arc])[0]

    def validate_many(self, arcs: Sequence[Sequence[int]]) -> list[float]:
        """All selection candidates in one round."""
        return self.rewards(arcs)
