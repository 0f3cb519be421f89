"""Where a run reads and writes (output and cache directories) and the fingerprints its caches are keyed by."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from acme_flwr.config import AcmeConfig


def out_dir(cfg: AcmeConfig) -> Path:
    """``run.out_dir`` (absolute recommended: the ServerApp runs in the SuperLink's cwd) or ``./outputs/<name>``."""
    base = Path(cfg.run.out_dir) if cfg.run.out_dir else Path.cwd() / "outputs" / cfg.run.name
    return base.expanduser().resolve()


def cache_dir(cfg: AcmeConfig) -> Path:
    """``cloud.cache_dir``, else ``$ACME_CACHE_DIR``, else ``~/.cache/acme_flwr``."""
    raw = cfg.cloud.cache_dir or os.environ.get("ACME_CACHE_DIR") or "~/.cache/acme_flwr"
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_feature_dir(run_id: int) -> Path:
    """Where the worker processes of one machine share a run's frozen-backbone grids (``FeatureCache.shared_dir``):
    ``<tmp>/acme-features-<run id>``. The ServerApp removes it when the run ends (in simulation it runs on that
    machine)."""
    return Path(tempfile.gettempdir()) / f"acme-features-{int(run_id)}"


def model_store_dir(run_id: int) -> Path:
    """Where the simulated devices of one machine keep what they received, once per fingerprint
    (:mod:`acme_flwr.model_store`): ``<tmp>/acme-models-<run id>``. A real device uses its node config's
    ``model-store-dir`` instead; this per-run directory goes with :func:`remove_run_dirs`."""
    return Path(tempfile.gettempdir()) / f"acme-models-{int(run_id)}"


def remove_run_dirs(run_id: int) -> None:
    """Remove what a run kept in this machine's temporary directory (the shared grids, the simulated devices'
    model store). Called once the run has ended; a missing directory is fine."""
    for path in (shared_feature_dir(run_id), model_store_dir(run_id)):
        shutil.rmtree(path, ignore_errors=True)


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 over tensors' dtypes, shapes and bytes: the cache keys of the cloud stage and the edge search."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
