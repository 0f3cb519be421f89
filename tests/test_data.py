"""Data sources and the federated task: embedded digits, synthetic, local layouts, disjoint cloud/device data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from acme_flwr.config import AcmeConfig
from acme_flwr.data import DataNotFoundError, list_datasets, load_dataset, to_tensor
from acme_flwr.task import FederatedData


def test_registered_sources() -> None:
    assert list_datasets() == ["cifar100", "digits", "imagefolder", "synthetic"]


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
    assert len(cloud) == pytest.approx(0.3 * 1797, abs=10)
    dev = fd.device(2)
    assert dev.train.x.shape[1:] == (1, 8, 8) and dev.raw_train_bytes == len(dev.train) * 65
    with pytest.raises(ValueError, match="num-supernodes"):
        fd.device(5)
