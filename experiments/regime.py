"""The regime grid: heterogeneity kind × data scale × device scope × seeds, every method, one command, resumable.

    python -m experiments.regime --dry-run                 # list the jobs (done / to run) and validate each config
    python -m experiments.regime                           # run what is missing, seed-major
    python -m experiments.regime --settings my.yaml --max-jobs 1 strategy.rounds=3
    python -m experiments.report                           # tables, reading and the regime map from the results

The settings come from a small declarative file (default ``experiments/regimes/default.yaml``): ``base`` overrides,
the ``methods``, the ``seeds``, and ``axes`` — each axis maps value names to lists of Hydra overrides; a setting is
one value per axis (their product, minus ``exclude``), named by joining the value names with ``-``. The runner knows
nothing about what the overrides mean, so new heterogeneity kinds, scales or scopes are new entries in the file.

Each job is one ``flwr run`` through :func:`experiments.launch.launch` (every method on the same devices, packages and
splits) in a work directory (``outputs/regime_grid/<setting>/seed<k>``); when it succeeds its small result files
(``summary.json``, ``summary.csv``), its whole-run wall time (``launch.json``) and its setting (``setting.json``: axes,
overrides, position, commit) are copied to ``experiments/results/regime_grid/<setting>/seed<k>/`` and the grid's
``provenance.json`` is rewritten. A job whose results exist is skipped, so an interrupted grid continues where it
stopped; a failed job is reported and skipped, never fatal (re-run to retry). The code is snapshotted once per call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acme_flwr import accel
from acme_flwr.config import ConfigError

from .report import JOB_BUDGET_S, KEEP, LAUNCH_FILE, RESULTS, SETTING_FILE
from .report.files import _git

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = REPO / "experiments" / "regimes" / "default.yaml"
GRID_NAME = "regime_grid"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its name, the value name per axis, its overrides and its position in the file."""

    name: str
    axes: dict[str, str]
    overrides: tuple[str, ...]
    order: int


@dataclass(frozen=True)
class Job:
    setting: Setting
    seed: int
    overrides: tuple[str, ...]  # everything the launcher gets: base, the setting's, methods, seed, extra

    @property
    def rel(self) -> Path:
        return Path(self.setting.name) / f"seed{self.seed}"


@dataclass
class Plan:
    """The settings file, expanded."""

    source: Path
    base: list[str]
    methods: str
    seeds: list[int]
    settings: list[Setting] = field(default_factory=list)

    def jobs(self, extra: Sequence[str] = (), seeds: Sequence[int] | None = None) -> list[Job]:
        """Seed-major: every setting of the first seed, then the next (a grid stopped early covers every setting)."""
        return [Job(s, seed, (*self.base, *s.overrides, f"strategy.names={self.methods}", f"run.seed={seed}", *extra))
                for seed in (self.seeds if seeds is None else seeds) for s in self.settings]


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of Hydra overrides (strings like partition.alpha=0.1); "
                          f"got {value!r}")
    return list(value)


def load_plan(path: Path) -> Plan:
    """Read and expand a settings file; a malformed one raises ConfigError naming the key and the fix."""
    if not path.is_file():
        raise ConfigError(f"regime settings file {path} does not exist; give --settings <file.yaml>")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the settings file must be a mapping with base, methods, seeds and axes")
    unknown = sorted(set(raw) - {"base", "methods", "seeds", "axes", "exclude"})
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; allowed: base, methods, seeds, axes, exclude")
    methods = raw.get("methods")
    if not isinstance(methods, str) or not methods.strip():
        raise ConfigError(f"{path}: methods must be a comma-separated string of strategy names, e.g. acme,local")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, dict) and v for v in axes.values()):
        raise ConfigError(f"{path}: axes must map each axis name to a non-empty mapping of value name -> overrides")
    exclude = set(raw.get("exclude") or [])
    plan = Plan(path, _overrides(raw.get("base"), f"{path}: base"), methods.replace(" ", ""), seeds)
    names = list(axes)
    for combo in itertools.product(*(list(axes[a].items()) for a in names)):
        name = "-".join(str(value) for value, _ in combo)
        if name in exclude:
            continue
        overrides = [o for (value, ovs), axis in zip(combo, names, strict=True)
                     for o in _overrides(ovs, f"{path}: axes.{axis}.{value}")]
        plan.settings.append(Setting(name, {a: str(v) for a, (v, _) in zip(names, combo, strict=True)},
                                     tuple(overrides), len(plan.settings)))
    missing = sorted(exclude - {s.name for s in plan.settings} - {"-".join(map(str, c)) for c in
                                                                   itertools.product(*(axes[a] for a in names))})
    if missing:
        raise ConfigError(f"{path}: exclude names settings that are not in the grid: {missing}")
    if not plan.settings:
        raise ConfigError(f"{path}: every setting is excluded; nothing to run")
    return plan


def validate(job: Job) -> None:
    """Compose and validate the job's config, strategy names included (no data is read); raise ConfigError."""
    from .runconfig import compose

    compose(list(job.overrides))


def is_done(results: Path, job: Job) -> bool:
    return (results / job.rel / "summary.json").exists()


def record(results: Path, work: Path, job: Job, wall_s: float, command: str) -> Path:
    """Copy a finished job's small files into the results directory, with its wall time and setting."""
    dst = results / job.rel
    dst.mkdir(parents=True, exist_ok=True)
    for keep in KEEP:
        if (work / keep).exists():
            shutil.copy2(work / keep, dst / keep)
    (dst / LAUNCH_FILE).write_text(json.dumps({"launcher_wall_s": round(wall_s, 2)}) + "\n")
    (dst / SETTING_FILE).write_text(json.dumps(
        {"setting": job.setting.name, "axes": job.setting.axes, "order": job.setting.order, "seed": job.seed,
         "overrides": list(job.overrides), "commit": _git("rev-parse", "--short", "HEAD"),
         "dirty": bool(_git("status", "--porcelain", "--", "acme_flwr", "strategies", "clients"))}, indent=1) + "\n")
    write_provenance(results, command)
    return dst


def write_provenance(results: Path, command: str) -> None:
    """The grid's provenance (what ``experiments.report`` prints under its tables), from the jobs it holds."""
    jobs = sorted(results.rglob("summary.json"))
    metas = [json.loads(p.read_text()) for j in jobs if (p := j.with_name(SETTING_FILE)).exists()]
    commits = sorted({m["commit"] for m in metas}) or [_git("rev-parse", "--short", "HEAD")]
    versions = json.loads(jobs[-1].read_text()).get("versions", {}) if jobs else {}
    provenance = {"command": command, "date": dt.date.today().isoformat(), "commit": ", ".join(commits),
                  "dirty": any(m.get("dirty") for m in metas),
                  "machine": f"{platform.machine()}, {accel.cores()} CPUs, {platform.system()}", "versions": versions,
                  "jobs": len(jobs)}
    (results / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")


def run_grid(plan: Plan, jobs: list[Job], results: Path, work: Path, command: str,
             max_jobs: int | None = None) -> tuple[list[Job], list[str]]:
    """Run the jobs whose results are missing (at most ``max_jobs``); return the ones that ran and the failures."""
    from .launch import launch, snapshot

    todo = [j for j in jobs if not is_done(results, j)][:max_jobs]
    ran: list[Job] = []
    failed: list[str] = []
    if not todo:
        return ran, failed
    results.mkdir(parents=True, exist_ok=True)
    app = snapshot()
    try:
        for i, job in enumerate(todo, 1):
            out = work / job.rel
            if out.exists():  # an unfinished earlier attempt: its results were never recorded
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            logger.info("[%d/%d] %s seed %d ...", i, len(todo), job.setting.name, job.seed)
            started = time.monotonic()
            with (work / f"{job.setting.name}-seed{job.seed}.log").open("w") as log:
                try:
                    launch(out, None, list(job.overrides), app_dir=app, stream_to=log)
                except (RuntimeError, ConfigError) as exc:
                    failed.append(f"{job.setting.name} seed {job.seed}: {exc} (log: {log.name})")
                    logger.warning("  failed: %s (log: %s); re-run to retry", exc, log.name)
                    continue
            took = time.monotonic() - started
            record(results, out, job, took, command)
            ran.append(job)
            cloud = json.loads((out / "summary.json").read_text()).get("cloud", {}).get("wall_time_s") or 0.0
            logger.info("  done in %.0f s (%.0f s after the cloud side)", took, took - cloud)
            if took - cloud > JOB_BUDGET_S:
                logger.warning("  %s seed %d took %.0f s after the cloud side, over the %d s budget per job",
                               job.setting.name, job.seed, took - cloud, JOB_BUDGET_S)
    finally:
        shutil.rmtree(app, ignore_errors=True)
    return ran, failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="the grid's settings file (YAML)")
    parser.add_argument("--results", type=Path, default=RESULTS / GRID_NAME,
                        help="where each finished job's result files go (default experiments/results/regime_grid)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / GRID_NAME,
                        help="the jobs' run directories (checkpoints, logs; never committed)")
    parser.add_argument("--seeds", default=None, help="comma-separated subset of the file's seeds")
    parser.add_argument("--only", default=None, help="comma-separated setting names to run (default: all)")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs (resume later)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and validate their configs; run nothing")
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every job (e.g. strategy.rounds=3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        plan = load_plan(args.settings)
        if args.only:
            wanted = args.only.split(",")
            unknown = sorted(set(wanted) - {s.name for s in plan.settings})
            if unknown:
                raise ConfigError(f"--only names unknown settings {unknown}; the file has "
                                  f"{[s.name for s in plan.settings]}")
            plan.settings = [s for s in plan.settings if s.name in wanted]
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        jobs = plan.jobs(args.extra, seeds)
        if args.dry_run:
            for job in jobs:
                validate(job)
                state = "done" if is_done(args.results, job) else "to run"
                print(f"{state:>6}  {job.rel}  {' '.join(job.overrides)}")
            left = sum(not is_done(args.results, j) for j in jobs)
            print(f"{len(jobs)} jobs ({len(plan.settings)} settings × {len(seeds or plan.seeds)} seeds), {left} "
                  "to run; every config is valid")
            return 0
        command = " ".join(["python -m experiments.regime", *(sys.argv[1:] if argv is None else argv)])
        started = time.monotonic()
        ran, failed = run_grid(plan, jobs, args.results, args.work, command, args.max_jobs)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"regime grid: {len(ran)} jobs ran in {time.monotonic() - started:.0f} s; results in {args.results}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
