"""ENAS micro controller for one normal cell (ACME §3.3).

An LSTM emits, per node, two input ids (attention over "anchors": the two layer inputs and earlier nodes) and two ops.
Sampling draws from an explicit ``torch.Generator`` so a seed fixes the arc sequence. Passing ``arc=`` scores a given
arc (teacher forcing) with the same computation, which lets rewards arrive after sampling (e.g. from devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from acme_flwr.device.cell import NUM_BRANCHES, validate_arc

__all__ = ["Controller", "ControllerSample"]


class ControllerSample(NamedTuple):
    """A sampled (or scored) arc: ``log_prob`` = Σ log p (differentiable), ``entropy`` = Σ entropy (detached),
    ``step_log_probs`` = the 4B per-decision log-probs in arc order."""

    arc: list[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor
    step_log_probs: torch.Tensor


class Controller(nn.Module):
    """LSTM controller: Embedding(7, H), LSTMCell(H, H), op softmax with learnable + fixed bias, additive attention."""

    def __init__(self, num_cells: int = 3, lstm_size: int = 100, temperature: float = 5.0,
                 tanh_constant: float = 1.10, op_tanh_reduce: float = 2.5, seed: int = 0) -> None:
        super().__init__()
        if num_cells < 1:
            raise ValueError(f"Controller num_cells must be >= 1, got {num_cells}")
        self.num_cells = num_cells
        self.lstm_size = lstm_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.op_tanh_reduce = op_tanh_reduce
        self.embed = nn.Embedding(NUM_BRANCHES + 1, lstm_size)  # row 0 = "go" input, row op+1 = op embedding
        self.lstm = nn.LSTMCell(lstm_size, lstm_size)
        self.w_soft = nn.Linear(lstm_size, NUM_BRANCHES, bias=False)
        self.w_attn_1 = nn.Linear(lstm_size, lstm_size, bias=False)
        self.w_attn_2 = nn.Linear(lstm_size, lstm_size, bias=False)
        self.v_attn = nn.Linear(lstm_size, 1, bias=False)
        init = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1, generator=init)
        self.b_soft = nn.Parameter(torch.tensor([10.0, 10.0] + [0.0] * (NUM_BRANCHES - 2)))
        self.register_buffer("b_soft_no_learn", torch.tensor([0.25, 0.25] + [-0.25] * (NUM_BRANCHES - 2)))
        self.generator = torch.Generator().manual_seed(seed + 1)

    def reseed(self, seed: int) -> None:
        """Reset the sampling generator."""
        self.generator.manual_seed(seed)

    def _op_logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = (self.w_soft(h) + self.b_soft) / self.temperature
        return (self.tanh_constant / self.op_tanh_reduce) * torch.tanh(logits) + self.b_soft_no_learn

    def _index_logits(self, h: torch.Tensor, anchors_w1: list[torch.Tensor]) -> torch.Tensor:
        query = torch.tanh(torch.cat(anchors_w1, dim=0) + self.w_attn_2(h))
        logits = self.v_attn(query).view(1, -1) / self.temperature
        return self.tanh_constant * torch.tanh(logits)

    def forward(self, arc: Sequence[int] | None = None, *, generator: torch.Generator | None = None,
                greedy: bool = False) -> ControllerSample:
        """Sample an arc (multinomial from ``generator`` or the controller's own; argmax if ``greedy``), or score the
        given ``arc`` (teacher forcing)."""
        forced = validate_arc(arc, self.num_cells) if arc is not None else None
        gen = generator if generator is not None else self.generator
        out = [0] * (4 * self.num_cells)
        log_probs: dict[int, torch.Tensor] = {}
        entropies: list[torch.Tensor] = []

        def choose(logits: torch.Tensor, pos: int) -> int:
            log_p = F.log_softmax(logits, dim=-1).squeeze(0)
            if forced is not None:
                choice = forced[pos]
            elif greedy:
                choice = int(log_p.argmax())
            else:
                choice = int(torch.multinomial(log_p.detach().exp().cpu(), 1, generator=gen))
            out[pos] = choice
            log_probs[pos] = log_p[choice]
            entropies.append(-(log_p.exp() * log_p).sum().detach())
            return choice

        go = self.embed.weight[0:1]
        zeros = go.new_zeros(1, self.lstm_size)
        state = (zeros, zeros)
        inputs = go
        anchors: list[torch.Tensor] = []
        anchors_w1: list[torch.Tensor] = []
        for _ in range(2):  # the two layer inputs: anchor h replaced by zeros, W1·h kept
            state = self.lstm(inputs, state)
            anchors.append(torch.zeros_like(state[0]))
            anchors_w1.append(self.w_attn_1(state[0]))
        for node in range(self.num_cells):
            for branch in range(2):
                state = self.lstm(inputs, state)
                index = choose(self._index_logits(state[0], anchors_w1), 4 * node + 2 * branch)
                inputs = anchors[index]
            for branch in range(2):
                state = self.lstm(inputs, state)
                op = choose(self._op_logits(state[0]), 4 * node + 2 * branch + 1)
                inputs = self.embed.weight[op + 1:op + 2]
            state = self.lstm(inputs, state)
            anchors.append(state[0])
            anchors_w1.append(self.w_attn_1(state[0]))
            inputs = go
        step = torch.stack([log_probs[pos] for pos in range(len(out))])  # decisions were made ids-first per node
        return ControllerSample(out, step.sum(), torch.stack(entropies).sum(), step)

    def sample(self, arc: Sequence[int] | None = None, *, generator: torch.Generator | None = None,
               greedy: bool = False) -> ControllerSample:
        """Alias of calling the module."""
        return self(arc, generator=generator, greedy=greedy)
