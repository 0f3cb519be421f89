"""Reply admission: which replies a strategy lets through to its edges, and why the others were refused.

:class:`ReplyAdmission` remembers every message the strategy sent, per (round, phase) and partition-id, and admits a
reply only when it answers one of them: from a discovered node that was asked in this round and phase, answering the
very message it was sent (where the grid assigns message ids, as Flower's do), once, within ``max_reply_bytes``, with
finite metrics and a payload the phase's validator accepts. Anything else (an error reply, a stale or misaddressed
reply, a malformed payload, a missing reply) is recorded as a failure of that device and never reaches edge state.

An error reply that says the device's simulation worker died (:func:`acme_flwr.worker_death.parse_worker_death`) is
recorded with a short reason naming the worker; with ``stop_on_worker_death`` (``run.on_lost_devices=resume``) the
phase then raises :class:`~acme_flwr.worker_death.WorkerDied` instead of returning, before anything of the damaged
round is aggregated or checkpointed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict

from acme_flwr import protocol as P
from acme_flwr.comm import CommLedger
from acme_flwr.results import StrategyRecord
from acme_flwr.worker_death import WorkerDeath, WorkerDied, parse_worker_death

logger = logging.getLogger(__name__)

Validator = Callable[[int, RecordDict], None]


class ReplyRejected(ValueError):
    """A device's reply is malformed (missing keys, wrong shape, NaN/Inf); it is recorded and ignored."""


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


class ReplyAdmission:
    """The messages sent per (round, phase) and the admission of their replies."""

    def __init__(self, max_reply_bytes: int = P.DEFAULT_MAX_REPLY_BYTES) -> None:
        self.max_reply_bytes = max_reply_bytes  # a larger reply is rejected (0: no cap)
        self._outbox: dict[tuple[int, str], dict[int, Message | None]] = {}  # (round, phase) -> pid -> message
        self.checking: tuple[int, str] = (0, "")  # (round, phase) of the replies being checked now
        self.stop_on_worker_death = False  # True: a phase whose devices lost their worker raises WorkerDied
        self.deaths: dict[tuple[int, str], dict[str, WorkerDeath]] = {}  # (round, phase) -> device -> its dead worker

    def client_error(self, server_round: int, phase: str, who: str, reason: str) -> str:
        """The failure reason of an error reply: a dead worker in one short line naming it (remembered for
        :meth:`check_deaths`), anything else as :func:`short_reason` makes it."""
        death = parse_worker_death(reason)
        if death is None:
            return f"client error: {short_reason(reason)}"
        self.deaths.setdefault((server_round, phase), {})[who] = death
        return f"client error: {death.reason()}"

    def check_deaths(self, name: str, server_round: int, phase: str, ledger: CommLedger | None = None) -> None:
        """Raise :class:`WorkerDied` (first dead worker, every device it cost) when devices of this round and phase
        lost their worker and ``stop_on_worker_death`` is set; else nothing."""
        dead = self.deaths.get((server_round, phase))
        if not dead or not self.stop_on_worker_death:
            return
        moved = sum(v for d in ledger.round_totals(server_round).values() for v in d.values()) if ledger else 0
        devices = sorted(dead, key=lambda who: (not who.isdigit(), int(who) if who.isdigit() else 0, who))
        raise WorkerDied(name, server_round, phase, devices, next(iter(dead.values())), round_bytes=moved,
                         extra={"workers": sorted({d.worker() for d in dead.values()})})

    def sent(self, server_round: int, phase: str, messages: dict[int, Message]) -> None:
        """Remember what each device was sent in this round and phase (replaces an earlier call's). Earlier rounds
        keep only who was asked: a reply to them is stale anyway, so the messages (and their payloads) are dropped,
        and what the strategy holds stays proportional to the devices of one round, not to every round's."""
        for key, msgs in self._outbox.items():
            if key[0] < server_round and any(m is not None for m in msgs.values()):
                self._outbox[key] = dict.fromkeys(msgs)
        self._outbox[(server_round, phase)] = dict(messages)

    def asked(self, server_round: int, phase: str) -> set[int]:
        """Partition-ids that were sent a message in this round and phase."""
        return set(self._outbox.get((server_round, phase), {}))

    def anything_sent(self, server_round: int) -> bool:
        return any(rnd == server_round and msgs for (rnd, _), msgs in self._outbox.items())

    def message(self, server_round: int, phase: str, pid: int) -> Message | None:
        """The message device ``pid`` was sent in this round and phase (what its reply must answer)."""
        return self._outbox.get((server_round, phase), {}).get(pid)

    def admit(self, server_round: int, phase: str, replies: Iterable[Message], validate: Validator,
              pid_of: dict[int, int], ledger: CommLedger, record: StrategyRecord) -> dict[int, RecordDict]:
        """Validated replies keyed by partition-id (sorted); errors, rejects and missing replies become failures of
        ``record``; the admitted (and the rejected but well-addressed) replies' bytes go to ``ledger``."""
        ok: dict[int, RecordDict] = {}
        asked = self.asked(server_round, phase)
        self.checking = (server_round, phase)
        failed: dict[str, list[str]] = {}  # reason -> devices: logged once per reason, not once per device

        def fail(who: str, reason: str) -> None:
            record.add_failure(server_round, phase, who, reason, log=False)
            failed.setdefault(reason, []).append(who)

        try:
            self._admit(server_round, phase, replies, validate, pid_of, ledger, record, asked, ok, fail)
        finally:
            log_failures(record.name, server_round, phase, failed)
        self.check_deaths(record.name, server_round, phase, ledger)
        return dict(sorted(ok.items()))

    def _admit(self, server_round: int, phase: str, replies: Iterable[Message], validate: Validator,
               pid_of: dict[int, int], ledger: CommLedger, record: StrategyRecord, asked: set[int],
               ok: dict[int, RecordDict], fail: Callable[[str, str], None]) -> None:
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = pid_of.get(node)
            if pid is None:
                fail(str(node), "reply from a node that was never discovered")
                continue
            problem = self.misaddressed(msg, pid, asked, self.message(server_round, phase, pid), ok)
            if problem:
                fail(str(pid), f"rejected: {problem}")
                continue
            if msg.has_error():
                fail(str(pid), self.client_error(server_round, phase, str(pid), msg.error.reason))
                continue
            size = ledger.add_message(server_round, "edge-device", "up", msg.content, pid)
            try:
                P.check_size(size, self.max_reply_bytes)
                if phase in ("train", "evaluate") and msg.content.config_records:
                    raise P.InvalidReply(f"unexpected ConfigRecord(s) {sorted(msg.content.config_records)} in a "
                                         f"{phase} reply")
                for rec in msg.content.metric_records.values():
                    P.check_metrics(rec, required=())
                validate(pid, msg.content)
            except Exception as exc:  # noqa: BLE001 - whatever a hostile reply makes a check raise is a rejection
                fail(str(pid), f"rejected: {short_reason(str(exc), 300)}")
                continue
            ok[pid] = msg.content
        failed = {f["node"] for f in record.failures if f["round"] == server_round and f["phase"] == phase}
        for pid in sorted(asked - set(ok)):
            if str(pid) not in failed:
                fail(str(pid), "no reply (timeout or lost)")

    @staticmethod
    def misaddressed(msg: Message, pid: int, asked: set[int], sent: Message | None,
                     ok: dict[int, RecordDict]) -> str | None:
        """Why a reply from device ``pid`` does not answer this round's message to it (None: it does)."""
        if pid not in asked:
            return "device was not asked in this round and phase (a stale reply, or one for another strategy)"
        if pid in ok:
            return "second reply in the same round and phase"
        if sent is not None and sent.metadata.message_id:  # Flower's grids assign ids; a bare test grid may not
            answered = msg.metadata.reply_to_message_id
            if answered != sent.metadata.message_id:
                return (f"reply to message {answered[:12] or '(none)'!r}, not to this round's message to the device "
                        "(another round or strategy)")
        if sent is not None and msg.metadata.message_type != sent.metadata.message_type:
            return f"reply of type {msg.metadata.message_type!r} to a {sent.metadata.message_type!r} message"
        return None


def log_failures(name: str, server_round: int, phase: str, failed: dict[str, list[str]], shown: int = 20) -> None:
    """One WARNING line per distinct reason of a round and phase: a lone device in the usual wording, many devices
    (a dead worker takes every message it held) as one line naming them, not one line per device."""
    for reason, who in failed.items():
        if len(who) == 1:
            logger.warning("%s round %d %s: node %s failed: %s", name, server_round, phase, who[0], reason)
        else:
            more = f" and {len(who) - shown} more" if len(who) > shown else ""
            logger.warning("%s round %d %s: %d devices failed (%s%s): %s", name, server_round, phase, len(who),
                           ", ".join(who[:shown]), more, reason)
