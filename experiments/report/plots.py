"""The report's plots, drawn beside the CSVs: accuracy over heterogeneity (the accuracy grid) and the
Fashion-MNIST grid's bars (the regime map is ``acme_flwr.plots.regime_map``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import _acc
from .grids import _fmnist_grid, _grid


def _plot_fmnist(root: Path, out: Path) -> Path | None:
    grid = _fmnist_grid(root)
    if grid is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, cells, settings, names = grid
    fig, ax = plt.subplots(figsize=(12, 4))
    x = np.arange(len(settings))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [[100 * v for b in cells.get((s, name), []) if (v := _acc(b, "personalized")) is not None]
                for s in settings]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [np.mean(v) if v else np.nan for v in vals], width,
               yerr=[np.std(v) if v else 0 for v in vals], capsize=2, label=name, color=plt.cm.tab20(i % 20))
    ax.set_xticks(x, settings)
    ax.set_ylabel("personalized test accuracy (%)")
    ax.set_xlabel("heterogeneity setting (Fashion-MNIST, 9 devices)")
    lows = [100 * v for b in (b for c in cells.values() for b in c) if (v := _acc(b, "personalized")) is not None]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(lows) + 3))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    target = out / "fmnist_grid.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_accuracy(root: Path, out: Path) -> Path | None:
    path = root / "accuracy"
    if not (path / "provenance.json").exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, settings, names = _grid(path)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(settings))
    for i, name in enumerate(names):
        vals = [[100 * b["accuracy"]["personalized"]["mean"] for b in cells.get((s, name), [])] for s in settings]
        ax.errorbar(x + (i - len(names) / 2) * 0.08, [np.mean(v) if v else np.nan for v in vals],
                    yerr=[np.std(v) if v else 0 for v in vals], fmt="o", capsize=3, label=name)
    ax.set_xticks(x, settings)
    ax.set_ylabel("personalized test accuracy (%)")
    ax.set_xlabel("heterogeneity setting")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = out / "accuracy_vs_heterogeneity.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
