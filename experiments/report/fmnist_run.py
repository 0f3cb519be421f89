"""One Fashion-MNIST job (``+experiment=fmnist``): every method on the same devices, packages and splits, and
whether its accuracies equal the grid's job of the same preset and seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .files import _missing, _provenance
from .formats import _int, _pct, _ratio
from .registry import Table, table


@table("fmnist")
def fmnist_table(root: Path) -> Table | str:
    """One Fashion-MNIST job (+experiment=fmnist): every method on the same devices, packages and splits."""
    path = root / "fmnist"
    command = "python -m experiments.launch --out outputs/fmnist +experiment=fmnist"
    if not (path / "summary.json").exists():
        return _missing("fmnist", command)
    s = json.loads((path / "summary.json").read_text())
    rows = []
    for name, b in s["strategies"].items():
        acc = b["accuracy"]
        p, g = acc.get("personalized") or {}, acc.get("generic") or {}
        rows.append([name, f"{_pct(p.get('mean'))} ± {_pct(p.get('std'))}", _pct(p.get("worst10")),
                     _pct(g.get("mean")), _int(b["bytes"]["total"]),
                     _ratio(b["bytes"]["total"], b["bytes"]["references"].get("fedavg_full", {}).get("bytes")),
                     str(b["failures"]["count"])])
    table_ = s["cloud"].get("table") or []
    accs = {(d, w): a for d, w, a in table_}
    picks = ", ".join(f"{c} → ({p['grid_width']:g}, {p['grid_depth']:g})" for c, p in s["cloud"]["picks"].items())
    stages = {k: v.get("seconds") for k, v in s["cloud"].get("stage_log", {}).items() if isinstance(v, dict)}
    train_s = sum(v for v in stages.values() if isinstance(v, (int, float)))
    full = _pct(accs.get((1.0, 1.0)))
    per_stage = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items() if isinstance(v, (int, float)))
    note = (_provenance(path) + f" Sub-net accuracy on the cloud's validation split: full {full} %,"
            f" smallest {_pct(accs.get((min(d for d, _ in accs), min(w for _, w in accs))))} %; PFG picks {picks}. "
            f"Cloud stage training {train_s:.0f} s ({per_stage}; cached afterwards); the cloud side in all (data, "
            f"stages, sub-net table, PFG, warm headers) {s['cloud'].get('wall_time_s', 0):.0f} s of the run's "
            f"{s['wall_time_s']:.0f} s." + _same_as_grid_job(root, s))
    return ["strategy", "personalized acc % (mean ± std)", "worst 10 %", "generic acc %", "bytes total",
            "/ FedAvg-full", "failures"], rows, note


def _same_as_grid_job(root: Path, s: dict[str, Any]) -> str:
    """Whether this job's accuracies equal the grid's job of the same preset and seed (determinism, checked)."""
    job = root / "fmnist_grid" / "dir0.5" / f"seed{s['seed']}" / "summary.json"
    part = s["config"]["partition"]
    if part.get("kind") != "dirichlet" or part.get("alpha") != 0.5 or not job.exists():
        return ""
    grid = json.loads(job.read_text())["strategies"]
    differ = [n for n, b in s["strategies"].items()
              if (grid.get(n) or {}).get("accuracy", {}).get("personalized") != b["accuracy"]["personalized"]]
    if differ:
        return f" Differs from the grid's dir0.5/seed{s['seed']} job in: {', '.join(differ)}."
    return (f" Every strategy's personalized accuracy (mean, std, per device) equals the grid's dir0.5/seed{s['seed']} "
            "job's.")
