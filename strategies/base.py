"""EdgeTierStrategy: the round template every acme-flwr strategy follows (cloud → E edges → devices).

It is a :class:`flwr.serverapp.strategy.FedAvg`: it takes every argument of FedAvg with FedAvg's meaning and defaults
(sampling fractions and minimums, record keys, the weight key, metric aggregation functions, also when assigned after
construction) and Flower's ``Strategy.start`` drives the rounds. The hierarchy is a keyword-only addition
(``topology=``); without one it is a single edge that reports to the cloud every round over whatever nodes connect.

The template runs a round the same way for everybody: discovery and setup once (:meth:`discover`, :meth:`setup`),
sampling keyed by partition-id (seeded, deterministic), one message per device, reply admission
(:class:`~.admission.ReplyAdmission`), edge then cloud aggregation, FedAvg's metric aggregation and log lines, the
books (:class:`~acme_flwr.round_books.RoundBooks`) and a checkpoint (:class:`~.checkpointer.Checkpointer`) per round.
What a round is about (messages, checks, aggregation, global arrays) is its :class:`~.rounds_policy.RoundsPolicy`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from acme_flwr.comm import CommLedger
from acme_flwr.logs import use_flower_logging
from acme_flwr.results import RunRecorder, StrategyRecord, format_byte_table
from acme_flwr.round_books import RoundBooks
from acme_flwr.runtime import remove_run_dirs
from acme_flwr.topology import Topology

from .admission import ReplyAdmission, Validator
from .checkpointer import Checkpointer
from .devices import DeviceTable
from .round_log import log_received, log_sampled
from .rounds_policy import RoundsPolicy
from .utils import sample_devices

logger = logging.getLogger(__name__)

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]


class EdgeTierStrategy(FedAvg):
    """Hierarchical round template with FedAvg's interface; see the module docstring."""

    name = "edge-tier"
    fedavg_compatible = False  # True: replies to messages it never sent get FedAvg's result (FedAvg's own tests)

    # pylint: disable=too-many-arguments
    def __init__(self, fraction_train: float = 1.0, fraction_evaluate: float = 1.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 2, min_available_nodes: int = 2, weighted_by_key: str = "num-examples",
                 arrayrecord_key: str = "arrays", configrecord_key: str = "config",
                 train_metrics_aggr_fn: MetricsAggrFn | None = None,
                 evaluate_metrics_aggr_fn: MetricsAggrFn | None = None, *, topology: Topology | None = None,
                 recorder: RunRecorder | None = None, record_name: str | None = None, seed: int = 0,
                 discovery_timeout: float = 120.0, reference_params: int = 0,
                 checkpoint_dir: str | Path | None = None, accuracy_key: str | None = None,
                 policy: RoundsPolicy | None = None, remove_run_files: bool = True) -> None:
        if isinstance(fraction_train, Topology):
            raise TypeError(f"{type(self).__name__}: the first positional argument is FedAvg's fraction_train; "
                            "pass the hierarchy as topology=Topology(...)")
        super().__init__(fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes,
                         weighted_by_key, arrayrecord_key, configrecord_key, train_metrics_aggr_fn,
                         evaluate_metrics_aggr_fn)
        use_flower_logging()
        if policy is None and not isinstance(self, RoundsPolicy):
            raise TypeError(f"{type(self).__name__} needs a rounds policy (policy=...) or must implement RoundsPolicy")
        self.policy: RoundsPolicy = policy if policy is not None else self  # type: ignore[assignment]
        self.topology = topology if topology is not None else Topology()
        self.devices = DeviceTable(self.topology.num_devices)
        self.round_offset = 0  # rounds restored from a checkpoint; Flower's start() counts from 1 again
        self.last_round: int | None = None  # set by start(): the cloud always aggregates at the last round
        self.seed = seed
        self.discovery_timeout = discovery_timeout
        self.reference_params = reference_params
        self.accuracy_key = accuracy_key
        self.remove_run_files = remove_run_files
        self.ledger = CommLedger()
        self.recorder = recorder
        self.record: StrategyRecord = (recorder.strategy(record_name or self.name) if recorder
                                       else StrategyRecord(record_name or self.name))
        self.books = RoundBooks(self.record, recorder)
        self.admission = ReplyAdmission()
        self.checkpointer = Checkpointer(checkpoint_dir, self.record.name)
        self._ready = False
        self._pending: tuple[str | None, dict[str, Any]] | None = None  # restored policy state not yet loaded

    @property
    def node_of(self) -> dict[int, int]:
        return self.devices.node_of

    @property
    def pid_of(self) -> dict[int, int]:
        return self.devices.pid_of

    @property
    def profiles(self) -> dict[int, dict[str, Any]]:
        return self.devices.profiles

    @property
    def eval_history(self) -> dict[int, dict[int, dict[str, Any]]]:
        return self.books.eval_history

    @property
    def max_reply_bytes(self) -> int:
        return self.admission.max_reply_bytes

    @max_reply_bytes.setter
    def max_reply_bytes(self, value: int) -> None:
        self.admission.max_reply_bytes = value

    # ------------------------------------------------------------------------------------------------- hooks
    def discover(self, grid: Grid) -> None:
        """Fill ``node_of``/``pid_of``/``profiles``. Default: sorted node ids get partition-ids 0..n-1."""
        for pid, node in enumerate(sorted(self.wait_for_nodes(grid))):
            self.devices.bind(pid, node, {"partition-id": pid})

    def setup(self, grid: Grid) -> None:
        """One-time work after discovery (e.g. shipping sub-backbones). Default: nothing."""

    def use_policy(self, policy: RoundsPolicy) -> None:
        """Run the rounds with ``policy`` from now on (chosen after discovery); loads restored state meant for it."""
        self.policy = policy
        if self._pending is not None and self._pending[0] in (None, policy.policy_name):
            policy.load_extra_state(self._pending[1])
            self._pending = None

    # ------------------------------------------------------------------------------------------------- Strategy API
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Flower's ``Strategy.start``. ``initial_arrays`` may be left out where the policy has no global model;
        afterwards the summary block is final, the byte table and any lost devices are logged, and the files the run's
        simulated devices shared on this machine (token grids, model store) are removed (unless
        ``remove_run_files=False``)."""
        self.last_round = self.round_offset + num_rounds
        try:
            result = super().start(grid=grid, initial_arrays=initial_arrays if initial_arrays is not None
                                   else ArrayRecord(), num_rounds=num_rounds, timeout=timeout,
                                   train_config=train_config, evaluate_config=evaluate_config,
                                   evaluate_fn=evaluate_fn)
        finally:
            if self.remove_run_files:
                remove_shared_files(grid)
        self.finalize()
        for line in format_byte_table(self.record.name, self.record.bytes).splitlines():
            logger.info("%s", line)
        if self.policy.global_arrays() is None:
            logger.info("%s: personalization has no global model: Result.arrays is initial_arrays and evaluate_fn "
                        "saw only them; per-device results are in the strategy's summary block", self.record.name)
        self.report_lost_devices()
        return result

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        self._refresh_nodes(grid)
        self.books.start_round(server_round)
        self.ledger.phase = "train"
        msgs = self._messages(server_round, "train", self.sample(server_round, "train"),
                              lambda pid: self.policy.train_content(server_round, pid, arrays, config),
                              self.policy.train_type)
        log_sampled("configure_train", self.admission.asked(server_round, "train"), len(self.node_of),
                    self.devices.expected(), self.topology)
        return msgs

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self._never_sent(server_round + self.round_offset, replies, "aggregate_train"):
            return super().aggregate_train(server_round, replies)
        server_round += self.round_offset
        self.ledger.phase = "train"
        ok = self.accept_replies(server_round, "train", replies, self.policy.validate_train_reply)
        for edge in range(self.topology.num_edges):
            group = {pid: c for pid, c in ok.items() if self.topology.edge_of(pid) == edge}
            if group:
                self.policy.aggregate_edge(server_round, edge, group)
        cloud = self.is_cloud_round(server_round)
        if cloud:
            self.policy.aggregate_cloud(server_round)
        metrics = self.train_metrics_aggr_fn(list(ok.values()), self.weighted_by_key) if ok else None
        self.books.phase(server_round, "train", ok, dict(metrics or {}), self.ledger, self.topology,
                         self.weighted_by_key)
        log_received("aggregate_train", server_round, "train", list(ok), self.record.failures, self.topology,
                     cloud if self.policy.has_cloud_step else None, self.last_round)
        return self.policy.global_arrays(), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._ensure_ready(grid)
        self.ledger.phase = "evaluate"
        msgs = self._messages(server_round, "evaluate", self.sample(server_round, "evaluate"),
                              lambda pid: self.policy.evaluate_content(server_round, pid, arrays, config),
                              self.policy.evaluate_type)
        if msgs:
            log_sampled("configure_evaluate", self.admission.asked(server_round, "evaluate"), len(self.node_of),
                        self.devices.expected(), self.topology)
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if self._never_sent(server_round + self.round_offset, replies, "aggregate_evaluate"):
            return super().aggregate_evaluate(server_round, replies)
        server_round += self.round_offset
        self.ledger.phase = "evaluate"
        ok = self.accept_replies(server_round, "evaluate", replies, self.policy.validate_evaluate_reply)
        metrics = self.evaluate_metrics_aggr_fn(list(ok.values()), self.weighted_by_key) if ok else None
        self.books.phase(server_round, "evaluate", ok, dict(metrics or {}), self.ledger, self.topology,
                         self.weighted_by_key)
        if self.admission.asked(server_round, "evaluate"):
            log_received("aggregate_evaluate", server_round, "evaluate", list(ok), self.record.failures,
                         self.topology, None, self.last_round)
        self.finalize()
        self.save_checkpoint(server_round)
        return metrics

    def is_cloud_round(self, server_round: int) -> bool:
        """Every ``edge_rounds_per_cloud`` rounds, and always at the last round of ``start``."""
        return self.topology.is_cloud_round(server_round) or server_round == self.last_round

    def summary(self) -> None:
        """Log the strategy's set-up in FedAvg's style (Flower calls this at the start of ``start``)."""
        t = self.topology
        devices = t.num_devices if t.num_devices is not None else "the connected"
        logger.info("\t├──> Hierarchy: %d edge(s) over %s devices (%s), cloud aggregation every %d edge round(s) "
                    "and at the last round", t.num_edges, devices, t.assignment, t.edge_rounds_per_cloud)
        for key, value in self.settings().items():
            logger.info("\t├──> %s: %s", key, value)
        super().summary()

    def settings(self) -> dict[str, Any]:
        """This strategy's own settings for :meth:`summary` (beyond FedAvg's). Default: none."""
        return {}

    # ------------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, server_round: int) -> Path | None:
        """Write the strategy's state after a finished round (atomic replace); devices keep theirs themselves."""
        return self.checkpointer.save(server_round, self.books, self.ledger, self.policy.policy_name,
                                      self.policy.extra_state())

    def restore(self, path: str | Path) -> int:
        """Load a checkpoint written by :meth:`save_checkpoint`; returns the number of finished rounds."""
        self.round_offset, policy, extra = self.checkpointer.restore(path, self.books, self.ledger)
        self._pending = (policy, extra)
        self.use_policy(self.policy)  # loaded now if it is this policy's, else when the run chooses its policy
        return self.round_offset

    def finalize(self) -> dict[str, Any]:
        """Bring this strategy's block of the results contract up to date (bytes, references, accuracy, lost devices);
        called after every evaluation round, so ``record`` is current whenever ``start`` returns."""
        asked = (lambda r: self.admission.asked(r, "train") | self.admission.asked(r, "evaluate")) if self._ready \
            else None  # a strategy restored from a finished checkpoint keeps the verdict it was saved with
        return self.books.finalize(self.ledger, self.reference_params or self.policy.model_params(), self.profiles,
                                   set(self.node_of), self.devices.expected(), asked, self.accuracy_key,
                                   self.policy.describe())

    def report_lost_devices(self) -> list[str]:
        """Log (WARNING) one ``DEGRADED:`` line if this strategy lost devices; the lines."""
        return self.books.report_lost()

    # ------------------------------------------------------------------------------------------------- devices
    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Wait like FedAvg for ``min_available_nodes`` (or the topology's fixed ``num_devices``) to connect."""
        count = self.topology.num_devices if self.topology.num_devices is not None else self.min_available_nodes
        nodes = wait_for_nodes(grid, count, self.discovery_timeout)
        self.devices.nodes_seen = len(nodes)
        return nodes

    def sample(self, server_round: int, phase: str = "train") -> list[int]:
        """Partition-ids of a round, sampled as FedAvg does, but seeded (:func:`~.utils.sample_devices`)."""
        fraction, minimum = ((self.fraction_train, self.min_train_nodes) if phase == "train"
                             else (self.fraction_evaluate, self.min_evaluate_nodes))
        return sample_devices(sorted(self.node_of), fraction, minimum, self.seed, server_round, phase)

    def bind_topology(self) -> None:
        """Fix the topology's device count to the discovered devices when it was left open."""
        self.topology = self.devices.bound(self.topology)

    def _ensure_ready(self, grid: Grid) -> None:
        if self._ready:
            return
        ledger = self.ledger
        if self.round_offset:  # a resumed run discovers and ships again: count it apart from the reproduced totals
            self.ledger = CommLedger()
        try:
            self.ledger.phase = "discover"
            self.discover(grid)
            if not self.node_of:
                raise RuntimeError(f"{self.record.name}: no device answered discovery; is the ClientApp running?")
            self.bind_topology()
            self.ledger.phase = "setup"
            self.setup(grid)
        finally:
            if self.ledger is not ledger:
                self.record.extra["resume_setup_bytes"] = self.ledger.total()
                self.ledger = ledger
            elif self.node_of:
                self.books.setup_rows(self.ledger, sorted(set(self.profiles) | set(self.node_of)), self.topology)
        self.use_policy(self.policy)
        self._ready = True

    def _refresh_nodes(self, grid: Grid) -> None:
        """Nodes that connected after discovery join as new partition-ids (FedAvg samples whoever is connected)."""
        new = self.devices.join(list(grid.get_node_ids())) if self.policy.late_joiners else []
        if new:
            logger.info("%s: %d node(s) joined (partition-ids %s)", self.record.name, len(new), new)

    # ------------------------------------------------------------------------------------------------- messages
    def _messages(self, server_round: int, phase: str, pids: list[int], build: Any, mtype: str) -> list[Message]:
        out: dict[int, Message] = {}
        for pid in pids:
            content = build(pid)
            if content is None:
                continue
            self.ledger.add_message(server_round, "edge-device", "down", content, pid)
            out[pid] = Message(content=content, dst_node_id=self.node_of[pid], message_type=mtype)
        self.admission.sent(server_round, phase, out)
        return list(out.values())

    def exchange(self, grid: Grid, server_round: int, phase: str, messages: dict[int, Message],
                 validate: Validator, timeout: float | None) -> dict[int, RecordDict]:
        """Send one message per device (already counted in the ledger) and admit the replies (setup, search)."""
        self.admission.sent(server_round, phase, messages)
        return self.accept_replies(server_round, phase, grid.send_and_receive(list(messages.values()),
                                                                              timeout=timeout), validate)

    def sent_message(self, server_round: int, phase: str, pid: int) -> Message | None:
        """The message device ``pid`` was sent in this round and phase (what its reply must answer)."""
        return self.admission.message(server_round, phase, pid)

    def accept_replies(self, server_round: int, phase: str, replies: Iterable[Message],
                       validate: Validator) -> dict[int, RecordDict]:
        """Admitted replies keyed by partition-id (see :class:`~.admission.ReplyAdmission`)."""
        return self.admission.admit(server_round, phase, replies, validate, self.pid_of, self.ledger, self.record)

    def _never_sent(self, server_round: int, replies: list[Message], what: str) -> bool:
        """Replies to a round this strategy sent nothing in, before discovery (as Flower's strategy tests call
        ``aggregate_*``): FedAvg's result if ``fedavg_compatible``, else a clear error."""
        if self._ready or not replies or self.admission.anything_sent(server_round):
            return False
        if self.fedavg_compatible:
            return True
        raise RuntimeError(f"{type(self).__name__}.{what}: round {server_round} has replies but this strategy sent "
                           "no messages and has not discovered its devices; call configure_train/configure_evaluate "
                           "(or Strategy.start) first, it keys every reply to the message it sent")



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


def remove_shared_files(grid: Grid) -> None:
    """Remove what this run's simulated devices shared on this machine: ``<tmp>/acme-features-<run id>`` (token
    grids) and ``<tmp>/acme-models-<run id>`` (the device-side model store)."""
    try:
        run_id = grid.run.run_id
    except Exception:  # noqa: BLE001 - a grid without a run (tests) has no directory to remove
        return
    remove_run_dirs(run_id)
