"""Image data sources: the embedded default, synthetic test data and local real data sets.

Every source returns :class:`ImageData`: uint8 images ``(N, H, W, C)`` and int64 labels. Images stay uint8 at their
native size (CIFAR-100 is 150 MB that way; at 224×224 it would be 7.5 GB) and are resized and normalised per batch by
:func:`to_tensor`. Sources with an official test split (CIFAR-100, Fashion-MNIST) return train and test together and
mark the test samples in ``official_test``, so device test sets can be drawn from it (``partition.test_source``).
Nothing is ever downloaded: a missing local data set raises :class:`DataNotFoundError` saying what to put where.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from acme_flwr.errors import ConfigError
from acme_flwr.registry import Registry

if TYPE_CHECKING:
    from acme_flwr.config import AcmeConfig

logger = logging.getLogger(__name__)

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")


class DataNotFoundError(FileNotFoundError):
    """A local data set is missing; the message names the expected layout."""


class DataFileError(ConfigError):
    """A local data, image or weights file is corrupt or truncated; the message (one line) names the file and what
    to do about it. A ConfigError (bad input the run's config points at), so the launcher shows it as one line."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image set held in memory as uint8 NHWC."""

    name: str
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    num_classes: int
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    official_test: np.ndarray | None = None  # bool (N,): True for the official test split's samples; None: no split

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")
        if self.official_test is not None and (self.official_test.dtype != bool
                                               or self.official_test.shape != self.labels.shape):
            raise ValueError(f"{self.name}: official_test must be a bool mask with one entry per sample")

    @property
    def has_official_test(self) -> bool:
        """Whether the source has an official test split (marked in ``official_test``)."""
        return self.official_test is not None and bool(self.official_test.any())

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
    """Load a registered data set by name (``digits``, ``synthetic``, ``cifar100``, ``fashion_mnist``,
    ``imagefolder``)."""
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
    """CIFAR-100 from a local torchvision copy (``download=False``): 50 000 train then 10 000 official test images."""
    from torchvision.datasets import CIFAR100

    if not root or not (Path(root) / "cifar-100-python").is_dir():
        raise DataNotFoundError(
            f"CIFAR-100 not found under data.root={root!r}. Put the extracted 'cifar-100-python/' folder "
            "(from cifar-100-python.tar.gz: train, test, meta) in that directory and set data.root to it."
        )
    train, test = (CIFAR100(root=root, train=t, download=False) for t in (True, False))
    images = np.concatenate([np.asarray(train.data, dtype=np.uint8), np.asarray(test.data, dtype=np.uint8)])
    labels = np.asarray(list(train.targets) + list(test.targets), dtype=np.int64)
    official_test = np.arange(len(labels)) >= len(train.targets)
    return ImageData("cifar100", images, labels, 100, official_test=official_test)


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist package puts it
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")
_IDX_UBYTE = 0x08


class IdxFormatError(DataFileError):
    """A file is not a valid uint8 IDX file (wrong magic, dimensions or size)."""


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read a uint8 IDX file (``*.gz`` or plain) into an array shaped by its header; check magic, rank and size."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip stream
        raise IdxFormatError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] < 1:
        raise IdxFormatError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex() or 'missing'}, expected "
                             f"0000080N with N >= 1 dimensions)")
    rank = raw[3]
    if ndim is not None and rank != ndim:
        raise IdxFormatError(f"{path}: IDX file has {rank} dimensions, expected {ndim}")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise IdxFormatError(f"{path}: IDX header says {dims} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, name: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: str = "", seed: int = 0, **_: int) -> ImageData:
    """Fashion-MNIST (60 000 train then 10 000 official test 28×28 grey images, 10 classes) from four IDX files:
    ``data.root`` (default: Debian's ``dataset-fashion-mnist`` directory) or its ``FashionMNIST/raw/``."""
    folder = Path(root or FASHION_MNIST_DIR)
    found = {name: _find_idx(folder, name) for name in FASHION_MNIST_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST not found under data.root={str(folder)!r} (missing {', '.join(missing)}). Install it with "
            f"'apt-get install dataset-fashion-mnist' (puts it in {FASHION_MNIST_DIR}) or put the four IDX files "
            f"{', '.join(f + '.gz' for f in FASHION_MNIST_FILES)} (gzipped or not, or torchvision's FashionMNIST/raw/ "
            "folder) in a directory and set data.root to it."
        )
    try:
        arrays = {name: read_idx(path, ndim=3 if "images" in name else 1) for name, path in found.items() if path}
    except IdxFormatError as exc:
        raise IdxFormatError(f"{exc}; replace it with an intact copy (apt-get install --reinstall "
                             "dataset-fashion-mnist, or the file from the Fashion-MNIST release)") from None
    for split in ("train", "t10k"):
        n_img, n_lab = len(arrays[f"{split}-images-idx3-ubyte"]), len(arrays[f"{split}-labels-idx1-ubyte"])
        if n_img != n_lab:
            raise IdxFormatError(f"{folder}: {split} has {n_img} images but {n_lab} labels")
    images = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])[..., None]
    train_labels, test_labels = arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    labels = np.concatenate([train_labels, test_labels]).astype(np.int64)
    if labels.max() >= 10:
        raise IdxFormatError(f"{folder}: Fashion-MNIST labels must lie in [0, 10), found {int(labels.max())}")
    official_test = np.arange(len(labels)) >= len(train_labels)
    logger.info("loaded Fashion-MNIST from %s: %d train + %d test images", folder, len(train_labels), len(test_labels))
    return ImageData("fashion_mnist", np.ascontiguousarray(images), labels, 10, official_test=official_test)


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


# ------------------------------------------------------------------------------------------------- file checks
_FIX = "replace it with an intact copy"


def check_data_files(cfg: AcmeConfig) -> None:
    """Read every local data, image and weights file the run of ``cfg`` will read, before anything starts.

    Raises :class:`DataNotFoundError` (a data set is missing) or :class:`DataFileError` (a file is corrupt or
    truncated) whose message is one line naming the file and what to do; the launcher's preflight shows it."""
    checks: dict[str, Callable[[Path], None]] = {"fashion_mnist": lambda root: _check_loader(load_fashion_mnist, root),
                                                 "cifar100": _check_cifar100, "imagefolder": _check_image_files}
    if cfg.data.name in checks:
        checks[cfg.data.name](Path(cfg.data.root).expanduser() if cfg.data.root else Path(""))
    if cfg.model.pretrained_path:
        check_weight_files(Path(cfg.model.pretrained_path).expanduser())


def _check_loader(loader: Callable[..., ImageData], root: Path) -> None:
    try:
        loader(str(root) if str(root) not in ("", ".") else "")
    except DataNotFoundError as exc:
        raise DataNotFoundError(str(exc).splitlines()[0]) from None


def _check_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    if not folder.is_dir():
        _check_loader(load_cifar100, root)  # raises the layout message
    for name in ("train", "test", "meta"):
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"CIFAR-100 file {path} is missing; put the extracted cifar-100-python/ folder "
                                    "(train, test, meta) under data.root")
        try:
            with path.open("rb") as fh:
                pickle.load(fh, encoding="latin1")
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is damaged
            raise DataFileError(f"{path}: corrupt or truncated CIFAR-100 file ({type(exc).__name__}: {exc}); {_FIX} "
                                "(re-extract cifar-100-python.tar.gz)") from None


def _check_image_files(root: Path) -> None:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not root.is_dir():
        _check_loader(load_imagefolder, root)
    for path in sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMG_EXTENSIONS):
        try:
            with Image.open(path) as img:
                img.load()  # decodes the pixels: a truncated file fails here (verify() only reads the header)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DataFileError(f"{path}: corrupt or truncated image ({exc}); {_FIX} or remove it") from None


def check_weight_files(folder: Path) -> None:
    """The weight files of a ``save_pretrained`` directory are whole: config.json parses, a safetensors file is as
    long as its header says, a ``pytorch_model.bin`` zip passes its CRC check. Missing files are the launcher's
    business (it names the expected layout); this raises :class:`DataFileError` for a damaged one."""
    hint = "re-save the checkpoint with save_pretrained or copy it again"
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataFileError(f"{config}: not valid JSON ({exc}); {hint}") from None
    shards = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataFileError(f"{index}: not a safetensors index ({exc}); {hint}") from None
        for name in sorted(names):
            if not (folder / name).is_file():
                raise DataFileError(f"{index} names {name}, which is missing from {folder}; {hint}")
    for path in shards:
        _check_safetensors(path, hint)
    binary = folder / "pytorch_model.bin"
    if binary.is_file() and zipfile.is_zipfile(binary):
        try:
            with zipfile.ZipFile(binary) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"{binary}: corrupt or truncated ({exc}); {hint}") from None
        if bad is not None:
            raise DataFileError(f"{binary}: member {bad} fails its CRC check (corrupt); {hint}")
    elif binary.is_file() and binary.stat().st_size < 1024:
        raise DataFileError(f"{binary}: {binary.stat().st_size} bytes is no weights file (truncated?); {hint}")


def _check_safetensors(path: Path, hint: str) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path}: not a valid safetensors file ({exc}); {hint}") from None
    if 8 + n + end != size:
        raise DataFileError(f"{path}: truncated or padded ({size} bytes, its header says {8 + n + end}); {hint}")
