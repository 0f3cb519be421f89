"""HierarchicalFedAvg: FedAvg inside each edge, edges averaged at the cloud every ``edge_rounds_per_cloud`` rounds
(and at the last round, so the returned model includes the last round's training).

It is the round template with the FedAvg rounds policy (:class:`~.fedavg_policy.FedAvgPolicy`): FedAvg's interface
and contract, so it works with an unmodified ClientApp such as Flower's quickstart. With one edge (the default
topology) it is FedAvg, metrics and log lines included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acme_flwr.results import RunRecorder
from acme_flwr.topology import Topology

from .base import EdgeTierStrategy, MetricsAggrFn
from .fedavg_policy import FedAvgPolicy


class HierarchicalFedAvg(EdgeTierStrategy):
    """Edge-level FedAvg + periodic cloud averaging over the standard Flower message contract.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes, weighted_by_key,
    arrayrecord_key, configrecord_key, train_metrics_aggr_fn, evaluate_metrics_aggr_fn :
        FedAvg's ten arguments, with FedAvg's meaning, order and defaults.
    topology : Topology, optional (keyword-only)
        Devices, edges, assignment and ``edge_rounds_per_cloud``; default: one edge over whatever nodes connect.
    recorder : RunRecorder, optional
        Writes ``rounds.jsonl`` and the summary block; default: the block is kept in memory (``finalize()``).
    record_name : str, optional
        The strategy's name in the results (default ``"hier_fedavg"``).
    seed : int (default: 0)
        Seeds the sampling of devices (same seed, same devices).
    discovery_timeout : float (default: 120.0)
        Seconds to wait for ``min_available_nodes`` (or the topology's devices) to connect.
    checkpoint_dir : str or Path, optional
        Where a checkpoint is written after every round (none without it).
    accuracy_key : str, optional
        The evaluate metric the accuracy block reports (default: the first metric whose name contains "acc").
    **kwargs :
        The template's remaining keyword-only settings (``reference_params``, ``remove_run_files``).
    """

    name = "hier_fedavg"
    fedavg_compatible = True

    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 2, min_available_nodes: int = 2, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config",
                 train_metrics_aggr_fn: MetricsAggrFn | None = None,
                 evaluate_metrics_aggr_fn: MetricsAggrFn | None = None, *, topology: Topology | None = None,
                 recorder: RunRecorder | None = None, record_name: str | None = None, seed: int = 0,
                 discovery_timeout: float = 120.0, checkpoint_dir: str | Path | None = None,
                 accuracy_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes,
                         weighted_by_key, arrayrecord_key, configrecord_key, train_metrics_aggr_fn,
                         evaluate_metrics_aggr_fn, topology=topology, recorder=recorder, record_name=record_name,
                         seed=seed, discovery_timeout=discovery_timeout, checkpoint_dir=checkpoint_dir,
                         accuracy_key=accuracy_key, policy=FedAvgPolicy(self), **kwargs)

    @property
    def global_model(self) -> Any:
        """The cloud's current model (None before the first round)."""
        return self.policy.global_arrays()
