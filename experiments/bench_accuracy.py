"""Accuracy benchmark (issue 5): ACME vs baselines over heterogeneity levels and seeds, on the embedded default.

One ``flwr run`` per (setting, seed) with every strategy on the same devices; the accuracy of each strategy is
taken at its round with the best mean validation accuracy (never test). Prints and writes a markdown table of
personalized accuracy (mean ± std over seeds of the per-run device mean) and generic accuracy.

The code is snapshotted first, so editing the repo while the sweep runs cannot mix versions; finished jobs are
skipped on a re-run (delete the output directory to start over).

    python -m experiments.bench_accuracy --seeds 0,1,2 --settings dir0.1,dir0.5,dir1.0,C2,C3,C4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .launch import REPO, launch

SETTINGS: dict[str, list[str]] = {
    "dir0.1": ["partition.kind=dirichlet", "partition.alpha=0.1"],
    "dir0.5": ["partition.kind=dirichlet", "partition.alpha=0.5"],
    "dir1.0": ["partition.kind=dirichlet", "partition.alpha=1.0"],
    "C2": ["partition.kind=acme", "partition.category=C2", "partition.per_class_fraction=0.3"],
    "C3": ["partition.kind=acme", "partition.category=C3", "partition.per_class_fraction=0.3"],
    "C4": ["partition.kind=acme", "partition.category=C4", "partition.per_class_fraction=0.3"],
}


def snapshot() -> Path:
    """Copy the app's files (what a FAB holds) and its Hydra ``conf/`` to a temp dir."""
    dst = Path(tempfile.mkdtemp(prefix="acme-snapshot-"))
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("acme_flwr/", "strategies/", "clients/", "conf/")) or rel == "pyproject.toml":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return dst


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
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "accuracy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--strategies", default="acme,fedavg_header,fedper,local")
    # 9 devices on 1 edge = 3 device classes x 3: every mixing group (same package) has 3 devices
    parser.add_argument("--devices", type=int, default=9)
    parser.add_argument("--edges", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more run-config overrides for every job")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; allowed: {list(SETTINGS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    app = snapshot()
    failed: list[str] = []
    try:
        for setting in settings:
            for seed in seeds:
                job = args.out / setting / f"seed{seed}"
                if (job / "summary.json").exists():
                    continue
                overrides = [*SETTINGS[setting], f"run.seed={seed}", f"strategy.names={args.strategies}",
                             f"topology.num_devices={args.devices}", f"topology.num_edges={args.edges}", *args.extra]
                print(f"running {setting} seed {seed} ...", flush=True)
                with (args.out / f"{setting}-seed{seed}.log").open("w") as log:
                    try:
                        launch(job, args.devices, overrides, app_dir=app, stream_to=log)
                    except RuntimeError as exc:  # one failed job (e.g. Ray failed to start) does not stop the sweep
                        failed.append(f"{setting} seed {seed}")
                        print(f"  failed: {exc} (log: {log.name}); re-run to retry", flush=True)
    finally:
        shutil.rmtree(app, ignore_errors=True)
    if failed:
        print(f"{len(failed)} jobs failed: {', '.join(failed)}; the table leaves them out", flush=True)
    md = table(args.out, settings, seeds)
    (args.out / "accuracy.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
