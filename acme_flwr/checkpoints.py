"""Checkpoint files without pickle: a JSON document for the structure and an ``.npz`` for the arrays.

``save_state(path, state)`` writes ``<stem>.json`` and ``<stem>.npz`` (each atomically); ``load_state(path)`` reads
them back with ``np.load(allow_pickle=False)``, so loading a checkpoint can never execute code. The structure may hold
``None``, bools, ints, floats (NaN/Inf included), strings, lists, tuples, dicts with keys of those scalar types or
tuples of them, numpy scalars (stored as Python scalars) and numpy arrays of numeric or bool dtype. Anything else
(objects, object arrays) is refused when saving.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "acme-flwr-checkpoint/1"
_TAGS = ("__array__", "__tuple__", "__items__", "__float__")


class CheckpointError(ValueError):
    """A checkpoint cannot be written (unsupported value) or read (missing, corrupt or of another format)."""


def paths(path: str | Path) -> tuple[Path, Path]:
    """The ``(.json, .npz)`` pair of a checkpoint; ``path`` may name either file or the bare stem."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in {".json", ".npz", ".pkl"} else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def _encode(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise CheckpointError(f"{where}: arrays of dtype {obj.dtype} are not stored (numeric or bool only)")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), arrays, where)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, arrays, f"{where}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, tuple, type(None), np.generic)):
                raise CheckpointError(f"{where}: dict key {k!r} of type {type(k).__name__} is not stored")
            items.append([_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")])
        return {"__items__": items}
    raise CheckpointError(f"{where}: values of type {type(obj).__name__} are not stored in checkpoints")


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__array__"}:
        return np.array(arrays[obj["__array__"]])
    if set(obj) == {"__tuple__"}:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if set(obj) == {"__float__"}:
        return float(obj["__float__"])
    if set(obj) == {"__items__"}:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in obj["__items__"]}
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (tuple, list)) else key


def save_state(path: str | Path, state: Any) -> Path:
    """Write ``state`` as ``<stem>.json`` + ``<stem>.npz`` (arrays first, then the document); returns the JSON path."""
    doc_path, npz_path = paths(path)
    arrays: dict[str, np.ndarray] = {}
    doc = {"format": FORMAT, "state": _encode(state, arrays, "state")}
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = npz_path.with_name(npz_path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(npz_path)
    tmp = doc_path.with_name(doc_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.replace(doc_path)
    return doc_path


def load_state(path: str | Path) -> Any:
    """Read a checkpoint written by :func:`save_state` (never unpickles); raise CheckpointError if unreadable."""
    doc_path, npz_path = paths(path)
    if not doc_path.exists() or not npz_path.exists():
        legacy = doc_path.with_suffix(".pkl")
        hint = f" ({legacy.name} is an old pickle checkpoint: it is never loaded)" if legacy.exists() else ""
        raise CheckpointError(f"no checkpoint at {doc_path} + {npz_path.name}{hint}")
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {doc_path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {doc_path} is not in format {FORMAT!r}")
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            return _decode(doc["state"], arrays)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint arrays {npz_path} unreadable: {exc}") from None
