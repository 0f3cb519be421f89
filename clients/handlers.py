"""ACME's device-side handlers for any Message-API ClientApp.

``AcmeClient(data_fn, profile_fn).register(app)`` adds four actions to a ClientApp, next to whatever the app already
handles (its own ``@app.train()`` stays untouched):

- ``query.acme_profile``: report partition-id, device class, size budget and sample counts (never samples);
- ``query.acme_setup``: receive the sub-backbone and initial header once; reply [CLS] feature statistics if asked;
- ``train.acme``: load edge weights if sent, refine the header locally, reply importance and/or weights;
- ``evaluate.acme``: prune with the edge's personalised importance if sent, evaluate on val/test (and generic).
- ``query.acme_nas`` (``nas.reward=federated``): train the edge's shared NAS child on local training data, score arcs
  on the local validation split, or install the searched header (replacing the one from setup).

All device state (header, pruner, Ditto's personal header) lives in ``context.state`` under the strategy's tag, and
the sub-backbone under its fingerprint (one copy for every strategy that deploys it), never in module globals: Ray
reuses worker processes across nodes. The one thing kept outside it is a bounded cache of the frozen sub-backbone's
token grids on the device's fixed images (:class:`FeatureCache`, one per worker process), keyed by run, backbone and
data fingerprints, device and precision (strategies and devices with the same package share it): a hit skips
rebuilding the backbone and its forward pass; a miss (another worker, an evicted entry) recomputes the same grids.
Keeping the grids in ``context.state`` instead would serialize them with every message.

Train modes (round config ``mode``; the baselines of ``strategies/``): ``standard`` (the whole header, local epochs),
``fedrep`` (``head-epochs`` on the classifier with the body frozen, then ``body-epochs`` on the body with the
classifier frozen), ``fedbabu`` (the body only; the classifier stays at its initialisation; evaluation fine-tunes a
copy of the classifier for ``finetune-epochs`` first), ``ditto`` (the received header w trained as in FedAvg and
sent back; a personal header v kept on the device, trained with ``ditto-lambda``/2·‖v − w‖², evaluated).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.cloud.elastic_vit import ElasticViT
from acme_flwr.device.headers import Header, split_header_params
from acme_flwr.device.pruner import GatePruner
from acme_flwr.device.training import (
    FeatureCache,
    TrainHParams,
    backbone_grids,
    cls_feature_matrix,
    evaluate_header,
    split_fingerprint,
    train_header,
)
from acme_flwr.edge.nas import ENASChild
from acme_flwr.edge.nas.federated import device_evaluate_arcs, device_train_child
from acme_flwr.edge.nas.header_search import calibrate_bn
from acme_flwr.packages import build_header
from acme_flwr.protocol import CHILD, NAS_MESSAGE
from acme_flwr.runtime import fingerprint, shared_feature_dir
from acme_flwr.task import DeviceData, TensorSplit

logger = logging.getLogger(__name__)

DataFn = Callable[[Context], DeviceData]
ProfileFn = Callable[[Context], dict[str, Any]]
GenericFn = Callable[[Context], TensorSplit | None]
CheckpointFn = Callable[[Context], Path | None]
TRAIN_MODES = ("standard", "fedrep", "fedbabu", "ditto")


_PROCESS_CACHE = FeatureCache()


def process_feature_cache() -> FeatureCache:
    """This worker process's grid cache, shared by every node and strategy the process serves (its keys name run,
    backbone, split, data, device and precision, so sharing never mixes two nodes' grids)."""
    return _PROCESS_CACHE


def _backbone_key(digest: str) -> str:
    """Where a device keeps a sub-backbone in ``context.state``: by its fingerprint, not by strategy tag, so the
    strategies of one run that deploy the same package keep one copy (the context travels with every message)."""
    return f"acme.backbone.{digest}"


class AcmeClient:
    """The ACME handler set; ``data_fn``/``profile_fn`` tell it the node's data and device profile.

    ``checkpoint_fn`` (optional) gives the device's checkpoint directory: after every evaluation round the device
    saves its header and pruner state there, and a resumed run restores them in setup. ``feature_cache``: where the
    frozen backbone's grids are kept between messages (default: the worker process's bounded cache,
    :func:`process_feature_cache`; ``None``: compute them on every message).
    """

    def __init__(self, data_fn: DataFn, profile_fn: ProfileFn, generic_fn: GenericFn | None = None,
                 checkpoint_fn: CheckpointFn | None = None,
                 feature_cache: FeatureCache | None | str = "default") -> None:
        self.data_fn = data_fn
        self.profile_fn = profile_fn
        self.generic_fn = generic_fn
        self.checkpoint_fn = checkpoint_fn
        self._feature_cache = feature_cache

    @property
    def feature_cache(self) -> FeatureCache | None:
        """Resolved when a message is handled, not when the client is built: Flower's Ray backend pickles the
        ClientApp (and so this client) with every message, so a cache held by the instance would arrive empty on
        every message and never hit."""
        return process_feature_cache() if self._feature_cache == "default" else self._feature_cache

    def register(self, app: ClientApp) -> ClientApp:
        """Register the ACME actions on ``app`` and return it."""
        app.query(P.PROFILE.split(".")[1])(self.profile)
        app.query(P.SETUP.split(".")[1])(self.setup)
        app.train(P.TRAIN.split(".")[1])(self.train)
        app.evaluate(P.EVALUATE.split(".")[1])(self.evaluate)
        app.query(NAS_MESSAGE.split(".")[1])(self.nas)
        return app

    # ------------------------------------------------------------------------------------------------- handlers
    def profile(self, msg: Message, context: Context) -> Message:
        data = self.data_fn(context)
        prof = {**self.profile_fn(context), "partition-id": data.partition_id, "num-train": len(data.train),
                "raw-train-bytes": data.raw_train_bytes}
        return Message(RecordDict({P.PROFILE_REC: ConfigRecord(prof)}), reply_to=msg)

    def setup(self, msg: Message, context: Context) -> Message:
        cfg = msg.content[P.CONFIG]
        tag = str(cfg["tag"])
        for key in (P.BACKBONE, P.HEADER):
            if key not in msg.content.array_records:
                raise ValueError(f"setup message lacks the {key!r} ArrayRecord")
        digest = fingerprint(*(torch.from_numpy(np.asarray(a.numpy())) for a in msg.content[P.BACKBONE].values()))
        context.state[_backbone_key(digest)] = msg.content[P.BACKBONE]
        context.state[f"{tag}.header"] = msg.content[P.HEADER]
        context.state[f"{tag}.setup"] = ConfigRecord({"arch": str(cfg["backbone-arch"]),
                                                      "header": str(cfg["header-spec"]), "backbone-fp": digest})
        context.state.pop(f"{tag}.personal", None)  # a new package: Ditto's personal header starts from it again
        resume_round = int(cfg.get("resume-round", 0))
        if resume_round:
            self._restore(context, tag, resume_round)
        reply = RecordDict({P.METRICS: MetricRecord({"setup": 1})})
        k = int(cfg.get("feature-samples", 0))
        if k > 0:
            data = self.data_fn(context)
            backbone, _ = self._models(context, tag)
            feats = cls_feature_matrix(backbone, data.train, k, int(cfg.get("seed", 0)) + data.partition_id)
            reply[P.FEATURES] = P.vector_record(feats, "cls")
        return Message(reply, reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        cfg, tag, data, features, header = self._begin(msg, context)
        hp = TrainHParams(lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                          weight_decay=float(cfg["weight-decay"]), batch_size=int(cfg["batch-size"]),
                          local_epochs=int(cfg["local-epochs"]), accumulation=str(cfg["accumulation"]))
        seed = int(cfg["seed"]) * 1_000_003 + data.partition_id * 1009 + int(cfg["server-round"])
        send = str(cfg.get("send", "importance"))
        mode = str(cfg.get("mode", "standard"))
        if mode not in TRAIN_MODES:
            raise ValueError(f"unknown train mode {mode!r}; allowed: {list(TRAIN_MODES)}")
        compute_started = time.perf_counter()
        with accel.precision(_run_value(context, "run.precision", "fp32")):
            grids = features("train", data.train)  # before seeding: a miss rebuilds the backbone (draws from RNG)
            torch.manual_seed(seed)
            body, head = split_header_params(header) if mode in {"fedrep", "fedbabu"} else ([], [])
            phases = {"fedrep": [(head, int(cfg.get("head-epochs", 10))), (body, int(cfg.get("body-epochs", 1)))],
                      "fedbabu": [(body, hp.local_epochs)]}.get(mode)
            reference = {n: p.detach().clone() for n, p in header.named_parameters()} if mode == "ditto" else None
            personal = self._personal(context, tag, header) if mode == "ditto" else None
            metrics, importance = train_header(None, header, data.train, hp, seed, grids=grids, phases=phases,
                                               importance=send == "importance")
            if personal is not None and reference is not None:  # Ditto: v, proximal to the w this round started from
                personal_hp = TrainHParams(**{**hp.__dict__, "local_epochs": int(cfg.get("personal-epochs", 0))
                                              or hp.local_epochs})
                train_header(None, personal, data.train, personal_hp, seed + 1, grids=grids, importance=False,
                             proximal=(float(cfg.get("ditto-lambda", 0.1)), reference))
                context.state[f"{tag}.personal"] = P.arrays_from_state(personal.state_dict())
        compute = time.perf_counter() - compute_started
        context.state[f"{tag}.header"] = P.arrays_from_state(header.state_dict())
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

    def evaluate(self, msg: Message, context: Context) -> Message:
        cfg, tag, data, features, header = self._begin(msg, context)
        pruned = 0
        if P.IMPORTANCE in msg.content.array_records:
            pruner = self._pruner(context, tag, header, cfg)
            pruner.step(P.vector_from_record(msg.content[P.IMPORTANCE]))
            pruner.apply(header)
            context.state[f"{tag}.pruner"] = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in pruner.state_dict().items()})
            pruned = pruner.num_pruned
        context.state[f"{tag}.header"] = P.arrays_from_state(header.state_dict())
        mode = str(cfg.get("mode", "standard"))
        metrics: dict[str, Any] = {P.NUM_EXAMPLES: len(data.test), "pruned-gates": pruned}
        generic = self.generic_fn(context) if self.generic_fn else None
        with accel.precision(_run_value(context, "run.precision", "fp32")):
            personal = self._evaluated_header(context, tag, cfg, mode, header, data, features)
            splits = {"val": data.val, "test": data.test, **({"generic": generic} if generic is not None else {})}
            for name, split in splits.items():
                grids = features(name, split)
                loss, acc = evaluate_header(None, personal, split, grids=grids)
                metrics[f"{name}-acc"] = acc
                if name != "generic":
                    metrics[f"{name}-loss"] = loss
                if personal is not header and name != "generic":  # FedBABU / Ditto: the shared header as well
                    metrics[f"global-{name}-loss"], metrics[f"global-{name}-acc"] = evaluate_header(
                        None, header, split, grids=grids)
        self._checkpoint(context, tag, int(cfg["server-round"]))
        return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)

    def _evaluated_header(self, context: Context, tag: str, cfg: ConfigRecord, mode: str, header: Header,
                          data: DeviceData, features: _Features) -> Header:
        """The header a device is evaluated with: its own (standard, FedRep), Ditto's personal one, or for FedBABU
        a copy whose classifier was fine-tuned on the local training data for ``finetune-epochs`` (not kept)."""
        if mode == "ditto" and f"{tag}.personal" in context.state:
            personal = build_header(json.loads(str(context.state[f"{tag}.setup"]["header"])))
            P.load_arrays(personal, context.state[f"{tag}.personal"])
            return personal.to(accel.device_of(header))
        epochs = int(cfg.get("finetune-epochs", 0))
        if mode != "fedbabu" or epochs <= 0:
            return header
        tuned = copy.deepcopy(header)
        hp = TrainHParams(lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                          weight_decay=float(cfg["weight-decay"]), batch_size=int(cfg["batch-size"]),
                          local_epochs=epochs)
        seed = int(cfg["seed"]) * 1_000_003 + data.partition_id * 1009 + int(cfg["server-round"]) + 7
        grids = features("train", data.train)
        torch.manual_seed(seed)  # dropout: the same draws whether the grids were cached or not
        train_header(None, tuned, data.train, hp, seed, grids=grids, phases=[(split_header_params(tuned)[1], epochs)],
                     importance=False)
        return tuned

    def _personal(self, context: Context, tag: str, header: Header) -> Header:
        """Ditto's personal header v: the one kept in ``context.state``, or (first round) a copy of ``header``."""
        personal = copy.deepcopy(header)
        if f"{tag}.personal" in context.state:
            P.load_arrays(personal, context.state[f"{tag}.personal"])
        return personal

    # ------------------------------------------------------------------------------------------------- state
    def _begin(self, msg: Message, context: Context) -> tuple[ConfigRecord, str, DeviceData, _Features, Header]:
        """What every round message starts with: its config and tag, this node's data, its backbone features
        (cached grids; the backbone is rebuilt only on a miss), its header with any weights the edge sent loaded
        (all of them, or the FedPer body)."""
        cfg = msg.content[P.CONFIG]
        tag = str(cfg["tag"])
        header = self._header(context, tag)
        if P.HEADER in msg.content.array_records:
            P.load_arrays(header, msg.content[P.HEADER], partial=True)
        return cfg, tag, self.data_fn(context), _Features(self, context, tag), header

    def _checkpoint_path(self, context: Context, tag: str, server_round: int) -> Path | None:
        root = self.checkpoint_fn(context) if self.checkpoint_fn else None
        if root is None:
            return None
        return Path(root) / tag / f"device-{int(context.node_config['partition-id'])}-round{server_round}.npz"

    def _checkpoint(self, context: Context, tag: str, server_round: int) -> None:
        """Save this device's state (header weights, pruner) at the end of ``server_round``."""
        path = self._checkpoint_path(context, tag, server_round)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"header/{k}": v.numpy() for k, v in context.state[f"{tag}.header"].items()}
        for kind in ("pruner", "personal"):
            if f"{tag}.{kind}" in context.state:
                arrays.update({f"{kind}/{k}": v.numpy() for k, v in context.state[f"{tag}.{kind}"].items()})
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        old = self._checkpoint_path(context, tag, server_round - 2)  # keep the last two rounds only
        if old is not None:
            old.unlink(missing_ok=True)

    def _restore(self, context: Context, tag: str, server_round: int) -> None:
        """Put the state saved at the end of ``server_round`` back into ``context.state`` (resumed runs)."""
        path = self._checkpoint_path(context, tag, server_round)
        if path is None or not path.exists():
            raise FileNotFoundError(f"cannot resume: no device checkpoint for round {server_round} at {path}; "
                                    "resume needs the same run.out_dir as the interrupted run")
        with np.load(path) as saved:
            parts = {"header": {}, "pruner": {}, "personal": {}}
            for key in saved.files:
                kind, _, name = key.partition("/")
                parts[kind][name] = saved[key]
        context.state[f"{tag}.header"] = ArrayRecord({k: Array(v) for k, v in parts["header"].items()})
        for kind in ("pruner", "personal"):
            if parts[kind]:
                context.state[f"{tag}.{kind}"] = ArrayRecord({k: Array(v) for k, v in parts[kind].items()})

    def nas(self, msg: Message, context: Context) -> Message:
        """Federated header search: "train" the shared child on local training data (one arc per step), "evaluate"
        arcs on the local validation split (counts only), or "install" the searched header."""
        cfg = msg.content[P.CONFIG]
        tag, action = str(cfg["tag"]), str(cfg["action"])
        if action == "install":
            spec = str(cfg["header-spec"])
            header = build_header(json.loads(spec))
            P.load_arrays(header, msg.content[P.HEADER])  # check it fits before keeping it
            backbone, _ = self._models(context, tag)
            setup = context.state[f"{tag}.setup"]
            context.state[f"{tag}.setup"] = ConfigRecord({**dict(setup), "header": spec})
            context.state.pop(f"{tag}.personal", None)
            if bool(cfg.get("calibrate-bn", False)):  # running statistics from this device's own training data
                calibrate_bn(header.to(accel.device_of(backbone)),
                             backbone_grids(backbone, self.data_fn(context).train.x), 64)
                context.state[f"{tag}.header"] = P.arrays_from_state(header.state_dict())
            else:
                context.state[f"{tag}.header"] = msg.content[P.HEADER]
            return Message(RecordDict({P.METRICS: MetricRecord({"installed": 1})}), reply_to=msg)
        data = self.data_fn(context)
        backbone, _ = self._models(context, tag)
        child = ENASChild(**json.loads(str(cfg["child"])))
        P.load_arrays(child, msg.content[CHILD])
        payload = json.loads(str(cfg["payload"]))
        if action == "train":
            seed = int(payload["seed"]) * 1_000_003 + data.partition_id
            torch.manual_seed(seed)
            m = device_train_child(child, payload["arcs"], backbone_grids(backbone, data.train.x), data.train.y,
                                   lr=float(payload["lr"]), batch_size=int(payload["batch-size"]),
                                   momentum=float(payload["momentum"]), weight_decay=float(payload["weight-decay"]),
                                   seed=seed)
            return Message(RecordDict({CHILD: P.arrays_from_state(child.state_dict()), P.METRICS: MetricRecord(
                {P.NUM_EXAMPLES: int(m["num_examples"]), "acc": float(m["acc"])})}), reply_to=msg)
        if action == "evaluate":
            correct, total = device_evaluate_arcs(child, payload["arcs"], backbone_grids(backbone, data.val.x),
                                                  data.val.y)
            return Message(RecordDict({P.METRICS: MetricRecord({"correct": correct, "total": total})}), reply_to=msg)
        raise ValueError(f"unknown NAS action {action!r}; allowed: train, evaluate, install")

    def _models(self, context: Context, tag: str) -> tuple[ElasticViT, Header]:
        return self._backbone(context, tag), self._header(context, tag)

    def _setup_of(self, context: Context, tag: str) -> ConfigRecord:
        if f"{tag}.setup" not in context.state:
            raise RuntimeError(f"no setup for strategy tag {tag!r} on this node: the server must send {P.SETUP} first")
        return context.state[f"{tag}.setup"]

    def _backbone(self, context: Context, tag: str) -> ElasticViT:
        """The frozen sub-backbone rebuilt from ``context.state``, on this node's own accelerator."""
        setup = self._setup_of(context, tag)
        backbone = ElasticViT.from_arch(json.loads(str(setup["arch"])))
        P.load_arrays(backbone, context.state[_backbone_key(str(setup["backbone-fp"]))])
        for p in backbone.parameters():
            p.requires_grad_(False)
        return backbone.to(_device(context)).eval()

    def _header(self, context: Context, tag: str) -> Header:
        header = build_header(json.loads(str(self._setup_of(context, tag)["header"])))
        P.load_arrays(header, context.state[f"{tag}.header"])
        return header.to(_device(context))

    def _pruner(self, context: Context, tag: str, header: Header, cfg: ConfigRecord) -> GatePruner:
        pruner = GatePruner(header.num_gates, int(cfg["prune-per-iteration"]), int(cfg["prune-max"]),
                            float(cfg.get("prune-momentum", 0.9)))
        if f"{tag}.pruner" in context.state:
            saved = {k: v.numpy() for k, v in context.state[f"{tag}.pruner"].items()}
            pruner.load_state_dict({**saved, "steps": saved["steps"].reshape(())})
        return pruner


def _run_value(context: Context, key: str, default: str) -> str:
    """A run-config value this node uses for itself (device placement), with the library's default."""
    return str(context.run_config.get(key, default))


def _shares_worker_files(context: Context) -> bool:
    """Whether this process is one of several workers of one machine serving the same devices: Flower's Ray
    simulation backend, where a device's messages go to whichever worker is free. Then the grids also go through
    files (``FeatureCache.shared_dir``), on CPU; a real device is one process and keeps them in memory only."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and _device(context).type == "cpu"


def _device(context: Context) -> torch.device:
    return accel.resolve_device(_run_value(context, "run.device", "auto"))  # this node's own accelerator


class _Features:
    """One message's access to the frozen backbone's token grids: from the client's cache when the same run,
    backbone, data split, device and precision were seen before, else computed (the backbone rebuilt once)."""

    def __init__(self, client: AcmeClient, context: Context, tag: str) -> None:
        self.client, self.context, self.tag = client, context, tag
        self._backbone: ElasticViT | None = None

    @property
    def backbone(self) -> ElasticViT:
        if self._backbone is None:
            self._backbone = self.client._backbone(self.context, self.tag)
        return self._backbone

    def __call__(self, name: str, split: TensorSplit) -> torch.Tensor:
        """The grids of ``split`` (``name``: train, val, test or generic); call inside the message's precision."""
        cache, c = self.client.feature_cache, self.context
        digest = str(self.client._setup_of(c, self.tag).get("backbone-fp", ""))
        limit_mb = int(_run_value(c, "run.feature_cache_mb", "1024"))
        if cache is None or not digest or limit_mb <= 0:
            return backbone_grids(self.backbone, split.x)
        cache.max_bytes = limit_mb << 20
        cache.shared_dir = shared_feature_dir(c.run_id) if _shares_worker_files(c) else None
        key = (c.run_id, digest, name, split_fingerprint(split.x), str(_device(c)),
               _run_value(c, "run.precision", "fp32"))
        return cache.get(key, lambda: backbone_grids(self.backbone, split.x))
