"""Data sources and the federated task: embedded digits, synthetic, local layouts, IDX/Fashion-MNIST, disjoint data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from acme_flwr.config import AcmeConfig
from acme_flwr.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    DataFileError,
    DataNotFoundError,
    IdxFormatError,
    check_data_files,
    list_datasets,
    load_dataset,
    read_idx,
    to_tensor,
)
from acme_flwr.task import FederatedData


def test_registered_sources() -> None:
    assert list_datasets() == ["cifar100", "digits", "fashion_mnist", "imagefolder", "synthetic"]


def test_digits_ship_with_the_package() -> None:
    d = load_dataset("digits")
    assert d.images.shape == (1797, 8, 8, 1) and d.images.dtype == np.uint8 and d.num_classes == 10
    assert d.images.max() == 255 and sorted(np.unique(d.labels)) == list(range(10))
    assert d.sample_bytes == 8 * 8 + 1


def test_synthetic_is_class_conditional_and_seeded() -> None:
    a, b = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    means = [a.images[a.labels == c].mean(axis=0) for c in range(2)]
    assert np.abs(means[0] - means[1]).mean() > 20  # classes differ in their template


def test_missing_cifar_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="cifar-100-python/"):
        load_dataset("cifar100", root=str(tmp_path))


def test_imagefolder_loads_a_class_tree_and_explains_an_empty_one(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="one sub-directory per class"):
        load_dataset("imagefolder", root=str(tmp_path))
    for c, colour in (("cat", 30), ("dog", 220)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), (colour, colour, colour)).save(tmp_path / c / f"{i}.png")
    d = load_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert d.images.shape == (6, 8, 8, 3) and d.num_classes == 2 and d.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_to_tensor_resizes_maps_channels_and_normalises() -> None:
    x = to_tensor(np.full((2, 4, 4, 1), 255, np.uint8), image_size=8, num_channels=3, mean=(0.5,), std=(0.5,))
    assert tuple(x.shape) == (2, 3, 8, 8) and float(x.min()) == pytest.approx(1.0)


def test_federated_data_keeps_cloud_and_devices_disjoint() -> None:
    cfg = AcmeConfig.from_flat({"topology.num_devices": 5, "partition.alpha": 0.3})
    fd = FederatedData(cfg, image_size=8, num_channels=1)
    cloud = set(fd.cloud_indices.tolist())
    seen: set[int] = set()
    for split in fd.splits:
        parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
        assert all(p and not (p & cloud) for p in parts)
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert not (seen & set().union(*parts))  # dirichlet: devices do not share samples
        seen |= set().union(*parts)
    assert len(cloud) == pytest.approx(0.3 * (1797 - len(fd.generic_indices)), abs=10)
    dev = fd.device(2)
    assert dev.train.x.shape[1:] == (1, 8, 8) and dev.raw_train_bytes == len(dev.train) * 65
    with pytest.raises(ValueError, match="num-supernodes"):
        fd.device(5)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20, compress: bool = True,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny Fashion-MNIST look-alike (class-conditional 28×28 images) in ``folder``; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_train + n_test) % 10).astype(np.uint8)
    images = np.clip(labels[:, None, None] * 25 + rng.integers(0, 20, (len(labels), 28, 28)), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    for split, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images[sl], compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels[sl], compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_reads_gzip_and_plain(tmp_path: Path, compress: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), images, compress)
    assert np.array_equal(read_idx(path, ndim=3), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "y", labels, False), ndim=1), labels)


def test_read_idx_rejects_bad_magic_rank_and_size(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good", np.zeros((2, 3, 3), np.uint8), False).read_bytes()
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x03" + good[4:])
    with pytest.raises(IdxFormatError, match="not a uint8 IDX file"):
        read_idx(tmp_path / "magic")
    with pytest.raises(IdxFormatError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "good", ndim=1)
    (tmp_path / "short").write_bytes(good[:-5])
    with pytest.raises(IdxFormatError, match=r"says \(2, 3, 3\).*has 29 bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_reads_four_idx_files_and_marks_the_test_split(tmp_path: Path) -> None:
    images, labels = write_fashion_mnist(tmp_path, n_train=40, n_test=20)
    d = load_dataset("fashion_mnist", root=str(tmp_path))
    assert d.images.shape == (60, 28, 28, 1) and d.num_classes == 10 and d.sample_bytes == 28 * 28 + 1
    assert np.array_equal(d.images[..., 0], images) and np.array_equal(d.labels, labels)
    assert d.has_official_test and d.official_test.tolist() == [False] * 40 + [True] * 20


def test_fashion_mnist_reads_torchvisions_uncompressed_raw_layout(tmp_path: Path) -> None:
    images, _ = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert np.array_equal(load_dataset("fashion_mnist", root=str(tmp_path)).images[..., 0], images)


def test_fashion_mnist_missing_or_bad_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(tmp_path) in message
    assert FASHION_MNIST_DIR in message and all(name in message for name in FASHION_MNIST_FILES)
    write_fashion_mnist(tmp_path, n_train=40, n_test=20)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8), True)
    with pytest.raises(IdxFormatError, match="t10k has 20 images but 7 labels"):
        load_dataset("fashion_mnist", root=str(tmp_path))


@pytest.mark.skipif(not all((Path(FASHION_MNIST_DIR) / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES),
                    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_when_installed() -> None:
    d = load_dataset("fashion_mnist")
    assert d.images.shape == (70000, 28, 28, 1) and int(d.official_test.sum()) == 10000
    assert np.bincount(d.labels[~d.official_test]).tolist() == [6000] * 10
    assert np.bincount(d.labels[d.official_test]).tolist() == [1000] * 10


# ------------------------------------------------------------------------- corrupt files: one line before any run
def _cfg(**flat: object) -> AcmeConfig:
    return AcmeConfig.from_flat(flat)


def _one_line(err: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


@pytest.mark.parametrize("damage", ["truncate", "garble", "short_idx"])
def test_a_corrupt_fashion_mnist_file_is_one_line_naming_it_and_the_fix(tmp_path: Path, damage: str) -> None:
    write_fashion_mnist(tmp_path, n_train=40, n_test=20)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = target.read_bytes()
    if damage == "truncate":  # the case: a 40-line EOFError traceback before
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "garble":
        target.write_bytes(raw[:10] + bytes(b ^ 0xFF for b in raw[10:40]) + raw[40:])
    else:  # a whole gzip stream of a cut IDX file
        target.write_bytes(gzip.compress(gzip.decompress(raw)[:-100]))
    cfg = _cfg(**{"data.name": "fashion_mnist", "data.root": str(tmp_path)})
    with pytest.raises(DataFileError) as err:
        check_data_files(cfg)
    _one_line(err, str(target), "replace it with an intact copy", "dataset-fashion-mnist")
    with pytest.raises(DataFileError):  # the run's own load says the same, not a traceback of gzip internals
        load_dataset("fashion_mnist", root=str(tmp_path))


def test_check_data_files_passes_intact_files_and_reports_missing_ones_in_one_line(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "ok", n_train=40, n_test=20)
    check_data_files(_cfg(**{"data.name": "fashion_mnist", "data.root": str(tmp_path / "ok")}))
    check_data_files(_cfg(**{"data.name": "digits"}))  # shipped with a package: nothing to read
    with pytest.raises(DataNotFoundError) as err:
        check_data_files(_cfg(**{"data.name": "fashion_mnist", "data.root": str(tmp_path / "none")}))
    _one_line(err, "apt-get install dataset-fashion-mnist")


def test_a_truncated_image_of_an_image_folder_is_named(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / c / f"{i}.png")
    check_data_files(_cfg(**{"data.name": "imagefolder", "data.root": str(tmp_path)}))
    bad = tmp_path / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataFileError) as err:
        check_data_files(_cfg(**{"data.name": "imagefolder", "data.root": str(tmp_path)}))
    _one_line(err, str(bad), "corrupt or truncated image")


def test_a_corrupt_cifar100_file_is_named(tmp_path: Path) -> None:
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps({"data": list(range(100))}))
    check_data_files(_cfg(**{"data.name": "cifar100", "data.root": str(tmp_path)}))
    (folder / "test").write_bytes((folder / "test").read_bytes()[:20])
    with pytest.raises(DataFileError) as err:
        check_data_files(_cfg(**{"data.name": "cifar100", "data.root": str(tmp_path)}))
    _one_line(err, str(folder / "test"), "re-extract")


def _save_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 4}')
    save_file({"w": torch.zeros(8, 8), "b": torch.ones(8)}, str(folder / "model.safetensors"))
    torch.save({"w": torch.zeros(64, 64)}, folder / "pytorch_model.bin")


@pytest.mark.parametrize(("name", "damage", "needle"), [
    ("model.safetensors", lambda raw: raw[:-10], "truncated or padded"),
    ("model.safetensors", lambda raw: b"\xff" * 8 + raw[8:], "not a valid safetensors file"),
    ("pytorch_model.bin", lambda raw: raw[:200] + bytes(b ^ 0x55 for b in raw[200:-200]) + raw[-200:], "pytorch_model"),
    ("config.json", lambda raw: raw[:5], "not valid JSON"),
])
def test_a_corrupt_weights_file_is_named(tmp_path: Path, name: str, damage: object, needle: str) -> None:
    folder = tmp_path / "vit"
    _save_weights(folder)
    cfg = _cfg(**{"model.pretrained_path": str(folder)})
    check_data_files(cfg)
    (folder / name).write_bytes(damage((folder / name).read_bytes()))  # type: ignore[operator]
    with pytest.raises(DataFileError) as err:
        check_data_files(cfg)
    _one_line(err, str(folder / name), needle, "save_pretrained")


def test_the_launchers_preflight_stops_on_a_truncated_file_with_one_line(tmp_path: Path) -> None:
    """The issue's case end to end: a truncated train-images-idx3-ubyte.gz under data.root stops the launcher's
    preflight (before any process starts) with one ConfigError line naming the file, not a gzip traceback."""
    from acme_flwr.errors import ConfigError
    from experiments.launch import preflight

    write_fashion_mnist(tmp_path, n_train=40, n_test=20)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-30])
    with pytest.raises(ConfigError) as err:
        preflight(_cfg(**{"data.name": "fashion_mnist", "data.root": str(tmp_path)}))
    _one_line(err, str(target), "truncated or corrupt gzip file", "intact copy")
