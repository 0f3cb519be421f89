"""AcmeStrategy: ACME's personalization loop (spec §4) as a Flower strategy, and a drop-in hierarchical strategy.

With clients that register the ACME handlers (:class:`acme_flwr.clients.AcmeClient`): each device receives its
class's sub-backbone and header once; for ``pruning_per`` it also sends [CLS] feature statistics, from which its edge
builds the similarity matrix (EMD or JS) and row-softmax weights. Every round devices train their gated header and
send **only importance**; the edge returns each device its personalised mix ``Ĩ_k = Σ_j W_kj Î_j`` with the evaluate
message; the device prunes with it (criteria momentum, prune-per-iteration) and evaluates. Weights are never averaged.
Importance is mixed only among the devices of an edge that received the same package (:meth:`header_group`), and a
device that did not train in a round gets no new mix (it never prunes again on an old one).

Variants are configs of this one strategy: ``wo_pruning``, ``pruning_alone``, ``pruning_avg``, ``pruning_per``.

It takes FedAvg's arguments with FedAvg's defaults, so ``FedAvg(...)`` → ``AcmeStrategy(...)`` is a one-line swap.
With an unmodified ClientApp (standard ``arrays``/``metrics`` contract) the profile query fails on every node (one INFO
line, no tracebacks, no round lost) and the strategy runs as :class:`HierarchicalFedAvg` with the same arguments on
the arrays given to ``start`` (drop-in mode), with byte accounting. Without ``deployment=`` (cloud packages) the full
ACME loop cannot run and the strategy is hierarchical FedAvg too, keyed by the partition-ids the ACME handlers report
when the clients have them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from acme_flwr import protocol as P
from acme_flwr.edge.mixing import build_mixing_weights, get_variant, mix_importance, validate_importance
from acme_flwr.edge.similarity import aggregation_weights, similarity_matrix
from acme_flwr.packages import CloudPackages
from acme_flwr.topology import Topology

from .harness import AcmeProtocolStrategy, NotAcmeClients
from .hier_fedavg import HierarchicalFedAvg

logger = logging.getLogger(__name__)


class AcmeStrategy(AcmeProtocolStrategy):
    """ACME personalization by importance exchange; hierarchical FedAvg for clients that do not speak ACME."""

    name = "acme"

    def __init__(self, *args: Any, topology: Topology | None = None, deployment: CloudPackages | None = None,
                 variant: str = "pruning_per", distance: str = "emd", temperature: float = 1.0,
                 prune_per_iteration: int = 10, prune_max_fraction: float = 0.9, prune_momentum: float = 0.9,
                 feature_samples: int = 200, **kwargs: Any) -> None:
        """FedAvg's arguments (positional or keyword, FedAvg's defaults); ``topology=``, ``deployment=`` and the
        ACME settings are keyword-only. ``AcmeStrategy()`` alone is hierarchical FedAvg with one edge."""
        super().__init__(*args, topology=topology, deployment=deployment, **kwargs)
        self.variant = get_variant(variant)
        self.variant_name = variant
        self.distance = distance
        self.temperature = temperature
        self.prune_per_iteration = prune_per_iteration
        self.prune_max_fraction = prune_max_fraction
        self.prune_momentum = prune_momentum
        self.feature_samples = feature_samples if self.variant.name == "per" else 0
        self.edge_weights: dict[int, dict[int, dict[int, float]]] = {}
        self.mixed: dict[int, np.ndarray] = {}
        self.mixed_round: dict[int, int] = {}  # the round each device's mix was computed in
        self.fallback: HierarchicalFedAvg | None = None

    # ------------------------------------------------------------------------------------------------- setup
    def discover(self, grid: Grid) -> None:
        try:
            super().discover(grid)
        except NotAcmeClients as exc:
            logger.info("%s: running as hierarchical FedAvg", exc)
            self._fall_back({pid: node for pid, node in enumerate(exc.nodes)})
            return
        if self.deployment is None:
            logger.info("ACME handlers found on %d of %d nodes but no deployment= (cloud packages) was given: "
                        "running as hierarchical FedAvg", len(self.node_of), self.probe.get("nodes", 0))
            self._fall_back(dict(self.node_of))

    def _fall_back(self, node_of: dict[int, int]) -> None:
        """Drop-in mode: the same FedAvg arguments, topology, ledger and record, run by HierarchicalFedAvg."""
        fb = HierarchicalFedAvg(self.fraction_train, self.fraction_evaluate, self.min_train_nodes,
                                self.min_evaluate_nodes, self.min_available_nodes, self.weighted_by_key,
                                self.arrayrecord_key, self.configrecord_key, self._user_aggr["train"],
                                self._user_aggr["evaluate"], topology=self.topology, recorder=self.recorder,
                                record_name=self.record.name, seed=self.seed,
                                discovery_timeout=self.discovery_timeout, accuracy_key=self.accuracy_key,
                                checkpoint_dir=self.checkpoint_dir)
        fb.min_evaluate_nodes, fb.min_train_nodes = self.min_evaluate_nodes, self.min_train_nodes
        fb.ledger, fb.record, fb.last_round, fb.round_offset = self.ledger, self.record, self.last_round, \
            self.round_offset
        fb.max_reply_bytes = self.max_reply_bytes
        self.node_of, self.pid_of, self.profiles = {}, {}, {}
        for pid, node in sorted(node_of.items()):
            fb._bind(pid, node, {"partition-id": pid})
        fb.bind_topology()
        fb._ready = True
        self.fallback = fb
        self.node_of, self.pid_of, self.profiles = fb.node_of, fb.pid_of, fb.profiles
        self.topology = fb.topology

    def setup(self, grid: Grid) -> None:
        if self.fallback is not None:
            return
        super().setup(grid)
        if self.variant.name != "per":
            return
        sims: dict[str, dict[str, Any]] = {}
        for edge, groups in self.mixing_groups().items():  # similarity only within a mixing group (same package)
            for group, pids in groups.items():
                devs = [p for p in pids if p in self.features]
                if not devs:
                    continue
                s = similarity_matrix([self.features[p] for p in devs], metric=self.distance)
                w = aggregation_weights(s, temperature=self.temperature)
                rows = {k: {j: float(w[a, b]) for b, j in enumerate(devs)} for a, k in enumerate(devs)}
                self.edge_weights.setdefault(int(edge), {}).update(rows)
                sims[f"{edge}/{group}"] = {"edge": int(edge), "group": group, "devices": devs,
                                           "similarity": s.tolist(), "weights": w.tolist()}
        self.record.extra["similarity"] = sims

    def extra_state(self) -> dict[str, Any]:
        return {"mixed": self.mixed, "mixed_round": self.mixed_round, "edge_weights": self.edge_weights}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mixed = dict(state["mixed"])
        self.mixed_round = dict(state.get("mixed_round", {}))
        self.edge_weights = dict(state["edge_weights"])

    def num_gates(self, pid: int) -> int:
        return self.package_of(pid).header.num_gates

    # ------------------------------------------------------------------------------------------------- rounds
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._ensure_ready(grid)
        if self.fallback is not None:
            self.fallback.last_round = self.last_round
            return self.fallback.configure_train(server_round, arrays, config, grid)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.fallback is not None:
            return self.fallback.aggregate_train(server_round, replies)
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fallback is not None:
            return self.fallback.configure_evaluate(server_round, arrays, config, grid)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.fallback is not None:
            return self.fallback.aggregate_evaluate(server_round, replies)
        return super().aggregate_evaluate(server_round, replies)

    def finalize(self) -> dict[str, Any]:
        if self.fallback is not None:
            self.record.extra["mode"] = "drop-in (hierarchical FedAvg)"
            return self.fallback.finalize()
        self.record.extra["mode"] = f"acme ({self.variant_name}, {self.distance})"
        return super().finalize()

    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, send="importance" if self.variant.prunes else "none")

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        super().validate_train_reply(pid, content)
        if self.variant.prunes:
            if P.IMPORTANCE not in content.array_records:
                raise ValueError(f"reply has no {P.IMPORTANCE!r} vector")
            validate_importance(P.vector_from_record(content[P.IMPORTANCE]), self.num_gates(pid))

    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        """Per-device mixes over the edge's devices that share the device's header architecture."""
        if not self.variant.prunes:
            return
        for group in self.by_header_group(replies).values():
            imps = {pid: validate_importance(P.vector_from_record(replies[pid][P.IMPORTANCE]), self.num_gates(pid))
                    for pid in group}
            examples = {pid: int(replies[pid][P.METRICS][P.NUM_EXAMPLES]) for pid in group}
            similarity = None
            if self.variant.name == "per":  # rows of the replying devices, renormalised over them
                full = self.edge_weights[edge]
                similarity = {k: {j: full[k][j] / sum(full[k][i] for i in imps) for j in imps} for k in imps}
            weights = build_mixing_weights(self.variant_name, group, num_examples=examples, similarity=similarity)
            mixes = mix_importance(imps, weights)
            self.mixed.update(mixes)
            self.mixed_round.update(dict.fromkeys(mixes, server_round))

    # No aggregate_cloud: in the personalization phase nothing the cloud would receive is used (spec §4: importance is
    # exchanged between an edge and its devices only), so nothing is sent and nothing is counted.

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        if not (self.variant.prunes and self.mixed_round.get(pid) == server_round):
            return self.content(server_round)  # not trained this round (not sampled, or failed): no stale re-prune
        return self.content(server_round, {P.IMPORTANCE: P.vector_record(self.mixed[pid])},
                            **{"prune-per-iteration": self.prune_per_iteration,
                               "prune-max": max(1, int(self.prune_max_fraction * self.num_gates(pid))),
                               "prune-momentum": self.prune_momentum})
