"""Edge NAS library (ACME Part II): ENAS micro search of a header on a sub-backbone's patch-token grid.

Pure torch, no Flower imports. ``child`` holds the weight-shared child (its cell vocabulary is
:mod:`acme_flwr.device.cell`), ``controller`` the LSTM controller, ``search`` the REINFORCE loop with pluggable reward
sources, ``export`` the copy of one arc into a device's gated header, ``header_search`` the search on the edge's proxy
data and ``federated`` the same search with rewards from the devices.
"""

from acme_flwr.device.cell import (
    NUM_BRANCHES,
    OPS,
    ChildConfig,
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
from acme_flwr.device.searched_header import SearchedHeader
from acme_flwr.edge.nas.child import ENASChild
from acme_flwr.edge.nas.controller import Controller, ControllerSample
from acme_flwr.edge.nas.export import export_header
from acme_flwr.edge.nas.search import (
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
