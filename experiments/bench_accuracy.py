"""Accuracy grids: ACME vs baselines over heterogeneity settings and seeds, one ``flwr run`` per (setting, seed)
with every strategy on the same devices, packages and splits.

Two grids: ``digits`` (the embedded default; ACME, FedAvg-header, FedPer, local on 9 devices) and ``fmnist``
(``+experiment=fmnist``: Dirichlet α ∈ {0.05, 0.1, 0.5} and ACME's C2/C3/C4 × seeds 0–2, every method of the preset
and ACME's ablation, one cached cloud stage for all of it). Each strategy reports its final round (never one chosen
on test accuracy). The code is snapshotted first, so editing the repo while the sweep runs cannot mix versions;
finished jobs are skipped on a re-run, and a failed job is reported and skipped, never fatal (re-run to retry).

    python -m experiments.bench_accuracy --grid fmnist                       # outputs/bench/fmnist_grid
    python -m experiments.bench_accuracy --seeds 0,1,2 --settings dir0.1,dir0.5,C2
    python -m experiments.report collect outputs/bench/fmnist_grid --as fmnist_grid --command "..."
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acme_flwr.config import ConfigError
from acme_flwr.logs import Progress

from .launch import REPO, launch, snapshot
from .report import LAUNCH_FILE

SETTINGS: dict[str, list[str]] = {
    **{f"dir{a}": ["partition.kind=dirichlet", f"partition.alpha={a}"] for a in ("0.05", "0.1", "0.5", "1.0")},
    **{c: ["partition.kind=acme", f"partition.category={c}", "partition.per_class_fraction=0.3"]
       for c in ("C2", "C3", "C4")},
}


@dataclass(frozen=True)
class Grid:
    """One named comparison: its settings, the overrides every job gets, and where it writes."""

    settings: tuple[str, ...]
    overrides: tuple[str, ...]
    out: str


GRIDS: dict[str, Grid] = {
    # 9 devices on 1 edge = 3 device classes x 3: every mixing group (same package) has 3 devices
    "digits": Grid(("dir0.1", "dir0.5", "dir1.0", "C2", "C3", "C4"),
                   ("strategy.names=acme,fedavg_header,fedper,local", "topology.num_devices=9",
                    "topology.num_edges=1"), "accuracy"),
    # the preset has the devices, the cap, the methods and the ablation; cloud.seed=0 there shares one cloud stage
    "fmnist": Grid(("dir0.05", "dir0.1", "dir0.5", "C2", "C3", "C4"), ("+experiment=fmnist",), "fmnist_grid"),
}


def table(out: Path, settings: list[str], seeds: list[int]) -> str:
    cells: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    names: list[str] = []
    for setting in settings:
        for seed in seeds:
            path = out / setting / f"seed{seed}" / "summary.json"
            if not path.exists():
                continue
            for name, block in json.loads(path.read_text())["strategies"].items():
                names += [name] if name not in names else []
                acc = block["accuracy"]
                gen = (acc.get("generic") or {}).get("mean")
                cells.setdefault((setting, name), []).append((acc["personalized"]["mean"], gen))
    lines = ["| setting | " + " | ".join(f"{n} personalized" for n in names) + " | "
             + " | ".join(f"{n} generic" for n in names) + " | seeds |",
             "|---" * (2 * len(names) + 2) + "|"]
    for setting in settings:
        row, gen_row, n_seeds = [], [], 0
        for name in names:
            vals = cells.get((setting, name), [])
            n_seeds = max(n_seeds, len(vals))
            p = np.array([v[0] for v in vals if v[0] is not None]) * 100  # a run whose devices all failed has none
            g = np.array([v[1] for v in vals if v[1] is not None]) * 100
            row.append(f"{p.mean():.1f} ± {p.std():.1f}" if len(p) else "–")
            gen_row.append(f"{g.mean():.1f} ± {g.std():.1f}" if len(g) else "–")
        lines.append(f"| {setting} | " + " | ".join(row) + " | " + " | ".join(gen_row) + f" | {n_seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="digits")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench/<the grid's name>")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default=None, help=f"comma-separated subset of {list(SETTINGS)}")
    parser.add_argument("extra", nargs="*", help="more run-config overrides for every job (e.g. strategy.names=...)")
    args = parser.parse_args()
    grid = GRIDS[args.grid]
    out = args.out or REPO / "outputs" / "bench" / grid.out
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = args.settings.split(",") if args.settings else list(grid.settings)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; allowed: {list(SETTINGS)}")
    out.mkdir(parents=True, exist_ok=True)
    app = snapshot()
    failed: list[str] = []
    started = time.monotonic()
    todo = [(seed, setting) for seed in seeds for setting in settings  # seed-major: a sweep stopped early
            if not (out / setting / f"seed{seed}" / "summary.json").exists()]  # still covers every setting
    jobs = Progress(f"grid {args.grid}", len(todo), unit="job", warmup=False)
    try:
        for i, (seed, setting) in enumerate(todo, 1):
            job = out / setting / f"seed{seed}"
            overrides = [*grid.overrides, *SETTINGS[setting], f"run.seed={seed}", *args.extra]
            print(f"job {i}/{len(todo)}: {setting} seed {seed} ...", flush=True)
            job_started = time.monotonic()
            with (out / f"{setting}-seed{seed}.log").open("w") as log:
                try:
                    launch(job, None, overrides, app_dir=app, stream_to=log)
                    took = time.monotonic() - job_started
                    # the whole flwr run (SuperLink, Ray, ServerApp start and stop), beside the ServerApp's own
                    (job / LAUNCH_FILE).write_text(json.dumps({"launcher_wall_s": round(took, 2)}) + "\n")
                    print(f"  done in {took:.0f} s", flush=True)
                except (RuntimeError, ConfigError) as exc:  # one failed job does not stop the sweep
                    failed.append(f"{setting} seed {seed}")
                    print(f"  failed: {exc} (log: {log.name}); re-run to retry", flush=True)
            print(f"  {jobs.advance().split('] ', 1)[1]}", flush=True)  # job i/n, elapsed, ETA
    finally:
        shutil.rmtree(app, ignore_errors=True)
    print(f"grid {args.grid}: {time.monotonic() - started:.0f} s for the jobs this call ran", flush=True)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)}; the table leaves them out", flush=True)
    md = table(out, settings, seeds)
    (out / "accuracy.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
