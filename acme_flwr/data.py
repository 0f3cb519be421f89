"""Image data sources: the embedded default, synthetic test data and local real data sets.

Every source returns :class:`ImageData`: uint8 images ``(N, H, W, C)`` and int64 labels. Images stay uint8 at their
native size (CIFAR-100 is 150 MB that way; at 224×224 it would be 7.5 GB) and are resized and normalised per batch by
:func:`to_tensor`. Nothing is ever downloaded: a missing local data set raises :class:`DataNotFoundError` saying what
to put where.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from acme_flwr.registry import Registry

logger = logging.getLogger(__name__)

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")


class DataNotFoundError(FileNotFoundError):
    """A local data set is missing; the message names the expected layout."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image set held in memory as uint8 NHWC."""

    name: str
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    num_classes: int
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_bytes(self) -> int:
        """Raw bytes of one sample as a device would upload it: uint8 pixels plus a label (1 byte if < 256 classes)."""
        h, w, c = self.images.shape[1:]
        return h * w * c + (1 if self.num_classes <= 256 else 2)


def to_tensor(images: np.ndarray, image_size: int, num_channels: int, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NHWC → normalised float NCHW at ``image_size`` (bilinear resize when needed)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] != num_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, num_channels, -1, -1)
        elif num_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot map {x.shape[1]}-channel images to a {num_channels}-channel model")
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    m = torch.tensor(_per_channel(mean, num_channels)).view(1, -1, 1, 1)
    s = torch.tensor(_per_channel(std, num_channels)).view(1, -1, 1, 1)
    return (x - m) / s


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)[:channels]


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, root: str = "", seed: int = 0, **kwargs: int) -> ImageData:
    """Load a registered data set by name (``digits``, ``synthetic``, ``cifar100``, ``imagefolder``)."""
    return DATASETS.get(name)(root=root, seed=seed, **kwargs)


@DATASETS.register("digits")
def load_digits(root: str = "", seed: int = 0, **_: int) -> ImageData:
    """scikit-learn's handwritten digits (1 797 real 8×8 images, 10 classes), shipped inside the package."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[..., None]  # 0..16 → 0..255
    return ImageData("digits", images, bunch.target.astype(np.int64), 10)


@DATASETS.register("synthetic")
def load_synthetic(root: str = "", seed: int = 0, synthetic_classes: int = 10, synthetic_samples: int = 600,
                   image_size: int = 8, **_: int) -> ImageData:
    """Class-conditional synthetic images: a fixed random template per class plus noise (for unit tests)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(synthetic_classes, image_size, image_size, 1))
    labels = np.arange(synthetic_samples) % synthetic_classes
    rng.shuffle(labels)
    noise = rng.normal(0, 40, size=(synthetic_samples, image_size, image_size, 1))
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return ImageData("synthetic", images, labels.astype(np.int64), synthetic_classes)


@DATASETS.register("cifar100")
def load_cifar100(root: str = "", seed: int = 0, **_: int) -> ImageData:
    """CIFAR-100 training split from a local torchvision copy (``download=False``)."""
    from torchvision.datasets import CIFAR100

    if not root or not (Path(root) / "cifar-100-python").is_dir():
        raise DataNotFoundError(
            f"CIFAR-100 not found under data.root={root!r}. Put the extracted 'cifar-100-python/' folder "
            "(from cifar-100-python.tar.gz: train, test, meta) in that directory and set data.root to it."
        )
    ds = CIFAR100(root=root, train=True, download=False)
    return ImageData("cifar100", np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64), 100)


@DATASETS.register("imagefolder")
def load_imagefolder(root: str = "", seed: int = 0, image_size: int = 224, **_: int) -> ImageData:
    """Any ``root/<class>/<image>`` tree (e.g. Stanford Cars), images resized to ``image_size`` on load."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    path = Path(root)
    if not root or not path.is_dir() or not any(p.is_dir() for p in path.iterdir()):
        raise DataNotFoundError(
            f"no ImageFolder at data.root={root!r}. Expected one sub-directory per class holding that class's "
            "images, e.g. root/classA/001.jpg, root/classB/002.png; set data.root to that directory."
        )
    ds = ImageFolder(root)
    images = np.stack([
        np.asarray(Image.open(p).convert("RGB").resize((image_size, image_size)), dtype=np.uint8) for p, _ in ds.samples
    ])
    labels = np.asarray([t for _, t in ds.samples], dtype=np.int64)
    logger.info("loaded %d images of %d classes from %s", len(labels), len(ds.classes), root)
    return ImageData("imagefolder", images, labels, len(ds.classes))
