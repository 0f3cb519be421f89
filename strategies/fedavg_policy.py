"""FedAvgPolicy: FedAvg's rounds inside each edge, edges averaged at the cloud.

The round policy of :class:`~.hier_fedavg.HierarchicalFedAvg` and of :class:`~.acme.AcmeStrategy`'s drop-in mode.
It speaks FedAvg's message contract (``arrayrecord_key`` / ``configrecord_key`` in, one ArrayRecord and one
MetricRecord carrying ``weighted_by_key`` out), so it works with an unmodified ClientApp such as Flower's quickstart.
Each device trains from its edge's model (the global model until its edge has one); an edge averages its devices'
arrays weighted by ``weighted_by_key``; the cloud averages the edges' models weighted by their examples and sends
the result back down (bytes on the cloud-edge tier). With one edge it is FedAvg.
"""

from __future__ import annotations

from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr.comm import CommLedger
from acme_flwr.round_books import metrics_of
from acme_flwr.topology import Topology

from .admission import ReplyRejected
from .rounds_policy import RoundsPolicy
from .utils import check_same_layout, from_numpy, to_numpy, weighted_average


class FedAvgHost(Protocol):
    """What the policy reads from the strategy that runs it (it writes nothing there)."""

    topology: Topology
    ledger: CommLedger
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str


class FedAvgPolicy(RoundsPolicy):
    """Edge-level FedAvg + periodic cloud averaging over the standard Flower message contract."""

    policy_name = "fedavg"
    has_cloud_step = True

    def __init__(self, host: FedAvgHost, label: str = "") -> None:
        """``label``: the summary block's ``mode`` (empty: none)."""
        self.host = host
        self.label = label
        self.global_model: ArrayRecord | None = None
        self.edge_models: dict[int, ArrayRecord] = {}
        self.edge_examples: dict[int, float] = {}
        self._params = 0

    def describe(self) -> str:
        return self.label

    def extra_state(self) -> dict[str, Any]:
        return {"global": None if self.global_model is None else to_numpy(self.global_model),
                "edge_models": {e: to_numpy(m) for e, m in self.edge_models.items()},
                "edge_examples": self.edge_examples}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.global_model = None if state["global"] is None else from_numpy(state["global"])
        self.edge_models = {e: from_numpy(m) for e, m in state["edge_models"].items()}
        self.edge_examples = dict(state["edge_examples"])

    def model_params(self) -> int:
        """The FedAvg-full reference counts the model the app started from."""
        return self._params

    def _model_for(self, pid: int, arrays: ArrayRecord) -> ArrayRecord:
        if self.global_model is None:
            self.global_model = arrays
            self._params = int(sum(a.numpy().size for a in arrays.values()))
        elif not self._params:  # restored from a checkpoint
            self._params = int(sum(a.numpy().size for a in self.global_model.values()))
        return self.edge_models.get(self.host.topology.edge_of(pid), self.global_model)

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        if not len(arrays) and self.global_model is None:
            raise ValueError("hierarchical FedAvg needs the model to start from: pass start(initial_arrays=...)")
        cfg = ConfigRecord({**dict(config), "server-round": server_round})
        return RecordDict({self.host.arrayrecord_key: self._model_for(pid, arrays), self.host.configrecord_key: cfg})

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.train_content(server_round, pid, arrays, config)

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """FedAvg's reply contract: one ArrayRecord with the model's layout, one MetricRecord with the weight."""
        if len(content.array_records) != 1:
            raise ReplyRejected(f"reply must carry exactly one ArrayRecord; has {list(content.array_records)}")
        if len(content.metric_records) != 1:
            raise ReplyRejected(f"reply must carry exactly one MetricRecord; has {list(content.metric_records)}")
        weight = metrics_of(content).get(self.host.weighted_by_key)
        if not isinstance(weight, (int, float)):
            raise ReplyRejected(f"reply metrics lack a scalar {self.host.weighted_by_key!r}")
        check_same_layout(_arrays_of(content), self.global_model, f"device {pid} arrays")

    def validate_evaluate_reply(self, pid: int, content: RecordDict) -> None:
        """FedAvg's evaluate contract: one MetricRecord carrying a scalar ``weighted_by_key``."""
        if len(content.metric_records) != 1:
            raise ReplyRejected(f"reply must carry exactly one MetricRecord; has {list(content.metric_records)}")
        if not isinstance(metrics_of(content).get(self.host.weighted_by_key), (int, float)):
            raise ReplyRejected(f"reply metrics lack a scalar {self.host.weighted_by_key!r}")

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        pairs = [(_arrays_of(c), float(metrics_of(c)[self.host.weighted_by_key])) for c in replies.values()]
        self.edge_models[edge] = weighted_average(pairs)
        self.edge_examples[edge] = sum(w for _, w in pairs)

    def aggregate_cloud(self, server_round: int) -> None:
        if not self.edge_models:
            return
        key, ledger = self.host.arrayrecord_key, self.host.ledger
        pairs = [(m, self.edge_examples[e]) for e, m in sorted(self.edge_models.items())]
        for model, _ in pairs:
            ledger.add_message(server_round, "cloud-edge", "up", RecordDict({key: model}))
        self.global_model = weighted_average(pairs)
        for e in self.edge_models:
            self.edge_models[e] = self.global_model
            ledger.add_message(server_round, "cloud-edge", "down", RecordDict({key: self.global_model}))

    def global_arrays(self) -> ArrayRecord | None:
        return self.global_model


def _arrays_of(content: RecordDict) -> ArrayRecord:
    return next(iter(content.array_records.values()))
