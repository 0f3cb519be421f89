"""The device-side model store: what a device received and never changes, kept once per content fingerprint.

A device receives its sub-backbone once (the setup message) and uses it, frozen, in every later message. Keeping it
in Flower's ``context.state`` made every simulated device cost its backbone twice (Flower keeps every node's context
in the simulation process and ships it to a worker and back with every message). The store keeps it outside the
context instead:

* **on disk**, one file per fingerprint (``<fingerprint>.npz``), written atomically (a temporary file renamed into
  place), so devices (or strategies) that received the same package share one copy. In the simulation the directory
  is per run and per machine (:func:`acme_flwr.runtime.model_store_dir`, removed with
  :func:`acme_flwr.runtime.remove_run_dirs`); on a real device it is the node's ``model-store-dir`` (node config),
  where a package received in one run is reused by the next.
* **in memory**, a bounded LRU cache per worker process (:data:`MAX_ENTRIES` packages), so a worker that serves
  many simulated devices of the same class reads the file once.

Content is verified against its fingerprint (:func:`acme_flwr.runtime.fingerprint`) whenever it is read from disk:
a file that does not match is never used (:class:`ModelStoreError`, which the device reports as its failure);
``put`` with the received arrays replaces a damaged or missing file (a resumed run re-sends the setup message).
The store's size is bounded by the distinct packages a run ships (device classes x strategies), not by devices.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from acme_flwr.runtime import fingerprint

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: packages a worker process keeps in memory (least recently used evicted first)
MAX_ENTRIES = 8
_ORDER_KEY = "__acme_keys__"


class ModelStoreError(RuntimeError):
    """A stored package is missing or does not match its fingerprint: the device cannot use it."""


def arrays_fingerprint(arrays: Arrays) -> str:
    """The fingerprint of ``arrays`` in their order (the same digest the device computes from its setup message)."""
    return fingerprint(*(torch.from_numpy(np.asarray(a)) for a in arrays.values()))


class ModelStore:
    """A content-addressed directory of array sets plus a bounded in-memory cache.

    Parameters
    ----------
    root
        The directory the files live in (created on the first ``put``).
    max_entries
        How many array sets the in-memory cache keeps.
    """

    def __init__(self, root: str | Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root = Path(root)
        self.max_entries = max_entries
        self._memory: OrderedDict[str, Arrays] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files read (and verified) from disk
        self.writes = 0  # files written

    def path(self, digest: str) -> Path:
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise ModelStoreError(f"model store: {digest!r} is not a fingerprint (lowercase hex)")
        return self.root / f"{digest}.npz"

    def add(self, arrays: Arrays) -> str:
        """Keep ``arrays`` under their fingerprint, which is returned (how a device stores what it received)."""
        digest = arrays_fingerprint(arrays)
        self._keep(digest, arrays)
        return digest

    def put(self, digest: str, arrays: Arrays) -> Path:
        """Keep ``arrays`` under ``digest`` (checked against their content first). An existing file is kept if it
        holds exactly this content, otherwise (damaged, truncated) it is replaced."""
        actual = arrays_fingerprint(arrays)
        if actual != digest:
            raise ModelStoreError(f"model store: arrays do not match fingerprint {digest[:12]}… (they hash to "
                                  f"{actual[:12]}…)")
        return self._keep(digest, arrays)

    def _keep(self, digest: str, arrays: Arrays) -> Path:
        path = self.path(digest)
        with self._lock:
            known = digest in self._memory
        if known and path.exists():  # this process wrote or verified it: no second read
            return path
        if path.exists():
            try:
                self._read(digest, path)
                self._remember(digest, arrays)
                return path
            except ModelStoreError as exc:
                logger.warning("%s; replacing it with the received copy", exc)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        order = np.frombuffer(json.dumps(list(arrays)).encode(), dtype=np.uint8)
        np.savez(tmp, **{_ORDER_KEY: order}, **{f"a{i}": np.asarray(a) for i, a in enumerate(arrays.values())})
        tmp.replace(path)  # atomic: a reader sees the old file or the whole new one
        self.writes += 1
        self._remember(digest, arrays)
        return path

    def get(self, digest: str) -> Arrays:
        """The arrays stored under ``digest``: from memory, else from disk (verified); ModelStoreError if the file
        is missing or does not match."""
        with self._lock:
            if digest in self._memory:
                self._memory.move_to_end(digest)
                return self._memory[digest]
        path = self.path(digest)
        if not path.exists():
            raise ModelStoreError(f"model store: no package {digest[:12]}… in {self.root} (removed or never "
                                  "received): the device needs its setup message again (resume the run)")
        arrays = self._read(digest, path)
        self._remember(digest, arrays)
        return arrays

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and (digest in self._memory or self.path(digest).exists())

    def forget(self) -> None:
        """Empty the in-memory cache (the files stay)."""
        with self._lock:
            self._memory.clear()

    def _read(self, digest: str, path: Path) -> Arrays:
        try:
            with np.load(path, allow_pickle=False) as saved:
                names = json.loads(saved[_ORDER_KEY].tobytes().decode())
                arrays = {name: saved[f"a{i}"] for i, name in enumerate(names)}
        except (OSError, ValueError, KeyError, EOFError) as exc:  # zip/npy/json damage
            raise ModelStoreError(f"model store: {path} is unreadable ({type(exc).__name__}); not used") from exc
        self.reads += 1
        if arrays_fingerprint(arrays) != digest:
            raise ModelStoreError(f"model store: {path} does not match its fingerprint; not used")
        return arrays

    def _remember(self, digest: str, arrays: Arrays) -> None:
        with self._lock:
            self._memory[digest] = arrays
            self._memory.move_to_end(digest)
            while len(self._memory) > self.max_entries:
                self._memory.popitem(last=False)


_STORES: OrderedDict[Path, ModelStore] = OrderedDict()
_STORES_LOCK = threading.Lock()
_MAX_STORES = 4  # directories (runs) a worker process keeps a store object for


def model_store(root: str | Path) -> ModelStore:
    """This process's store for ``root`` (one per directory, so its memory cache is shared by every device and
    strategy the process serves)."""
    key = Path(root).resolve()
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = ModelStore(key)
        _STORES.move_to_end(key)
        while len(_STORES) > _MAX_STORES:
            _STORES.popitem(last=False)
        return _STORES[key]
