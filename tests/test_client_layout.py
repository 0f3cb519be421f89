"""The device side by concern: the handlers dispatch, no module of clients/ ties tiers through packages.py, one
training mode per file, no class over ~300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from .test_layout import GRAPH

CLIENTS = Path(__file__).resolve().parents[1] / "clients"


def test_clients_do_not_import_packages_py() -> None:
    users = sorted(src for src, dsts in GRAPH.items() if src.startswith("acme_flwr.clients")
                   and "acme_flwr.packages" in dsts)
    assert users == []
    assert "acme_flwr.device.headers" in GRAPH["acme_flwr.clients.handlers"]  # header construction: with the headers
    assert "acme_flwr.clients.nas" in GRAPH["acme_flwr.clients.handlers"]


def test_one_registered_mode_per_file_and_no_class_over_300_lines() -> None:
    for path in sorted(CLIENTS.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno < 300, f"{path.name}: {node.name}"
        if path.parent.name == "modes" and path.stem not in {"__init__", "base"}:
            registered = [d for n in ast.walk(tree) if isinstance(n, ast.ClassDef) for d in n.decorator_list
                          if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_mode"]
            assert len(registered) == 1, path.name
