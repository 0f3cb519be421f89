"""The federated task a run's config describes: the cloud's data, each device's train/val/test tensors.

Server and clients build the same :class:`FederatedData` deterministically from the config and the seed, so a device
only ever materialises its own partition. The cloud keeps a stratified ``data.cloud_fraction`` share of the training
pool for backbone training (split into train/val); devices partition the rest.

No held-out sample is ever trained on. Device test sets come from the data set's official test split, following
each device's train label distribution, or (``partition.test_source=partition``, the default where a data set has no
test split) are cut from the device's partition disjoint from every device's training data; device validation is
always cut that way. ``partition.test_samples`` sizes them independently of the training data (a warning names the
devices that got fewer). ``generic_test`` is a class-balanced set disjoint from the cloud's and every device's data
that no choice (importance, PFG table, NAS, pruning) uses: the "generic" accuracy is measured on it.

Feature skew (``partition.feature``: noise, rotated domains) is a per-device :class:`~acme_flwr.shift.DeviceShift`
applied alike to the device's train, val and test tensors; the cloud's data and the generic test set stay as they
are. ``partition.max_samples`` caps each device (label-skew kinds) or, for quantity-skew kinds, shrinks the pool to
``max_samples`` per device on average so the size law still holds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from acme_flwr.config import AcmeConfig
from acme_flwr.data import ImageData, load_dataset, to_tensor
from acme_flwr.partition import (
    ClientSplit,
    balanced_cut,
    draw_following,
    hold_out,
    is_quantity_skew,
    label_report,
    partition,
    source_digest,
    split_clients,
)
from acme_flwr.runtime import cache_dir
from acme_flwr.shift import DeviceShift, MixingGroup, plan_shifts
from acme_flwr.topology import Topology

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSplit:
    """Normalised images ``x`` (N, C, H, W), float, and integer labels ``y`` (N,) in ``[0, num_classes)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DeviceData:
    """What a device's ``data_fn`` returns: its identity and its three splits (never sent anywhere).

    Parameters
    ----------
    partition_id
        The device's identity, an int in ``[0, num_devices)``: the one source of it. The device reports it in its
        profile, the strategy keys everything by it (topology, package, mixing, results) and the device's checkpoints
        are named by it. Take it from wherever your app splits its data (e.g. ``node_config["partition-id"]``).
    train, val, test
        :class:`TensorSplit` s, images already normalised and at the backbone's input shape (C, H, W): local
        training; choices made on the device (validation); the reported accuracy (test). None may be empty.
    raw_train_bytes
        What uploading the raw training set would cost, for the "centralized" byte reference. Optional: left out, it
        is derived as ``len(train) * (C*H*W + 1)`` (one uint8 per pixel at the shape given, one label byte; 2 above
        256 classes). Give it when your raw images are smaller than the resized tensors (as :class:`FederatedData`
        does).
    label_hist
        Not read by ACME (nothing on the device or the server uses it); optional, kept so that code building
        ``DeviceData`` with it keeps working.
    """

    partition_id: int
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    raw_train_bytes: int | None = None
    label_hist: list[int] | None = None

    @property
    def upload_bytes(self) -> int:
        """``raw_train_bytes``, or derived from the training tensors (see the class docstring)."""
        if self.raw_train_bytes is not None:
            return int(self.raw_train_bytes)
        x = self.train.x
        pixels = int(np.prod(tuple(x.shape[1:]))) if x.dim() > 1 else 1
        num_classes = int(self.train.y.max()) + 1 if len(self.train) else 0
        return len(self.train) * (pixels + (1 if num_classes <= 256 else 2))


class DataContractError(ValueError):
    """Tensors given to ACME (a device's splits, the cloud's own data) that it cannot use; one line naming the field,
    what was expected and what was given."""


class DeviceContractError(DataContractError):
    """A device's ``data_fn``/``profile_fn`` returned something ACME cannot use; the message is one line naming the
    device, the field, what was expected and what was given."""


#: max |x| a normalised image may reach; raw 0..255 pixels are far above it
MAX_ABS_PIXEL = 100.0
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_device_data(data: object, *, image_shape: tuple[int, int, int] | None = None,
                      num_classes: int | None = None) -> DeviceData:
    """Return ``data`` if it fulfils the client contract, else raise :class:`DeviceContractError` (one line).

    Checked: a :class:`DeviceData` with an int ``partition_id`` >= 0; three :class:`TensorSplit` s, non-empty, ``x``
    a finite float tensor (N, C, H, W) with |x| <= ``MAX_ABS_PIXEL`` (normalised), ``y`` an integer tensor (N,);
    with ``image_shape`` (the backbone's (C, H, W)) the image shape, with ``num_classes`` the label range;
    ``raw_train_bytes`` a non-negative int when given."""
    if not isinstance(data, DeviceData):
        raise DeviceContractError(f"data_fn: expected a DeviceData, got {type(data).__name__}")
    pid = data.partition_id
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise DeviceContractError(f"data_fn: DeviceData.partition_id: expected an int >= 0, got {pid!r}")
    if data.raw_train_bytes is not None and (not isinstance(data.raw_train_bytes, int) or data.raw_train_bytes < 0):
        raise DeviceContractError(f"device {pid}: DeviceData.raw_train_bytes: expected an int >= 0 or None, got "
                                  f"{data.raw_train_bytes!r}")
    for name in ("train", "val", "test"):
        check_split(getattr(data, name), f"device {pid}: DeviceData.{name}", image_shape=image_shape,
                    num_classes=num_classes)
    return data


def check_split(split: object, name: str, *, image_shape: tuple[int, ...] | None = None,
                num_classes: int | None = None, error: type[DataContractError] = DeviceContractError) -> TensorSplit:
    """Return ``split`` if it is a usable :class:`TensorSplit`, else DeviceContractError naming ``name`` (see
    :func:`check_device_data` for what is checked)."""

    def fail(field: str, expected: str, given: object) -> DataContractError:
        return error(f"{name}{field}: expected {expected}, got {given}")

    if not isinstance(split, TensorSplit):
        raise fail("", "a TensorSplit(x, y)", "None (missing split)" if split is None else type(split).__name__)
    x, y = split.x, split.y
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise fail(".x/y", "torch tensors", f"{type(x).__name__}/{type(y).__name__}")
    want = "(N, C, H, W)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if x.dim() != 4 or (image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape)):
        raise fail(".x", f"shape {want} (normalised images at the backbone's input)", tuple(x.shape))
    if not x.is_floating_point():
        raise fail(".x", "a float tensor", x.dtype)
    if y.dim() != 1 or len(y) != len(x):
        raise fail(".y", f"shape ({len(x)},) (one label per image)", tuple(y.shape))
    if y.dtype not in _INT_DTYPES:
        raise fail(".y", "an integer tensor (torch.long)", y.dtype)
    if len(y) == 0:
        raise fail("", "at least one sample", "an empty split")
    if not bool(torch.isfinite(x).all()):
        raise fail(".x", "finite values", "NaN or inf")
    peak = float(x.abs().max())
    if peak > MAX_ABS_PIXEL:
        raise fail(".x", f"normalised images (|x| <= {MAX_ABS_PIXEL:g}; (x - mean) / std)", f"max |x| = {peak:g}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise fail(".y", f"labels in {bound}", f"labels in [{low}, {high}]")
    return split


def check_profile(profile: object, partition_id: int, device_classes: list[str] | None = None) -> dict:
    """Return ``profile`` (what ``profile_fn`` returned) if it holds what ACME reads, else DeviceContractError.

    ACME reads ``device-class`` (a non-empty str; one of ``device_classes`` when the device knows them) and, if
    given, ``size-constraint`` (a number, reported for the record); every other key is passed through."""
    if not isinstance(profile, dict):
        raise DeviceContractError(f"device {partition_id}: profile_fn: expected a dict, got {type(profile).__name__}")
    cls = profile.get("device-class")
    if not isinstance(cls, str) or not cls:
        raise DeviceContractError(f"device {partition_id}: profile_fn['device-class']: expected a non-empty str, "
                                  f"got {cls!r}")
    if device_classes and cls not in device_classes:
        raise DeviceContractError(f"device {partition_id}: profile_fn['device-class']: expected one of "
                                  f"{device_classes}, got {cls!r}")
    return profile


class FederatedData:
    """The pool split into the cloud's share, per-device partitions and the held-out generic test set."""

    #: test images per device below which one image moves a device's accuracy by more than 1 point
    TEST_TARGET = 100

    def __init__(self, cfg: AcmeConfig, image_size: int, num_channels: int) -> None:
        self.cfg = cfg
        self.image_size = image_size
        self.num_channels = num_channels
        d, p = cfg.data, cfg.partition
        self.data: ImageData = load_dataset(d.name, d.root, cfg.cloud_seed, synthetic_classes=d.synthetic_classes,
                                            synthetic_samples=d.synthetic_samples, image_size=image_size)
        self.test_source = resolve_test_source(p.test_source, self.data)
        labels = self.data.labels
        rng = np.random.default_rng(cfg.cloud_seed)  # the cloud's side: generic test set and cloud share
        if self.data.has_official_test:
            official = np.asarray(self.data.official_test)
            pool, test_pool = np.flatnonzero(~official), np.flatnonzero(official)
            self.generic_indices, test_pool = balanced_cut(labels, test_pool, d.generic_test_fraction, rng)
        else:
            self.generic_indices, pool = balanced_cut(labels, np.arange(len(labels)), d.generic_test_fraction, rng)
            test_pool = np.empty(0, dtype=np.int64)
        cloud_idx, device_pool = _stratified_cut(labels, pool, d.cloud_fraction, rng)
        self.cloud_indices = cloud_idx
        num_devices = cfg.topology.num_devices
        if p.max_samples and is_quantity_skew(p.kind):  # a size law over a pool of max_samples per device on average
            keep = min(len(device_pool), p.max_samples * num_devices)
            device_pool = np.sort(np.random.default_rng([cfg.run.seed, 23]).choice(device_pool, keep, replace=False))
        parts = [device_pool[part] for part in stored_partition(cfg, labels[device_pool])]
        official_tests = self.test_source == "official"
        held: list[np.ndarray] | None = None
        if p.test_samples and not official_tests:  # fixed-size tests from each partition, before the cap
            held = hold_out(parts, p.test_samples, cfg.run.seed)
            out = np.concatenate(held)
            parts = [part[~np.isin(part, out)] for part in parts]
        if p.max_samples and not is_quantity_skew(p.kind):
            cap = np.random.default_rng([cfg.run.seed, 23])
            parts = [part if len(part) <= p.max_samples else np.sort(cap.choice(part, p.max_samples, replace=False))
                     for part in parts]
        self.partitions = parts
        cut_tests = not official_tests and held is None
        self.splits: list[ClientSplit] = split_clients(self.partitions, p.val_fraction,
                                                       p.test_fraction if cut_tests else 0.0, cfg.run.seed)
        if held is not None:
            self.splits = [ClientSplit(s.train, s.val, t) for s, t in zip(self.splits, held, strict=True)]
        if official_tests:  # the original's way (ACME §4.2): per device, test images of its classes
            self.splits = [
                ClientSplit(s.train, s.val, draw_following(
                    np.bincount(labels[s.train], minlength=self.num_classes), test_pool, labels[test_pool],
                    p.test_samples or max(1, int(round(p.test_fraction * len(part)))),
                    np.random.default_rng([cfg.run.seed, 17, pid])))
                for pid, (s, part) in enumerate(zip(self.splits, self.partitions, strict=True))
            ]
        self._check_no_leak()
        self._check_test_sizes()
        self.shifts: list[DeviceShift] = plan_shifts(p.feature, mixing_groups(cfg), cfg.run.seed,
                                                     **p.shift_params())

    def _check_test_sizes(self) -> None:
        """Warn (once) when ``partition.test_samples`` asked for more test images than some devices got."""
        want = self.cfg.partition.test_samples
        sizes = [len(s.test) for s in self.splits]
        short = [pid for pid, n in enumerate(sizes) if n < want]
        if want and short:
            why = ("the official test split lacks images of their classes" if self.test_source == "official" else
                   f"data.name={self.data.name!r} has no official test split, so tests come out of each device's "
                   "partition (at most half of it)")
            logger.warning("partition.test_samples=%d: devices %s got fewer test images (smallest %d): %s; one image "
                           "moves their accuracy by %.1f points", want, short, min(sizes), why, 100 / min(sizes))
        elif not want and min(sizes) < self.TEST_TARGET:
            logger.info("device test sets hold %d-%d images (one image = %.1f accuracy points on the smallest); "
                        "set partition.test_samples=%d for sets sized independently of the training data",
                        min(sizes), max(sizes), 100 / min(sizes), self.TEST_TARGET)

    def _check_no_leak(self) -> None:
        """Raise if a held-out sample (device val/test, generic test) is in the cloud's or any device's train."""
        trained = np.zeros(len(self.data), dtype=bool)
        trained[self.cloud_indices] = True
        for s in self.splits:
            trained[s.train] = True
        held = [self.generic_indices] + [np.concatenate([s.val, s.test]) for s in self.splits]
        leaked = int(sum(trained[h].sum() for h in held))
        if leaked:
            raise RuntimeError(f"{leaked} held-out samples are in training data; this is a bug in acme_flwr.task")
        in_devices = np.concatenate([np.concatenate([s.val, s.test]) for s in self.splits])
        if np.isin(self.generic_indices, in_devices).any():
            raise RuntimeError("the generic test set overlaps device data; this is a bug in acme_flwr.task")

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def tensors(self, indices: np.ndarray, shift: DeviceShift | None = None, split: str = "train") -> TensorSplit:
        """Normalised tensors of ``indices``; a device's ``shift`` (feature skew) applied when given."""
        x = to_tensor(self.data.images[indices], self.image_size, self.num_channels, self.data.mean, self.data.std)
        if shift is not None and not shift.is_identity:
            black = to_tensor(np.zeros((1, 1, 1, self.data.images.shape[-1]), np.uint8), 1, self.num_channels,
                              self.data.mean, self.data.std).flatten()
            x = shift.apply(x, black, split)
        return TensorSplit(x, torch.from_numpy(self.data.labels[indices]).long())

    #: devices whose tensors a worker keeps built (normalised, resized once: e.g. 224x224 for ViT-B/16), read-only
    DEVICE_CACHE = 64

    def device(self, partition_id: int) -> DeviceData:
        """This device's tensors, built once per worker process and reused by every message (read-only)."""
        if not 0 <= partition_id < len(self.splits):
            raise ValueError(f"partition-id {partition_id} is outside [0, {len(self.splits)}): does "
                             "topology.num_devices match the federation's num-supernodes?")
        cache: OrderedDict[int, DeviceData] = self.__dict__.setdefault("_devices", OrderedDict())
        if partition_id in cache:
            cache.move_to_end(partition_id)
            return cache[partition_id]
        s = self.splits[partition_id]
        hist = np.bincount(self.data.labels[s.train], minlength=self.num_classes).tolist()
        shift = self.shifts[partition_id]  # feature skew: alike in the three splits, never on the cloud's data
        built = DeviceData(partition_id, self.tensors(s.train, shift, "train"), self.tensors(s.val, shift, "val"),
                           self.tensors(s.test, shift, "test"), len(s.train) * self.data.sample_bytes, hist)
        cache[partition_id] = built
        while len(cache) > self.DEVICE_CACHE:
            cache.popitem(last=False)
        return built

    def cloud(self, val_fraction: float = 0.2) -> tuple[TensorSplit, TensorSplit]:
        """The cloud's own data for backbone training, split into train and validation."""
        if len(self.cloud_indices) == 0:
            raise ValueError("data.cloud_fraction is 0: the cloud stage needs data; set it > 0 or cloud.enabled=false")
        idx = np.random.default_rng(self.cfg.cloud_seed + 7).permutation(self.cloud_indices)
        n_val = max(1, int(val_fraction * len(idx)))
        return self.tensors(idx[n_val:]), self.tensors(idx[:n_val])

    @functools.cached_property
    def generic_test(self) -> TensorSplit:
        """The class-balanced held-out set for "generic" accuracy: disjoint from the cloud's train/val and every
        device's data, and used by no choice (importance, PFG table, NAS, pruning)."""
        return self.tensors(self.generic_indices)

    def report(self) -> list[dict[str, object]]:
        """Per device: the training split's label report, its test set size and its feature shift."""
        rows = label_report([s.train for s in self.splits], self.data.labels, self.num_classes)
        for row, s, shift in zip(rows, self.splits, self.shifts, strict=True):
            row["num_test"] = int(len(s.test))
            row["shift"] = shift.describe()
        return rows


def stored_partition(cfg: AcmeConfig, labels: np.ndarray) -> list[np.ndarray]:
    """``partition`` of ``labels`` as ``cfg.partition`` says, kept under ``<cache dir>/partitions/``: the ServerApp
    builds it first, and the Ray workers read it instead of each importing flwr-datasets (datasets, pandas, seaborn,
    scipy.stats: seconds per process). The key holds everything the result depends on: the labels, the settings,
    the library versions and the partitioners' source."""
    from importlib import metadata

    p = cfg.partition
    params = p.partitioner_params()
    versions = {name: _version(metadata, name) for name in ("flwr-datasets", "datasets", "numpy")}
    versions["code"] = source_digest()  # the partitioners' own code
    key = hashlib.sha256(json.dumps({"kind": p.kind, "params": params, "n": cfg.topology.num_devices,
                                     "seed": cfg.run.seed + 1, "versions": versions}, sort_keys=True).encode()
                         + np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:32]
    try:
        path = cache_dir(cfg) / "partitions" / f"{key}.npz"
        with np.load(path) as stored:
            return [stored[f"p{i}"] for i in range(cfg.topology.num_devices)]
    except (OSError, KeyError, ValueError):  # absent (or unreadable): build it
        pass
    parts = partition(p.kind, labels, cfg.topology.num_devices, cfg.run.seed + 1, **params)
    try:
        path = cache_dir(cfg) / "partitions" / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"p{i}": part for i, part in enumerate(parts)})
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs the other processes the rebuild
        logger.debug("partition not stored in %s: %s", path.parent, exc)
    return parts


def _version(metadata: object, name: str) -> str:
    try:
        return metadata.version(name)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - PackageNotFoundError: not installed, part of the key as such
        return "none"


def mixing_groups(cfg: AcmeConfig) -> list[MixingGroup]:
    """Per device: its mixing group (edge, device class index), the devices that share a package and mix their
    importance (topology's edge assignment, device class ``classes[pid % n]``)."""
    topo = Topology(cfg.topology.num_devices, cfg.topology.num_edges, cfg.topology.assignment)
    n = len(cfg.device_classes)
    return [(topo.edge_of(pid), pid % n) for pid in range(cfg.topology.num_devices)]


def resolve_test_source(requested: str, data: ImageData) -> str:
    """``partition.test_source`` resolved for ``data``: ``auto`` is ``official`` where it has a test split."""
    if requested == "auto":
        return "official" if data.has_official_test else "partition"
    if requested == "official" and not data.has_official_test:
        raise ValueError(f"partition.test_source='official' but data.name={data.name!r} has no official test split; "
                         "use 'partition' (device test sets cut from each partition) or 'auto'")
    return requested


def _stratified_cut(labels: np.ndarray, indices: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the first ``fraction`` of a shuffled class of ``indices`` goes to the first array, the rest to the
    second."""
    first, rest = [], []
    for c in np.unique(labels[indices]):
        idx = rng.permutation(indices[labels[indices] == c])
        k = int(round(fraction * len(idx)))
        first.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(rest))


@functools.lru_cache(maxsize=4)
def _cached(cfg_json: str, image_size: int, num_channels: int) -> FederatedData:
    return FederatedData(AcmeConfig.from_dict(json.loads(cfg_json)), image_size, num_channels)


def federated_data(cfg: AcmeConfig, image_size: int, num_channels: int) -> FederatedData:
    """Build (or reuse, read-only, within one worker process) the federated data of ``cfg``."""
    # "cloud" too: cloud.seed picks the cloud's share and the generic test set; without it the rebuilt config had
    # cloud.seed=-1, so every run.seed of a sweep got its own cloud data and cloud stage
    # "profile" too: the device classes set the mixing groups that feature=rotation assigns domains by
    relevant = {k: v for k, v in cfg.to_dict().items()
                if k in {"run", "data", "partition", "topology", "cloud", "profile"}}
    return _cached(json.dumps(relevant, sort_keys=True), image_size, num_channels)
