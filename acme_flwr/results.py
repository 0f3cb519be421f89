"""The results contract: what every run writes into its output directory.

- ``config.json``: the resolved configuration, seed and package versions (written before any work).
- ``rounds.jsonl``: one line per strategy × round × phase × tier × node: ``{"strategy", "round", "phase", "tier",
  "id", ...metrics, "bytes_up", "bytes_down", "wall_time"}``; tier is ``device``, ``edge`` or ``cloud`` (a cloud row
  has ``bytes_<tier>_<direction>``). Bytes are the phase's own: round 0 holds discovery and setup (phases
  ``discover``, ``setup``, ``nas``), a ``train`` row the train phase, an ``evaluate`` row the evaluate phase, so the
  cloud rows (and the device rows, for the edge-device tier) sum to ``summary.json``'s byte totals. The round's
  running total is ``rounds[i].bytes`` in ``summary.json``. Written by :class:`acme_flwr.round_books.RoundBooks`.
- ``summary.json``: ``config``, ``seed``, ``versions``, ``strategy`` (the primary one), and for it at top level
  ``rounds`` (per round: metrics per tier), ``failures`` (count and reasons), ``bytes`` (``{tier: {up, down}}`` plus
  ``references``) and ``accuracy`` (``personalized``: mean, std, worst-10 %, per device; ``generic``); the same block
  for every strategy of the run under ``strategies``; ``cloud`` (sub-net table and per-class picks) when it ran;
  ``data`` (per-device label distribution of the training splits, split sizes).
- ``summary.csv``: one row per strategy with the headline numbers.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .worker_death import DEATHS_FILE, read_deaths

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("acme-flwr", "flwr", "torch", "torchvision", "transformers", "ray", "hydra-core", "numpy",
                      "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The machine facts that move a run's floats besides config and versions (CPU, its vector ISA, cores) and the
    thread count of every stage: the cloud stages' resolved ``run.threads``, this (ServerApp) process's, and the
    ClientApps' (each fixes 1 intra-op thread, one Ray CPU per simulated device)."""
    from acme_flwr import accel  # torch: only where a run records results

    machine = accel.provenance()
    server_threads = machine.pop("threads")
    requested = int(config.get("run", {}).get("threads", 0) or 0)
    return {**machine, "threads": {"cloud_stages": accel.resolve_threads(requested), "server_app": server_threads,
                                   "client_app": 1}}


def accuracy_stats(per_device: dict[int, float]) -> dict[str, Any]:
    """Mean, std and worst-10 % mean (at least one device) of per-device accuracies."""
    if not per_device:
        return {"mean": None, "std": None, "worst10": None, "per_device": {}}
    values = np.array([per_device[k] for k in sorted(per_device)], dtype=float)
    k = max(1, math.ceil(0.1 * len(values)))
    return {"mean": float(values.mean()), "std": float(values.std()), "worst10": float(np.sort(values)[:k].mean()),
            "per_device": {str(k): float(per_device[k]) for k in sorted(per_device)}}


@dataclass
class StrategyRecord:
    """What one strategy run contributes to the summary."""

    name: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    bytes: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_failure(self, server_round: int, phase: str, node: str, reason: str, log: bool = True) -> None:
        """Record a device's failure; ``log=False`` when the caller logs it (e.g. grouped with others)."""
        if log:
            logger.warning("%s round %d %s: node %s failed: %s", self.name, server_round, phase, node, reason)
        self.failures.append({"round": server_round, "phase": phase, "node": node, "reason": reason})

    def to_state(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "failures": self.failures, "extra": self.extra, "bytes": self.bytes}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rounds, self.failures, self.extra = list(state["rounds"]), list(state["failures"]), dict(state["extra"])
        self.bytes = dict(state.get("bytes") or {})  # with its references (devices' profiles, params)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "failures": {"count": len(self.failures), "reasons": self.failures},
                "bytes": self.bytes, "accuracy": self.accuracy, **self.extra}


STALE_ON_FRESH_RUN = ("summary.json", "summary.csv", DEATHS_FILE)  # a previous run's results a fresh run removes


# keys that say how a run is driven, not what it computes: a resume may change them
RESUME_FREE = ("run.resume", "run.on_lost_devices", "run.max_restarts")


def resume_conflicts(checkpoint_dir: Path, flat_config: dict[str, Any]) -> list[str]:
    """Keys whose values differ from the config the checkpoints in ``checkpoint_dir`` were written with (reads only;
    :data:`RESUME_FREE` keys are ignored; [] when there are no checkpoints)."""
    path = checkpoint_dir / "config.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    keys = (set(saved) | set(flat_config)) - set(RESUME_FREE)
    return sorted(k for k in keys if saved.get(k) != flat_config.get(k))


class RunRecorder:
    """Writes the results contract into ``out_dir`` as the run goes."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], seed: int, resume: bool = False) -> None:
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.seed = seed
        self.versions = package_versions()
        self.provenance = run_provenance(config)
        self.strategies: dict[str, StrategyRecord] = {}
        self.cloud: dict[str, Any] = {}
        self.data: dict[str, Any] = {}
        self.started = time.time()
        self._jsonl = self.out_dir / "rounds.jsonl"
        self.rows: list[dict[str, Any]] = []
        if resume and self._jsonl.exists():
            self.rows = [json.loads(line) for line in self._jsonl.read_text().splitlines() if line.strip()]
        elif not resume:  # a fresh run (its config already accepted): no summary of the previous run may survive it
            for stale in STALE_ON_FRESH_RUN:
                (self.out_dir / stale).unlink(missing_ok=True)
        self._rewrite_rows()
        _write_json(self.out_dir / "config.json", {"config": config, "seed": seed, "versions": self.versions,
                                                   "provenance": self.provenance})

    def strategy(self, name: str) -> StrategyRecord:
        return self.strategies.setdefault(name, StrategyRecord(name))

    def log_row(self, **row: Any) -> None:
        """Append one line (strategy × round × tier × node) to rounds.jsonl."""
        row = _jsonable(row)
        self.rows.append(row)
        with self._jsonl.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def rows_of(self, strategy: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("strategy") == strategy]

    def restore_rows(self, strategy: str, rows: list[dict[str, Any]]) -> None:
        """Replace ``strategy``'s rows by a checkpoint's (rows of rounds after it are dropped) and rewrite the file."""
        self.rows = [r for r in self.rows if r.get("strategy") != strategy] + list(rows)
        self._rewrite_rows()

    def _rewrite_rows(self) -> None:
        self._jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))

    def write_summary(self, primary: str) -> Path:
        if primary not in self.strategies:
            raise KeyError(f"no results for strategy {primary!r}; have {sorted(self.strategies)}")
        blocks = {name: rec.to_dict() for name, rec in self.strategies.items()}
        summary = {"config": self.config, "seed": self.seed, "versions": self.versions,
                   "provenance": self.provenance, "strategy": primary,
                   **blocks[primary], "strategies": blocks, "cloud": self.cloud, "data": self.data,
                   "wall_time_s": round(time.time() - self.started, 2), "out_dir": str(self.out_dir)}
        deaths = read_deaths(self.out_dir)
        if deaths:  # the run was resumed after each of them (run.on_lost_devices=resume): results say so
            summary["restarts"] = deaths
        path = self.out_dir / "summary.json"
        _write_json(path, summary)
        self._write_csv(blocks)
        return path

    def _write_csv(self, blocks: dict[str, dict[str, Any]]) -> None:
        cols = ["strategy", "acc_mean", "acc_std", "acc_worst10", "generic_acc", "bytes_total", "bytes_up_device",
                "fedavg_full_bytes", "ratio_to_fedavg", "centralized_bytes", "ratio_to_centralized", "failures",
                "devices"]
        with (self.out_dir / "summary.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            for name, b in blocks.items():
                writer.writerow(headline(name, b))


def headline(name: str, block: dict[str, Any]) -> dict[str, Any]:
    """The one-row view of a strategy block used by summary.csv and the printed table."""
    acc = block.get("accuracy", {}).get("personalized", {})
    gen = block.get("accuracy", {}).get("generic") or {}
    by = block.get("bytes", {})
    refs = by.get("references", {})
    total = by.get("total", 0)
    return {"strategy": name, "acc_mean": _r(acc.get("mean")), "acc_std": _r(acc.get("std")),
            "acc_worst10": _r(acc.get("worst10")), "generic_acc": _r(gen.get("mean")), "bytes_total": total,
            "bytes_up_device": by.get("edge-device", {}).get("up", 0),
            "fedavg_full_bytes": refs.get("fedavg_full", {}).get("bytes"),
            "ratio_to_fedavg": _ratio(total, refs.get("fedavg_full", {}).get("bytes")),
            "centralized_bytes": refs.get("centralized", {}).get("bytes"),
            "ratio_to_centralized": _ratio(total, refs.get("centralized", {}).get("bytes")),
            "failures": block.get("failures", {}).get("count", 0), "devices": _devices(block)}


def _devices(block: dict[str, Any]) -> str:
    """``reported/expected`` devices of a strategy block, with ``DEGRADED`` when some were lost."""
    dev = block.get("devices")
    if not dev:
        return ""
    return f"{dev['reported']}/{dev['expected']}" + (" DEGRADED" if block.get("degraded") else "")


def _some(items: list[str], shown: int = 20) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def lost_device_lines(summary: dict[str, Any]) -> list[str]:
    """One warning line per strategy that lost devices (empty when none did)."""
    out = []
    for name, block in summary.get("strategies", {}).items():
        lost = block.get("lost_devices") or []
        if lost:
            groups: dict[tuple[Any, Any, Any], list[str]] = {}  # devices lost alike (a dead worker's): one entry
            for d in lost:
                groups.setdefault((d["round"], d["phase"], d["reason"]), []).append(str(d["partition-id"]))
            where = ", ".join(f"{_some(pids)} (round {r} {ph}: {reason})" for (r, ph, reason), pids in groups.items())
            out.append(f"DEGRADED: {name} reports on {_devices(block).split()[0]} devices; lost {where}")
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width results table of every strategy in a summary."""
    rows = [headline(name, b) for name, b in summary["strategies"].items()]
    cols = ["strategy", "acc_mean", "acc_std", "acc_worst10", "generic_acc", "bytes_total", "ratio_to_fedavg",
            "ratio_to_centralized", "failures", "devices"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    out = [line, "-" * len(line)]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(out)


def human_bytes(n: float) -> str:
    """1234567 → '1.23 MB' (decimal units, as network volumes are usually given)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def format_byte_table(name: str, by: dict[str, Any]) -> str:
    """The bytes of one strategy as a small table: one row per tier and direction, the total and the references
    computed in the same run (with the ratio of this run's total to each)."""
    rows = [(tier, d, by[tier][d]) for tier in ("cloud-edge", "edge-device") if tier in by for d in ("down", "up")]
    total = by.get("total", sum(v for _, _, v in rows))
    out = [f"Bytes of {name} (exact serialized sizes):", f"\t{'tier':<12} {'direction':<9} {'bytes':>14}  human"]
    out += [f"\t{t:<12} {d:<9} {v:>14,}  {human_bytes(v)}" for t, d, v in rows]
    out.append(f"\t{'total':<22} {total:>14,}  {human_bytes(total)}")
    for ref, val in sorted(by.get("references", {}).items()):
        ratio = f"  (this run: {total / val['bytes']:.4g}x)" if val.get("bytes") else ""
        out.append(f"\t{'ref ' + ref:<22} {val['bytes']:>14,}  {human_bytes(val['bytes'])}{ratio}")
    return "\n".join(out)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 6)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False))
    tmp.replace(path)
