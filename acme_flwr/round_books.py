"""The books a strategy keeps per round, written into the results contract (:mod:`acme_flwr.results`).

:class:`RoundBooks` turns what a round admitted into the contract's rows and blocks: one ``rounds.jsonl`` row per
device, edge and cloud and *per phase* (discovery and setup are round 0; a train row holds the train phase's bytes
and an evaluate row the evaluate phase's, so the rows sum to the totals), the ``rounds`` entries of ``summary.json``,
the evaluation history the accuracy block is chosen from (on validation, never on test), the byte block with its
references, and the lost-device verdict. It knows nothing about Flower's strategies: the template hands it replies
keyed by partition-id, the ledger and the topology.

The metric helpers follow FedAvg's contract: :func:`metrics_of` reads a reply's MetricRecord, :func:`fedavg_metrics` is
Flower's own default aggregation (``aggregate_metricrecords``: weighted by ``weighted_by_key`` over all replies, the
weight key left out, lists averaged element-wise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .comm import CENTRALIZED_FORMULA, FEDAVG_FORMULA, CommLedger, fedavg_full_bytes
from .protocol import METRICS
from .results import RunRecorder, StrategyRecord, accuracy_stats, lost_device_lines
from .topology import Topology

logger = logging.getLogger(__name__)

VALIDATION_KEY = "val-acc"  # the only metric a round is ever selected on (never test accuracy)
SETUP_PHASES = ("discover", "setup", "nas")  # round 0: what happens once before the first round


def metrics_of(content: RecordDict) -> dict[str, Any]:
    """A reply's metrics: the ``metrics`` record, else its MetricRecords merged (FedAvg's contract: any key)."""
    records = content.metric_records
    if METRICS in records:
        return dict(records[METRICS])
    out: dict[str, Any] = {}
    for rec in records.values():
        out.update(dict(rec))
    return out


def fedavg_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """FedAvg's default metric aggregation, exactly (Flower's ``aggregate_metricrecords``)."""
    return aggregate_metricrecords(contents, weight_key)


def edge_metrics(contents: list[RecordDict], weight_key: str) -> dict[str, Any]:
    """FedAvg's aggregation over one edge's replies for the rows; {} where its weights are missing or sum to 0 (a
    bookkeeping row never stops a round)."""
    if not contents:
        return {}
    try:
        return dict(fedavg_metrics(contents, weight_key))
    except (KeyError, TypeError, ZeroDivisionError, StopIteration):
        return {}


class RoundBooks:
    """Per-round rows, the ``rounds`` entries, the evaluation history and the summary block of one strategy."""

    def __init__(self, record: StrategyRecord, recorder: RunRecorder | None) -> None:
        self.record = record
        self.recorder = recorder
        self.eval_history: dict[int, dict[int, dict[str, Any]]] = {}  # round -> pid -> evaluate metrics
        self._started: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------------- rows
    def start_round(self, server_round: int) -> None:
        self._started[server_round] = time.time()

    def phase(self, server_round: int, phase: str, ok: dict[int, RecordDict], metrics: dict[str, Any],
              ledger: CommLedger, topology: Topology, weight_key: str) -> None:
        """Book one finished phase: device/edge/cloud rows with that phase's own bytes, and the round's entry."""
        wall = round(time.time() - self._started.get(server_round, time.time()), 3)
        per_edge = {str(e): edge_metrics([c for p, c in ok.items() if topology.edge_of(p) == e], weight_key)
                    for e in range(topology.num_edges)}
        if phase == "evaluate":
            self.eval_history[server_round] = {pid: metrics_of(c) for pid, c in ok.items() if c.metric_records}
        if self.recorder is not None:
            for pid, content in ok.items():
                dev = ledger.phase_device(server_round, phase, pid)
                self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="device",
                                      id=pid, edge=topology.edge_of(pid), wall_time=wall, **metrics_of(content),
                                      bytes_up=dev["up"], bytes_down=dev["down"])
            for edge, m in per_edge.items():
                self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="edge",
                                      id=int(edge), wall_time=wall, **m)
            self._cloud_row(server_round, phase, ledger, wall, metrics)
        entry = next((r for r in self.record.rounds if r["round"] == server_round), None)
        if entry is None:
            entry = {"round": server_round}
            self.record.rounds.append(entry)
        entry[phase] = {"device": {str(pid): metrics_of(c) for pid, c in ok.items()}, "edge": per_edge,
                        "cloud": metrics}
        entry["bytes"] = ledger.round_totals(server_round)
        entry["wall_time_s"] = wall

    def setup_rows(self, ledger: CommLedger, pids: list[int], topology: Topology) -> None:
        """Round 0 rows (discovery, setup, header search): each device's bytes and the cloud row per phase."""
        if self.recorder is None:
            return
        for phase in ledger.phases(0):
            for pid in pids:
                dev = ledger.phase_device(0, phase, pid)
                if dev["up"] or dev["down"]:
                    self.recorder.log_row(strategy=self.record.name, round=0, phase=phase, tier="device", id=pid,
                                          edge=topology.edge_of(pid), bytes_up=dev["up"], bytes_down=dev["down"])
            self._cloud_row(0, phase, ledger, 0.0, {})

    def _cloud_row(self, server_round: int, phase: str, ledger: CommLedger, wall: float,
                   metrics: dict[str, Any]) -> None:
        assert self.recorder is not None
        self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="cloud", id=0,
                              wall_time=wall, **metrics,
                              **{f"bytes_{t}_{d}": v for t, dd in ledger.phase_totals(server_round, phase).items()
                                 for d, v in dd.items()})

    # ------------------------------------------------------------------------------------------------- summary block
    def finalize(self, ledger: CommLedger, reference_params: int, profiles: dict[int, dict[str, Any]],
                 active: set[int], expected: int, asked_in: Callable[[int], set[int]] | None,
                 accuracy_key: str | None, mode: str) -> dict[str, Any]:
        """The strategy's summary block, brought up to date: bytes and references, accuracy, ``mode`` (when given)
        and, when ``asked_in`` (round -> devices asked) is given, the lost-device verdict."""
        if asked_in is not None or not self.record.bytes:  # else restored from a finished checkpoint, which was
            raw = sum(int(p.get("raw-train-bytes", 0)) for p in profiles.values())  # not discovered again: the
            self.bytes_block(ledger, reference_params, len(active), raw)  # saved block (references too) is final
        self.record.accuracy = self.accuracy(accuracy_key)
        if mode:
            self.record.extra["mode"] = mode
        if asked_in is not None:
            self.lost_devices(expected, active, asked_in, len(active))
        return self.record.to_dict()

    def report_lost(self) -> list[str]:
        """Log (WARNING) one ``DEGRADED:`` line when the strategy lost devices; the lines."""
        lines = lost_device_lines({"strategies": {self.record.name: self.record.to_dict()}})
        for line in lines:
            logger.warning("%s", line)
        return lines

    def bytes_block(self, ledger: CommLedger, reference_params: int, num_devices: int,
                    raw_train_bytes: int) -> dict[str, Any]:
        """Totals per tier and direction, per device, and the two references computed in the same run."""
        rounds = max(self.eval_history, default=0) or max(ledger.per_round, default=0)
        refs: dict[str, Any] = {}
        if reference_params:
            refs["fedavg_full"] = {"bytes": fedavg_full_bytes(reference_params, num_devices, rounds),
                                   "formula": FEDAVG_FORMULA, "params": reference_params, "rounds": rounds}
        if raw_train_bytes:
            refs["centralized"] = {"bytes": raw_train_bytes, "formula": CENTRALIZED_FORMULA}
        self.record.bytes = {**ledger.totals(), "total": ledger.total(), "references": refs,
                             "per_device": {str(k): v for k, v in sorted(ledger.per_device.items())}}
        return self.record.bytes

    def lost_devices(self, expected: int, active: set[int], asked_last: Callable[[int], set[int]],
                     found: int) -> list[dict[str, Any]]:
        """``lost_devices`` (partition-id, round, phase, reason of the failure that started the loss), ``devices``
        (expected vs. answering the last round) and ``degraded`` in the summary block; a lost device is one that
        never took part (discovery or setup) or did not answer anything it was asked in the last round."""
        last = max((r["round"] for r in self.record.rounds), default=None)
        asked = asked_last(last) if last is not None else set()
        answered: dict[int, int] = {}  # pid -> last round it answered
        for entry in self.record.rounds:
            for ph in ("train", "evaluate"):
                for pid in (entry.get(ph) or {}).get("device", {}):
                    answered[int(pid)] = max(answered.get(int(pid), 0), entry["round"])
        failures_of: dict[str, list[dict[str, Any]]] = {}  # one pass over the failures, not one per device
        for f in self.record.failures:
            failures_of.setdefault(f["node"], []).append(f)
        lost = []
        for pid in range(expected):
            if pid in active and not (pid in asked and answered.get(pid, -1) != last):
                continue
            since = answered.get(pid, -1)
            fails = [f for f in failures_of.get(str(pid), []) if f["round"] > since]
            if fails:
                f = fails[0]
                lost.append({"partition-id": pid, "round": f["round"], "phase": f["phase"], "reason": f["reason"]})
            else:
                lost.append({"partition-id": pid, "round": 0, "phase": "discover",
                             "reason": f"no node answered discovery for this partition-id "
                                       f"({found} of {expected} devices found)"})
        self.record.extra["lost_devices"] = lost
        self.record.extra["devices"] = {"expected": expected, "reported": expected - len(lost)}
        self.record.extra["degraded"] = bool(lost)
        return lost

    def accuracy_metric(self, accuracy_key: str | None) -> str | None:
        """The evaluation metric the accuracy block reports: ``accuracy_key`` if given, else ``test-acc`` (the ACME
        handlers), else the first metric the app reports whose name contains "acc"."""
        if accuracy_key:
            return accuracy_key
        keys = [k for r in sorted(self.eval_history) for m in self.eval_history[r].values() for k in m]
        if "test-acc" in keys:
            return "test-acc"
        return next((k for k in keys if "acc" in k.lower() and k not in (VALIDATION_KEY, "generic-acc")), None)

    def accuracy(self, accuracy_key: str | None) -> dict[str, Any]:
        """Personalized (and generic) accuracy at the round with the best mean validation accuracy."""
        if not self.eval_history:
            return {}
        key = self.accuracy_metric(accuracy_key)
        history = self.eval_history

        def mean_of(rnd: int, name: str) -> float:
            vals = [m[name] for m in history[rnd].values() if name in m]
            return float(np.mean(vals)) if vals else float("-inf")

        has_val = any(VALIDATION_KEY in m for r in history.values() for m in r.values())
        last = max(history)
        # never select on test: without a validation metric the final round is reported
        chosen = max(history, key=lambda r: (mean_of(r, VALIDATION_KEY), r)) if has_val else last

        def stats(rnd: int, name: str | None) -> dict[str, Any]:
            return accuracy_stats({pid: float(m[name]) for pid, m in history[rnd].items()
                                   if name is not None and name in m})

        out = {"metric": key, "chosen_round": chosen,
               "chosen_by": VALIDATION_KEY if has_val else f"final round (no {VALIDATION_KEY} reported)",
               "personalized": stats(chosen, key), "final_round": stats(last, key)}
        generic = stats(chosen, "generic-acc")
        out["generic"] = generic if generic["mean"] is not None else None
        return out
