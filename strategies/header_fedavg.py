"""HeaderFedAvg: the baselines on ACME's own harness (same sub-backbones, devices, data and byte accounting).

``share`` picks what the edge averages each round:

- ``all``: FedAvg of the whole header (``fedavg_header``);
- ``body``: FedPer, the header body is averaged and each device keeps its own classifier (``fedper``);
- ``none``: local-only training, nothing is exchanged after setup (``local``).

Edges average their devices' replies every round (example-weighted); every ``edge_rounds_per_cloud`` rounds the cloud
averages the edge models and sends the result back down (bytes counted on the cloud-edge tier).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr import protocol as P
from acme_flwr.deployment import Deployment
from acme_flwr.topology import Topology

from .base import ReplyRejected
from .harness import AcmeProtocolStrategy
from .utils import check_same_layout, from_numpy, to_numpy, weighted_average

SHARES = ("all", "body", "none")


class HeaderFedAvg(AcmeProtocolStrategy):
    """Weight-averaging baselines over the ACME device harness."""

    name = "fedavg_header"

    def __init__(self, topology: Topology, deployment: Deployment | None, *, share: str = "all",
                 **kwargs: Any) -> None:
        if share not in SHARES:
            raise ValueError(f"share={share!r}; allowed: {list(SHARES)}")
        super().__init__(topology, deployment, **kwargs)
        self.share = share
        self.edge_models: dict[int, ArrayRecord] = {}
        self.edge_examples: dict[int, float] = {}

    def extra_state(self) -> dict[str, Any]:
        return {"edge_models": {e: to_numpy(m) for e, m in self.edge_models.items()},
                "edge_examples": self.edge_examples}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.edge_models = {e: from_numpy(m) for e, m in state["edge_models"].items()}
        self.edge_examples = dict(state["edge_examples"])

    def _send(self) -> str:
        return {"all": "header", "body": "body", "none": "none"}[self.share]

    def _edge_arrays(self, pid: int) -> dict[str, ArrayRecord]:
        model = self.edge_models.get(self.topology.edge_of(pid))
        return {} if model is None or self.share == "none" else {P.HEADER: model}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, self._edge_arrays(pid), send=self._send())

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.content(server_round, self._edge_arrays(pid))

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        super().validate_train_reply(pid, content)
        if self.share == "none":
            return
        if P.HEADER not in content.array_records:
            raise ReplyRejected(f"reply has no {P.HEADER!r} weights")
        reference = next(iter(self.edge_models.values()), None)
        if reference is not None:
            check_same_layout(content[P.HEADER], reference, f"device {pid} header")

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        if self.share == "none":
            return
        pairs = [(c[P.HEADER], float(c[P.METRICS][P.NUM_EXAMPLES])) for c in replies.values()]
        self.edge_models[edge] = weighted_average(pairs)
        self.edge_examples[edge] = sum(w for _, w in pairs)

    def aggregate_cloud(self, server_round: int) -> None:
        if self.share == "none" or not self.edge_models:
            return
        pairs = [(m, self.edge_examples[e]) for e, m in sorted(self.edge_models.items())]
        for model, _ in pairs:
            self.ledger.add_message(server_round, "cloud-edge", "up", RecordDict({P.HEADER: model}))
        merged = weighted_average(pairs)
        for e in sorted(self.edge_models):
            self.edge_models[e] = merged
            self.ledger.add_message(server_round, "cloud-edge", "down", RecordDict({P.HEADER: merged}))
