"""A tiny device for handler tests: a micro ViT package, generated data and the messages a strategy would send."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr import protocol as P
from acme_flwr.clients.handlers import AcmeClient
from acme_flwr.cloud.models import create_model
from acme_flwr.device.headers import build_header
from acme_flwr.task import DeviceData, TensorSplit

from .inprocess import InProcessGrid

NUM_CLASSES = 3
HEADER_SPEC = {"name": "gated_temp_cnn", "in_channels": 32, "num_classes": NUM_CLASSES, "channels": 4}


def split(n: int, seed: int, shape: tuple[int, ...] = (1, 8, 8)) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, *shape, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))


def device_data(pid: int) -> DeviceData:
    return DeviceData(pid, split(12, 10 * pid), split(6, 10 * pid + 1), split(6, 10 * pid + 2))


def package(seed: int = 0) -> tuple[RecordDict, str]:
    """A setup message's content (sub-backbone + header) and the backbone's arch JSON."""
    torch.manual_seed(seed)
    backbone = create_model("vit_micro_test", num_labels=NUM_CLASSES).extract_subnet(1.0, 1.0)
    header = build_header(HEADER_SPEC)
    return RecordDict({P.BACKBONE: P.arrays_from_state(backbone.state_dict()),
                       P.HEADER: P.arrays_from_state(header.state_dict())}), json.dumps(backbone.arch())


def setup_message(content: RecordDict, arch: str, node: int, tag: str = "acme", **extra: object) -> Message:
    cfg = ConfigRecord({"tag": tag, "backbone-arch": arch, "header-spec": json.dumps(HEADER_SPEC),
                        "feature-samples": 0, **extra})
    body = RecordDict({P.CONFIG: cfg, P.BACKBONE: content[P.BACKBONE], P.HEADER: content[P.HEADER]})
    return Message(body, dst_node_id=node, message_type=P.SETUP)


def evaluate_message(node: int, tag: str = "acme", server_round: int = 1) -> Message:
    cfg = ConfigRecord({"tag": tag, "server-round": server_round, "seed": 0, "mode": "standard"})
    return Message(RecordDict({P.CONFIG: cfg}), dst_node_id=node, message_type=P.EVALUATE)


def profile_message(node: int) -> Message:
    return Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=P.PROFILE)


def grid_for(store: Path, nodes: int = 2, data_fn: Callable[[Context], DeviceData] | None = None,
             profile_fn: Callable[[Context], dict] | None = None, run_config: dict | None = None,
             checkpoint_fn: Callable[[Context], Path | None] | None = None) -> tuple[InProcessGrid, AcmeClient]:
    """An in-process grid of ``nodes`` devices whose ClientApp is the ACME handlers (model store in ``store``)."""
    client = AcmeClient(data_fn or (lambda c: device_data(int(c.node_config["partition-id"]))),
                        profile_fn or (lambda c: {"device-class": "mid"}), checkpoint_fn=checkpoint_fn,
                        feature_cache=None, store_dir_fn=lambda c: store)
    return InProcessGrid(client.register(ClientApp()), nodes, run_config), client


def ask(grid: InProcessGrid, msg: Message) -> Message:
    (reply,) = grid.send_and_receive([msg])
    return reply
