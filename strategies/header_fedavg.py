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
from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .admission import ReplyRejected
from .harness import AcmeProtocolStrategy
from .utils import check_same_layout, from_numpy, to_numpy, weighted_average

SHARES = ("all", "body", "none")


class HeaderFedAvg(AcmeProtocolStrategy):
    """Weight-averaging baselines over the ACME device harness.

    Parameters
    ----------
    topology : Topology, optional (keyword-only)
        Devices, edges, assignment and ``edge_rounds_per_cloud``.
    deployment : CloudPackages, optional (keyword-only)
        The cloud's packages (sub-backbone and warm header per device class); needed to run.
    share : str (default: "all")
        What the edge averages: "all" (FedAvg of the header), "body" (FedPer) or "none" (local training only).
    *args, **kwargs :
        FedAvg's arguments (positional in FedAvg's order, or by name) and the harness's keyword-only settings
        (``recorder``, ``record_name``, ``seed``, ``timeout``, ``train_config``, ``checkpoint_dir``, ...), as for
        :class:`~.acme.AcmeStrategy`.
    """

    name = "fedavg_header"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 share: str = "all", **kwargs: Any) -> None:
        if share not in SHARES:
            raise ValueError(f"share={share!r}; allowed: {list(SHARES)}")
        super().__init__(*args, topology=topology, deployment=deployment, **kwargs)
        self.share = share
        self.edge_models: dict[tuple[int, str], ArrayRecord] = {}  # (edge, header group) -> model
        self.edge_examples: dict[tuple[int, str], float] = {}
        self.versions: dict[tuple[int, str], int] = {}  # bumped whenever an edge model changes
        self.delivered: dict[int, int] = {}  # partition-id -> version of its edge model it already holds

    def settings(self) -> dict[str, Any]:
        return {"Header averaging": f"share {self.share}", "Devices train with": self.train_config}

    def extra_state(self) -> dict[str, Any]:
        return {"edge_models": {e: to_numpy(m) for e, m in self.edge_models.items()},
                "edge_examples": self.edge_examples, "versions": self.versions, "delivered": self.delivered}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.edge_models = {e: from_numpy(m) for e, m in state["edge_models"].items()}
        self.edge_examples = dict(state["edge_examples"])
        self.versions = dict(state.get("versions", {}))
        self.delivered = dict(state.get("delivered", {}))

    def _send(self) -> str:
        return {"all": "header", "body": "body", "none": "none"}[self.share]

    def _edge_arrays(self, pid: int) -> dict[str, ArrayRecord]:
        """The device's edge model, unless the device already holds this version of it.

        A device keeps the model it last received (the evaluate message of round r carries the model aggregated in
        round r, and the device trains from it in round r + 1), so a real deployment sends each version once."""
        key = (self.topology.edge_of(pid), self.header_group(pid))
        model = self.edge_models.get(key)
        if model is None or self.share == "none" or self.delivered.get(pid) == self.versions.get(key):
            return {}
        self.delivered[pid] = self.versions[key]
        return {P.HEADER: model}

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid), send=self._send())

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, self._edge_arrays(pid))

    def accept_replies(self, server_round: int, phase: str, replies: Any, validate: Any) -> dict[int, RecordDict]:
        """A device whose reply is missing may not have received its model: send it again next time."""
        ok = super().accept_replies(server_round, phase, replies, validate)
        for pid in self.admission.asked(server_round, phase) - set(ok):
            self.delivered.pop(pid, None)
        return ok

    def _update(self, key: tuple[int, str], model: ArrayRecord) -> None:
        self.edge_models[key] = model
        self.versions[key] = self.versions.get(key, 0) + 1

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        super().validate_train_reply(pid, content)
        if self.share == "none":
            return
        if P.HEADER not in content.array_records:
            raise ReplyRejected(f"reply has no {P.HEADER!r} weights")
        group = self.header_group(pid)
        reference = next((m for (_, g), m in self.edge_models.items() if g == group), None)
        if reference is not None:
            check_same_layout(content[P.HEADER], reference, f"device {pid} header")

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        """Example-weighted average per header architecture (devices with different headers are never mixed)."""
        if self.share == "none":
            return
        for group, pids in self.by_header_group(replies).items():
            pairs = [(replies[p][P.HEADER], float(replies[p][P.METRICS][P.NUM_EXAMPLES])) for p in pids]
            self._update((edge, group), weighted_average(pairs))
            self.edge_examples[(edge, group)] = sum(w for _, w in pairs)

    def aggregate_cloud(self, server_round: int) -> None:
        """The cloud averages the edges' models of each header architecture and sends the result back."""
        if self.share == "none":
            return
        for group in sorted({g for _, g in self.edge_models}):
            keys = sorted(k for k in self.edge_models if k[1] == group)
            pairs = [(self.edge_models[k], self.edge_examples[k]) for k in keys]
            for model, _ in pairs:
                self.ledger.add_message(server_round, "cloud-edge", "up", RecordDict({P.HEADER: model}))
            merged = weighted_average(pairs)
            for k in keys:
                self._update(k, merged)
                self.ledger.add_message(server_round, "cloud-edge", "down", RecordDict({P.HEADER: merged}))
