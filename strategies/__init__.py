"""Flower strategies of acme-flwr (installed as ``acme_flwr.strategies``; top-level ``strategies`` inside a FAB)."""

from .acme import AcmeStrategy
from .base import EdgeTierStrategy, ReplyRejected
from .ditto import Ditto
from .fedbabu import FedBABU
from .fedrep import FedRep
from .header_fedavg import HeaderFedAvg
from .hier_fedavg import HierarchicalFedAvg
from .registry import STRATEGIES, build_strategy

__all__ = ["STRATEGIES", "AcmeStrategy", "Ditto", "EdgeTierStrategy", "FedBABU", "FedRep", "HeaderFedAvg",
           "HierarchicalFedAvg", "ReplyRejected", "build_strategy"]
