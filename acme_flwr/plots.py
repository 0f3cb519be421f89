"""PNG plots of a run's summary: sub-net accuracy surface, similarity heatmaps, accuracy per round, accuracy vs bytes.

Called by the ServerApp after ``summary.json`` is written (a plotting error is logged, never fatal) and usable on
any finished run: ``python -m acme_flwr.plots outputs/default/summary.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _plt():  # noqa: ANN202 - matplotlib is imported lazily with a file-only backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subnet_surface(summary: dict[str, Any], out: Path) -> Path | None:
    table = (summary.get("cloud") or {}).get("table")
    if not table:
        return None
    plt = _plt()
    depths = sorted({r[0] for r in table})
    widths = sorted({r[1] for r in table})
    acc = {(d, w): a for d, w, a in table}
    grid = [[acc.get((d, w), float("nan")) for w in widths] for d in depths]
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    im = ax.imshow(grid, origin="lower", cmap="viridis")
    ax.set_xticks(range(len(widths)), [f"{w:g}" for w in widths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("width")
    ax.set_ylabel("depth")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title("sub-net validation accuracy")
    fig.colorbar(im, ax=ax)
    return _save(fig, out / "subnet_accuracy.png")


def similarity_heatmaps(summary: dict[str, Any], out: Path) -> Path | None:
    sims = summary.get("strategies", {}).get("acme", {}).get("similarity")
    if not sims:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sims), figsize=(4 * len(sims), 3.6), squeeze=False)
    for ax, (edge, s) in zip(axes[0], sorted(sims.items()), strict=True):
        im = ax.imshow(s["weights"], cmap="magma")
        ax.set_xticks(range(len(s["devices"])), s["devices"])
        ax.set_yticks(range(len(s["devices"])), s["devices"])
        ax.set_title(f"edge {edge}: aggregation weights")
        fig.colorbar(im, ax=ax)
    return _save(fig, out / "similarity_weights.png")


def accuracy_rounds(summary: dict[str, Any], out: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, block in summary.get("strategies", {}).items():
        pts = [(r["round"], r["evaluate"]["cloud"].get("test-acc")) for r in block["rounds"] if "evaluate" in r]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("mean device test accuracy")
    ax.legend()
    return _save(fig, out / "accuracy_per_round.png")


def accuracy_vs_bytes(summary: dict[str, Any], out: Path) -> Path | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, block in summary.get("strategies", {}).items():
        acc = (block.get("accuracy") or {}).get("personalized", {}).get("mean")
        if acc is not None:
            ax.scatter(block["bytes"]["total"], acc, s=40)
            ax.annotate(name, (block["bytes"]["total"], acc), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("total bytes (all tiers, both directions)")
    ax.set_ylabel("personalized accuracy")
    return _save(fig, out / "accuracy_vs_bytes.png")


def plot_run(summary_path: str | Path) -> list[Path]:
    """Write every plot that the summary has data for next to it; return their paths."""
    summary_path = Path(summary_path)
    summary = json.loads(summary_path.read_text())
    out = summary_path.parent
    made = [f(summary, out) for f in (subnet_surface, similarity_heatmaps, accuracy_rounds, accuracy_vs_bytes)]
    return [p for p in made if p is not None]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


if __name__ == "__main__":
    for p in plot_run(sys.argv[1]):
        print(p)
