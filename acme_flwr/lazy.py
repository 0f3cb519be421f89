"""Lazy package exports (PEP 562): a package's public names are imported on first use, not with the package.

Why: ``flwr run`` checks ``strategies.server_app:app`` and ``clients.client_app:app`` with ``find_spec``, which
executes the parent package's ``__init__``; importing torch and the models there cost ~10 s per run before the run
even started. ``import acme_flwr`` stays cheap for library-only users the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that resolves ``name`` from ``exports[name]`` (a module,
    absolute or relative to ``package``) on first access and caches it in the package's namespace."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
