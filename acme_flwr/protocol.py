"""The ACME wire protocol: message types, record keys and record builders shared by strategies and clients.

Both sides import only this module for names, so a renamed key cannot silently desynchronise them.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

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
