"""PNG plots of a run's summary (sub-net accuracy surface, similarity heatmaps, accuracy per round, accuracy vs bytes)
and of a regime grid (gain over local against images per device).

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


def regime_map(points: list[dict[str, Any]], out: Path, reference: str = "local") -> Path | None:
    """The regime map: gain over ``reference`` (points, with its interval as an error bar) against images per device,
    one panel per heterogeneity kind, one line per method. ``points``: dicts with ``panel``, ``images``, ``method``,
    ``mean``, ``low`` and ``high`` (what ``experiments.report.regime_points`` makes of a grid's result files)."""
    if not points:
        return None
    plt = _plt()
    panels = list(dict.fromkeys(p["panel"] for p in points))
    methods = list(dict.fromkeys(p["method"] for p in points))
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, sharey=True)
    colors = {m: plt.cm.tab20(i % 20) for i, m in enumerate(methods)}
    images = sorted({p["images"] for p in points})
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for i, method in enumerate(methods):
            pts = sorted((p for p in points if p["panel"] == panel and p["method"] == method),
                         key=lambda p: p["images"])
            if not pts:
                continue
            x = [p["images"] * (1 + 0.012 * (i - len(methods) / 2)) for p in pts]  # a small dodge per method
            y = [p["mean"] for p in pts]
            err = [[p["mean"] - p["low"] for p in pts], [p["high"] - p["mean"] for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, lw=1, color=colors[method], label=method)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(images, [f"{v:g}" for v in images])
        ax.minorticks_off()
        ax.set_title(panel)
        ax.set_xlabel("images per device (train + val)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"gain over {reference} (points, 95 % CI)")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = out / "regime_map.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside the panels
    plt.close(fig)
    return path


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
