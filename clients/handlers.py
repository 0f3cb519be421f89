"""ACME's device-side handlers for any Message-API ClientApp.

``AcmeClient(data_fn, profile_fn).register(app)`` adds five actions to a ClientApp, next to whatever the app already
handles (its own ``@app.train()`` stays untouched):

- ``query.acme_profile``: report partition-id, device class, size budget and sample counts (never samples);
- ``query.acme_setup``: receive the sub-backbone and initial header once; reply [CLS] feature statistics if asked;
- ``train.acme``: load edge weights if sent, refine the header locally, reply importance and/or weights;
- ``evaluate.acme``: prune with the edge's personalised importance if sent, evaluate on val/test (and generic).
- ``query.acme_nas`` (``nas.reward=federated``): the device's part of the header search (:mod:`.nas`).

This module only dispatches. Where things live: the device's state per strategy (header, pruner, Ditto's personal
header, checkpoints) is one typed :class:`.state.DeviceState` in ``context.state``; the sub-backbone it received is in
the device's model store (:mod:`acme_flwr.model_store`, once per fingerprint, outside the context); the backbone's
token grids in the worker's cache (:mod:`.features`); how a baseline trains on the device is its registered mode
(:mod:`.modes`, one file each); nothing in module globals, as Ray reuses worker processes across nodes.

What ``data_fn``/``profile_fn`` return is checked when a device reports its profile and when it is set up
(:func:`acme_flwr.task.check_device_data`): a broken contract, or a stored package that does not match its
fingerprint, is answered with one error line naming the device and the field (no traceback), which the strategy
records as that device's failure.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.device.headers import Header, build_header, split_header_params
from acme_flwr.device.pruner import GatePruner
from acme_flwr.device.training import FeatureCache, cls_feature_matrix, evaluate_header
from acme_flwr.model_store import ModelStore, ModelStoreError
from acme_flwr.protocol import NAS_MESSAGE
from acme_flwr.task import DeviceContractError, DeviceData, TensorSplit, check_device_data, check_profile

from . import nas
from .features import Features, load_backbone, node_device, process_feature_cache, run_value, store_of
from .modes import DEVICE_MODES, LocalRound
from .state import DeviceState

logger = logging.getLogger(__name__)

DataFn = Callable[[Context], DeviceData]
ProfileFn = Callable[[Context], dict[str, Any]]
GenericFn = Callable[[Context], TensorSplit | None]
CheckpointFn = Callable[[Context], Path | None]
StoreDirFn = Callable[[Context], Path]
__all__ = ["AcmeClient", "DataFn", "ProfileFn", "process_feature_cache"]


def _reported(handler: Callable[[AcmeClient, Message, Context], Message]) -> Callable[..., Message]:
    """A broken client contract or an unusable stored package: one error line as the reply (the strategy records
    it as this device's failure), logged once here, instead of an exception with its traceback."""

    @functools.wraps(handler)
    def wrapper(self: AcmeClient, msg: Message, context: Context) -> Message:
        try:
            return handler(self, msg, context)
        except (DeviceContractError, ModelStoreError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            logger.error("%s", reason)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    return wrapper


class AcmeClient:
    """The ACME handler set for a Flower ``ClientApp``: register it next to the app's own handlers.

    Parameters
    ----------
    data_fn
        ``data_fn(context) -> DeviceData``: this node's partition-id and train/val/test tensors (normalised, at the
        backbone's input shape). The partition-id in it is the device's one identity. Checked at profile and setup
        (:func:`acme_flwr.task.check_device_data`).
    profile_fn
        ``profile_fn(context) -> dict``: at least ``{"device-class": str}`` (one of the run's device classes);
        ``size-constraint`` and other keys are reported as given.
    generic_fn
        Optional ``generic_fn(context) -> TensorSplit | None``: a held-out set every evaluation also reports
        ("generic-acc").
    checkpoint_fn
        Optional ``checkpoint_fn(context) -> Path | None``: the device's checkpoint directory. After every
        evaluation round the device saves its state there (:meth:`DeviceState.checkpoint`); a resumed run restores
        it in setup.
    feature_cache
        Where the frozen backbone's grids are kept between messages: ``"default"`` the worker process's bounded
        cache (:func:`process_feature_cache`), a :class:`FeatureCache`, or ``None`` (computed on every message).
    store_dir_fn
        Optional ``store_dir_fn(context) -> Path``: the model-store directory. Default: the node config's
        ``model-store-dir``, else a per-run directory in the machine's temporary directory
        (:func:`acme_flwr.runtime.model_store_dir`, removed by :func:`acme_flwr.runtime.remove_run_dirs`).
    """

    def __init__(self, data_fn: DataFn, profile_fn: ProfileFn, generic_fn: GenericFn | None = None,
                 checkpoint_fn: CheckpointFn | None = None, feature_cache: FeatureCache | None | str = "default",
                 store_dir_fn: StoreDirFn | None = None) -> None:
        self.data_fn = data_fn
        self.profile_fn = profile_fn
        self.generic_fn = generic_fn
        self.checkpoint_fn = checkpoint_fn
        self._feature_cache = feature_cache
        self.store_dir_fn = store_dir_fn

    @property
    def feature_cache(self) -> FeatureCache | None:
        """Resolved when a message is handled, not when the client is built: Flower's Ray backend pickles the
        ClientApp (and so this client) with every message, so a cache held by the instance would arrive empty on
        every message and never hit."""
        return process_feature_cache() if self._feature_cache == "default" else self._feature_cache

    def store(self, context: Context) -> ModelStore:
        """This node's model store (the worker process's object for its directory)."""
        return store_of(context, self.store_dir_fn)

    def register(self, app: ClientApp) -> ClientApp:
        """Register the ACME actions on ``app`` and return it."""
        app.query(P.PROFILE.split(".")[1])(self.profile)
        app.query(P.SETUP.split(".")[1])(self.setup)
        app.train(P.TRAIN.split(".")[1])(self.train)
        app.evaluate(P.EVALUATE.split(".")[1])(self.evaluate)
        app.query(NAS_MESSAGE.split(".")[1])(self.nas)
        return app

    # ------------------------------------------------------------------------------------------------- handlers
    @_reported
    def profile(self, msg: Message, context: Context) -> Message:
        data = check_device_data(self.data_fn(context))
        known = str(context.run_config.get("profile.classes", "")).replace(" ", "")
        prof = check_profile(self.profile_fn(context), data.partition_id, [c for c in known.split(",") if c] or None)
        prof = {**prof, "partition-id": data.partition_id, "num-train": len(data.train),
                "raw-train-bytes": data.upload_bytes}
        return Message(RecordDict({P.PROFILE_REC: ConfigRecord(prof)}), reply_to=msg)

    @_reported
    def setup(self, msg: Message, context: Context) -> Message:
        cfg = msg.content[P.CONFIG]
        tag = str(cfg["tag"])
        for key in (P.BACKBONE, P.HEADER):
            if key not in msg.content.array_records:
                raise ValueError(f"setup message lacks the {key!r} ArrayRecord")
        arrays = {k: np.asarray(a.numpy()) for k, a in msg.content[P.BACKBONE].items()}
        digest = self.store(context).add(arrays)  # once per fingerprint on this machine/disk
        previous = DeviceState.load(context, tag) if DeviceState.has(context, tag) else None
        state = DeviceState(tag, str(cfg["backbone-arch"]), str(cfg["header-spec"]), digest, msg.content[P.HEADER],
                            pruner=previous.pruner if previous else None)  # personal: a new package starts it again
        arch = json.loads(state.arch)
        data = check_device_data(self.data_fn(context), num_classes=int(json.loads(state.header_spec)["num_classes"]),
                                 image_shape=(int(arch["num_channels"]), int(arch["image_size"]),
                                              int(arch["image_size"])))
        resume_round = int(cfg.get("resume-round", 0))
        if resume_round:
            state.restore_weights(self._restore(data, tag, context, resume_round))
        state.save(context)
        reply = RecordDict({P.METRICS: MetricRecord({"setup": 1})})
        k = int(cfg.get("feature-samples", 0))
        if k > 0:
            backbone = load_backbone(context, state, self.store(context))
            self._header(context, state)  # as before the split: the header is built here too (same RNG draws)
            feats = cls_feature_matrix(backbone, data.train, k, int(cfg.get("seed", 0)) + data.partition_id)
            reply[P.FEATURES] = P.vector_record(feats, "cls")
        return Message(reply, reply_to=msg)

    @_reported
    def train(self, msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        r, header = self._begin(msg, context)
        send = str(r.cfg.get("send", "importance"))
        mode = DEVICE_MODES.get(str(r.cfg.get("mode", "standard")))()
        compute_started = time.perf_counter()
        with accel.precision(run_value(context, "run.precision", "fp32")):
            metrics, importance = mode.train(header, r, importance=send == "importance")
        compute = time.perf_counter() - compute_started
        r.state.header = P.arrays_from_state(header.state_dict())
        r.state.save(context)
        reply = RecordDict({P.METRICS: MetricRecord({
            P.NUM_EXAMPLES: int(metrics["num_examples"]), "train-loss": metrics["loss"],
            "train-acc": metrics["accuracy"], "train-time-s": time.perf_counter() - started,
            "train-compute-s": compute})})
        if send == "importance":
            reply[P.IMPORTANCE] = P.vector_record(importance)
        elif send in {"header", "body"}:
            state = header.state_dict()
            keys = split_header_params(header)[0] if send == "body" else list(state)
            reply[P.HEADER] = P.arrays_from_state({k: state[k] for k in keys})
        return Message(reply, reply_to=msg)

    @_reported
    def evaluate(self, msg: Message, context: Context) -> Message:
        r, header = self._begin(msg, context)
        pruned = 0
        if P.IMPORTANCE in msg.content.array_records:
            pruner = self._pruner(r.state, header, r.cfg)
            pruner.step(P.vector_from_record(msg.content[P.IMPORTANCE]))
            pruner.apply(header)
            r.state.pruner = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in pruner.state_dict().items()})
            pruned = pruner.num_pruned
        r.state.header = P.arrays_from_state(header.state_dict())
        r.state.save(context)
        mode = DEVICE_MODES.get(str(r.cfg.get("mode", "standard")))()
        metrics: dict[str, Any] = {P.NUM_EXAMPLES: len(r.data.test), "pruned-gates": pruned}
        generic = self.generic_fn(context) if self.generic_fn else None
        with accel.precision(run_value(context, "run.precision", "fp32")):
            personal = mode.evaluated_header(header, r)
            splits = {"val": r.data.val, "test": r.data.test, **({"generic": generic} if generic is not None else {})}
            for name, split in splits.items():
                grids = r.features(name, split)
                loss, acc = evaluate_header(None, personal, split, grids=grids)
                metrics[f"{name}-acc"] = acc
                if name != "generic":
                    metrics[f"{name}-loss"] = loss
                if personal is not header and name != "generic":  # FedBABU / Ditto: the shared header as well
                    metrics[f"global-{name}-loss"], metrics[f"global-{name}-acc"] = evaluate_header(
                        None, header, split, grids=grids)
        self._checkpoint(r, int(r.cfg["server-round"]))
        return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)

    @_reported
    def nas(self, msg: Message, context: Context) -> Message:
        """Federated header search (:mod:`.nas`): train the shared child, score arcs, or install the header."""
        cfg = msg.content[P.CONFIG]
        tag, action = str(cfg["tag"]), str(cfg["action"])
        state = DeviceState.load(context, tag)
        if action == "install":
            backbone = load_backbone(context, state, self.store(context))
            self._header(context, state)  # as before the split: the header is built here too (same RNG draws)
            data = self.data_fn(context) if bool(cfg.get("calibrate-bn", False)) else None
            reply = nas.install(msg, cfg, state, backbone, data)
            state.save(context)
            return reply
        data = self.data_fn(context)
        backbone = load_backbone(context, state, self.store(context))
        self._header(context, state)
        return nas.search_step(msg, cfg, action, backbone, data)

    # ------------------------------------------------------------------------------------------------- helpers
    def _begin(self, msg: Message, context: Context) -> tuple[LocalRound, Header]:
        """What every round message starts with: its config, this node's state, data and backbone features
        (cached grids; the backbone is rebuilt only on a miss), its header with any weights the edge sent loaded
        (all of them, or the FedPer body)."""
        cfg = msg.content[P.CONFIG]
        state = DeviceState.load(context, str(cfg["tag"]))
        header = self._header(context, state)
        if P.HEADER in msg.content.array_records:
            P.load_arrays(header, msg.content[P.HEADER], partial=True)
        features = Features(context, state, self.store(context), self.feature_cache)
        return LocalRound(cfg, self.data_fn(context), features, state), header

    @staticmethod
    def _header(context: Context, state: DeviceState) -> Header:
        header = build_header(json.loads(state.header_spec))
        P.load_arrays(header, state.header)
        return header.to(node_device(context))

    @staticmethod
    def _pruner(state: DeviceState, header: Header, cfg: ConfigRecord) -> GatePruner:
        pruner = GatePruner(header.num_gates, int(cfg["prune-per-iteration"]), int(cfg["prune-max"]),
                            float(cfg.get("prune-momentum", 0.9)))
        if state.pruner is not None:
            saved = {k: v.numpy() for k, v in state.pruner.items()}
            pruner.load_state_dict({**saved, "steps": saved["steps"].reshape(())})
        return pruner

    def _checkpoint_path(self, context: Context, partition_id: int, tag: str, server_round: int) -> Path | None:
        """``<checkpoint_fn(context)>/<tag>/device-<partition-id>-round<r>.npz``: named by the device's one identity,
        ``DeviceData.partition_id``."""
        root = self.checkpoint_fn(context) if self.checkpoint_fn else None
        if root is None:
            return None
        return Path(root) / tag / f"device-{int(partition_id)}-round{server_round}.npz"

    def _checkpoint(self, r: LocalRound, server_round: int) -> None:
        """Save this device's state at the end of ``server_round``; keep the last two rounds only."""
        context = r.features.context
        path = self._checkpoint_path(context, r.data.partition_id, r.state.tag, server_round)
        if path is None:
            return
        r.state.checkpoint(path)
        old = self._checkpoint_path(context, r.data.partition_id, r.state.tag, server_round - 2)
        if old is not None:
            old.unlink(missing_ok=True)

    def _restore(self, data: DeviceData, tag: str, context: Context, server_round: int) -> DeviceState:
        """The state saved at the end of ``server_round`` (resumed runs)."""
        path = self._checkpoint_path(context, data.partition_id, tag, server_round)
        if path is None or not path.exists():
            raise FileNotFoundError(f"cannot resume: no device checkpoint for round {server_round} at {path}; "
                                    "resume needs the same run.out_dir as the interrupted run")
        return DeviceState.from_checkpoint(path)
