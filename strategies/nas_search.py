"""Federated rewards for the edge header search (``nas.reward=federated``, issue 6) over the Flower grid.

Run from the ACME harness's setup, after devices hold their sub-backbones and before the personalization loop. One
controller searches for the whole federation; each search epoch is hierarchical like everything else: the cloud
sends the shared child's weights and the sampled arcs to each edge (cloud-edge down), the edge forwards them to its
devices (``query.acme_nas``, edge-device down), devices train the child on their own training split or score arcs on
their own validation split, the edge merges its devices' replies (example-weighted mean of child weights, summed
correct/total counts; edge-device up) and sends one merged reply to the cloud (cloud-edge up). No data leaves a
device; every message is counted in the strategy's ledger (round 0, with the setup). The best arc (by pooled device
validation accuracy) is exported as a gated header and installed on every device; the deployment's packages are
updated so the strategies that run next ship it directly. With running-statistics BNs (``nas.bn_running_stats``)
each device calibrates them on its own training data at install time (they never leave the device).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from acme_flwr import protocol as P
from acme_flwr.comm import CommLedger, message_bytes
from acme_flwr.edge.nas import ENASChild, SearchConfig, arc_to_str, export_header, search
from acme_flwr.edge.nas.federated import FederatedReward, average_states
from acme_flwr.packages import CloudPackages
from acme_flwr.protocol import CHILD, NAS_MESSAGE
from acme_flwr.results import StrategyRecord
from acme_flwr.topology import Topology

logger = logging.getLogger(__name__)

PHASE = "nas"


class SearchHost(Protocol):
    """What the search needs from the strategy that runs it (the ACME harness), without importing the harness."""

    deployment: CloudPackages
    ledger: CommLedger
    node_of: dict[int, int]
    record: StrategyRecord
    tag: str
    timeout: float | None
    topology: Topology

    def exchange(self, grid: Grid, server_round: int, phase: str, messages: dict[int, Message],
                 validate: Callable[[int, RecordDict], None], timeout: float | None) -> dict[int, RecordDict]: ...


def _send(strategy: SearchHost, grid: Grid, build: Any) -> dict[int, RecordDict]:
    """One message per device (``build(pid) -> RecordDict``); bytes counted per tier; validated replies by pid."""
    msgs, per_edge_down = {}, {}
    for pid in sorted(strategy.node_of):
        content = build(pid)
        n = strategy.ledger.add_message(0, "edge-device", "down", content, pid)
        per_edge_down.setdefault(strategy.topology.edge_of(pid), n)  # the cloud sends each edge one copy
        msgs[pid] = Message(content, dst_node_id=strategy.node_of[pid], message_type=NAS_MESSAGE)
    for n in per_edge_down.values():
        strategy.ledger.add(0, "cloud-edge", "down", n)
    return strategy.exchange(grid, 0, PHASE, msgs, lambda pid, c: None, strategy.timeout)


def federated_header_search(strategy: SearchHost, grid: Grid) -> dict[str, Any]:
    """Search, export and install a header with rewards from the devices; returns the record for the summary."""
    deployment = strategy.deployment
    spec = deployment.nas_federated
    cfg = SearchConfig.from_dict(spec["search"])
    child = ENASChild(spec["in_channels"], spec["num_classes"], cfg.out_filters, cfg.num_cells, cfg.num_layers,
                      cfg.dropout, seed=cfg.seed)
    child_config = json.dumps(asdict(child.config))
    edges = strategy.topology.num_edges

    def transport(action: str, payload: dict[str, Any], state: dict[str, torch.Tensor] | None) -> list[dict]:
        arrays = P.arrays_from_state(state) if state is not None else None

        def build(pid: int) -> RecordDict:
            rd = RecordDict({P.CONFIG: ConfigRecord({"tag": strategy.tag, "action": action, "child": child_config,
                                                     "payload": json.dumps(payload)})})
            if arrays is not None:
                rd[CHILD] = arrays
            return rd

        replies = _send(strategy, grid, build)
        merged = []
        for edge in range(edges):
            mine = {pid: c for pid, c in replies.items() if strategy.topology.edge_of(pid) == edge}
            if not mine:
                continue
            if action == "train":
                weights = [float(c[P.METRICS][P.NUM_EXAMPLES]) for c in mine.values()]
                state_e = average_states([P.state_from_arrays(c[CHILD]) for c in mine.values()], weights)
                acc = sum(float(c[P.METRICS]["acc"]) * w for c, w in zip(mine.values(), weights, strict=True))
                up = {"num_examples": sum(weights), "acc": acc / sum(weights), "state": state_e}
                strategy.ledger.add(0, "cloud-edge", "up", message_bytes(RecordDict({
                    CHILD: P.arrays_from_state(state_e), P.METRICS: MetricRecord({P.NUM_EXAMPLES: sum(weights)})})))
            else:
                n = len(payload["arcs"])
                up = {"correct": [sum(int(c[P.METRICS]["correct"][i]) for c in mine.values()) for i in range(n)],
                      "total": [sum(int(c[P.METRICS]["total"][i]) for c in mine.values()) for i in range(n)]}
                strategy.ledger.add(0, "cloud-edge", "up", message_bytes(RecordDict({P.METRICS: MetricRecord(up)})))
            merged.append(up)
        return merged

    started = time.perf_counter()
    source = FederatedReward(child, transport, cfg, steps_per_round=int(spec["device_steps"]))
    result = search(source, cfg, progress=False)
    running = bool(spec.get("bn_running_stats", False))
    header = export_header(result.best_arc, child, gated=True, pw_gate_after_bn=bool(spec["pw_gate_after_bn"]),
                           bn_running_stats=running)
    header_spec = {"name": "searched", **header.arch()}
    header_arrays = P.arrays_from_state(header.state_dict())
    _send(strategy, grid, lambda pid: RecordDict({
        P.CONFIG: ConfigRecord({"tag": strategy.tag, "action": "install", "header-spec": json.dumps(header_spec),
                                "calibrate-bn": running}),
        P.HEADER: header_arrays}))
    for pkg in {id(p): p for p in deployment.packages.values()}.values():
        pkg.header, pkg.header_spec = copy.deepcopy(header), dict(header_spec)
    info = {"reward": "federated", "arc": list(header.arc), "arc_str": arc_to_str(header.arc),
            "num_gates": header.num_gates, "search_val_acc": result.best_score, "epochs": cfg.epochs,
            "train_rounds": source.calls["train"], "evaluate_rounds": source.calls["evaluate"],
            "devices": len(strategy.node_of), "search_time_s": round(time.perf_counter() - started, 3),
            "searched_by": strategy.record.name}
    deployment.stage_log.setdefault("nas", {})["federated"] = info
    for pick in deployment.picks.values():
        pick.update({"header": "searched", "header_arc": info["arc"], "header_arc_str": info["arc_str"],
                     "header_val_acc": result.best_score})
    deployment.nas_federated = None  # done: later strategies ship the searched header in their setup
    logger.info("federated NAS: %s (device val %.4f, %d devices, %.1fs)", info["arc_str"], result.best_score,
                len(strategy.node_of), info["search_time_s"])
    return info
