"""acme-flwr: ACME (ICDCS 2025) — adaptive customization of a large ViT over cloud, edges and devices — on Flower.

The public API is loaded lazily so that ``import acme_flwr`` stays cheap and never pulls Flower server code into
library-only users: ``AcmeStrategy``, ``HierarchicalFedAvg``, ``AcmeClient``, ``ElasticViT``, ``create_model``,
``list_models``, ``AcmeConfig``, ``partition``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AcmeStrategy": ("acme_flwr.strategies", "AcmeStrategy"),
    "HierarchicalFedAvg": ("acme_flwr.strategies", "HierarchicalFedAvg"),
    "HeaderFedAvg": ("acme_flwr.strategies", "HeaderFedAvg"),
    "AcmeClient": ("acme_flwr.clients", "AcmeClient"),
    "ElasticViT": ("acme_flwr.cloud.elastic_vit", "ElasticViT"),
    "create_model": ("acme_flwr.cloud.models", "create_model"),
    "list_models": ("acme_flwr.cloud.models", "list_models"),
    "AcmeConfig": ("acme_flwr.config", "AcmeConfig"),
    "Topology": ("acme_flwr.topology", "Topology"),
    "partition": ("acme_flwr.partition", "partition"),
    "list_partitioners": ("acme_flwr.partition", "list_partitioners"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'acme_flwr' has no attribute {name!r}")
