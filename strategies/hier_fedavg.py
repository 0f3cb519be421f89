"""HierarchicalFedAvg: FedAvg inside each edge, edges averaged at the cloud every ``edge_rounds_per_cloud`` rounds.

Speaks only Flower's standard contract (``arrays`` / ``config`` in, ``arrays`` / ``metrics`` with ``num-examples``
out), so it works with an unmodified ClientApp such as Flower's quickstart. It is also what :class:`AcmeStrategy`
falls back to when the clients do not speak the ACME protocol (drop-in mode).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr import protocol as P

from .base import EdgeTierStrategy, ReplyRejected
from .utils import check_same_layout, from_numpy, to_numpy, weighted_average


class HierarchicalFedAvg(EdgeTierStrategy):
    """Edge-level FedAvg + periodic cloud averaging over the standard Flower message contract."""

    name = "hier_fedavg"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - same signature as EdgeTierStrategy
        super().__init__(*args, **kwargs)
        self.global_model: ArrayRecord | None = None
        self.edge_models: dict[int, ArrayRecord] = {}
        self.edge_examples: dict[int, float] = {}

    def extra_state(self) -> dict[str, Any]:
        return {"global": None if self.global_model is None else to_numpy(self.global_model),
                "edge_models": {e: to_numpy(m) for e, m in self.edge_models.items()},
                "edge_examples": self.edge_examples}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.global_model = None if state["global"] is None else from_numpy(state["global"])
        self.edge_models = {e: from_numpy(m) for e, m in state["edge_models"].items()}
        self.edge_examples = dict(state["edge_examples"])

    def _model_for(self, pid: int, arrays: ArrayRecord) -> ArrayRecord:
        if self.global_model is None:
            self.global_model = arrays
        return self.edge_models.get(self.topology.edge_of(pid), self.global_model)

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        cfg = ConfigRecord({**dict(config), "server-round": server_round})
        return RecordDict({P.STD_ARRAYS: self._model_for(pid, arrays), P.STD_CONFIG: cfg})

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.train_content(server_round, pid, arrays, config)

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        super().validate_train_reply(pid, content)
        if P.STD_ARRAYS not in content.array_records:
            raise ReplyRejected(f"reply has no ArrayRecord {P.STD_ARRAYS!r}")
        if P.NUM_EXAMPLES not in content[P.STD_METRICS]:
            raise ReplyRejected(f"reply metrics lack {P.NUM_EXAMPLES!r}")
        check_same_layout(content[P.STD_ARRAYS], self.global_model, f"device {pid} arrays")

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        pairs = [(c[P.STD_ARRAYS], float(c[P.STD_METRICS][P.NUM_EXAMPLES])) for c in replies.values()]
        self.edge_models[edge] = weighted_average(pairs)
        self.edge_examples[edge] = sum(w for _, w in pairs)

    def aggregate_cloud(self, server_round: int) -> None:
        pairs = [(m, self.edge_examples[e]) for e, m in sorted(self.edge_models.items())]
        for model, _ in pairs:
            self.ledger.add_message(server_round, "cloud-edge", "up", RecordDict({P.STD_ARRAYS: model}))
        self.global_model = weighted_average(pairs)
        for e in self.edge_models:
            self.edge_models[e] = self.global_model
            self.ledger.add_message(server_round, "cloud-edge", "down", RecordDict({P.STD_ARRAYS: self.global_model}))

    def global_arrays(self) -> ArrayRecord | None:
        return self.global_model
