"""HierarchicalFedAvg: FedAvg inside each edge, edges averaged at the cloud every ``edge_rounds_per_cloud`` rounds
(and at the last round, so the returned model includes the last round's training).

It is FedAvg's interface and contract: every ``FedAvg`` argument with FedAvg's meaning, ``arrayrecord_key`` /
``configrecord_key`` in, one ArrayRecord and one MetricRecord carrying ``weighted_by_key`` out, so it works with an
unmodified ClientApp such as Flower's quickstart. With one edge (the default topology) it *is* FedAvg. It is also
what :class:`AcmeStrategy` runs when the clients do not speak the ACME protocol (drop-in mode).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from .base import EdgeTierStrategy, ReplyRejected, metrics_of
from .utils import check_same_layout, from_numpy, to_numpy, weighted_average


class HierarchicalFedAvg(EdgeTierStrategy):
    """Edge-level FedAvg + periodic cloud averaging over the standard Flower message contract."""

    name = "hier_fedavg"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as :class:`EdgeTierStrategy` (FedAvg's, plus keyword-only ``topology=`` etc.)."""
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
            if not self.reference_params:  # the FedAvg-full reference: the model the app started from
                self.reference_params = int(sum(a.numpy().size for a in arrays.values()))
        return self.edge_models.get(self.topology.edge_of(pid), self.global_model)

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        cfg = ConfigRecord({**dict(config), "server-round": server_round})
        return RecordDict({self.arrayrecord_key: self._model_for(pid, arrays), self.configrecord_key: cfg})

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.train_content(server_round, pid, arrays, config)

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """FedAvg's reply contract: one ArrayRecord with the model's layout, one MetricRecord with the weight."""
        if len(content.array_records) != 1:
            raise ReplyRejected(f"reply must carry exactly one ArrayRecord; has {list(content.array_records)}")
        if len(content.metric_records) != 1:
            raise ReplyRejected(f"reply must carry exactly one MetricRecord; has {list(content.metric_records)}")
        weight = metrics_of(content).get(self.weighted_by_key)
        if not isinstance(weight, (int, float)):
            raise ReplyRejected(f"reply metrics lack a scalar {self.weighted_by_key!r}")
        check_same_layout(_arrays_of(content), self.global_model, f"device {pid} arrays")

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        pairs = [(_arrays_of(c), float(metrics_of(c)[self.weighted_by_key])) for c in replies.values()]
        self.edge_models[edge] = weighted_average(pairs)
        self.edge_examples[edge] = sum(w for _, w in pairs)

    def aggregate_cloud(self, server_round: int) -> None:
        if not self.edge_models:
            return
        pairs = [(m, self.edge_examples[e]) for e, m in sorted(self.edge_models.items())]
        for model, _ in pairs:
            self.ledger.add_message(server_round, "cloud-edge", "up", RecordDict({self.arrayrecord_key: model}))
        self.global_model = weighted_average(pairs)
        for e in self.edge_models:
            self.edge_models[e] = self.global_model
            self.ledger.add_message(server_round, "cloud-edge", "down",
                                    RecordDict({self.arrayrecord_key: self.global_model}))

    def global_arrays(self) -> ArrayRecord | None:
        return self.global_model


def _arrays_of(content: RecordDict) -> ArrayRecord:
    return next(iter(content.array_records.values()))
