"""From tables to files: a table as Markdown, every registered table rendered, the ``report:<name>`` markers of a
document refreshed, and the CSVs and plots written under ``<results>/tables/``."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from acme_flwr.plots import regime_map

from .files import RESULTS
from .grids import regime_points
from .plots import _plot_accuracy, _plot_fmnist
from .registry import TABLES, Table


def markdown(result: Table | str) -> str:
    if isinstance(result, str):
        return result
    header, rows, note = result
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + note


def render(root: Path = RESULTS) -> dict[str, str]:
    return {name: markdown(TABLES.get(name)(root)) for name in TABLES}


_MARKER = re.compile(r"<!-- report:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /report:(?P=name) -->", re.S)


def update_document(text: str, tables: dict[str, str]) -> str:
    """``text`` with the body of every ``report:<table>`` marker replaced by that table."""
    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in tables:
            raise SystemExit(f"marker report:{name} names no table; tables: {sorted(tables)}")
        return f"<!-- report:{name} -->\n{tables[name]}\n<!-- /report:{name} -->"
    return _MARKER.sub(sub, text)


update_readme = update_document  # the name from before the tables moved to docs/results.md


def write_outputs(root: Path, tables: dict[str, Any]) -> None:
    out = root / "tables"
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        result = TABLES.get(name)(root)
        if isinstance(result, str):
            continue
        header, rows, _ = result
        with (out / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    _plot_accuracy(root, out)
    _plot_fmnist(root, out)
    regime_map(regime_points(root / "regime_grid"), out)
