"""Decorator registries (timm-style) and the name checks config validation uses.

Every pluggable family (data sets, partitioners, strategies) is a :class:`Registry`; models and headers keep their own
registries in ``cloud/models.py`` / ``device/headers.py``. Config validation asks :func:`check_registered` so that a
bad name stops a run before any work, with the list of names that would have worked (the providers are looked up by
module name, so this plumbing module imports no tier).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from acme_flwr.errors import ConfigError

T = TypeVar("T")


class RegistryError(LookupError, ValueError):
    """A name is unknown to, or already taken in, a registry; the message lists the registered names."""


class Registry(Generic[T]):
    """A name → object table filled by a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; allowed: {self.names()}") from None

    def unregister(self, name: str) -> T:
        """Remove and return ``name`` (tests register temporary entries)."""
        return self._items.pop(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


# kind -> (module, function returning the registered names)
_PROVIDERS: dict[str, tuple[str, str]] = {
    "dataset": ("acme_flwr.data", "list_datasets"),
    "partitioner": ("acme_flwr.partition", "list_partitioners"),
    "feature_shift": ("acme_flwr.shift", "list_feature_shifts"),
    "domain_assignment": ("acme_flwr.shift", "list_domain_assignments"),
    "model": ("acme_flwr.cloud.models", "list_models"),
    "header": ("acme_flwr.device.headers", "list_headers"),
}


def registered_names(kind: str) -> list[str]:
    module, func = _PROVIDERS[kind]
    return list(getattr(importlib.import_module(module), func)())


def check_registered(kind: str, key: str, name: str) -> None:
    """Raise ConfigError if ``name`` is not a registered ``kind``; the message names the key and the choices."""
    names = registered_names(kind)
    if name not in names:
        raise ConfigError(f"{key}={name!r} is not a registered {kind}; allowed values: {names}")
