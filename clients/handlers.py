"""ACME's device-side handlers for any Message-API ClientApp.

``AcmeClient(data_fn, profile_fn).register(app)`` adds four actions to a ClientApp, next to whatever the app already
handles (its own ``@app.train()`` stays untouched):

- ``query.acme_profile``: report partition-id, device class, size budget and sample counts (never samples);
- ``query.acme_setup``: receive the sub-backbone and initial header once; reply [CLS] feature statistics if asked;
- ``train.acme``: load edge weights if sent, refine the header locally, reply importance and/or weights;
- ``evaluate.acme``: prune with the edge's personalised importance if sent, evaluate on val/test (and generic).
- ``query.acme_nas`` (``nas.reward=federated``): train the edge's shared NAS child on local training data, score arcs
  on the local validation split, or install the searched header (replacing the one from setup).

All device state (backbone, header, pruner) lives in ``context.state`` under the strategy's tag, never in module
globals: Ray reuses worker processes across nodes.
"""

from __future__ import annotations

import json
import logging
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
from acme_flwr.device.training import TrainHParams, backbone_grids, cls_feature_matrix, evaluate_header, train_header
from acme_flwr.edge.nas import ENASChild
from acme_flwr.edge.nas.federated import device_evaluate_arcs, device_train_child
from acme_flwr.edge.nas.header_search import calibrate_bn
from acme_flwr.packages import build_header
from acme_flwr.protocol import CHILD, NAS_MESSAGE
from acme_flwr.task import DeviceData, TensorSplit

logger = logging.getLogger(__name__)

DataFn = Callable[[Context], DeviceData]
ProfileFn = Callable[[Context], dict[str, Any]]
GenericFn = Callable[[Context], TensorSplit | None]
CheckpointFn = Callable[[Context], Path | None]


class AcmeClient:
    """The ACME handler set; ``data_fn``/``profile_fn`` tell it the node's data and device profile.

    ``checkpoint_fn`` (optional) gives the device's checkpoint directory: after every evaluation round the device
    saves its header and pruner state there, and a resumed run restores them in setup.
    """

    def __init__(self, data_fn: DataFn, profile_fn: ProfileFn, generic_fn: GenericFn | None = None,
                 checkpoint_fn: CheckpointFn | None = None) -> None:
        self.data_fn = data_fn
        self.profile_fn = profile_fn
        self.generic_fn = generic_fn
        self.checkpoint_fn = checkpoint_fn

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
        context.state[f"{tag}.backbone"] = msg.content[P.BACKBONE]
        context.state[f"{tag}.header"] = msg.content[P.HEADER]
        context.state[f"{tag}.setup"] = ConfigRecord({"arch": str(cfg["backbone-arch"]),
                                                      "header": str(cfg["header-spec"])})
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
        cfg, tag, data, backbone, header = self._begin(msg, context)
        hp = TrainHParams(lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                          weight_decay=float(cfg["weight-decay"]), batch_size=int(cfg["batch-size"]),
                          local_epochs=int(cfg["local-epochs"]), accumulation=str(cfg["accumulation"]))
        seed = int(cfg["seed"]) * 1_000_003 + data.partition_id * 1009 + int(cfg["server-round"])
        torch.manual_seed(seed)
        compute_started = time.perf_counter()
        with accel.precision(_run_value(context, "run.precision", "fp32")):
            metrics, importance = train_header(backbone, header, data.train, hp, seed)
        compute = time.perf_counter() - compute_started
        context.state[f"{tag}.header"] = P.arrays_from_state(header.state_dict())
        reply = RecordDict({P.METRICS: MetricRecord({
            P.NUM_EXAMPLES: int(metrics["num_examples"]), "train-loss": metrics["loss"],
            "train-acc": metrics["accuracy"], "train-time-s": time.perf_counter() - started,
            "train-compute-s": compute})})
        send = str(cfg.get("send", "importance"))
        if send == "importance":
            reply[P.IMPORTANCE] = P.vector_record(importance)
        elif send in {"header", "body"}:
            state = header.state_dict()
            keys = split_header_params(header)[0] if send == "body" else list(state)
            reply[P.HEADER] = P.arrays_from_state({k: state[k] for k in keys})
        return Message(reply, reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        cfg, tag, data, backbone, header = self._begin(msg, context)
        pruned = 0
        if P.IMPORTANCE in msg.content.array_records:
            pruner = self._pruner(context, tag, header, cfg)
            pruner.step(P.vector_from_record(msg.content[P.IMPORTANCE]))
            pruner.apply(header)
            context.state[f"{tag}.pruner"] = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in pruner.state_dict().items()})
            pruned = pruner.num_pruned
        context.state[f"{tag}.header"] = P.arrays_from_state(header.state_dict())
        with accel.precision(_run_value(context, "run.precision", "fp32")):
            val_loss, val_acc = evaluate_header(backbone, header, data.val)
            test_loss, test_acc = evaluate_header(backbone, header, data.test)
        metrics: dict[str, Any] = {P.NUM_EXAMPLES: len(data.test), "val-acc": val_acc, "val-loss": val_loss,
                                   "test-acc": test_acc, "test-loss": test_loss, "pruned-gates": pruned}
        generic = self.generic_fn(context) if self.generic_fn else None
        if generic is not None:
            with accel.precision(_run_value(context, "run.precision", "fp32")):
                metrics["generic-acc"] = evaluate_header(backbone, header, generic)[1]
        self._checkpoint(context, tag, int(cfg["server-round"]))
        return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)

    # ------------------------------------------------------------------------------------------------- state
    def _begin(self, msg: Message, context: Context) -> tuple[ConfigRecord, str, DeviceData, ElasticViT, Header]:
        """What every round message starts with: its config and tag, this node's data, its models with any header
        weights the edge sent loaded (all of them, or the FedPer body)."""
        cfg = msg.content[P.CONFIG]
        tag = str(cfg["tag"])
        backbone, header = self._models(context, tag)
        if P.HEADER in msg.content.array_records:
            P.load_arrays(header, msg.content[P.HEADER], partial=True)
        return cfg, tag, self.data_fn(context), backbone, header

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
        if f"{tag}.pruner" in context.state:
            arrays.update({f"pruner/{k}": v.numpy() for k, v in context.state[f"{tag}.pruner"].items()})
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
            parts = {"header": {}, "pruner": {}}
            for key in saved.files:
                kind, _, name = key.partition("/")
                parts[kind][name] = saved[key]
        context.state[f"{tag}.header"] = ArrayRecord({k: Array(v) for k, v in parts["header"].items()})
        if parts["pruner"]:
            context.state[f"{tag}.pruner"] = ArrayRecord({k: Array(v) for k, v in parts["pruner"].items()})

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
            context.state[f"{tag}.setup"] = ConfigRecord({"arch": str(setup["arch"]), "header": spec})
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
        if f"{tag}.setup" not in context.state:
            raise RuntimeError(f"no setup for strategy tag {tag!r} on this node: the server must send {P.SETUP} first")
        setup = context.state[f"{tag}.setup"]
        backbone = ElasticViT.from_arch(json.loads(str(setup["arch"])))
        P.load_arrays(backbone, context.state[f"{tag}.backbone"])
        for p in backbone.parameters():
            p.requires_grad_(False)
        header = build_header(json.loads(str(setup["header"])))
        P.load_arrays(header, context.state[f"{tag}.header"])
        device = accel.resolve_device(_run_value(context, "run.device", "auto"))  # this node's own accelerator
        return backbone.to(device).eval(), header.to(device)

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
