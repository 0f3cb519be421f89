"""The log lines a round prints, in FedAvg's wording plus the hierarchy (per edge, the cloud step, lost devices)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from acme_flwr.topology import Topology

logger = logging.getLogger("acme_flwr.strategies.base")  # the template's lines, under the template's logger


def log_sampled(what: str, pids: Iterable[int], active: int, expected: int, topology: Topology) -> None:
    """FedAvg's "Sampled N nodes (out of M)" (M: the devices still taking part), the devices lost before this round
    when there are any, and the sample per edge."""
    pids = sorted(pids)
    text = f"{what}: Sampled {len(pids)} nodes (out of {active})"
    if expected > active:
        text += f" | {expected} expected, {expected - active} lost before this round"
    if topology.num_edges > 1:
        per_edge = [sum(topology.edge_of(p) == e for p in pids) for e in range(topology.num_edges)]
        text += " | per edge: " + ", ".join(f"{e}: {n}" for e, n in enumerate(per_edge))
    logger.info("%s", text)


def log_received(what: str, server_round: int, phase: str, ok: list[int], failures: list[dict[str, Any]],
                 topology: Topology, cloud: bool | None, last_round: int | None) -> None:
    """FedAvg's "Received N results and M failures" (M: this round and phase's failures), then the same per edge and
    what the cloud did (``cloud``: None when the strategy has no cloud step)."""
    failed = [f["node"] for f in failures if f["round"] == server_round and f["phase"] == phase]
    logger.info("%s: Received %d results and %d failures", what, len(ok), len(failed))
    lines = []
    if topology.num_edges > 1:
        for e in range(topology.num_edges):
            n_ok = sum(topology.edge_of(p) == e for p in ok)
            n_bad = sum(f.isdigit() and topology.edge_of(int(f)) == e for f in failed)
            lines.append(f"edge {e}: {n_ok} results, {n_bad} failures")
    if cloud is not None:
        every = topology.edge_rounds_per_cloud
        nxt = server_round + every - server_round % every
        lines.append(f"cloud: aggregated {topology.num_edges} edge model(s)" if cloud
                     else f"cloud: next aggregation at round {min(nxt, last_round or nxt)}")
    for line in lines:  # Flower's "└──> Aggregated MetricRecord" line follows
        logger.info("\t├── %s", line)
