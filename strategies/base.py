"""EdgeTierStrategy: the template every acme-flwr strategy follows (cloud → E edges → devices).

It is a :class:`flwr.serverapp.strategy.FedAvg`: it takes every argument of FedAvg with FedAvg's meaning and defaults
(sampling fractions and minimums, record keys, the weight key, metric aggregation functions) and Flower's
``Strategy.start`` drives the rounds. The hierarchy is a keyword-only addition (``topology=``); without one it is a
single edge that reports to the cloud every round over whatever nodes connect, i.e. FedAvg.

Inside the rounds this class fixes what happens and leaves four hooks to subclasses:

- :meth:`discover` learns which partition-id each node holds (once, before round 1);
- :meth:`train_content` / :meth:`evaluate_content` build each device's own message (heterogeneous payloads);
- :meth:`aggregate_edge` merges one edge's replies; :meth:`aggregate_cloud` runs every ``edge_rounds_per_cloud``
  rounds and at the last round (so the arrays ``start`` returns include the last round's training).

The template handles the rest the same way for everybody: sampling keyed by partition-id (seeded, deterministic),
exact byte accounting per tier and direction, reply validation (an error reply, a missing reply or a malformed payload
is recorded as a failure and never reaches edge state), FedAvg-style log lines per round and tier, a byte table per
tier and direction at the end, per-round rows in ``rounds.jsonl`` and the summary block.
"""

from __future__ import annotations

import logging
import random
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from acme_flwr import protocol as P
from acme_flwr.checkpoints import load_state, save_state
from acme_flwr.comm import CENTRALIZED_FORMULA, FEDAVG_FORMULA, CommLedger, fedavg_full_bytes
from acme_flwr.logs import use_flower_logging
from acme_flwr.protocol import METRICS
from acme_flwr.results import RunRecorder, StrategyRecord, accuracy_stats, format_byte_table
from acme_flwr.topology import Topology

logger = logging.getLogger(__name__)

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]
VALIDATION_KEY = "val-acc"  # the only metric a round is ever selected on (never test accuracy)


class ReplyRejected(ValueError):
    """A device's reply is malformed (missing keys, wrong shape, NaN/Inf); it is recorded and ignored."""


class EdgeTierStrategy(FedAvg):
    """Hierarchical strategy template with FedAvg's interface; see the module docstring."""

    name = "edge-tier"
    train_type = "train"
    evaluate_type = "evaluate"
    late_joiners = True  # nodes that connect after discovery join as new devices (False where devices need setup)

    # pylint: disable=too-many-arguments
    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 2, min_available_nodes: int = 2, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config",
                 train_metrics_aggr_fn: MetricsAggrFn | None = None,
                 evaluate_metrics_aggr_fn: MetricsAggrFn | None = None, *, topology: Topology | None = None,
                 recorder: RunRecorder | None = None, record_name: str | None = None, seed: int = 0,
                 discovery_timeout: float = 120.0, reference_params: int = 0,
                 checkpoint_dir: str | Path | None = None, accuracy_key: str | None = None) -> None:
        if isinstance(fraction_train, Topology):
            raise TypeError(f"{type(self).__name__}: the first positional argument is FedAvg's fraction_train; "
                            "pass the hierarchy as topology=Topology(...)")
        super().__init__(fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes,
                         weighted_by_key, arrayrecord_key, configrecord_key, train_metrics_aggr_fn,
                         evaluate_metrics_aggr_fn)
        use_flower_logging()
        self._user_aggr = {"train": train_metrics_aggr_fn, "evaluate": evaluate_metrics_aggr_fn}
        self.topology = topology if topology is not None else Topology()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.round_offset = 0  # rounds restored from a checkpoint; Flower's start() counts from 1 again
        self.last_round: int | None = None  # set by start(): the cloud always aggregates at the last round
        self.seed = seed
        self.discovery_timeout = discovery_timeout
        self.reference_params = reference_params
        self.accuracy_key = accuracy_key
        self.ledger = CommLedger()
        self.recorder = recorder
        self.record: StrategyRecord = (recorder.strategy(record_name or self.name) if recorder
                                       else StrategyRecord(record_name or self.name))
        self.node_of: dict[int, int] = {}       # partition-id -> node id
        self.pid_of: dict[int, int] = {}        # node id -> partition-id
        self.profiles: dict[int, dict[str, Any]] = {}
        self.eval_history: dict[int, dict[int, dict[str, float]]] = {}  # round -> pid -> metrics
        self._ready = False
        self._sent: dict[tuple[int, str], set[int]] = {}
        self._outbox: dict[tuple[int, str], dict[int, Message]] = {}  # (round, phase) -> pid -> message sent
        self._round_started: dict[int, float] = {}
        self.max_reply_bytes = P.DEFAULT_MAX_REPLY_BYTES  # a larger reply is rejected (0: no cap)
        self._validating: tuple[int, str] = (0, "")  # (round, phase) of the replies being checked

    # ------------------------------------------------------------------------------------------------- hooks
    def discover(self, grid: Grid) -> None:
        """Fill ``node_of``/``pid_of``/``profiles``. Default: sorted node ids get partition-ids 0..n-1."""
        for pid, node in enumerate(sorted(self.wait_for_nodes(grid))):
            self._bind(pid, node, {"partition-id": pid})

    def setup(self, grid: Grid) -> None:
        """One-time work after discovery (e.g. shipping sub-backbones). Default: nothing."""

    @abstractmethod
    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The training message for device ``pid``."""

    @abstractmethod
    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        """Merge the validated train replies of one edge's devices (keyed by partition-id)."""

    def aggregate_cloud(self, server_round: int) -> None:
        """Cloud step every ``edge_rounds_per_cloud`` rounds and at the last round. Default: nothing."""

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict | None:
        """The evaluation message for device ``pid`` (None: do not evaluate it)."""
        return None

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """Raise :class:`ReplyRejected` if a train reply is malformed. Default: a metrics record must exist."""
        if METRICS not in content.metric_records:
            raise ReplyRejected(f"reply has no MetricRecord {METRICS!r}; keys: {list(content.keys())}")

    def validate_evaluate_reply(self, pid: int, content: RecordDict) -> None:
        """Raise :class:`ReplyRejected` if an evaluate reply is malformed. Default: metrics are finite numbers (the
        checks every reply gets)."""

    def global_arrays(self) -> ArrayRecord | None:
        """Arrays returned to ``Strategy.start`` after each round (None keeps the previous)."""
        return None

    # ------------------------------------------------------------------------------------------------- Strategy API
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's ``Strategy.start`` (same arguments); afterwards the summary block is final and the byte table
        is logged."""
        self.last_round = self.round_offset + num_rounds
        result = super().start(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, timeout=timeout,
                               train_config=train_config, evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)
        self.finalize()
        for line in format_byte_table(self.record.name, self.record.bytes).splitlines():
            logger.info("%s", line)
        return result

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        self._refresh_nodes(grid)
        self._round_started[server_round] = time.time()
        pids = self.sample(server_round, "train")
        msgs = self._messages(server_round, "train", pids,
                              lambda pid: self.train_content(server_round, pid, arrays, config), self.train_type)
        self._log_sampled("configure_train", msgs)
        return msgs

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        ok = self._accept(server_round, "train", replies, self.validate_train_reply)
        for edge in range(self.topology.num_edges):
            group = {pid: c for pid, c in ok.items() if self.topology.edge_of(pid) == edge}
            if group:
                self.aggregate_edge(server_round, edge, group)
        cloud = self.is_cloud_round(server_round)
        if cloud:
            self.aggregate_cloud(server_round)
        metrics = self._aggregate_metrics(ok, "train")
        self._round_summary(server_round, "train", ok, metrics)
        self._log_received("aggregate_train", server_round, "train", ok, cloud)
        return self.global_arrays(), MetricRecord(metrics) if metrics else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        msgs = self._messages(server_round, "evaluate", self.sample(server_round, "evaluate"),
                              lambda pid: self.evaluate_content(server_round, pid, arrays, config),
                              self.evaluate_type)
        if msgs:
            self._log_sampled("configure_evaluate", msgs)
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        ok = self._accept(server_round, "evaluate", replies, self.validate_evaluate_reply)
        self.eval_history[server_round] = {pid: metrics_of(c) for pid, c in ok.items() if c.metric_records}
        metrics = self._aggregate_metrics(ok, "evaluate")
        self._round_summary(server_round, "evaluate", ok, metrics)
        if self._sent.get((server_round, "evaluate")):
            self._log_received("aggregate_evaluate", server_round, "evaluate", ok, None)
        self.finalize()
        self.save_checkpoint(server_round)
        return MetricRecord(metrics) if metrics else None

    def is_cloud_round(self, server_round: int) -> bool:
        """Every ``edge_rounds_per_cloud`` rounds, and always at the last round of ``start``."""
        return self.topology.is_cloud_round(server_round) or server_round == self.last_round

    # ------------------------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        """Subclass state a resumed run needs (plain Python / numpy). Default: nothing."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def state_dict(self, server_round: int) -> dict[str, Any]:
        rows = self.recorder.rows_of(self.record.name) if self.recorder is not None else []
        return {"round": server_round, "name": self.record.name, "eval_history": self.eval_history,
                "ledger": self.ledger.state_dict(), "record": self.record.to_state(), "rows": rows,
                "extra": self.extra_state()}

    def save_checkpoint(self, server_round: int) -> Path | None:
        """Write the strategy's state after a finished round (atomic replace); devices keep theirs themselves."""
        if self.checkpoint_dir is None:
            return None
        return save_state(checkpoint_path(self.checkpoint_dir, self.record.name), self.state_dict(server_round))

    def restore(self, path: str | Path) -> int:
        """Load a checkpoint written by :meth:`save_checkpoint` (``<name>.json`` + ``<name>.npz``, never a pickle;
        ``path`` may name either file or the stem); returns the number of finished rounds."""
        state = load_state(path)
        if state.get("name") != self.record.name:
            raise ValueError(f"checkpoint {path} belongs to strategy {state.get('name')!r}, not {self.record.name!r}")
        self.eval_history = state["eval_history"]
        self.ledger.load_state_dict(state["ledger"])
        self.record.load_state(state["record"])
        if self.recorder is not None:
            self.recorder.restore_rows(self.record.name, state["rows"])
        self.load_extra_state(state["extra"])
        self.round_offset = int(state["round"])
        logger.info("%s: resumed after round %d from %s", self.record.name, self.round_offset, path)
        return self.round_offset

    def summary(self) -> None:
        """Log the strategy's set-up in FedAvg's style (Flower calls this at the start of ``start``)."""
        t = self.topology
        devices = t.num_devices if t.num_devices is not None else "the connected"
        logger.info("\t├──> Hierarchy: %d edge(s) over %s devices (%s), cloud aggregation every %d edge round(s) "
                    "and at the last round", t.num_edges, devices, t.assignment, t.edge_rounds_per_cloud)
        super().summary()

    def finalize(self) -> dict[str, Any]:
        """Bring this strategy's block of the results contract up to date (bytes, references, accuracy, failures);
        called after every evaluation round, so ``record`` is current whenever ``start`` returns."""
        totals = self.ledger.totals()
        total = self.ledger.total()
        rounds = max(self.eval_history, default=0) or max(self.ledger.per_round, default=0)
        refs: dict[str, Any] = {}
        if self.reference_params:
            refs["fedavg_full"] = {"bytes": fedavg_full_bytes(self.reference_params, len(self.node_of), rounds),
                                   "formula": FEDAVG_FORMULA, "params": self.reference_params, "rounds": rounds}
        raw = sum(int(p.get("raw-train-bytes", 0)) for p in self.profiles.values())
        if raw:
            refs["centralized"] = {"bytes": raw, "formula": CENTRALIZED_FORMULA}
        self.record.bytes = {**totals, "total": total, "references": refs,
                             "per_device": {str(k): v for k, v in sorted(self.ledger.per_device.items())}}
        self.record.accuracy = self._accuracy()
        if self._ready:  # a strategy restored from a finished checkpoint keeps the verdict it was saved with
            self._record_lost_devices()
        return self.record.to_dict()

    def _record_lost_devices(self) -> None:
        """``lost_devices`` (partition-id, round, phase, reason of the failure that started the loss), ``devices``
        (expected vs. answering the last round) and ``degraded`` in the summary block; a lost device is one that
        never took part (discovery or setup) or did not answer anything it was asked in the last round."""
        expected = self.topology.num_devices if self.topology.num_devices is not None else len(self.node_of)
        last = max((r["round"] for r in self.record.rounds), default=None)
        asked_last = set().union(*(self._sent.get((last, ph), set()) for ph in ("train", "evaluate"))) \
            if last is not None else set()
        answered: dict[int, int] = {}  # pid -> last round it answered
        for entry in self.record.rounds:
            for ph in ("train", "evaluate"):
                for pid in (entry.get(ph) or {}).get("device", {}):
                    answered[int(pid)] = max(answered.get(int(pid), 0), entry["round"])
        lost = []
        for pid in range(expected):
            if pid in self.node_of and not (pid in asked_last and answered.get(pid, -1) != last):
                continue
            since = answered.get(pid, -1)
            fails = [f for f in self.record.failures if f["node"] == str(pid) and f["round"] > since]
            if fails:
                f = fails[0]
                lost.append({"partition-id": pid, "round": f["round"], "phase": f["phase"], "reason": f["reason"]})
            else:
                lost.append({"partition-id": pid, "round": 0, "phase": "discover",
                             "reason": f"no node answered discovery for this partition-id "
                                       f"({len(self.node_of)} of {expected} devices found)"})
        self.record.extra["lost_devices"] = lost
        self.record.extra["devices"] = {"expected": expected, "reported": expected - len(lost)}
        self.record.extra["degraded"] = bool(lost)

    # ------------------------------------------------------------------------------------------------- internals
    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Wait like FedAvg for ``min_available_nodes`` (or the topology's fixed ``num_devices``) to connect."""
        count = self.topology.num_devices if self.topology.num_devices is not None else self.min_available_nodes
        return wait_for_nodes(grid, count, self.discovery_timeout)

    def sample(self, server_round: int, phase: str = "train") -> list[int]:
        """Partition-ids of a round, sampled as FedAvg does (``max(int(n·fraction), min_nodes)``, all if fewer are
        connected), but seeded: same seed → same devices."""
        pids = sorted(self.node_of)
        fraction, minimum = ((self.fraction_train, self.min_train_nodes) if phase == "train"
                             else (self.fraction_evaluate, self.min_evaluate_nodes))
        if fraction == 0.0 or not pids:
            return []
        k = min(len(pids), max(int(len(pids) * fraction), minimum, 1))
        if k >= len(pids):
            return pids
        salt = 0 if phase == "train" else 50_021
        return sorted(random.Random(self.seed * 100_003 + server_round + salt).sample(pids, k))

    def _bind(self, pid: int, node: int, profile: dict[str, Any]) -> None:
        self.node_of[pid] = node
        self.pid_of[node] = pid
        self.profiles[pid] = profile

    def _ensure_ready(self, grid: Grid) -> None:
        if self._ready:
            return
        ledger = self.ledger
        if self.round_offset:  # a resumed run discovers and ships again: count it apart from the reproduced totals
            self.ledger = CommLedger()
        try:
            self.discover(grid)
            if not self.node_of:
                raise RuntimeError(f"{self.record.name}: no device answered discovery; is the ClientApp running?")
            self.bind_topology()
            self.setup(grid)
        finally:
            if self.ledger is not ledger:
                self.record.extra["resume_setup_bytes"] = self.ledger.total()
                self.ledger = ledger
        self._ready = True

    def bind_topology(self) -> None:
        """Fix the topology's device count to the discovered devices when it was left open."""
        n = max(self.node_of, default=-1) + 1
        if self.topology.num_devices is None:
            if n < self.topology.num_edges:
                raise ValueError(f"topology has {self.topology.num_edges} edges but only {n} devices connected")
            self.topology = self.topology.with_devices(n)

    def _refresh_nodes(self, grid: Grid) -> None:
        """Nodes that connected after discovery join as new partition-ids (drop-in mode, like FedAvg's sampling)."""
        if not self.late_joiners:
            return
        new = sorted(set(grid.get_node_ids()) - set(self.pid_of))
        for node in new:
            pid = max(self.node_of, default=-1) + 1
            self._bind(pid, node, {"partition-id": pid})
        if new:
            logger.info("%s: %d node(s) joined (partition-ids %s)", self.record.name, len(new),
                        [self.pid_of[n] for n in new])

    def _messages(self, server_round: int, phase: str, pids: list[int], build: Any, mtype: str) -> list[Message]:
        out = []
        sent: set[int] = set()
        for pid in pids:
            content = build(pid)
            if content is None:
                continue
            self.ledger.add_message(server_round, "edge-device", "down", content, pid)
            out.append(Message(content=content, dst_node_id=self.node_of[pid], message_type=mtype))
            sent.add(pid)
        self._sent[(server_round, phase)] = sent
        self._outbox[(server_round, phase)] = {self.pid_of[m.metadata.dst_node_id]: m for m in out}
        return out

    def sent_message(self, server_round: int, phase: str, pid: int) -> Message | None:
        """The message device ``pid`` was sent in this round and phase (what its reply must answer)."""
        return self._outbox.get((server_round, phase), {}).get(pid)

    def _accept(self, server_round: int, phase: str, replies: Iterable[Message],
                validate: Any) -> dict[int, RecordDict]:
        """Validated replies keyed by partition-id; errors, rejects and missing replies become failures.

        A reply is accepted only from a discovered node that was asked in this round and phase, answering the very
        message it was sent (where the grid assigns message ids, as Flower's do), once, within
        ``max_reply_bytes``, with finite metrics and a payload ``validate`` accepts; anything a validator raises
        is a rejection, never a crash."""
        ok: dict[int, RecordDict] = {}
        asked = self._sent.get((server_round, phase), set())
        outbox = self._outbox.get((server_round, phase), {})
        self._validating = (server_round, phase)
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = self.pid_of.get(node)
            if pid is None:
                self.record.add_failure(server_round, phase, str(node), "reply from a node that was never discovered")
                continue
            problem = self._misaddressed(msg, pid, asked, outbox, ok)
            if problem:
                self.record.add_failure(server_round, phase, str(pid), f"rejected: {problem}")
                continue
            if msg.has_error():
                reason = f"client error: {short_reason(msg.error.reason)}"
                self.record.add_failure(server_round, phase, str(pid), reason)
                continue
            size = self.ledger.add_message(server_round, "edge-device", "up", msg.content, pid)
            try:
                P.check_size(size, self.max_reply_bytes)
                if phase in ("train", "evaluate") and msg.content.config_records:
                    raise P.InvalidReply(f"unexpected ConfigRecord(s) {sorted(msg.content.config_records)} in a "
                                         f"{phase} reply")
                for record in msg.content.metric_records.values():
                    P.check_metrics(record, required=())
                validate(pid, msg.content)
            except Exception as exc:  # noqa: BLE001 - whatever a hostile reply makes a check raise is a rejection
                self.record.add_failure(server_round, phase, str(pid), f"rejected: {short_reason(str(exc), 300)}")
                continue
            ok[pid] = msg.content
        for pid in sorted(self._sent.get((server_round, phase), set()) - set(ok)):
            if not any(f["round"] == server_round and f["phase"] == phase and f["node"] == str(pid)
                       for f in self.record.failures):
                self.record.add_failure(server_round, phase, str(pid), "no reply (timeout or lost)")
        return dict(sorted(ok.items()))

    @staticmethod
    def _misaddressed(msg: Message, pid: int, asked: set[int], outbox: dict[int, Message],
                      ok: dict[int, RecordDict]) -> str | None:
        """Why a reply from device ``pid`` does not answer this round's message to it (None: it does)."""
        if pid not in asked:
            return "device was not asked in this round and phase (a stale reply, or one for another strategy)"
        if pid in ok:
            return "second reply in the same round and phase"
        sent = outbox.get(pid)
        if sent is not None and sent.metadata.message_id:  # Flower's grids assign ids; a bare test grid may not
            answered = msg.metadata.reply_to_message_id
            if answered != sent.metadata.message_id:
                return (f"reply to message {answered[:12] or '(none)'!r}, not to this round's message to the device "
                        "(another round or strategy)")
        if sent is not None and msg.metadata.message_type != sent.metadata.message_type:
            return f"reply of type {msg.metadata.message_type!r} to a {sent.metadata.message_type!r} message"
        return None

    def _aggregate_metrics(self, ok: dict[int, RecordDict], phase: str) -> dict[str, Any]:
        """The app's own aggregation function if one was given (FedAvg's ``*_metrics_aggr_fn``), else the
        ``weighted_by_key``-weighted mean of the scalar metrics."""
        fn = self._user_aggr[phase]
        if fn is not None and ok:
            return dict(fn(list(ok.values()), self.weighted_by_key))
        return _mean_metrics(ok, self.weighted_by_key)

    def _log_sampled(self, what: str, msgs: list[Message]) -> None:
        pids = [self.pid_of[m.metadata.dst_node_id] for m in msgs]
        text = f"{what}: Sampled {len(pids)} nodes (out of {len(self.node_of)})"
        if self.topology.num_edges > 1:
            per_edge = [sum(self.topology.edge_of(p) == e for p in pids) for e in range(self.topology.num_edges)]
            text += " | per edge: " + ", ".join(f"{e}: {n}" for e, n in enumerate(per_edge))
        logger.info("%s", text)

    def _log_received(self, what: str, server_round: int, phase: str, ok: dict[int, RecordDict],
                      cloud: bool | None) -> None:
        """FedAvg's "Received N results and M failures", then the same per edge and what the cloud did."""
        failed = [f["node"] for f in self.record.failures if f["round"] == server_round and f["phase"] == phase]
        logger.info("%s: Received %d results and %d failures", what, len(ok), len(failed))
        edges = range(self.topology.num_edges)
        lines = []
        if self.topology.num_edges > 1:
            for e in edges:
                n_ok = sum(self.topology.edge_of(p) == e for p in ok)
                n_bad = sum(f.isdigit() and self.topology.edge_of(int(f)) == e for f in failed)
                lines.append(f"edge {e}: {n_ok} results, {n_bad} failures")
        if cloud is not None and type(self).aggregate_cloud is not EdgeTierStrategy.aggregate_cloud:
            if cloud:
                lines.append(f"cloud: aggregated {self.topology.num_edges} edge model(s)")
            else:
                nxt = server_round + self.topology.edge_rounds_per_cloud - server_round % \
                    self.topology.edge_rounds_per_cloud
                lines.append(f"cloud: next aggregation at round {min(nxt, self.last_round or nxt)}")
        for line in lines:  # Flower's "└──> Aggregated MetricRecord" line follows
            logger.info("\t├── %s", line)

    def _round_summary(self, server_round: int, phase: str, ok: dict[int, RecordDict],
                       metrics: dict[str, float]) -> None:
        wall = time.time() - self._round_started.get(server_round, time.time())
        per_edge: dict[str, dict[str, float]] = {}
        for edge in range(self.topology.num_edges):
            group = {pid: c for pid, c in ok.items() if self.topology.edge_of(pid) == edge}
            per_edge[str(edge)] = _mean_metrics(group, self.weighted_by_key)
        if self.recorder is not None:
            for pid, content in ok.items():
                dev = self.ledger.per_round_device[(server_round, pid)]
                self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="device",
                                      id=pid, edge=self.topology.edge_of(pid), wall_time=round(wall, 3),
                                      **metrics_of(content), bytes_up=dev["up"], bytes_down=dev["down"])
            for edge, m in per_edge.items():
                self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="edge",
                                      id=int(edge), wall_time=round(wall, 3), **m)
            self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="cloud", id=0,
                                  wall_time=round(wall, 3), **metrics,
                                  **{f"bytes_{t}_{d}": v for t, dd in self.ledger.round_totals(server_round).items()
                                     for d, v in dd.items()})
        entry = next((r for r in self.record.rounds if r["round"] == server_round), None)
        if entry is None:
            entry = {"round": server_round}
            self.record.rounds.append(entry)
        entry[phase] = {"device": {str(pid): metrics_of(c) for pid, c in ok.items()},
                        "edge": per_edge, "cloud": metrics}
        entry["bytes"] = self.ledger.round_totals(server_round)
        entry["wall_time_s"] = round(wall, 3)

    def accuracy_metric(self) -> str | None:
        """The evaluation metric the accuracy block reports: ``accuracy_key`` if given, else ``test-acc`` (the ACME
        handlers), else the first metric the app reports whose name contains "acc"."""
        if self.accuracy_key:
            return self.accuracy_key
        keys = [k for r in sorted(self.eval_history) for m in self.eval_history[r].values() for k in m]
        if "test-acc" in keys:
            return "test-acc"
        return next((k for k in keys if "acc" in k.lower() and k not in (VALIDATION_KEY, "generic-acc")), None)

    def _accuracy(self) -> dict[str, Any]:
        """Personalized (and generic) accuracy at the round with the best mean validation accuracy."""
        if not self.eval_history:
            return {}
        key = self.accuracy_metric()

        def mean_of(rnd: int, name: str) -> float:
            vals = [m[name] for m in self.eval_history[rnd].values() if name in m]
            return float(np.mean(vals)) if vals else float("-inf")

        has_val = any(VALIDATION_KEY in m for r in self.eval_history.values() for m in r.values())
        last = max(self.eval_history)
        # never select on test: without a validation metric the final round is reported
        chosen = max(self.eval_history, key=lambda r: (mean_of(r, VALIDATION_KEY), r)) if has_val else last

        def stats(rnd: int, name: str | None) -> dict[str, Any]:
            return accuracy_stats({pid: float(m[name]) for pid, m in self.eval_history[rnd].items()
                                   if name is not None and name in m})

        out = {"metric": key, "chosen_round": chosen,
               "chosen_by": VALIDATION_KEY if has_val else f"final round (no {VALIDATION_KEY} reported)",
               "personalized": stats(chosen, key), "final_round": stats(last, key)}
        generic = stats(chosen, "generic-acc")
        out["generic"] = generic if generic["mean"] is not None else None
        return out


def checkpoint_path(checkpoint_dir: str | Path, name: str) -> Path:
    """Where strategy ``name`` keeps its checkpoint: ``<dir>/<name>.json`` (its arrays in ``<name>.npz`` beside)."""
    return Path(checkpoint_dir) / f"{name}.json"


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Poll until ``count`` nodes are connected (simulation registers them late) or ``timeout`` passes."""
    deadline = time.time() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < count and time.time() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < count:
        logger.warning("only %d of %d expected nodes connected after %.0f s", len(nodes), count, timeout)
    return nodes


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt|Warning|Died\w*))\b:?\s*(.*)$")


def short_reason(reason: str, limit: int = 400) -> str:
    """A client error as one readable line: the last ``SomeError: message`` line of the (Ray-wrapped) traceback,
    without its module path; else the text with its whitespace collapsed; at most ``limit`` characters."""
    text = reason.rsplit("Message:", 1)[-1] if "Message:" in reason else reason
    lines = [ln.strip().strip("'<>\"").strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Traceback (", 'File "', "^", "~"))]
    found = [m for m in map(_EXCEPTION_LINE.match, lines) if m]
    if found:
        name, message = found[-1].groups()
        line = f"{name}: {message}" if message else name
    else:
        line = " ".join(lines) if lines else reason
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def metrics_of(content: RecordDict) -> dict[str, Any]:
    """A reply's metrics: the ``metrics`` record, else its only MetricRecord (FedAvg's contract: any key)."""
    records = content.metric_records
    if METRICS in records:
        return dict(records[METRICS])
    out: dict[str, Any] = {}
    for rec in records.values():
        out.update(dict(rec))
    return out


def _mean_metrics(replies: dict[int, RecordDict], weight_key: str = "num-examples") -> dict[str, float]:
    """``weight_key``-weighted means of the scalar metrics in the replies."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in replies.values():
        m = metrics_of(content)
        if not m:
            continue
        w = float(m.get(weight_key, 1) or 1)
        for k, v in m.items():
            if isinstance(v, (int, float)) and k not in {weight_key, "num-examples", "partition-id"}:
                sums[k] = sums.get(k, 0.0) + w * float(v)
                weights[k] = weights.get(k, 0.0) + w
    return {k: sums[k] / weights[k] for k in sums}
