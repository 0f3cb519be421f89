"""The grids' tables: the accuracy grid; the Fashion-MNIST grid (accuracy per setting, costs, paired
comparisons); the regime grid (accuracy, wall time, paired comparisons, and the regime map's points).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .derived import DERIVED, with_derived
from .files import LAUNCH_FILE, SETTING_FILE, _missing, _provenance
from .formats import _acc, _int, _mean_std, _ratio, _setup_bytes
from .paired import _setting_order, compare, paired_grid, paired_reading, paired_vs_best, paired_vs_local
from .registry import Table, table


def _grid(path: Path) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[str], list[str]]:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    settings: list[str] = []
    names: list[str] = []
    for summary in sorted(path.rglob("summary.json")):
        rel = summary.parent.relative_to(path).parts
        setting = "/".join(rel[:-1]) if len(rel) > 1 else rel[0]
        settings += [setting] if setting not in settings else []
        for name, block in with_derived(json.loads(summary.read_text())).items():
            names += [name] if name not in names else []
            cells.setdefault((setting, name), []).append(block)
    return cells, settings, names


@table("accuracy")
def accuracy_grid(root: Path) -> Table | str:
    """Personalized and generic accuracy over heterogeneity settings, mean ± std over seeds."""
    path = root / "accuracy"
    if not (path / "provenance.json").exists():
        return _missing("accuracy", "python -m experiments.bench_accuracy --seeds 0,1,2")
    cells, settings, names = _grid(path)
    rows = []
    for setting in settings:
        row = [setting]
        seeds = 0
        for name in names:
            blocks = cells.get((setting, name), [])
            seeds = max(seeds, len(blocks))
            row.append(_mean_std([b["accuracy"]["personalized"]["mean"] for b in blocks]))
        for name in names:
            blocks = cells.get((setting, name), [])
            row.append(_mean_std([b["accuracy"]["generic"]["mean"] for b in blocks
                                  if b["accuracy"].get("generic")]))
        failures = sum(b["failures"]["count"] for n in names for b in cells.get((setting, n), []))
        rows.append([*row, str(seeds), str(failures)])
    header = ["setting", *(f"{n} personalized" for n in names), *(f"{n} generic" for n in names), "seeds",
              "failed replies"]
    return header, rows, _provenance(path)


# ------------------------------------------------------------------------------------------- Fashion-MNIST grid
FMNIST_GRID_COMMAND = "python -m experiments.bench_accuracy --grid fmnist"


def _fmnist_grid(root: Path) -> tuple[Path, dict[tuple[str, str], list[dict[str, Any]]], list[str], list[str]] | None:
    path = root / "fmnist_grid"
    if not (path / "provenance.json").exists():
        return None
    cells, settings, names = _grid(path)
    order = [s for s in ("dir0.05", "dir0.1", "dir0.5", "dir1.0", "C2", "C3", "C4") if s in settings]
    return path, cells, order + [s for s in settings if s not in order], names


def _per_setting(root: Path, value: Callable[[dict[str, Any]], float | None]) -> Table | str:
    grid = _fmnist_grid(root)
    if grid is None:
        return _missing("fmnist_grid", FMNIST_GRID_COMMAND)
    path, cells, settings, names = grid
    rows = [[name, *(_mean_std([value(b) for b in cells.get((s, name), [])]) for s in settings)] for name in names]
    seeds = {s: max(len(cells.get((s, n), [])) for n in names) for s in settings}
    header = ["method", *(f"{s} ({seeds[s]} seed{'s' if seeds[s] != 1 else ''})" for s in settings)]
    return header, rows, _provenance(path)


@table("fmnist_grid")
def fmnist_grid(root: Path) -> Table | str:
    """Fashion-MNIST grid: personalized test accuracy (device mean, mean ± std over seeds) per method and setting."""
    return _per_setting(root, lambda b: _acc(b, "personalized"))


@table("fmnist_grid_generic")
def fmnist_grid_generic(root: Path) -> Table | str:
    """Fashion-MNIST grid: generic accuracy (the held-out class-balanced set) per method and setting."""
    return _per_setting(root, lambda b: _acc(b, "generic"))


@table("fmnist_grid_worst")
def fmnist_grid_worst(root: Path) -> Table | str:
    """Fashion-MNIST grid: the worst 10 % of devices' personalized accuracy per method and setting."""
    return _per_setting(root, lambda b: _acc(b, "personalized", "worst10"))


def _round_bytes_per_device(block: dict[str, Any]) -> float | None:
    """Bytes (both directions, every tier) of the personalization rounds, per device and round."""
    n_dev = len(block["accuracy"]["personalized"].get("per_device") or []) or None
    rounds = len(block["rounds"]) or None
    if not n_dev or not rounds:
        return None
    return (block["bytes"]["total"] - _setup_bytes(block)) / (n_dev * rounds)


@table("fmnist_grid_costs")
def fmnist_grid_costs(root: Path) -> Table | str:
    """Fashion-MNIST grid: what each method costs, averaged over every job (bytes are deterministic per setting)."""
    grid = _fmnist_grid(root)
    if grid is None:
        return _missing("fmnist_grid", FMNIST_GRID_COMMAND)
    path, cells, settings, names = grid
    rows = []
    for name in [n for n in names if n not in DERIVED]:  # a derived method is one of the runs above, not a cost
        blocks = [b for s in settings for b in cells.get((s, name), [])]
        total = [b["bytes"]["total"] for b in blocks]
        fed = [b["bytes"]["references"].get("fedavg_full", {}).get("bytes") for b in blocks]
        per_round = [v for v in map(_round_bytes_per_device, blocks) if v is not None]
        wall = [b["wall_time_s"] for b in blocks if "wall_time_s" in b]
        rows.append([name, str(len(blocks)), _int(np.mean(total)), _int(np.mean(per_round)) if per_round else "–",
                     _ratio(float(np.mean(total)), float(np.mean([f for f in fed if f])) if any(fed) else None),
                     f"{np.mean(wall):.0f}" if wall else "–", str(sum(b["failures"]["count"] for b in blocks))])
    header = ["method", "jobs", "bytes per job (mean)", "bytes per device per round", "/ FedAvg-full",
              "wall time per strategy run (s, mean)", "failed replies"]
    jobs = sorted(path.rglob("summary.json"))
    walls = [json.loads(j.read_text())["wall_time_s"] for j in jobs]
    note = (_provenance(path) + f" {len(jobs)} jobs, {sum(walls) / 60:.0f} min of ServerApp wall time in all "
            f"({min(walls):.0f}–{max(walls):.0f} s per job, every method, cloud stage cached)")
    launched = [json.loads(f.read_text())["launcher_wall_s"] for j in jobs
                if (f := j.with_name(LAUNCH_FILE)).exists()]
    if launched:  # the whole `flwr run` per job: SuperLink, Ray and the apps' start and stop included
        note += (f"; whole `flwr run` per job, start-up included: {sum(launched) / 60:.0f} min over {len(launched)} "
                 f"jobs ({min(launched):.0f}–{max(launched):.0f} s)")
    note += "."
    return header, rows, note


@table("fmnist_grid_vs_local")
def fmnist_grid_vs_local(root: Path) -> Table | str:
    """Fashion-MNIST grid: each method's paired difference to local, with its bootstrap interval."""
    return paired_vs_local(paired_grid(root / "fmnist_grid"), _missing("fmnist_grid", FMNIST_GRID_COMMAND))


@table("fmnist_grid_vs_best")
def fmnist_grid_vs_best(root: Path) -> Table | str:
    """Fashion-MNIST grid: each method's paired difference to the best baseline other than itself."""
    return paired_vs_best(paired_grid(root / "fmnist_grid"), _missing("fmnist_grid", FMNIST_GRID_COMMAND))


@table("fmnist_grid_reading")
def fmnist_grid_reading(root: Path) -> str:
    """Fashion-MNIST grid: the generated reading of the paired comparisons."""
    return paired_reading(paired_grid(root / "fmnist_grid"), _missing("fmnist_grid", FMNIST_GRID_COMMAND))


# ------------------------------------------------------------------------------------------- regime grid
REGIME_GRID_COMMAND = "python -m experiments.regime"


def _regime_missing() -> str:
    return (f"_No results yet: run `{REGIME_GRID_COMMAND}` (it writes experiments/results/regime_grid/ as jobs "
            "finish)._")


@table("regime_grid")
def regime_grid(root: Path) -> Table | str:
    """Regime grid: personalized test accuracy (device mean; mean ± std over seeds) per method and setting."""
    grid = paired_grid(root / "regime_grid")
    if grid is None:
        return _regime_missing()
    cells, _, _ = _grid(grid.path)
    rows = [[name, *(_mean_std([_acc(b, "personalized") for b in cells.get((s, name), [])]) for s in grid.settings)]
            for name in grid.names]
    header = ["method", *(f"{s} ({len(set(grid.seeds[s]))} seeds)" for s in grid.settings)]
    return header, rows, _provenance(grid.path) + _regime_walls(grid.path)


JOB_BUDGET_S = 600  # each regime-grid job after the cloud stage


def _regime_walls(path: Path) -> str:
    """The grid's wall time: each job's whole ``flwr run`` and the part after the cloud side (its budget)."""
    walls, after = [], []
    for f in sorted(path.rglob(LAUNCH_FILE)):
        wall = json.loads(f.read_text())["launcher_wall_s"]
        cloud = json.loads(f.with_name("summary.json").read_text()).get("cloud", {}).get("wall_time_s", 0.0)
        walls.append(wall)
        after.append(wall - (cloud or 0.0))
    if not walls:
        return ""
    over = sum(a > JOB_BUDGET_S for a in after)
    return (f" Whole `flwr run` per job, start-up included: {sum(walls) / 60:.0f} min over {len(walls)} jobs "
            f"({min(walls):.0f}–{max(walls):.0f} s); after the cloud side {min(after):.0f}–{max(after):.0f} s per "
            f"job, {over} over the {JOB_BUDGET_S // 60}-minute budget.")


def regime_points(path: Path, reference: str = "local") -> list[dict[str, Any]]:
    """The regime map's points: per setting and method, the paired gain over ``reference`` with its interval, placed
    at the setting's mean images per device (train + val) in the panel of its heterogeneity kind (and its scope, when
    the grid has more than one). Axes come from each job's ``setting.json``; without one the setting is its own
    panel."""
    grid = paired_grid(path)
    if grid is None:
        return []
    axes: dict[str, dict[str, str]] = {}
    images: dict[str, list[float]] = {}
    for summary in sorted(path.rglob("summary.json")):
        setting = _setting_order(path, summary)[1]
        meta = summary.with_name(SETTING_FILE)
        axes[setting] = json.loads(meta.read_text()).get("axes", {}) if meta.exists() else {}
        splits = json.loads(summary.read_text()).get("data", {}).get("device_splits", [])
        images.setdefault(setting, []).extend(d["train"] + d["val"] for d in splits)
    scopes = {a.get("scope") for a in axes.values()}
    points = []
    for s in grid.settings:
        if not images.get(s):
            continue
        panel = axes[s].get("kind", s) + (f" ({axes[s]['scope']})" if len(scopes) > 1 and "scope" in axes[s] else "")
        for name in grid.names:
            if name != reference and (p := compare(grid, s, name, reference)) is not None:
                points.append({"panel": panel, "images": float(np.mean(images[s])), "method": name,
                               "mean": p.mean, "low": p.low, "high": p.high, "setting": s})
    return points


@table("regime_grid_vs_local")
def regime_grid_vs_local(root: Path) -> Table | str:
    """Regime grid: each method's paired difference to local, with its bootstrap interval."""
    return paired_vs_local(paired_grid(root / "regime_grid"), _regime_missing())


@table("regime_grid_vs_best")
def regime_grid_vs_best(root: Path) -> Table | str:
    """Regime grid: each method's paired difference to the best baseline other than itself."""
    return paired_vs_best(paired_grid(root / "regime_grid"), _regime_missing())


@table("regime_grid_reading")
def regime_grid_reading(root: Path) -> str:
    """Regime grid: the generated reading (per kind and scale: who beats local and the best baseline)."""
    return paired_reading(paired_grid(root / "regime_grid"), _regime_missing())
