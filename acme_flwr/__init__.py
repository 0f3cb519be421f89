"""acme-flwr: ACME (ICDCS 2025) — adaptive customization of a large ViT over cloud, edges and devices — on Flower.

The public API is loaded lazily so that ``import acme_flwr`` stays cheap and never pulls Flower server code into
library-only users: the strategies ``AcmeStrategy``, ``HierarchicalFedAvg`` and ``HeaderFedAvg``; the client side
``AcmeClient``; the backbone ``ElasticViT`` with ``create_model`` / ``list_models``; ``AcmeConfig``; ``Topology``; and
the partitioners, ``partition`` / ``list_partitioners`` (``__all__`` lists exactly these names).
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "AcmeStrategy": "acme_flwr.strategies",
    "HierarchicalFedAvg": "acme_flwr.strategies",
    "HeaderFedAvg": "acme_flwr.strategies",
    "AcmeClient": "acme_flwr.clients",
    "ElasticViT": "acme_flwr.cloud.elastic_vit",
    "create_model": "acme_flwr.cloud.models",
    "list_models": "acme_flwr.cloud.models",
    "AcmeConfig": "acme_flwr.config",
    "Topology": "acme_flwr.topology",
    "partition": "acme_flwr.partition",
    "list_partitioners": "acme_flwr.partition",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
