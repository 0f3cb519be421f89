"""The app's own data: small class-conditional 8x8 grey images, split by partition-id with label skew.

Nothing here comes from acme_flwr: this is the data a user already has. ACME needs it as normalised float tensors
(N, C, H, W) at the backbone's input shape and integer labels.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_CLASSES = 4
SIZE = 8


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """uint8 images: one bright quadrant per class (the pattern), plus noise."""
    out = rng.integers(0, 60, size=(len(labels), SIZE, SIZE)).astype(np.int64)
    half = SIZE // 2
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        out[i, r * half:(r + 1) * half, q * half:(q + 1) * half] += 150
    return np.clip(out, 0, 255).astype(np.uint8)


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W), (x / 255 - 0.5) / 0.25 (the app's own normalisation)."""
    return ((torch.from_numpy(images).float() / 255.0 - 0.5) / 0.25).unsqueeze(1)


def load_split(seed: int, n: int, probs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=n, p=probs)
    return normalise(_images(rng, labels)), torch.from_numpy(labels).long()


def device_splits(partition_id: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """This device's train/val/test: half its samples from one favourite class (label skew)."""
    probs = np.full(NUM_CLASSES, 0.5 / NUM_CLASSES)
    probs[partition_id % NUM_CLASSES] += 0.5
    return {name: load_split(1000 * (partition_id + 1) + i, n, probs)
            for i, (name, n) in enumerate((("train", 48), ("val", 16), ("test", 16)))}


def cloud_splits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The server's own labelled data (never any device's): balanced train and validation sets."""
    probs = np.full(NUM_CLASSES, 1.0 / NUM_CLASSES)
    return load_split(1, 160, probs), load_split(2, 64, probs)
