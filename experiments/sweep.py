"""Hydra front door: compose ``conf/``, validate, and run one ``flwr run`` per job (sweeps with ``-m``).

    python -m experiments.sweep                                   # the default run
    python -m experiments.sweep +experiment=smoke                 # seconds-scale check
    python -m experiments.sweep -m partition.alpha=0.1,0.5,1.0 run.seed=0,1,2

Each job's resolved config is validated with the same schema as ``[tool.flwr.app.config]`` before anything runs,
then passed to ``flwr run`` as flat keys; results land in the job's Hydra output directory (``run.out_dir``
overrides it). ``experiments.report`` tabulates a sweep afterwards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from acme_flwr.config import AcmeConfig

from .launch import launch

logger = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(dcfg: DictConfig) -> None:
    raw = OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True)
    cfg = AcmeConfig.from_dict(raw)  # stops here, naming the key, on any bad value
    out = Path(cfg.run.out_dir) if cfg.run.out_dir else Path(HydraConfig.get().runtime.output_dir)
    overrides = [f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in cfg.to_flat().items() if k != "run.out_dir"]
    summary = launch(out, cfg.topology.num_devices, overrides)
    data = json.loads(summary.read_text())
    acc = data["accuracy"].get("personalized", {}).get("mean")
    logger.info("job done: %s (personalized accuracy %s)", summary, acc)


if __name__ == "__main__":
    main()
