"""Model and data of the quickstart-style app: a tiny MLP on synthetic class-conditional points."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 4
DIM = 8


class Net(nn.Module):
    """A two-layer perceptron (the app's own model)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(DIM, 16)
        self.fc2 = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split of this partition: class centres shared by all, label skew per partition."""
    centres = np.random.default_rng(0).normal(0, 2, (NUM_CLASSES, DIM))
    rng = np.random.default_rng(100 + partition_id)
    probs = np.full(NUM_CLASSES, 0.5 / NUM_CLASSES)
    probs[partition_id % NUM_CLASSES] += 0.5
    n = 40 + 10 * partition_id  # different sizes: the example weighting matters
    y = rng.choice(NUM_CLASSES, size=n, p=probs)
    x = centres[y] + rng.normal(0, 1, (n, DIM))
    cut = int(0.75 * n)
    tx, ty = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return tx[:cut], ty[:cut], tx[cut:], ty[cut:]


def train(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """Full-batch SGD (deterministic); returns the last loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def test(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy."""
    with torch.no_grad():
        out = net(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
