"""How a table shows its values (percent, integers, ratios, mean ± std, ranges, paired differences), and the
few ``summary.json`` fields that tables of every kind read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from acme_flwr import stats


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _int(x: float | None) -> str:
    return "–" if x is None else f"{int(x):,}".replace(",", " ")


def _ratio(a: float | None, b: float | None, fmt: str = ".4f") -> str:
    return "–" if not a or not b else format(a / b, fmt)


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]  # a run whose devices all failed has no accuracy
    if not values:
        return "–"
    arr = 100 * np.asarray(values, dtype=float)
    return f"{arr.mean():.1f}" if len(arr) == 1 else f"{arr.mean():.1f} ± {arr.std():.1f}"  # one seed: no spread


def _span(lo_hi: tuple[float, float] | None) -> str:
    return "–" if lo_hi is None else f"{_pct(lo_hi[0])}–{_pct(lo_hi[1])}"


def _cell(p: stats.Paired | None, suffix: str = "") -> str:
    if p is None:
        return "–"
    text = p.format() + suffix
    return f"**{text}**" if p.verdict != stats.CANNOT_TELL else text  # bold: the interval excludes 0


def _setup_bytes(block: dict[str, Any]) -> int:
    return int(block["bytes"]["total"]) - sum(sum(dd.values()) for r in block["rounds"] for dd in r["bytes"].values())


def _job_seed(summary: dict[str, Any]) -> int:
    return int(summary.get("seed", summary.get("config", {}).get("run", {}).get("seed", 0)))


def _acc(block: dict[str, Any], kind: str, field: str = "mean") -> float | None:
    return (block["accuracy"].get(kind) or {}).get(field)
