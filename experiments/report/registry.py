"""The table registry: every table is a function of the results root, registered by ``@table(name)`` under
the name of its document marker (``report:<name>``). Ordered: the report lists the tables in the order they
register, which is the order ``experiments/report/__init__.py`` imports their modules in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from acme_flwr.registry import Registry

Table = tuple[list[str], list[list[str]], str]  # header, rows, provenance line
TableFn = Callable[[Path], Table | str]
TABLES: Registry[TableFn] = Registry("report table", ordered=True)


def table(name: str) -> Callable[[TableFn], TableFn]:
    """Register a table renderer (its document marker is ``report:<name>``)."""
    return TABLES.register(name)
