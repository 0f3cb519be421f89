"""The federated task: no held-out sample (device val/test, generic test) is ever in any training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from acme_flwr.config import AcmeConfig
from acme_flwr.partition import list_partitioners
from acme_flwr.shift import mixing_shortfalls
from acme_flwr.task import FederatedData, federated_data, mixing_groups
from acme_flwr.topology import Topology, device_profile
from tests.test_data import write_fashion_mnist

PARTITIONERS = ["iid", "dirichlet", "pathological", "shard", "acme"]  # label skew: over 10 devices
QUANTITY = ["linear", "square", "exponential", "quantity_dirichlet"]  # size laws: over 4 devices (e^i, i^2 grow fast)


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
    assert sorted(PARTITIONERS + QUANTITY) == list_partitioners()


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


def test_federated_data_keeps_the_profile_that_sets_the_mixing_groups() -> None:
    """The per-process cache rebuilds the config from a key: the device classes must survive it, or feature=rotation
    assigns domains by the default three classes (a 4-device, one-class smoke run got 1-device groups)."""
    flat = {**ROTATED, "topology.num_devices": 4, "profile.classes": "mid", "profile.size_constraints": "0.6",
            "partition.rotation_groups": 2}
    fd = federated_data(AcmeConfig.from_flat(flat), 8, 1)
    assert [s.domain for s in fd.shifts] == [0, 0, 1, 1]


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


# ------------------------------------------------------------------------------------- heterogeneity kinds, sizes
ROTATED = {"data.name": "digits", "partition.kind": "iid", "partition.feature": "rotation",
           "partition.rotation_groups": 4, "topology.num_devices": 12, "topology.num_edges": 1}


def test_rotation_is_applied_alike_to_a_devices_three_splits_and_never_to_the_cloud() -> None:
    fd, plain = build(**ROTATED), build(**{**ROTATED, "partition.feature": "none"})
    assert {s.rotation for s in fd.shifts} == {0.0, 90.0, 180.0, 270.0}
    for pid, (shift, s) in enumerate(zip(fd.shifts, fd.splits, strict=True)):
        dev = fd.device(pid)
        for split in ("train", "val", "test"):
            upright = fd.tensors(getattr(s, split)).x
            assert torch.equal(getattr(dev, split).x, torch.rot90(upright, int(shift.rotation // 90), dims=(2, 3)))
            assert torch.equal(getattr(dev, split).x, getattr(plain.device(pid), split).x) == (shift.rotation == 0)
            assert torch.equal(getattr(dev, split).y, getattr(plain.device(pid), split).y)
    for a, b in zip(fd.cloud(), plain.cloud(), strict=True):  # the cloud's data stays upright
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.equal(fd.generic_test.x, plain.generic_test.x)
    for a, b in zip(fd.splits, plain.splits, strict=True):  # a feature shift moves no sample between splits
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("train", "val", "test"))
    assert [r["shift"] for r in fd.report()][:3] == ["-", "rot 90", "rot 180"]


def test_default_domains_give_every_mixing_group_two_devices_of_two_domains() -> None:
    """mixing_groups follows the topology (edge) and the profile (class pid % n), as the strategies group devices."""
    for edges, devices in ((1, 12), (2, 24)):
        fd = build(**{**ROTATED, "topology.num_edges": edges, "topology.num_devices": devices})
        topo, classes = Topology(devices, edges), fd.cfg.device_classes
        names = [c for c, _ in classes]
        assert mixing_groups(fd.cfg) == [(topo.edge_of(p), names.index(device_profile(p, classes).device_class))
                                         for p in range(devices)]
        assert mixing_shortfalls([s.domain for s in fd.shifts], mixing_groups(fd.cfg)) == []


def test_noise_grows_with_the_device_index_and_is_the_same_in_every_build() -> None:
    flat = {"data.name": "digits", "partition.kind": "iid", "partition.feature": "noise", "partition.noise_sigma": 0.4,
            "topology.num_devices": 4}
    fd, again, plain = build(**flat), build(**flat), build(**{**flat, "partition.feature": "none"})
    for pid in range(4):
        added = fd.device(pid).train.x - plain.device(pid).train.x
        assert float(added.std()) == pytest.approx(0.4 * pid / 4, abs=0.01)
        assert torch.equal(fd.device(pid).test.x, again.device(pid).test.x)
    assert torch.equal(fd.cloud()[0].x, plain.cloud()[0].x)


def test_mixed_rotation_over_dirichlet_keeps_the_label_skew() -> None:
    mixed = build(**{**ROTATED, "partition.kind": "dirichlet", "partition.alpha": 0.1})
    labels = build(**{**ROTATED, "partition.kind": "dirichlet", "partition.alpha": 0.1, "partition.feature": "none"})
    assert all(np.array_equal(a, b) for a, b in zip(mixed.partitions, labels.partitions, strict=True))
    assert len({s.rotation for s in mixed.shifts}) == 4
    assert_leak_free(mixed)


@pytest.mark.parametrize("kind", PARTITIONERS + QUANTITY)
@pytest.mark.parametrize("cap", [0, 30])
def test_images_per_device_compose_with_every_kind(kind: str, cap: int) -> None:
    devices = 4 if kind in QUANTITY else 10
    fd = build(**{"data.name": "digits", "partition.kind": kind, "partition.max_samples": cap,
                  "topology.num_devices": devices, "partition.min_size": 5})
    assert_leak_free(fd)
    sizes = [len(part) for part in fd.partitions]
    if cap and kind in QUANTITY:  # the law over a pool of cap images per device on average
        assert sum(sizes) == cap * devices
    elif cap:
        assert max(sizes) <= cap
    if kind in ("linear", "square", "exponential"):
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_official_test_sets_are_sized_independently_of_the_training_data(fmnist_root: Path) -> None:
    sizes = {}
    for cap in (20, 0):
        fd = build(**{"data.name": "fashion_mnist", "data.root": str(fmnist_root), "partition.kind": "iid",
                      "partition.test_samples": 100, "partition.max_samples": cap})
        assert_leak_free(fd)
        sizes[cap] = [len(s.test) for s in fd.splits]
        labels, official = fd.data.labels, fd.data.official_test
        for s in fd.splits:
            assert official[s.test].all() and len(set(s.test.tolist())) == len(s.test)
            share = np.bincount(labels[s.train], minlength=10) / len(s.train)
            assert np.abs(np.bincount(labels[s.test], minlength=10) - share * 100).max() <= 1.0
    assert sizes[20] == sizes[0] == [100] * 10


def test_partition_test_sets_come_from_the_partition_and_a_shortfall_is_named(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="acme_flwr.task"):
        fd = build(**{"data.name": "digits", "partition.kind": "iid", "partition.test_samples": 40,
                      "partition.max_samples": 30, "topology.num_devices": 10})
    assert_leak_free(fd)
    assert [len(s.test) for s in fd.splits] == [40] * 10  # ~114 per device: 40 held out, the cap on the rest
    assert all(len(s.train) + len(s.val) == 30 for s in fd.splits)
    assert caplog.text == ""
    with caplog.at_level("WARNING", logger="acme_flwr.task"):
        short = build(**{"data.name": "digits", "partition.kind": "iid", "partition.test_samples": 100,
                         "topology.num_devices": 10})
    assert_leak_free(short)
    for s, rest in zip(short.splits, short.partitions, strict=True):  # half of each partition, the rest trains
        assert len(s.test) == (len(s.test) + len(rest)) // 2 and 40 < len(s.test) < 100
    assert "partition.test_samples=100: devices [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] got fewer" in caplog.text
    assert "no official test split" in caplog.text


def test_rotated_test_images_follow_the_device_on_the_official_split(fmnist_root: Path) -> None:
    fd = build(**{"data.name": "fashion_mnist", "data.root": str(fmnist_root), **{k: v for k, v in ROTATED.items()
                                                                                  if k != "data.name"},
                  "partition.test_samples": 30})
    for pid, shift in enumerate(fd.shifts):
        k = int(shift.rotation // 90)
        assert torch.equal(fd.device(pid).test.x, torch.rot90(fd.tensors(fd.splits[pid].test).x, k, dims=(2, 3)))


def _preset(name: str) -> AcmeConfig:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return AcmeConfig.from_dict(OmegaConf.to_container(compose("config", overrides=[f"+experiment={name}"])))


def test_the_rotated_presets_shift_domains_within_every_mixing_group_and_share_the_cloud_stage() -> None:
    smoke = _preset("smoke_rotated")
    fd = FederatedData(smoke, image_size=8, num_channels=1)
    assert [s.domain for s in fd.shifts] == [0, 0, 1, 1] and [len(s.test) for s in fd.splits] == [20] * 4
    assert_leak_free(fd)
    rotated, plain = _preset("fmnist_rotated"), _preset("fmnist")
    assert (rotated.data, rotated.cloud, rotated.model) == (plain.data, plain.cloud, plain.model)  # one cached stage
    groups = mixing_groups(rotated)
    assert {groups.count(g) for g in set(groups)} == {4}
    assert rotated.partition.feature == "rotation" and rotated.partition.test_samples == 100


def test_a_partition_is_built_once_and_read_back_by_other_processes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp builds the partition; Ray workers read it back instead of importing flwr-datasets."""
    import acme_flwr.task as task

    flat = {"data.name": "digits", "partition.kind": "dirichlet", "cloud.cache_dir": str(tmp_path)}
    first = build(**flat)
    stored = list((tmp_path / "partitions").glob("*.npz"))
    assert len(stored) == 1

    def no_partition(*_: object, **__: object) -> None:
        raise AssertionError("the stored partition should have been read")

    monkeypatch.setattr(task, "partition", no_partition)
    again = build(**flat)
    assert all(np.array_equal(a, b) for a, b in zip(first.partitions, again.partitions, strict=True))
    with pytest.raises(AssertionError, match="should have been read"):  # another alpha: another key
        build(**{**flat, "partition.alpha": 0.1})
