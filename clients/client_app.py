"""The ClientApp of ``flwr run .``: the ACME handlers on data and profiles derived from the run config."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # noqa: F401 - see below
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from acme_flwr import protocol as P
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.runtime import out_dir
from acme_flwr.task import DeviceData, TensorSplit, federated_data
from acme_flwr.topology import device_profile

from .handlers import AcmeClient


def _cfg(context: Context) -> AcmeConfig:
    """The run's validated config; parsed once per worker and run config, not on every message (read-only cache)."""
    return _parse(tuple(sorted(context.run_config.items())))


@functools.lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, Any], ...]) -> AcmeConfig:
    return AcmeConfig.from_flat(dict(items))


def device_data(context: Context) -> DeviceData:
    """This node's partition (``node_config['partition-id']``) of the run's federated data."""
    cfg = _cfg(context)
    pid = int(context.node_config["partition-id"])
    return federated_data(cfg, *input_shape(cfg)).device(pid)


def profile(context: Context) -> dict[str, Any]:
    cfg = _cfg(context)
    prof = device_profile(int(context.node_config["partition-id"]), cfg.device_classes)
    return {"device-class": prof.device_class, "size-constraint": prof.size_constraint}


def generic_test(context: Context) -> TensorSplit:
    """The class-balanced held-out set that no choice ever used (not the cloud's validation split, which chose
    importance, the PFG table and the warm header), for measuring generic accuracy only."""
    cfg = _cfg(context)
    return federated_data(cfg, *input_shape(cfg)).generic_test


# One ClientApp gets one CPU (Ray's num_cpus=1); more intra-op threads only oversubscribe the 2-core machines.
torch.set_num_threads(1)
# torch.optim's first optimizer imports torch._dynamo (~2.4 s, once per process): imported above, so a worker pays it
# when it loads the app, with its other imports, and not inside the first message it handles.


def checkpoints(context: Context) -> Path:
    """Devices keep their state under ``<run.out_dir>/checkpoints/devices`` (one disk in simulation)."""
    return out_dir(_cfg(context)) / "checkpoints" / "devices"


KILL_HOOK = "ACME_TEST_KILL_AT"  # test hook: "<strategy>:<round>:<partition-id>:<once-file>"


def _test_kill_hook(msg: Message, context: Context, call_next: Any) -> Message:
    """TEST HOOK (tests/test_worker_death.py), inert unless ``$ACME_TEST_KILL_AT`` is set: the train message of that
    strategy, round and partition-id SIGKILLs the worker process that handles it (in Ray simulation: its
    ``ClientAppActor``, as the kernel's OOM killer would), once: only the call that creates ``<once-file>`` kills,
    so the resumed run trains that round normally."""
    spec = os.environ.get(KILL_HOOK)
    if spec and msg.metadata.message_type.startswith("train"):
        strategy, rnd, pid, once = spec.split(":", 3)
        cfg = msg.content.config_records.get(P.CONFIG, {})
        if (str(cfg.get("tag")) == strategy and str(cfg.get("server-round")) == rnd
                and str(context.node_config.get("partition-id")) == pid):
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return call_next(msg, context)
            os.kill(os.getpid(), signal.SIGKILL)
    return call_next(msg, context)


app = AcmeClient(device_data, profile, generic_test, checkpoints).register(ClientApp(mods=[_test_kill_hook]))
