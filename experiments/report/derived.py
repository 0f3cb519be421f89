"""Derived methods: results computed from a job's own runs instead of run themselves. ``acme_valT`` picks
ACME's similarity temperature per job by validation accuracy and reports that run's test accuracy.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

# ACME at fixed similarity temperatures (strategies/registry.py registers acme_t<T>); the derived method picks, per
# job (setting × seed), the temperature whose run has the best mean validation accuracy, and reports its test accuracy
VAL_T = "acme_valT"
TEMPERATURE_RUNS = {"acme_t1": 1.0, "acme_t0.1": 0.1, "acme_t0.01": 0.01}
DERIVED = (VAL_T,)


def val_accuracy(block: dict[str, Any]) -> float | None:
    """Mean device validation accuracy at the round the strategy's accuracy block was chosen at (never test)."""
    chosen = block.get("accuracy", {}).get("chosen_round")
    entry = next((r for r in block.get("rounds", []) if r.get("round") == chosen), None)
    devices = ((entry or {}).get("evaluate") or {}).get("device") or {}
    vals = [m["val-acc"] for m in devices.values() if m.get("val-acc") is not None]
    return float(np.mean(vals)) if vals else None


def temperature_candidates(summary: dict[str, Any]) -> dict[str, float]:
    """The job's ACME runs that differ only in the similarity temperature: every ``acme_t<T>`` it ran, plus ``acme``
    itself at ``strategy.temperature`` when that is ACME's similarity-weighted variant and no ``acme_t<T>`` has the
    same temperature (so a grid need not run T = 1 twice)."""
    runs = summary.get("strategies", {})
    found = {n: t for n, t in TEMPERATURE_RUNS.items() if n in runs}
    s = summary.get("config", {}).get("strategy", {})
    if "acme" in runs and s.get("variant", "pruning_per") == "pruning_per" and s.get("temperature") is not None \
            and float(s["temperature"]) not in found.values():
        found["acme"] = float(s["temperature"])
    return found


def select_temperature(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The ``acme_valT`` block of one job: a copy of the temperature run with the best mean validation accuracy
    (ties: the higher temperature, the original's side), with ``selected`` = {from, temperature, val per candidate};
    None when the job has fewer than two temperatures."""
    candidates = temperature_candidates(summary)
    vals = {n: v for n in candidates if (v := val_accuracy(summary["strategies"][n])) is not None}
    if len(vals) < 2:
        return None
    best = max(vals, key=lambda n: (vals[n], candidates[n]))
    block = json.loads(json.dumps(summary["strategies"][best]))
    block["selected"] = {"from": best, "temperature": candidates[best], "by": "val-acc",
                         "val": {n: vals[n] for n in sorted(vals, key=lambda n: -candidates[n])}}
    return block


def with_derived(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job's strategy blocks plus the derived methods it has the runs for (``acme_valT``)."""
    blocks = dict(summary["strategies"])
    selected = select_temperature(summary)
    if selected is not None:
        blocks[VAL_T] = selected
    return blocks
