"""Hydra front door: compose ``conf/``, validate, and run one ``flwr run`` per job (sweeps with ``-m``).

    python -m experiments.sweep                                   # the default run
    python -m experiments.sweep +experiment=smoke                 # seconds-scale check
    python -m experiments.sweep -m partition.alpha=0.1,0.5,1.0 run.seed=0,1,2

The overrides are checked first exactly as ``experiments.launch`` checks them (``experiments.runconfig``: unknown
keys with the nearest valid one, unknown groups/presets, duplicate keys), each job's resolved config is validated
with the same schema as ``[tool.flwr.app.config]`` before anything runs, then passed to ``flwr run`` by the launcher;
results land in the job's Hydra output directory (``run.out_dir`` overrides it). A config error prints one line and
exits with status 2.

Each job prints what ``make run`` prints (progress, the byte tables, warnings; Flower's full log is in the job's
``run.log``) under a ``job i/n`` line with the sweep's ETA. A multirun ends with one table, a row per job × strategy
with the swept keys as columns, also written as ``sweep.csv`` in the multirun directory (beside Hydra's
``multirun.yaml``); a failed job is a row saying so, and the sweep then exits with status 1.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from acme_flwr.config import ConfigError
from acme_flwr.logs import format_seconds
from acme_flwr.results import format_table, headline

from .launch import PROGRESS, launch
from .runconfig import check_overrides, config_from_hydra

COLUMNS = ("strategy", "acc_mean", "acc_std", "acc_worst10", "generic_acc", "bytes_total", "ratio_to_fedavg",
           "failures", "devices")


class _Sweep:
    """What the jobs of one multirun share in this process: the swept keys, the job count and each job's outcome."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.total: int | None = None
        self.started: float | None = None
        self.jobs: list[dict[str, Any]] = []
        self.dir: Path | None = None

    def plan(self, overrides: list[str]) -> None:
        """The swept keys (``key=a,b``, ``range(...)``) and the number of jobs, from the command line's overrides."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        total: int | None = 1
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.is_sweep_override():
                self.keys.append(o.get_key_element().lstrip("+~"))
                try:
                    total = None if total is None else total * len(list(o.sweep_string_iterator()))
                except Exception:  # e.g. glob(): the count needs the config; show job i without /n
                    total = None
        self.total = total

    def job_line(self, num: int, values: dict[str, str]) -> str:
        """``job i/n key=v ...`` with the time so far and the ETA (mean job time × jobs left)."""
        now = time.monotonic()
        self.started = self.started or now
        done, elapsed = len(self.jobs), now - self.started
        of = f"/{self.total}" if self.total else ""
        eta = (f", ETA {format_seconds(elapsed / done * (self.total - done))}" if done and self.total
               else "")
        swept = " ".join(f"{k}={v}" for k, v in values.items())
        return f"job {num + 1}{of}: {swept}{f' ({format_seconds(elapsed)} elapsed{eta})' if done else ''}"

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for job in self.jobs:
            base = {"job": job["num"], **job["values"]}
            if job.get("summary") is None:
                out.append({**base, "strategy": "-", "devices": f"FAILED: {job['error']}"[:120]})
                continue
            data = json.loads(Path(job["summary"]).read_text())
            for name, block in data["strategies"].items():
                out.append({**base, **{k: headline(name, block)[k] for k in COLUMNS}, "out_dir": data["out_dir"]})
        return out

    def finish(self) -> int:
        """Print the sweep's table, write ``sweep.csv`` in the multirun directory; 1 if a job failed, else 0."""
        if not self.jobs:
            return 0
        rows = self.rows()
        cols = ["job", *self.keys, *COLUMNS]
        print(f"\nsweep: {len(self.jobs)} jobs in {format_seconds(time.monotonic() - (self.started or 0))}")
        print(format_rows(rows, cols))
        if self.dir is not None:
            path = self.dir / "sweep.csv"
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=[*cols, "out_dir"], extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            print(f"table: {path}")
        failed = [j for j in self.jobs if j.get("summary") is None]
        if failed:
            print(f"{len(failed)} of {len(self.jobs)} jobs failed; their rows say why", file=sys.stderr)
        return 1 if failed else 0


def format_rows(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A plain fixed-width table (numbers as they are in summary.csv; empty cells for missing values)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


SWEEP = _Sweep()


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(dcfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    task = dict(o.split("=", 1) for o in hc.overrides.task if "=" in o)
    values = {k: task.get(k, task.get(f"+{k}", "")) for k in SWEEP.keys}
    if multirun:
        SWEEP.dir = Path(hc.runtime.output_dir).parent
        print(SWEEP.job_line(int(hc.job.num), values), flush=True)
    job: dict[str, Any] = {"num": int(hc.job.num) if multirun else 0, "values": values}
    try:
        cfg = config_from_hydra(dcfg)  # stops here, naming the key, on any bad value
        out = Path(cfg.run.out_dir) if cfg.run.out_dir else Path(hc.runtime.output_dir)
        summary = launch(out, cfg=cfg, stream_to=PROGRESS)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as exc:  # a failed job is a row of the table; the sweep goes on
        print(f"error: {exc}", file=sys.stderr)
        job["error"] = str(exc).splitlines()[0]
        SWEEP.jobs.append(job)
        if not multirun:
            raise SystemExit(1) from None
        return
    job["summary"] = str(summary)
    SWEEP.jobs.append(job)
    print("\n" + format_table(json.loads(summary.read_text())), flush=True)


def _cli_overrides(argv: list[str]) -> list[str]:
    """The overrides among Hydra's command-line arguments (flags and their values left out)."""
    return [a for a in argv if "=" in a and not a.startswith("-")]


if __name__ == "__main__":
    overrides = _cli_overrides(sys.argv[1:])
    try:
        check_overrides(overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    multirun = bool({"-m", "--multirun"} & set(sys.argv[1:]))
    if multirun:
        SWEEP.plan(overrides)
    main()
    sys.exit(SWEEP.finish() if multirun else 0)
