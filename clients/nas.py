"""The device's part of the federated header search (``nas.reward=federated``; the strategy side is
``strategies/nas_search.py``): train the edge's shared ENAS child on local training data, score arcs on the local
validation split, or install the searched header in place of the one from setup."""

from __future__ import annotations

import json

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.cloud.elastic_vit import ElasticViT
from acme_flwr.device.headers import build_header
from acme_flwr.device.training import backbone_grids
from acme_flwr.edge.nas import ENASChild
from acme_flwr.edge.nas.federated import device_evaluate_arcs, device_train_child
from acme_flwr.edge.nas.header_search import calibrate_bn
from acme_flwr.protocol import CHILD
from acme_flwr.task import DeviceData

from .state import DeviceState

NAS_ACTIONS = ("train", "evaluate", "install")


def install(msg: Message, cfg: ConfigRecord, state: DeviceState, backbone: ElasticViT,
            data: DeviceData | None) -> Message:
    """Replace the device's header (spec and weights) by the searched one; with ``calibrate-bn`` its BatchNorm
    statistics are recomputed on the device's own training data (``data``)."""
    spec = str(cfg["header-spec"])
    header = build_header(json.loads(spec))
    P.load_arrays(header, msg.content[P.HEADER])  # check it fits before keeping it
    state.header_spec = spec
    state.personal = None
    if data is not None:
        calibrate_bn(header.to(accel.device_of(backbone)), backbone_grids(backbone, data.train.x), 64)
        state.header = P.arrays_from_state(header.state_dict())
    else:
        state.header = msg.content[P.HEADER]
    return Message(RecordDict({P.METRICS: MetricRecord({"installed": 1})}), reply_to=msg)


def search_step(msg: Message, cfg: ConfigRecord, action: str, backbone: ElasticViT, data: DeviceData) -> Message:
    """``train``: the shared child, one arc per step, on the local training data (weights and counts back);
    ``evaluate``: the arcs' correct/total counts on the local validation split."""
    if action not in NAS_ACTIONS[:2]:
        raise ValueError(f"unknown NAS action {action!r}; allowed: {', '.join(NAS_ACTIONS)}")
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
    correct, total = device_evaluate_arcs(child, payload["arcs"], backbone_grids(backbone, data.val.x), data.val.y)
    return Message(RecordDict({P.METRICS: MetricRecord({"correct": correct, "total": total})}), reply_to=msg)
