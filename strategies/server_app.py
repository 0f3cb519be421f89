"""The ServerApp of ``flwr run .``: cloud stage, then each configured strategy on the same devices, then results."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from acme_flwr.checkpoints import paths as checkpoint_files
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.logs import use_flower_logging
from acme_flwr.packages import build_packages
from acme_flwr.partition import format_label_report
from acme_flwr.plots import plot_run
from acme_flwr.results import RunRecorder, format_table, lost_device_lines, resume_conflicts
from acme_flwr.runtime import cache_dir, out_dir, remove_run_dirs
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology
from acme_flwr.worker_death import WorkerDied, record_death

from .checkpointer import checkpoint_path
from .registry import STRATEGIES, build_strategy

logger = logging.getLogger("acme_flwr")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate config → cloud stage (cached) → every strategy in ``strategy.names`` → results contract; then
    remove what the simulation's workers shared on this machine (``remove_run_dirs``: token grids, model store)."""
    try:
        _run(grid, context)
    finally:
        remove_run_dirs(context.run_id)


def _run(grid: Grid, context: Context) -> None:
    use_flower_logging()  # our lines go through Flower's handlers, once (no second root handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # beside the clients' workers; the cloud's backbone stages take every core themselves
    cfg = AcmeConfig.from_flat(context.run_config)
    for name in cfg.strategy_names:
        if name not in STRATEGIES:
            raise ConfigError(f"strategy.names contains {name!r}; allowed values: {STRATEGIES.names()}")
    # accept the config (resume included) before anything in the output directory is written or removed
    check_resumable(cfg, out_dir(cfg) / "checkpoints")
    recorder = RunRecorder(out_dir(cfg), cfg.to_dict(), cfg.run.seed, resume=cfg.run.resume)
    logger.info("results go to %s", recorder.out_dir)
    started = time.time()
    data = federated_data(cfg, *input_shape(cfg))
    report = data.report()
    recorder.data = {"dataset": cfg.data.name, "num_classes": data.num_classes, "label_report": report,
                     "cloud_samples": int(len(data.cloud_indices)),
                     "device_splits": [{"train": len(s.train), "val": len(s.val), "test": len(s.test)}
                                       for s in data.splits]}
    logger.info("per-device label distribution (training splits):\n%s", format_label_report(report))
    deployment = build_packages(cfg, data, cache_dir(cfg), progress=False)
    recorder.cloud = {"table": deployment.table, "picks": deployment.picks, "full_params": deployment.full_params,
                      "stage_log": _brief(deployment.stage_log), "wall_time_s": round(time.time() - started, 2)}
    topology = Topology(cfg.topology.num_devices, cfg.topology.num_edges, cfg.topology.assignment,
                        cfg.topology.edge_rounds_per_cloud)
    for i, name in enumerate(cfg.strategy_names, 1):
        logger.info("[STRATEGY %d/%d] %s", i, len(cfg.strategy_names), name)
        strategy_started = time.time()
        strategy = build_strategy(name, cfg, topology, deployment, recorder)
        strategy.max_reply_bytes = cfg.strategy.max_reply_bytes
        strategy.admission.stop_on_worker_death = cfg.run.on_lost_devices == "resume"
        done = 0
        checkpoint = checkpoint_path(recorder.out_dir / "checkpoints", name)
        if cfg.run.resume and checkpoint.exists():
            done = strategy.restore(checkpoint)
        elif cfg.run.resume:  # interrupted before its first checkpoint: it starts over, its partial rows go
            recorder.restore_rows(name, [])
        else:
            for stale in checkpoint_files(checkpoint):
                stale.unlink(missing_ok=True)
        if done < cfg.strategy.rounds:  # start() logs the strategy's lost devices (DEGRADED) itself
            try:
                strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds - done,
                               timeout=cfg.strategy.timeout)
            except WorkerDied as died:  # nothing of the damaged round was checkpointed: the launcher resumes
                record_death(recorder.out_dir, died)
                logger.error("WORKER DIED: %s; stopping before that round is checkpointed (run.on_lost_devices="
                             "resume: the launcher resumes the run from the checkpoints)", died.line())
                raise
            strategy.finalize()
        else:
            strategy.finalize()
            strategy.report_lost_devices()
        strategy.record.extra["wall_time_s"] = round(time.time() - strategy_started, 2)  # this run's part of it
        recorder.write_summary(primary=cfg.strategy_names[0])  # keep what is done even if a later strategy fails
    path = recorder.write_summary(primary=cfg.strategy_names[0])
    try:
        plots = plot_run(path)
        logger.info("plots: %s", ", ".join(p.name for p in plots))
    except Exception:  # noqa: BLE001 - a plot must never cost the run its results
        logger.exception("plotting failed; summary.json is complete")
    logger.info("results:\n%s", format_table(json.loads(Path(path).read_text())))
    logger.info("summary written to %s", path)
    lost = lost_device_lines(json.loads(Path(path).read_text()))  # each strategy logged its own DEGRADED line
    if lost and cfg.run.on_lost_devices == "fail":
        raise RuntimeError(f"run.on_lost_devices=fail: {len(lost)} strategy(ies) lost devices (see lost_devices in "
                           f"{path})")


def check_resumable(cfg: AcmeConfig, checkpoint_dir: Path) -> None:
    """Record the config next to the checkpoints; on resume, refuse checkpoints written under another config (then
    nothing is written)."""
    current = {k: v for k, v in cfg.to_flat().items() if k != "run.resume"}
    changed = resume_conflicts(checkpoint_dir, current) if cfg.run.resume else []
    if changed:
        raise ConfigError(f"run.resume=true but the checkpoints in {checkpoint_dir} were written with different "
                          f"values of {changed}; resume with the same config or use a new run.out_dir")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "config.json").write_text(json.dumps(current, indent=1, sort_keys=True))


def _brief(stage_log: dict) -> dict:
    """Stage log without bulky per-step loss lists."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "losses"} if isinstance(v, dict) else v
            for k, v in stage_log.items()}
