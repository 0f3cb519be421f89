"""EdgeTierStrategy: the template every acme-flwr strategy follows (cloud → E edges → devices).

Flower's ``Strategy.start`` drives the rounds; this class fixes what happens inside them and leaves four hooks to
subclasses:

- :meth:`discover` learns which partition-id each node holds (once, before round 1);
- :meth:`train_content` / :meth:`evaluate_content` build each device's own message (heterogeneous payloads);
- :meth:`aggregate_edge` merges one edge's replies; :meth:`aggregate_cloud` runs every ``edge_rounds_per_cloud``
  rounds.

The template handles the rest the same way for everybody: sampling keyed by partition-id (deterministic), exact
byte accounting per tier and direction, reply validation (an error reply, a missing reply or a malformed payload is
recorded as a failure and never reaches edge state), per-round rows in ``rounds.jsonl`` and the summary block.
"""

from __future__ import annotations

import logging
import pickle
import random
import time
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from acme_flwr.comm import CENTRALIZED_FORMULA, FEDAVG_FORMULA, CommLedger, fedavg_full_bytes
from acme_flwr.protocol import METRICS
from acme_flwr.results import RunRecorder, StrategyRecord, accuracy_stats
from acme_flwr.topology import Topology

logger = logging.getLogger(__name__)


class ReplyRejected(ValueError):
    """A device's reply is malformed (missing keys, wrong shape, NaN/Inf); it is recorded and ignored."""


class EdgeTierStrategy(Strategy):
    """Hierarchical strategy template; see the module docstring."""

    name = "edge-tier"
    train_type = "train"
    evaluate_type = "evaluate"

    def __init__(self, topology: Topology, *, recorder: RunRecorder | None = None, record_name: str | None = None,
                 fraction_train: float = 1.0, seed: int = 0, discovery_timeout: float = 120.0,
                 reference_params: int = 0, checkpoint_dir: str | Path | None = None) -> None:
        self.topology = topology
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.round_offset = 0  # rounds restored from a checkpoint; Flower's start() counts from 1 again
        self.fraction_train = fraction_train
        self.seed = seed
        self.discovery_timeout = discovery_timeout
        self.reference_params = reference_params
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
        self._round_started: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------------- hooks
    def discover(self, grid: Grid) -> None:
        """Fill ``node_of``/``pid_of``/``profiles``. Default: sorted node ids get partition-ids 0..n-1."""
        for pid, node in enumerate(sorted(wait_for_nodes(grid, self.topology.num_devices, self.discovery_timeout))):
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
        """Cloud step every ``edge_rounds_per_cloud`` rounds. Default: nothing."""

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict | None:
        """The evaluation message for device ``pid`` (None: do not evaluate it)."""
        return None

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """Raise :class:`ReplyRejected` if a train reply is malformed. Default: a metrics record must exist."""
        if METRICS not in content.metric_records:
            raise ReplyRejected(f"reply has no MetricRecord {METRICS!r}; keys: {list(content.keys())}")

    def global_arrays(self) -> ArrayRecord | None:
        """Arrays returned to ``Strategy.start`` after each round (None keeps the previous)."""
        return None

    # ------------------------------------------------------------------------------------------------- Strategy API
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        self._round_started[server_round] = time.time()
        return self._messages(server_round, "train", self.sample(server_round),
                              lambda pid: self.train_content(server_round, pid, arrays, config), self.train_type)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        ok = self._accept(server_round, "train", replies, self.validate_train_reply)
        for edge in range(self.topology.num_edges):
            group = {pid: c for pid, c in ok.items() if self.topology.edge_of(pid) == edge}
            if group:
                self.aggregate_edge(server_round, edge, group)
        if self.topology.is_cloud_round(server_round):
            self.aggregate_cloud(server_round)
        metrics = _mean_metrics(ok)
        self._round_summary(server_round, "train", ok, metrics)
        return self.global_arrays(), MetricRecord(metrics) if metrics else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        return self._messages(server_round, "evaluate", sorted(self.node_of),
                              lambda pid: self.evaluate_content(server_round, pid, arrays, config),
                              self.evaluate_type)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        ok = self._accept(server_round, "evaluate", replies, lambda pid, c: None)
        self.eval_history[server_round] = {pid: dict(c[METRICS]) for pid, c in ok.items() if METRICS in c}
        metrics = _mean_metrics(ok)
        self._round_summary(server_round, "evaluate", ok, metrics)
        self.finalize()
        self.save_checkpoint(server_round)
        return MetricRecord(metrics) if metrics else None

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
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"{self.record.name}.pkl"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(self.state_dict(server_round), fh)
        tmp.replace(path)
        return path

    def restore(self, path: str | Path) -> int:
        """Load a checkpoint written by :meth:`save_checkpoint`; returns the number of finished rounds."""
        with Path(path).open("rb") as fh:
            state = pickle.load(fh)  # noqa: S301 - our own file, written by save_checkpoint
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
        """Log the strategy's set-up (Flower calls this at the start of ``start``)."""
        logger.info("%s: %d edges over %d devices, cloud round every %d edge rounds, fraction_train=%.2f",
                    self.record.name, self.topology.num_edges, self.topology.num_devices,
                    self.topology.edge_rounds_per_cloud, self.fraction_train)

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
        return self.record.to_dict()

    # ------------------------------------------------------------------------------------------------- internals
    def sample(self, server_round: int) -> list[int]:
        """Partition-ids trained this round: all, or a seeded fraction (same seed → same devices)."""
        pids = sorted(self.node_of)
        k = max(1, int(round(self.fraction_train * len(pids))))
        if k >= len(pids):
            return pids
        return sorted(random.Random(self.seed * 100_003 + server_round).sample(pids, k))

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
            self.setup(grid)
        finally:
            if self.ledger is not ledger:
                self.record.extra["resume_setup_bytes"] = self.ledger.total()
                self.ledger = ledger
        self._ready = True

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
        return out

    def _accept(self, server_round: int, phase: str, replies: Iterable[Message],
                validate: Any) -> dict[int, RecordDict]:
        """Validated replies keyed by partition-id; errors, rejects and missing replies become failures."""
        ok: dict[int, RecordDict] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = self.pid_of.get(node)
            if pid is None:
                self.record.add_failure(server_round, phase, str(node), "reply from a node that was never discovered")
                continue
            if msg.has_error():
                reason = f"client error: {short_reason(msg.error.reason)}"
                self.record.add_failure(server_round, phase, str(pid), reason)
                continue
            self.ledger.add_message(server_round, "edge-device", "up", msg.content, pid)
            try:
                validate(pid, msg.content)
            except (ReplyRejected, ValueError, KeyError, TypeError) as exc:
                self.record.add_failure(server_round, phase, str(pid), f"rejected: {exc}")
                continue
            ok[pid] = msg.content
        for pid in sorted(self._sent.get((server_round, phase), set()) - set(ok)):
            if not any(f["round"] == server_round and f["phase"] == phase and f["node"] == str(pid)
                       for f in self.record.failures):
                self.record.add_failure(server_round, phase, str(pid), "no reply (timeout or lost)")
        return dict(sorted(ok.items()))

    def _round_summary(self, server_round: int, phase: str, ok: dict[int, RecordDict],
                       metrics: dict[str, float]) -> None:
        wall = time.time() - self._round_started.get(server_round, time.time())
        per_edge: dict[str, dict[str, float]] = {}
        for edge in range(self.topology.num_edges):
            group = {pid: c for pid, c in ok.items() if self.topology.edge_of(pid) == edge}
            per_edge[str(edge)] = _mean_metrics(group)
        if self.recorder is not None:
            for pid, content in ok.items():
                dev = self.ledger.per_round_device[(server_round, pid)]
                self.recorder.log_row(strategy=self.record.name, round=server_round, phase=phase, tier="device",
                                      id=pid, edge=self.topology.edge_of(pid), wall_time=round(wall, 3),
                                      **dict(content.get(METRICS, {})), bytes_up=dev["up"], bytes_down=dev["down"])
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
        entry[phase] = {"device": {str(pid): dict(c.get(METRICS, {})) for pid, c in ok.items()},
                        "edge": per_edge, "cloud": metrics}
        entry["bytes"] = self.ledger.round_totals(server_round)
        entry["wall_time_s"] = round(wall, 3)

    def _accuracy(self) -> dict[str, Any]:
        """Personalized (and generic) accuracy at the round with the best mean validation accuracy."""
        if not self.eval_history:
            return {}
        def mean_of(rnd: int, key: str) -> float:
            vals = [m[key] for m in self.eval_history[rnd].values() if key in m]
            return float(np.mean(vals)) if vals else float("-inf")
        has_val = any("val-acc" in m for r in self.eval_history.values() for m in r.values())
        last = max(self.eval_history)
        # never select on test: without a validation metric the final round is reported
        chosen = max(self.eval_history, key=lambda r: (mean_of(r, "val-acc"), r)) if has_val else last
        def stats(rnd: int, key: str) -> dict[str, Any]:
            return accuracy_stats({pid: m[key] for pid, m in self.eval_history[rnd].items() if key in m})
        out = {"chosen_round": chosen, "chosen_by": "val-acc" if has_val else "final round (no val-acc reported)",
               "personalized": stats(chosen, "test-acc"), "final_round": stats(last, "test-acc")}
        generic = stats(chosen, "generic-acc")
        out["generic"] = generic if generic["mean"] is not None else None
        return out


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


def short_reason(reason: str, limit: int = 400) -> str:
    """The informative tail of a client error (Ray wraps it in a long traceback)."""
    tail = reason.rsplit("Message:", 1)[-1].strip().rstrip("'>").strip()
    return tail[-limit:]


def _mean_metrics(replies: dict[int, RecordDict]) -> dict[str, float]:
    """Example-weighted means of the scalar metrics in the replies."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in replies.values():
        if METRICS not in content:
            continue
        m = dict(content[METRICS])
        w = float(m.get("num-examples", 1) or 1)
        for k, v in m.items():
            if isinstance(v, (int, float)) and k not in {"num-examples", "partition-id"}:
                sums[k] = sums.get(k, 0.0) + w * float(v)
                weights[k] = weights.get(k, 0.0) + w
    return {k: sums[k] / weights[k] for k in sums}
