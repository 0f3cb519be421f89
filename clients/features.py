"""A device's frozen sub-backbone and its token grids: rebuilt from the model store, cached per worker process.

The one thing kept outside ``context.state`` besides the model store is a bounded cache of the frozen sub-backbone's
token grids on the device's fixed images (:class:`FeatureCache`, one per worker process), keyed by run, backbone and
data fingerprints, device and precision (strategies and devices with the same package share it): a hit skips
rebuilding the backbone and its forward pass; a miss (another worker, an evicted entry) recomputes the same grids.
Keeping the grids in ``context.state`` instead would serialize them with every message.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, Context

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.cloud.elastic_vit import ElasticViT
from acme_flwr.device.training import FeatureCache, backbone_grids, split_fingerprint
from acme_flwr.model_store import ModelStore, model_store
from acme_flwr.runtime import model_store_dir, shared_feature_dir
from acme_flwr.task import TensorSplit

from .state import DeviceState

_PROCESS_CACHE = FeatureCache()
#: the node-config key a real device names its model-store directory with (``--node-config``)
STORE_DIR_KEY = "model-store-dir"


def process_feature_cache() -> FeatureCache:
    """This worker process's grid cache, shared by every node and strategy the process serves (its keys name run,
    backbone, split, data, device and precision, so sharing never mixes two nodes' grids)."""
    return _PROCESS_CACHE


def run_value(context: Context, key: str, default: str) -> str:
    """A run-config value this node uses for itself (device placement), with the library's default."""
    return str(context.run_config.get(key, default))


def node_device(context: Context) -> torch.device:
    return accel.resolve_device(run_value(context, "run.device", "auto"))  # this node's own accelerator


def shares_worker_files(context: Context) -> bool:
    """Whether this process is one of several workers of one machine serving the same devices: Flower's Ray
    simulation backend, where a device's messages go to whichever worker is free. Then the grids also go through
    files (``FeatureCache.shared_dir``), on CPU; a real device is one process and keeps them in memory only."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and node_device(context).type == "cpu"


def default_store_dir(context: Context) -> Path:
    """The node config's ``model-store-dir`` (a real device's disk; kept across runs), else this run's directory
    in the machine's temporary directory (shared by every simulated device of the machine)."""
    configured = context.node_config.get(STORE_DIR_KEY)
    return Path(str(configured)).expanduser() if configured else model_store_dir(context.run_id)


def store_of(context: Context, store_dir: Callable[[Context], Path] | None = None) -> ModelStore:
    return model_store((store_dir or default_store_dir)(context))


def backbone_record(store: ModelStore, digest: str) -> ArrayRecord:
    """The stored sub-backbone as the ArrayRecord the setup message carried (verified against ``digest``)."""
    return ArrayRecord({k: Array(v) for k, v in store.get(digest).items()})


def load_backbone(context: Context, state: DeviceState, store: ModelStore) -> ElasticViT:
    """The frozen sub-backbone rebuilt from the model store, on this node's own accelerator."""
    backbone = ElasticViT.from_arch(json.loads(state.arch))
    P.load_arrays(backbone, backbone_record(store, state.backbone_fp))
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.to(node_device(context)).eval()


class Features:
    """One message's access to the frozen backbone's token grids: from the cache when the same run, backbone, data
    split, device and precision were seen before, else computed (the backbone rebuilt once per message)."""

    def __init__(self, context: Context, state: DeviceState, store: ModelStore, cache: FeatureCache | None) -> None:
        self.context, self.state, self.store, self.cache = context, state, store, cache
        self._backbone: ElasticViT | None = None

    @property
    def backbone(self) -> ElasticViT:
        if self._backbone is None:
            self._backbone = load_backbone(self.context, self.state, self.store)
        return self._backbone

    def __call__(self, name: str, split: TensorSplit) -> torch.Tensor:
        """The grids of ``split`` (``name``: train, val, test or generic); call inside the message's precision."""
        cache, c = self.cache, self.context
        digest = self.state.backbone_fp
        limit_mb = int(run_value(c, "run.feature_cache_mb", "1024"))
        if cache is None or not digest or limit_mb <= 0:
            return backbone_grids(self.backbone, split.x)
        cache.max_bytes = limit_mb << 20
        cache.shared_dir = shared_feature_dir(c.run_id) if shares_worker_files(c) else None
        key = (c.run_id, digest, name, split_fingerprint(split.x), str(node_device(c)),
               run_value(c, "run.precision", "fp32"))
        return cache.get(key, lambda: backbone_grids(self.backbone, split.x))
