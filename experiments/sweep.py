"""Hydra front door: compose ``conf/``, validate, and run one ``flwr run`` per job (sweeps with ``-m``).

    python -m experiments.sweep                                   # the default run
    python -m experiments.sweep +experiment=smoke                 # seconds-scale check
    python -m experiments.sweep -m partition.alpha=0.1,0.5,1.0 run.seed=0,1,2

The overrides are checked first exactly as ``experiments.launch`` checks them (``experiments.runconfig``: unknown
keys with the nearest valid one, unknown groups/presets, duplicate keys), each job's resolved config is validated
with the same schema as ``[tool.flwr.app.config]`` before anything runs, then passed to ``flwr run`` by the launcher;
results land in the job's Hydra output directory (``run.out_dir`` overrides it). A config error prints one line and
exits with status 2. ``experiments.report`` tabulates a sweep afterwards.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from acme_flwr.config import ConfigError

from .launch import launch
from .runconfig import check_overrides, config_from_hydra

logger = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(dcfg: DictConfig) -> None:
    try:
        cfg = config_from_hydra(dcfg)  # stops here, naming the key, on any bad value
        out = Path(cfg.run.out_dir) if cfg.run.out_dir else Path(HydraConfig.get().runtime.output_dir)
        summary = launch(out, cfg=cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    data = json.loads(summary.read_text())
    acc = data["accuracy"].get("personalized", {}).get("mean")
    logger.info("job done: %s (personalized accuracy %s)", summary, acc)


def _cli_overrides(argv: list[str]) -> list[str]:
    """The overrides among Hydra's command-line arguments (flags and their values left out)."""
    return [a for a in argv if "=" in a and not a.startswith("-")]


if __name__ == "__main__":
    try:
        check_overrides(_cli_overrides(sys.argv[1:]))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
