"""The ACME wire protocol: message types, record keys and record builders shared by strategies and clients.

Both sides import only this module for names, so a renamed key cannot silently desynchronise them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# message types ("<category>.<action>")
PROFILE = "query.acme_profile"   # learn partition-id and device profile
SETUP = "query.acme_setup"       # ship sub-backbone + header once; reply with feature statistics
TRAIN = "train.acme"             # local header training; reply importance (ACME) or weights (baselines)
EVALUATE = "evaluate.acme"       # (prune with mixed importance, then) evaluate on val and test
NAS_MESSAGE = "query.acme_nas"   # federated header search: train the shared child / score arcs on device data

# record keys
CONFIG = "config"
PROFILE_REC = "profile"
BACKBONE = "backbone"
HEADER = "header"
IMPORTANCE = "importance"
FEATURES = "features"
METRICS = "metrics"
CHILD = "nas-child"              # the shared ENAS child's weights in a NAS message

# standard Flower contract (drop-in mode)
STD_ARRAYS = "arrays"
STD_CONFIG = "config"
STD_METRICS = "metrics"
NUM_EXAMPLES = "num-examples"

# the largest reply a strategy accepts by default (strategy.max_reply_bytes; 0 = no cap): far above any ACME reply
# (importance vectors, headers, feature statistics), generous for drop-in models
DEFAULT_MAX_REPLY_BYTES = 512 * 1024 * 1024
MAX_NUM_EXAMPLES = 2**31 - 1


def arrays_from_state(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A torch state dict as an ArrayRecord (contiguous CPU copies, order kept)."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in state.items()})


def state_from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def load_arrays(module: torch.nn.Module, record: ArrayRecord, *, partial: bool = False) -> None:
    """Load ``record`` into ``module``: every received key must exist with the same number of elements (0-d
    tensors such as BatchNorm's ``num_batches_tracked`` travel as shape (1,) and are reshaped back). With
    ``partial`` the record may hold a subset of the keys (FedPer bodies); otherwise it must hold all of them."""
    state = module.state_dict()
    received = state_from_arrays(record)
    missing = sorted(set(state) - set(received))
    if missing and not partial:
        raise ValueError(f"received weights lack {len(missing)} keys of this model, e.g. {missing[:3]}")
    for k, v in received.items():
        if k not in state or state[k].numel() != v.numel():
            shape = tuple(state[k].shape) if k in state else "absent"
            raise ValueError(f"received weight {k!r} {tuple(v.shape)} does not match this model ({shape})")
        state[k] = v.reshape(state[k].shape).to(state[k].dtype)
    module.load_state_dict(state)


def vector_record(vec: np.ndarray, key: str = "v") -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(vec, dtype=np.float32))})


def vector_from_record(record: ArrayRecord, key: str = "v") -> np.ndarray:
    if key not in record:
        raise KeyError(f"array record has no {key!r}; keys: {list(record.keys())}")
    return record[key].numpy()


# ------------------------------------------------------------------------------------------------- reply validation
# What a device sends back is untrusted: each helper raises InvalidReply (a ValueError) with a one-line reason, and
# nothing here unpickles or executes anything (Flower's Array.numpy() loads with allow_pickle=False).
class InvalidReply(ValueError):
    """A device's reply does not have the shape the protocol requires; the reason is one line."""


RecordType = type[ArrayRecord] | type[MetricRecord] | type[ConfigRecord]


def check_layout(content: RecordDict, required: Mapping[str, RecordType],
                 optional: Mapping[str, RecordType] | None = None) -> None:
    """Exactly these records: every ``required`` key present, nothing outside ``required`` and ``optional``, and each
    record of its kind (a ConfigRecord where an ArrayRecord belongs is refused)."""
    allowed = {**(optional or {}), **required}
    for key, record in content.items():
        want = allowed.get(key)
        if want is None:
            raise InvalidReply(f"unexpected record {key!r} ({type(record).__name__}); allowed: {sorted(allowed)}")
        if not isinstance(record, want):
            raise InvalidReply(f"record {key!r} is a {type(record).__name__}, expected a {want.__name__}")
    missing = sorted(set(required) - set(content.keys()))
    if missing:
        raise InvalidReply(f"reply lacks record(s) {missing}; has {sorted(content.keys())}")


def _finite_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def check_metrics(record: MetricRecord, required: tuple[str, ...] = (NUM_EXAMPLES,)) -> dict[str, object]:
    """Every metric a finite number (or a list of them), ``required`` keys present, ``num-examples`` (if present) a
    positive integer; returns the metrics as a dict."""
    metrics = dict(record)
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(_finite_number(v) for v in values):
            raise InvalidReply(f"metric {key!r}={_brief(value)} is not a finite number")
    missing = [k for k in required if k not in metrics]
    if missing:
        raise InvalidReply(f"metrics lack {missing}; have {sorted(metrics)}")
    if NUM_EXAMPLES in metrics:
        n = metrics[NUM_EXAMPLES]
        if isinstance(n, list) or float(n) != int(n) or not 0 < int(n) <= MAX_NUM_EXAMPLES:
            raise InvalidReply(f"metric {NUM_EXAMPLES!r}={_brief(n)} must be an integer in [1, {MAX_NUM_EXAMPLES}]")
    return metrics


def read_array(record: ArrayRecord, key: str, *, shape: tuple[int, ...] | None = None, kind: str = "f",
               finite: bool = True) -> np.ndarray:
    """``record[key]`` as numpy, checked: it decodes, its dtype kind is in ``kind`` (e.g. ``"f"``), it has
    ``shape`` (if given) and, for floats, no NaN/Inf."""
    if key not in record:
        raise InvalidReply(f"array record has no {key!r}; keys: {sorted(record.keys())[:5]}")
    try:
        arr = record[key].numpy()
    except Exception as exc:  # noqa: BLE001 - any decoding failure of untrusted bytes is a rejection
        raise InvalidReply(f"array {key!r} does not decode as a numpy array: {type(exc).__name__}: "
                           f"{str(exc)[:120]}") from None
    if arr.dtype.kind not in kind:
        raise InvalidReply(f"array {key!r} has dtype {arr.dtype}, expected kind {kind!r}")
    if shape is not None and arr.shape != shape:
        raise InvalidReply(f"array {key!r} has shape {arr.shape}, expected {shape}")
    if finite and arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise InvalidReply(f"array {key!r} contains NaN or Inf")
    return arr


def check_size(num_bytes: int, cap: int) -> None:
    """Refuse a reply larger than ``cap`` bytes (``cap`` 0: no limit)."""
    if cap and num_bytes > cap:
        raise InvalidReply(f"reply of {num_bytes} bytes exceeds the cap of {cap} bytes (strategy.max_reply_bytes)")


def _brief(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
