"""AcmeProtocolStrategy: the shared harness of ACME and its baselines (same backbones, same devices, same bytes).

It discovers devices with a profile query, ships each device its class's sub-backbone and warm header once
(``query.acme_setup``, optionally collecting [CLS] feature statistics), and builds the per-device train/evaluate
messages the ACME client handlers understand. Subclasses decide what travels each round.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from acme_flwr import protocol as P
from acme_flwr.comm import message_bytes
from acme_flwr.config import AcmeConfig, StrategySection
from acme_flwr.device.headers import split_header_params
from acme_flwr.logs import quiet_flower_errors
from acme_flwr.packages import CloudPackages, Package
from acme_flwr.results import RunRecorder
from acme_flwr.runtime import fingerprint
from acme_flwr.topology import Topology

from .admission import log_failures, short_reason
from .base import EdgeTierStrategy
from .nas_search import federated_header_search
from .rounds_policy import RoundsPolicy
from .utils import check_same_layout

logger = logging.getLogger(__name__)



def train_config_of(s: StrategySection) -> dict[str, Any]:
    """What devices train with, from the config's ``strategy.*`` keys (the message's key names)."""
    return {"lr": s.lr, "momentum": s.momentum, "weight-decay": s.weight_decay, "batch-size": s.batch_size,
            "local-epochs": s.local_epochs, "accumulation": s.importance_accumulation}


DEFAULT_TRAIN = train_config_of(StrategySection())  # the config schema's defaults: one set, they cannot drift


def topology_of(cfg: AcmeConfig) -> Topology:
    """The topology ``cfg.topology`` describes."""
    t = cfg.topology
    return Topology(t.num_devices, t.num_edges, t.assignment, t.edge_rounds_per_cloud)


def config_kwargs(cfg: AcmeConfig, recorder: RunRecorder | None, name: str) -> dict[str, Any]:
    """The harness settings every strategy of a run takes from ``cfg`` (name, seed, sampling, timeout, training,
    reply cap; with a recorder, its checkpoint directory)."""
    s = cfg.strategy
    return {"recorder": recorder, "record_name": name, "seed": cfg.run.seed, "fraction_train": s.fraction_train,
            "fraction_evaluate": s.fraction_evaluate,
            "timeout": s.timeout, "checkpoint_dir": recorder.out_dir / "checkpoints" if recorder else None,
            "train_config": train_config_of(s), "max_reply_bytes": s.max_reply_bytes}


# set by the strategy on every message: a start(train_config=...) that names one of them is refused
RESERVED_KEYS = ("tag", "seed", "send", "mode", "prune-per-iteration", "prune-max", "prune-momentum", "head-epochs",
                 "body-epochs", "finetune-epochs", "ditto-lambda", "personal-epochs")


NO_HANDLER = "registered with name"  # Flower's ClientApp: "No query function registered with name '...'"


class NotAcmeClients(RuntimeError):
    """No node answered the ACME profile query: the ClientApp does not register the ACME handlers."""

    def __init__(self, message: str, nodes: list[int] | None = None, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.nodes = list(nodes or [])
        self.errors = list(errors or [])


def _is_probe_error(record: logging.LogRecord) -> bool:
    """Flower's log records of a ClientApp that has no ACME profile handler (simulation engine)."""
    if record.levelno < logging.ERROR:
        return False
    try:
        text = record.getMessage()
    except (TypeError, ValueError):
        return False
    return P.PROFILE.split(".")[1] in text or text.startswith("An exception was raised when processing a message")


class AcmeProtocolStrategy(EdgeTierStrategy, RoundsPolicy):
    """Discovery + one-time deployment + per-device messages in the ACME protocol; each subclass is its own rounds
    policy (it implements the :class:`RoundsPolicy` hooks).

    What a device's train (evaluate) message carries is, key by key, the first of: what the strategy sets itself
    (``tag``, ``seed``, ``server-round``, ``send``, ``mode`` and the method's own keys: naming one of these in
    ``start``'s configs is an error), ``start(train_config=...)`` (``evaluate_config=`` for evaluate messages), the
    constructor's ``train_config``, :data:`DEFAULT_TRAIN`.
    """

    late_joiners = False  # a device needs its package (setup) before it can train
    train_type = P.TRAIN
    evaluate_type = P.EVALUATE
    feature_samples = 0  # > 0: collect [CLS] feature statistics during setup
    policy_name = "acme-protocol"

    def __init__(self, *args: Any, deployment: CloudPackages | None = None,
                 train_config: dict[str, Any] | None = None, recorder: RunRecorder | None = None,
                 record_name: str | None = None, timeout: float = StrategySection.timeout,
                 max_reply_bytes: int = P.DEFAULT_MAX_REPLY_BYTES, **kwargs: Any) -> None:
        """FedAvg's arguments (positional or keyword), then keyword-only ``topology=``, ``deployment=`` (the
        cloud's packages: sub-backbones and headers per device class) and the harness settings."""
        kwargs.setdefault("reference_params", deployment.full_params if deployment else 0)
        super().__init__(*args, recorder=recorder, record_name=record_name, **kwargs)
        self.deployment = deployment
        self.max_reply_bytes = max_reply_bytes
        self.train_config = {**DEFAULT_TRAIN, **(train_config or {})}
        self.timeout = timeout
        self.features: dict[int, Any] = {}
        self.tag = self.record.name
        self._group_names: dict[int, str] = {}
        self.probe: dict[str, int] = {}  # what the profile query found: nodes asked, ACME answers, no-handler errors

    # ------------------------------------------------------------------------------------------------- discovery
    def discover(self, grid: Grid) -> None:
        nodes = sorted(self.wait_for_nodes(grid))
        query = self.profile_query()
        msgs = [Message(query, dst_node_id=n, message_type=P.PROFILE) for n in nodes]
        with quiet_flower_errors(_is_probe_error):  # a ClientApp without the ACME handlers: no traceback wall
            replies = list(grid.send_and_receive(msgs, timeout=self.timeout))
        query_bytes = message_bytes(query)
        errors: list[tuple[str, str]] = []  # (device, reason)
        no_handler = 0
        asked = set(nodes)
        for r in replies:
            if r.metadata.src_node_id not in asked:
                self.record.add_failure(0, "discover", str(r.metadata.src_node_id), "rejected: reply from a node "
                                        "that was not asked")
                continue
            asked.discard(r.metadata.src_node_id)  # one answer per node
            if r.has_error():
                if NO_HANDLER in r.error.reason:
                    no_handler += 1
                else:
                    who = self._who(r)
                    errors.append((who, self.admission.client_error(0, "discover", who, r.error.reason)))
                continue
            try:
                prof = self.check_profile(r.content)
            except Exception as exc:  # noqa: BLE001 - a hostile profile is a rejected device, never a crash
                errors.append((self._who(r), f"rejected profile: {short_reason(str(exc), 300)}"))
                continue
            pid = int(prof["partition-id"])
            if pid in self.node_of:
                self.record.add_failure(0, "discover", str(pid), "two nodes claim this partition-id")
                continue
            self.devices.bind(pid, r.metadata.src_node_id, prof)
            n = self.ledger.add_message(0, "edge-device", "up", r.content, pid)
            self.ledger.add(0, "cloud-edge", "up", n)  # the edge forwards the profile: the cloud picks the package
        self.admission.check_deaths(self.record.name, 0, "discover", self.ledger)  # before any verdict on them
        self.probe = {"nodes": len(nodes), "acme": len(self.node_of), "no_handler": no_handler,
                      "errors": len(errors)}
        if not self.node_of:
            raise NotAcmeClients(f"ACME handlers not found on {no_handler + len(errors)} of {len(nodes)} nodes",
                                 nodes=nodes, errors=[f"{who}: {reason}" for who, reason in errors])
        self.bind_topology()
        for pid in self.node_of:  # the query each device received (the cloud sends it through the device's edge)
            self.ledger.add(0, "edge-device", "down", query_bytes, pid)
        for _ in range(len({self.topology.edge_of(pid) for pid in self.node_of})):
            self.ledger.add(0, "cloud-edge", "down", query_bytes)
        grouped: dict[str, list[str]] = {}
        for who, reason in errors:  # a dead worker's devices: one line, not one per device
            self.record.add_failure(0, "discover", who, reason, log=False)
            grouped.setdefault(reason, []).append(who)
        log_failures(self.record.name, 0, "discover", grouped)
        if no_handler:
            logger.warning("%s: ACME handlers not found on %d of %d nodes; they take no part", self.record.name,
                           no_handler, len(nodes))
        logger.info("%s: discovered %d devices", self.record.name, len(self.node_of))

    def _who(self, reply: Message) -> str:
        """A device in a discovery failure: the partition-id its profile claims when that is a valid one, else
        ``node <id>`` (an error reply, a malformed profile or an impossible partition-id names no device)."""
        try:
            pid = reply.content[P.PROFILE_REC].get("partition-id")
            valid = isinstance(reply.content[P.PROFILE_REC], ConfigRecord)
        except Exception:  # noqa: BLE001 - an error reply or a malformed profile has none
            pid, valid = None, False
        n = self.topology.num_devices
        if valid and isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid and (n is None or pid < n):
            return str(pid)
        return f"node {reply.metadata.src_node_id}"

    def check_profile(self, content: RecordDict) -> dict[str, Any]:
        """A profile reply as a dict, or InvalidReply: one ConfigRecord, a partition-id in range, a known device
        class and non-negative sizes."""
        P.check_layout(content, {P.PROFILE_REC: ConfigRecord})
        prof = dict(content[P.PROFILE_REC])
        pid = prof.get("partition-id")
        n = self.topology.num_devices
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0 or (n is not None and pid >= n):
            raise P.InvalidReply(f"partition-id {pid!r} is not an integer in [0, {n})")
        for key in ("num-train", "raw-train-bytes"):
            value = prof.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise P.InvalidReply(f"{key} {value!r} is not a non-negative integer")
        if self.deployment is not None:
            cls = prof.get("device-class")
            if not isinstance(cls, str) or cls not in self.deployment.packages:
                raise P.InvalidReply(f"device-class {cls!r} is not one of {sorted(self.deployment.packages)}")
        return prof

    def setup(self, grid: Grid) -> None:
        """Ship each device its sub-backbone + header (bytes counted on both tiers), collect features if asked."""
        if self.deployment is None:
            raise ValueError(f"{type(self).__name__} needs CloudPackages (sub-backbones and headers) for ACME clients")
        k = int(self.feature_samples)
        short = {str(pid): int(p["num-train"]) for pid, p in sorted(self.profiles.items()) if int(p["num-train"]) < k}
        if k and short:  # such a device sends all its rows; the similarity compares distributions, not row counts
            self.record.extra["feature_samples_short"] = {"requested": k, "devices": short}
            logger.warning("%s: %d devices have fewer than %d training samples for feature statistics: %s%s",
                           self.record.name, len(short), k, dict(list(short.items())[:10]),
                           " ..." if len(short) > 10 else "")
        msgs, shipped = {}, set()
        built: dict[int, tuple[RecordDict, int]] = {}  # one setup content (and its size) per package, shared by its
        for pid in sorted(self.node_of):  # devices' messages: N devices hold one backbone copy, not N
            pkg = self.deployment.for_class(str(self.profiles[pid]["device-class"]))
            if id(pkg) not in built:
                content = self.setup_content(pkg, k)
                built[id(pkg)] = (content, message_bytes(content))
            content, n = built[id(pkg)]
            self.ledger.add(0, "edge-device", "down", n, pid)
            edge = self.topology.edge_of(pid)
            if (edge, pkg.width, pkg.depth) not in shipped:  # the cloud sends each distinct package once per edge
                shipped.add((edge, pkg.width, pkg.depth))
                self.ledger.add(0, "cloud-edge", "down", n)
            msgs[pid] = Message(content, dst_node_id=self.node_of[pid], message_type=P.SETUP)
        ok = self.exchange(grid, 0, "setup", msgs, self._validate_setup, self.timeout)
        for pid, content in ok.items():
            if P.FEATURES in content.array_records:
                self.features[pid] = P.vector_from_record(content[P.FEATURES], "cls")
        for pid in sorted(set(self.node_of) - set(ok)):  # a device that failed setup cannot take part
            self.devices.unbind(pid)
        if self.deployment.nas_federated is not None and self.node_of:  # nas.reward=federated: search with devices
            self.ledger.phase = "nas"
            self.record.extra["nas"] = federated_header_search(self, grid)
            self.ledger.phase = "setup"
        groups = self.mixing_groups()
        self.record.extra["mixing_groups"] = groups
        small = {f"edge {e}/{g}": pids for e, gs in groups.items() for g, pids in gs.items() if len(pids) < 3}
        if small:
            logger.warning("%s: mixing groups with fewer than 3 devices (a group of one only ever sees itself): %s",
                           self.record.name, small)

    def setup_content(self, pkg: Package, feature_samples: int) -> RecordDict:
        """The one-time setup message of a device of ``pkg``'s class: its sub-backbone, header and their recipes."""
        return RecordDict({
            P.BACKBONE: P.arrays_from_state(pkg.backbone.state_dict()),
            P.HEADER: P.arrays_from_state(pkg.header.state_dict()),
            P.CONFIG: ConfigRecord({"tag": self.tag, "backbone-arch": json.dumps(pkg.backbone.arch()),
                                    "header-spec": json.dumps(pkg.header_spec), "feature-samples": int(feature_samples),
                                    "seed": self.seed, "resume-round": self.round_offset}),
        })

    def profile_query(self) -> RecordDict:
        """The discovery query every node receives."""
        return RecordDict({P.CONFIG: ConfigRecord({})})

    def _validate_setup(self, pid: int, content: RecordDict) -> None:
        """Metrics, plus (if asked for) 1 to ``feature_samples`` finite [CLS] feature rows of the backbone's width."""
        k = int(self.feature_samples)
        P.check_layout(content, {P.METRICS: MetricRecord, **({P.FEATURES: ArrayRecord} if k else {})})
        if k:
            width = int(self.package_of(pid).backbone.config.hidden_size)
            feats = P.read_array(content[P.FEATURES], "cls")
            if feats.ndim != 2 or not 0 < feats.shape[0] <= k or feats.shape[1] != width:
                raise P.InvalidReply(f"feature statistics of shape {feats.shape}; expected (1..{k}, {width})")

    # ------------------------------------------------------------------------------------------------- replies
    def _asked_to_send(self, pid: int) -> str:
        """What this round's train message asked device ``pid`` to send back (importance, header, body, none)."""
        sent = self.sent_message(self.admission.checking[0], "train", pid)
        return str(sent.content[P.CONFIG].get("send", "importance")) if sent is not None else "none"

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """Exactly the records the device was asked for (metrics with a positive ``num-examples``; importance, or
        header weights with the package's header layout); subclasses check the payload further."""
        send = self._asked_to_send(pid)
        arrays = {"importance": P.IMPORTANCE, "header": P.HEADER, "body": P.HEADER}.get(send)
        P.check_layout(content, {P.METRICS: MetricRecord, **({arrays: ArrayRecord} if arrays else {})})
        P.check_metrics(content[P.METRICS])
        if arrays == P.HEADER:
            check_same_layout(content[P.HEADER], self._header_layout(pid, send), f"device {pid} header")
        elif arrays == P.IMPORTANCE:
            if list(content[P.IMPORTANCE].keys()) != ["v"]:
                raise P.InvalidReply(f"importance record must hold exactly 'v'; has {list(content[P.IMPORTANCE])[:5]}")
            vec = P.read_array(content[P.IMPORTANCE], "v")
            if vec.dtype != np.float32:
                raise P.InvalidReply(f"importance has dtype {vec.dtype}, expected float32")
        super().validate_train_reply(pid, content)

    def validate_evaluate_reply(self, pid: int, content: RecordDict) -> None:
        """Only metrics: finite, a positive ``num-examples``, accuracies in [0, 1]."""
        P.check_layout(content, {P.METRICS: MetricRecord})
        metrics = P.check_metrics(content[P.METRICS])
        for key, value in metrics.items():
            if key.endswith("-acc") and not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise P.InvalidReply(f"metric {key!r}={value!r} is not an accuracy in [0, 1]")

    def _header_layout(self, pid: int, send: str) -> ArrayRecord:
        """The header weights a device of ``pid``'s package sends for ``send`` (all of them, or the FedPer body)."""
        header = self.package_of(pid).header
        state = header.state_dict()
        keys = split_header_params(header)[0] if send == "body" else list(state)
        return P.arrays_from_state({k: state[k] for k in keys})

    # ------------------------------------------------------------------------------------------------- header groups
    def package_of(self, pid: int) -> Package:
        return self.deployment.for_class(str(self.profiles[pid]["device-class"]))

    def header_group(self, pid: int) -> str:
        """The mixing group of a device: devices that received the same package (the same extracted sub-backbone and
        the same warmed header), the only ones whose gates mean the same thing and whose headers can be averaged.

        Named ``w<width>-d<depth>-<header fingerprint>``; a header warmed on another sub-backbone is another group
        even when its architecture is the same."""
        pkg = self.package_of(pid)
        key = id(pkg)
        if key not in self._group_names:
            spec = json.dumps(pkg.header_spec, sort_keys=True)
            digest = fingerprint(*pkg.header.state_dict().values(), *pkg.backbone.state_dict().values())
            short = hashlib.sha256((spec + digest).encode()).hexdigest()[:8]
            self._group_names[key] = f"w{pkg.width:g}-d{pkg.depth:g}-{short}"
        return self._group_names[key]

    def by_header_group(self, pids: Iterable[int]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for pid in sorted(pids):
            groups.setdefault(self.header_group(pid), []).append(pid)
        return groups

    def mixing_groups(self) -> dict[str, dict[str, list[int]]]:
        """``{edge: {group: [partition-ids]}}`` over the devices that completed setup (reported in the summary)."""
        return {str(edge): self.by_header_group(self.topology.devices_of(edge, sorted(self.node_of)))
                for edge in range(self.topology.num_edges)}

    # ------------------------------------------------------------------------------------------------- messages
    def round_config(self, server_round: int, config: ConfigRecord | None = None, **extra: Any) -> ConfigRecord:
        """A device's config: see the class docstring for the precedence."""
        given = {k: v for k, v in dict(config or {}).items() if k != "server-round"}  # FedAvg injects server-round
        clash = sorted(set(given) & (set(RESERVED_KEYS) | set(extra)))
        if clash:
            raise ValueError(f"{self.record.name}: start()'s config sets {clash}, which the strategy sets itself on "
                             f"every message; remove them (settable: {sorted(DEFAULT_TRAIN)} and your own keys)")
        return ConfigRecord({**self.train_config, **given, "tag": self.tag, "seed": self.seed,
                             "server-round": server_round, **extra})

    def content(self, server_round: int, config: ConfigRecord | None = None,
                arrays: dict[str, ArrayRecord] | None = None, **extra: Any) -> RecordDict:
        """A round's message: the config (:meth:`round_config`) and ``arrays`` under their record keys."""
        rd = RecordDict({P.CONFIG: self.round_config(server_round, config, **extra)})
        for key, rec in (arrays or {}).items():
            rd[key] = rec
        return rd
