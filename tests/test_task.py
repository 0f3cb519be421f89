"""The federated task: no held-out sample (device val/test, generic test) is ever in any training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acme_flwr.config import AcmeConfig
from acme_flwr.partition import list_partitioners
from acme_flwr.task import FederatedData, federated_data
from tests.test_data import write_fashion_mnist

PARTITIONERS = ["iid", "dirichlet", "pathological", "acme"]


def build(**flat: object) -> FederatedData:
    base: dict[str, object] = {"topology.num_devices": 10, "partition.category": "C2",
                               "partition.per_class_fraction": 0.3}
    cfg = AcmeConfig.from_flat({**base, **flat})
    return FederatedData(cfg, image_size=8, num_channels=1)


def assert_leak_free(fd: FederatedData) -> None:
    """No device val/test or generic index in any device's or the cloud's training data; generic apart from all."""
    cloud_train = set(fd.cloud_indices.tolist())  # the cloud's train and val are both cut from these
    trained = cloud_train.union(*(set(s.train.tolist()) for s in fd.splits))
    generic = set(fd.generic_indices.tolist())
    for s in fd.splits:
        held = set(s.val.tolist()) | set(s.test.tolist())
        assert len(s.train) and len(s.val) and len(s.test)
        assert not held & trained
        assert not generic & (held | set(s.train.tolist()))
    assert not generic & trained


def test_every_partitioner_is_registered_here() -> None:
    assert sorted(PARTITIONERS) == list_partitioners()


@pytest.mark.parametrize("kind", PARTITIONERS)
@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_no_device_val_or_test_sample_is_trained_on(kind: str, name: str) -> None:
    fd = build(**{"data.name": name, "partition.kind": kind})
    assert fd.test_source == "partition"
    assert_leak_free(fd)
    for part, s in zip(fd.partitions, fd.splits, strict=True):  # cut from the device's own partition
        assert set(s.val.tolist()) | set(s.test.tolist()) <= set(part.tolist())


def test_acme_c2_on_digits_no_longer_leaks_device_test_samples() -> None:
    """Issue 10: with independent draws 133 of 220 device test samples were in other devices' training sets."""
    fd = build(**{"data.name": "digits", "partition.kind": "acme"})
    for k, s in enumerate(fd.splits):
        others = set().union(*(set(o.train.tolist()) for j, o in enumerate(fd.splits) if j != k))
        assert not set(s.test.tolist()) & others


def test_generic_test_is_class_balanced_and_a_tensor_split() -> None:
    fd = build(**{"data.name": "digits", "partition.kind": "dirichlet", "data.generic_test_fraction": 0.1})
    counts = np.bincount(fd.data.labels[fd.generic_indices], minlength=10)
    assert counts.tolist() == [17] * 10  # 10% of the rarest digit class (174 samples)
    g = fd.generic_test
    assert tuple(g.x.shape) == (170, 1, 8, 8) and len(g) == 170
    assert g.y.tolist() == fd.data.labels[fd.generic_indices].tolist()


def test_official_test_source_on_a_data_set_without_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="no official test split"):
        build(**{"data.name": "digits", "partition.test_source": "official"})


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=1500, n_test=500)
    return root


@pytest.mark.parametrize("kind", PARTITIONERS)
def test_official_split_gives_device_tests_that_follow_the_train_labels(kind: str, fmnist_root: Path) -> None:
    fd = build(**{"data.name": "fashion_mnist", "data.root": str(fmnist_root), "partition.kind": kind})
    assert fd.test_source == "official"
    assert_leak_free(fd)
    official = set(np.flatnonzero(fd.data.official_test).tolist())
    assert set(fd.generic_indices.tolist()) <= official  # generic comes from the official test split too
    labels = fd.data.labels
    for part, s in zip(fd.partitions, fd.splits, strict=True):
        assert set(s.test.tolist()) <= official and not set(part.tolist()) & official
        assert len(s.test) == round(0.2 * len(part)) and len(s.test) == len(set(s.test.tolist()))
        train_share = np.bincount(labels[s.train], minlength=10) / len(s.train)
        test_counts = np.bincount(labels[s.test], minlength=10)
        assert set(np.flatnonzero(test_counts)) <= set(np.flatnonzero(train_share))
        assert np.abs(test_counts - train_share * len(s.test)).max() <= 1.0  # largest-remainder rounding


def test_partition_test_source_ignores_the_official_split_for_devices(fmnist_root: Path) -> None:
    fd = build(**{"data.name": "fashion_mnist", "data.root": str(fmnist_root), "partition.kind": "acme",
                  "partition.test_source": "partition"})
    assert_leak_free(fd)
    official = fd.data.official_test
    assert not any(official[s.test].any() or official[s.val].any() for s in fd.splits)


def test_a_fixed_cloud_seed_keeps_the_cloud_side_while_run_seed_varies_the_devices() -> None:
    """``cloud.seed``: three run seeds share one cloud share and generic set (one cached cloud stage), while the
    device partitions differ, and every split stays leak-free."""
    runs = [build(**{"data.name": "digits", "run.seed": seed, "cloud.seed": 0}) for seed in (0, 1, 2)]
    for fd in runs:
        assert_leak_free(fd)
        np.testing.assert_array_equal(fd.cloud_indices, runs[0].cloud_indices)
        np.testing.assert_array_equal(fd.generic_indices, runs[0].generic_indices)
    assert not np.array_equal(runs[0].splits[0].train, runs[1].splits[0].train)
    default = build(**{"data.name": "digits", "run.seed": 1})  # -1: the cloud follows run.seed, as before the key
    assert not np.array_equal(default.cloud_indices, runs[0].cloud_indices)
    np.testing.assert_array_equal(default.cloud_indices, build(**{"data.name": "digits", "run.seed": 1,
                                                                  "cloud.seed": 1}).cloud_indices)


def test_federated_data_keeps_cloud_seed() -> None:
    """The ServerApp and the ClientApp get their data through ``federated_data``'s per-process cache, which rebuilds
    the config from a key: cloud.seed must survive it (it was dropped, and every run.seed got its own cloud data)."""
    cfgs = [AcmeConfig.from_flat({"data.name": "digits", "run.seed": seed, "cloud.seed": 0}) for seed in (0, 1)]
    a, b = (federated_data(c, 8, 1) for c in cfgs)
    assert a.cfg.cloud_seed == b.cfg.cloud_seed == 0
    np.testing.assert_array_equal(a.cloud_indices, b.cloud_indices)
    np.testing.assert_array_equal(a.generic_indices, b.generic_indices)
    np.testing.assert_array_equal(a.cloud_indices, build(**{"data.name": "digits", "cloud.seed": 0}).cloud_indices)


@pytest.mark.parametrize("kind", ["dirichlet", "acme"])
def test_max_samples_caps_each_device_and_stays_leak_free(kind: str) -> None:
    full = build(**{"data.name": "digits", "partition.kind": kind})
    capped = build(**{"data.name": "digits", "partition.kind": kind, "partition.max_samples": 40})
    assert_leak_free(capped)
    for big, small in zip(full.partitions, capped.partitions, strict=True):
        assert len(small) == min(40, len(big))
        assert set(small.tolist()) <= set(big.tolist())  # a subsample of the same device's partition
    for s in capped.splits:
        assert len(s.train) + len(s.val) + len(s.test) <= 40
    np.testing.assert_array_equal(capped.cloud_indices, full.cloud_indices)  # the cloud's side is untouched


def test_device_tensors_are_built_once_per_worker() -> None:
    fd = build(**{"data.name": "digits"})
    first = fd.device(3)
    assert fd.device(3) is first  # every message of a device reuses its normalised (resized) tensors
    assert fd.device(4) is not first and fd.device(4).partition_id == 4
