"""Flower strategies of acme-flwr (installed as ``acme_flwr.strategies``; top-level ``strategies`` inside a FAB).

Names load on first use (``acme_flwr.lazy``), so that ``flwr run``'s check of ``strategies.server_app`` does not
import torch and the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acme_flwr.lazy import lazy_exports

if TYPE_CHECKING:
    from .acme import AcmeStrategy
    from .admission import ReplyRejected
    from .base import EdgeTierStrategy
    from .ditto import Ditto
    from .fedavg_policy import FedAvgPolicy
    from .fedbabu import FedBABU
    from .fedrep import FedRep
    from .header_fedavg import HeaderFedAvg
    from .hier_fedavg import HierarchicalFedAvg
    from .registry import STRATEGIES, build_strategy
    from .rounds_policy import RoundsPolicy

_EXPORTS = {"AcmeStrategy": ".acme", "EdgeTierStrategy": ".base", "ReplyRejected": ".admission", "Ditto": ".ditto",
            "FedAvgPolicy": ".fedavg_policy", "FedBABU": ".fedbabu", "FedRep": ".fedrep",
            "HeaderFedAvg": ".header_fedavg", "HierarchicalFedAvg": ".hier_fedavg", "STRATEGIES": ".registry",
            "build_strategy": ".registry", "RoundsPolicy": ".rounds_policy"}
__all__ = ["STRATEGIES", "AcmeStrategy", "Ditto", "EdgeTierStrategy", "FedAvgPolicy", "FedBABU", "FedRep",
           "HeaderFedAvg", "HierarchicalFedAvg", "ReplyRejected", "RoundsPolicy", "build_strategy"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
