"""Where a run reads and writes: output and cache directories, the model's input shape."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .config import AcmeConfig
from .models import create_model


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


@functools.lru_cache(maxsize=8)
def _shape(name: str, pretrained_path: str) -> tuple[int, int]:
    if pretrained_path:
        cfg_file = Path(pretrained_path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"model.pretrained_path={pretrained_path!r} has no config.json; point it at a "
                                    "save_pretrained directory (config.json + model.safetensors)")
        hf = json.loads(cfg_file.read_text())
        return int(hf.get("image_size", 224)), int(hf.get("num_channels", 3))
    model = create_model(name)
    return model.config.image_size, model.config.num_channels


def input_shape(cfg: AcmeConfig) -> tuple[int, int]:
    """(image_size, num_channels) the backbone expects."""
    return _shape(cfg.model.name, cfg.model.pretrained_path)
