"""The app's ClientApp: its own handlers stay; ACME's are added with one call."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from acme_flwr.clients import AcmeClient
from acme_flwr.task import DeviceData, TensorSplit
from ownapp.task import device_splits

app = ClientApp()


@app.query("hello")  # the app's own handler: untouched by ACME's
def hello(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"hello": 1})}), reply_to=msg)


def data_fn(context: Context) -> DeviceData:
    """This node's data in ACME's contract: its partition-id (the device's one identity) and three splits."""
    torch.set_num_threads(1)
    pid = int(context.node_config["partition-id"])
    splits = {name: TensorSplit(x, y) for name, (x, y) in device_splits(pid).items()}
    return DeviceData(pid, splits["train"], splits["val"], splits["test"])  # raw_train_bytes: derived


def profile_fn(context: Context) -> dict[str, Any]:
    """What kind of device this is: one of the device classes the ServerApp built packages for."""
    return {"device-class": "small" if int(context.node_config["partition-id"]) % 2 else "large"}


AcmeClient(data_fn, profile_fn).register(app)
