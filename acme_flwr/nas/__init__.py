"""Edge NAS library (ACME Part II): ENAS micro search of a header on a sub-backbone's patch-token grid.

Pure torch, no Flower imports. ``child`` holds the search space and the weight-shared child, ``controller`` the LSTM
controller, ``search`` the REINFORCE loop with pluggable reward sources, ``export`` the standalone gated header.
"""

from acme_flwr.nas.child import (
    NUM_BRANCHES,
    OPS,
    ChildConfig,
    ENASChild,
    Node,
    OpSpec,
    SepConv,
    arc_nodes,
    arc_to_str,
    has_separable_op,
    loose_ends,
    random_arc,
    tokens_to_grid,
    validate_arc,
)
from acme_flwr.nas.controller import Controller, ControllerSample
from acme_flwr.nas.export import SearchedHeader, export_header
from acme_flwr.nas.search import (
    ProxyReward,
    Reinforce,
    RewardSource,
    SearchConfig,
    SearchResult,
    header_size_for,
    search,
    sgdr_lr,
)

__all__ = [
    "NUM_BRANCHES",
    "OPS",
    "ChildConfig",
    "Controller",
    "ControllerSample",
    "ENASChild",
    "Node",
    "OpSpec",
    "ProxyReward",
    "Reinforce",
    "RewardSource",
    "SearchConfig",
    "SearchResult",
    "SearchedHeader",
    "SepConv",
    "arc_nodes",
    "arc_to_str",
    "export_header",
    "has_separable_op",
    "header_size_for",
    "loose_ends",
    "random_arc",
    "search",
    "sgdr_lr",
    "tokens_to_grid",
    "validate_arc",
]
