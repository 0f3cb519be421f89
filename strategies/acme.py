"""AcmeStrategy: ACME's personalization loop (ACME §4) as a Flower strategy, and a drop-in hierarchical strategy.

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
line, no tracebacks, no round lost) and the strategy chooses the FedAvg rounds policy (:class:`FedAvgPolicy`, what
:class:`HierarchicalFedAvg` runs) on the arrays given to ``start`` (drop-in mode), with byte accounting. Without
``deployment=`` (cloud packages) the full ACME loop cannot run and the strategy is hierarchical FedAvg too, keyed by
the partition-ids the ACME handlers report when the clients have them.

In full mode personalization has no global model: ``Result.arrays`` stays ``initial_arrays`` (which may be left out)
and ``evaluate_fn`` sees only them; ``Result.train_metrics_clientapp`` / ``evaluate_metrics_clientapp`` hold FedAvg's
aggregation of the devices' metrics per round, and the strategy's summary block (``finalize()``) the per-device
results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from acme_flwr import protocol as P
from acme_flwr.config import AcmeConfig, StrategySection
from acme_flwr.edge.mixing import build_mixing_weights, get_variant, mix_importance, validate_importance
from acme_flwr.edge.similarity import aggregation_weights, similarity_matrix
from acme_flwr.packages import CloudPackages
from acme_flwr.results import RunRecorder
from acme_flwr.topology import Topology

from .base import MetricsAggrFn
from .fedavg_policy import FedAvgPolicy
from .harness import AcmeProtocolStrategy, NotAcmeClients, config_kwargs, topology_of

logger = logging.getLogger(__name__)

_S = StrategySection()  # the one set of defaults: the config schema's


class AcmeStrategy(AcmeProtocolStrategy):
    """ACME personalization by importance exchange; hierarchical FedAvg for clients that do not speak ACME.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes, weighted_by_key,
    arrayrecord_key, configrecord_key, train_metrics_aggr_fn, evaluate_metrics_aggr_fn :
        FedAvg's ten arguments, with FedAvg's meaning, order and defaults.
    topology : Topology, optional (keyword-only, as everything below)
        Devices, edges, assignment and ``edge_rounds_per_cloud``; default: one edge over whatever nodes connect.
    deployment : CloudPackages, optional
        The cloud's packages (sub-backbone and header per device class, from ``build_packages``); without it the
        strategy runs as hierarchical FedAvg.
    variant : str (default: ``strategy.variant``, "pruning_per")
        How an edge mixes importance: "wo_pruning", "pruning_alone", "pruning_avg" or "pruning_per".
    distance : str (default: ``strategy.distance``, "emd")
        Feature-distribution distance of the similarity weights ("emd" or "js"; pruning_per only).
    temperature : float (default: ``strategy.temperature``, 1.0)
        Softmax temperature of the similarity rows.
    prune_per_iteration : int (default: ``strategy.prune_per_iteration``, 5)
        Gates a device prunes per round.
    prune_max_fraction : float (default: ``strategy.prune_max_fraction``, 0.9)
        At most this fraction of a header's gates is ever pruned.
    prune_momentum : float (default: 0.9)
        Momentum of the devices' pruning criteria.
    feature_samples : int (default: ``strategy.feature_samples``, 200)
        [CLS] feature rows per device for the similarity (pruning_per only).
    train_config : dict, optional
        What devices train with (lr, momentum, weight-decay, batch-size, local-epochs, accumulation); default: the
        ``strategy.*`` defaults. ``start(train_config=...)`` overrides it key by key.
    recorder, record_name, seed, timeout, checkpoint_dir, accuracy_key, **kwargs :
        The harness's and the template's settings (results writer, name in the results, sampling seed, seconds to
        wait for replies, checkpoint directory, reported accuracy metric, ``discovery_timeout``, ...).

    :meth:`from_config` builds it from an :class:`~acme_flwr.config.AcmeConfig`.
    """

    name = "acme"
    policy_name = "acme"
    fedavg_compatible = True  # until discovery says otherwise it may be FedAvg (drop-in)

    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 2, min_available_nodes: int = 2, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config",
                 train_metrics_aggr_fn: MetricsAggrFn | None = None,
                 evaluate_metrics_aggr_fn: MetricsAggrFn | None = None, *, topology: Topology | None = None,
                 deployment: CloudPackages | None = None, variant: str = _S.variant, distance: str = _S.distance,
                 temperature: float = _S.temperature, prune_per_iteration: int = _S.prune_per_iteration,
                 prune_max_fraction: float = _S.prune_max_fraction, prune_momentum: float = 0.9,
                 feature_samples: int = _S.feature_samples, train_config: dict[str, Any] | None = None,
                 recorder: RunRecorder | None = None, record_name: str | None = None, seed: int = 0,
                 timeout: float = _S.timeout, checkpoint_dir: str | Path | None = None,
                 accuracy_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes,
                         weighted_by_key, arrayrecord_key, configrecord_key, train_metrics_aggr_fn,
                         evaluate_metrics_aggr_fn, topology=topology, deployment=deployment,
                         train_config=train_config, recorder=recorder, record_name=record_name, seed=seed,
                         timeout=timeout, checkpoint_dir=checkpoint_dir, accuracy_key=accuracy_key, **kwargs)
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

    @classmethod
    def from_config(cls, cfg: AcmeConfig, *, topology: Topology | None = None,
                    deployment: CloudPackages | None = None, recorder: RunRecorder | None = None,
                    name: str = "acme", **overrides: Any) -> AcmeStrategy:
        """The strategy ``cfg`` describes: its ``strategy.*`` settings (variant, distance, pruning, training, timeout,
        reply cap), ``run.seed``, and unless given, the topology of ``topology.*``; with a ``recorder``, checkpoints in
        ``<out>/checkpoints``. ``overrides`` win over the config (e.g. ``variant=`` for the ablation's names)."""
        s = cfg.strategy
        kwargs = {"variant": s.variant, "distance": s.distance, "temperature": s.temperature,
                  "prune_per_iteration": s.prune_per_iteration, "prune_max_fraction": s.prune_max_fraction,
                  "feature_samples": s.feature_samples, **config_kwargs(cfg, recorder, name), **overrides}
        return cls(topology=topology or topology_of(cfg), deployment=deployment, **kwargs)

    def settings(self) -> dict[str, Any]:
        return {"ACME": f"variant {self.variant_name}, distance {self.distance}, temperature {self.temperature}, "
                        f"prune {self.prune_per_iteration}/round up to {self.prune_max_fraction:.0%} of the gates "
                        f"(momentum {self.prune_momentum}), {self.feature_samples} feature rows per device",
                "Devices train with": self.train_config,
                "Packages": "none (hierarchical FedAvg)" if self.deployment is None
                else ", ".join(sorted(self.deployment.packages))}

    def describe(self) -> str:
        return f"acme ({self.variant_name}, {self.distance})"

    @property
    def drop_in(self) -> bool:
        """Whether the rounds run as hierarchical FedAvg (the clients do not speak ACME, or no deployment)."""
        return isinstance(self.policy, FedAvgPolicy)

    # ------------------------------------------------------------------------------------------------- setup
    def discover(self, grid: Grid) -> None:
        try:
            super().discover(grid)
        except NotAcmeClients as exc:
            logger.info("%s: running as hierarchical FedAvg", exc)
            self._run_as_fedavg(dict(enumerate(exc.nodes)))
            return
        if self.deployment is None:
            logger.info("ACME handlers found on %d of %d nodes but no deployment= (cloud packages) was given: "
                        "running as hierarchical FedAvg", len(self.node_of), self.probe.get("nodes", 0))
            self._run_as_fedavg(dict(self.node_of))

    def _run_as_fedavg(self, node_of: dict[int, int]) -> None:
        """Drop-in mode: the FedAvg rounds policy over the nodes found, keyed by partition-id."""
        self.devices.clear()
        for pid, node in sorted(node_of.items()):
            self.devices.bind(pid, node, {"partition-id": pid})
        self.use_policy(FedAvgPolicy(self, label="drop-in (hierarchical FedAvg)"))

    def setup(self, grid: Grid) -> None:
        if self.drop_in:
            return
        super().setup(grid)
        if self.variant.name != "per":
            return
        self.record.extra["similarity"] = {}
        if self.fraction_train < 1.0:  # sampled rounds: each round's group of replying devices, in aggregate_edge
            return
        for edge, groups in self.mixing_groups().items():  # similarity only within a mixing group (same package)
            for group, pids in groups.items():
                rows = self.similarity_rows(int(edge), group, [p for p in pids if p in self.features])
                self.edge_weights.setdefault(int(edge), {}).update(rows)

    def similarity_rows(self, edge: int, group: str, devs: list[int],
                        server_round: int | None = None) -> dict[int, dict[int, float]]:
        """Row-softmax similarity weights among ``devs`` (one mixing group of one edge), recorded in the summary's
        ``similarity`` block (with the round when computed for a round's sample). Because the distances are pairwise
        and the rows a softmax, the rows over a sample equal the full group's rows renormalised over that sample:
        with ``fraction_train`` < 1 a round computes only its own devices' k² entries, never the group's N²."""
        if not devs:
            return {}
        s = similarity_matrix([self.features[p] for p in devs], metric=self.distance)
        w = aggregation_weights(s, temperature=self.temperature)
        entry = {"edge": edge, "group": group, "devices": devs, "similarity": s.tolist(), "weights": w.tolist()}
        if server_round is not None:
            entry["round"] = server_round
        self.record.extra.setdefault("similarity", {})[f"{edge}/{group}"] = entry
        return {k: {j: float(w[a, b]) for b, j in enumerate(devs)} for a, k in enumerate(devs)}

    def extra_state(self) -> dict[str, Any]:
        return {"mixed": self.mixed, "mixed_round": self.mixed_round, "edge_weights": self.edge_weights}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mixed = dict(state["mixed"])
        self.mixed_round = dict(state.get("mixed_round", {}))
        self.edge_weights = dict(state["edge_weights"])

    def num_gates(self, pid: int) -> int:
        return self.package_of(pid).header.num_gates

    # ------------------------------------------------------------------------------------------------- rounds
    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return self.content(server_round, config, send="importance" if self.variant.prunes else "none")

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
        self.forget_old_mixes(server_round)
        for name, group in self.by_header_group(replies).items():
            imps = {pid: validate_importance(P.vector_from_record(replies[pid][P.IMPORTANCE]), self.num_gates(pid))
                    for pid in group}
            examples = {pid: int(replies[pid][P.METRICS][P.NUM_EXAMPLES]) for pid in group}
            similarity = None
            if self.variant.name == "per" and self.edge_weights.get(edge):  # the full group's rows, renormalised
                full = self.edge_weights[edge]
                similarity = {k: {j: full[k][j] / sum(full[k][i] for i in imps) for j in imps} for k in imps}
            elif self.variant.name == "per":  # sampled rounds: the rows of this round's replying devices only
                similarity = self.similarity_rows(edge, name, [p for p in group if p in self.features], server_round)
            weights = build_mixing_weights(self.variant_name, group, num_examples=examples, similarity=similarity)
            mixes = mix_importance(imps, weights)
            self.mixed.update(mixes)
            self.mixed_round.update(dict.fromkeys(mixes, server_round))

    def forget_old_mixes(self, server_round: int) -> None:
        """Drop the mixes of earlier rounds: a device only ever prunes with the mix of the round it trained in, so
        the strategy (and every checkpoint) holds one round's sampled devices' mixes, not every device's."""
        for pid in [p for p, r in self.mixed_round.items() if r < server_round]:
            self.mixed.pop(pid, None)
            self.mixed_round.pop(pid, None)

    # No aggregate_cloud: in the personalization phase nothing the cloud would receive is used (ACME §4: importance is
    # exchanged between an edge and its devices only), so nothing is sent and nothing is counted.

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict:
        if not (self.variant.prunes and self.mixed_round.get(pid) == server_round):
            return self.content(server_round, config)  # not trained this round (not sampled, failed): no stale re-prune
        return self.content(server_round, config, {P.IMPORTANCE: P.vector_record(self.mixed[pid])},
                            **{"prune-per-iteration": self.prune_per_iteration,
                               "prune-max": max(1, int(self.prune_max_fraction * self.num_gates(pid))),
                               "prune-momentum": self.prune_momentum})
