"""Decorator registries (timm-style) and the name checks config validation uses.

Every pluggable family is a :class:`Registry` filled by a decorator where its members are defined: data sets
(``data.py``), partitioners (``partition.py``), backbones (``cloud/models.py``), backbone selectors
(``cloud/pfg.py``), PFG cost models (``packages.py``), headers (``device/headers.py``), similarity metrics
(``edge/similarity.py``), importance-mixing variants (``edge/mixing.py``) and strategies (``strategies/registry.py``).
Config validation asks :func:`check_registered` so that a bad name stops a run before any work, with the list of names
that would have worked; :func:`registered_names` is also where the config's allowed values (and
``docs/configuration.md``) come from. The registries are looked up by module name, so this plumbing module imports
no tier.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from acme_flwr.errors import ConfigError

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """A name is unknown to, or already taken in, a registry; the message lists the registered names.

    A ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad argument), so callers written against either keep
    working; ``str()`` is the plain message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name → object table filled by a decorator.

    ``@reg.register("name", "alias")`` registers under every given name; ``@reg.register()`` (or ``reg(fn)``) under
    the object's ``__name__`` (timm's ``@register_model``). A taken name is an error. ``names()`` is sorted unless the
    registry was made with ``ordered=True``, which keeps registration order (a ladder such as the mixing variants).
    """

    def __init__(self, kind: str, *, ordered: bool = False) -> None:
        self.kind = kind
        self.ordered = ordered
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for name in names or (getattr(obj, "__name__", None),):
                if not isinstance(name, str) or not name:
                    raise RegistryError(f"{self.kind}: give a name to register {obj!r} under")
                if name in self._items:
                    raise RegistryError(f"{self.kind} {name!r} is already registered")
                self._items[name] = obj
            return obj

        return decorator

    def __call__(self, obj: T) -> T:
        """Bare decorator: register ``obj`` under its ``__name__``."""
        return self.register()(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; allowed: {self.names()}") from None

    def unregister(self, name: str) -> T:
        """Remove and return ``name`` (tests register temporary entries)."""
        return self._items.pop(name)

    def names(self) -> list[str]:
        return list(self._items) if self.ordered else sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


# kind (as config metadata names it) -> (module, function returning the registered names)
_PROVIDERS: dict[str, tuple[str, str]] = {
    "dataset": ("acme_flwr.data", "list_datasets"),
    "partitioner": ("acme_flwr.partition", "list_partitioners"),
    "feature_shift": ("acme_flwr.shift", "list_feature_shifts"),
    "domain_assignment": ("acme_flwr.shift", "list_domain_assignments"),
    "model": ("acme_flwr.cloud.models", "list_models"),
    "header": ("acme_flwr.device.headers", "list_headers"),
    "selection method": ("acme_flwr.cloud.pfg", "list_selectors"),
    "cost model": ("acme_flwr.packages", "list_cost_models"),
    "similarity metric": ("acme_flwr.edge.similarity", "list_metrics"),
    "aggregation variant": ("acme_flwr.edge.mixing", "list_variants"),
    "importance accumulation": ("acme_flwr.device.importance", "list_accumulation_modes"),
}


def registry_kinds() -> list[str]:
    """The kinds a config field may name in its ``"registry"`` metadata."""
    return sorted(_PROVIDERS)


def registered_names(kind: str) -> list[str]:
    """The names registered as ``kind`` now (importing the module that holds that registry)."""
    if kind not in _PROVIDERS:
        raise RegistryError(f"unknown registry kind {kind!r}; allowed: {registry_kinds()}")
    module, func = _PROVIDERS[kind]
    return list(getattr(importlib.import_module(module), func)())


def check_registered(kind: str, key: str, name: str, *, with_argument: bool = False) -> None:
    """Raise ConfigError if ``name`` is not a registered ``kind``; the message names the key and the choices.

    ``with_argument``: the value may be ``name:argument`` (e.g. ``measured:<path>``); only ``name`` is checked here,
    the registered factory checks its argument when it is built.
    """
    names = registered_names(kind)
    base = name.partition(":")[0] if with_argument else name
    if base not in names:
        raise ConfigError(f"{key}={name!r} is not a registered {kind}; allowed values: {names}")
