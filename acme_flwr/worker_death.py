"""A simulation worker that died: recognising it in a device's error, saying it in one line, and the record of it.

Flower's Ray backend runs every simulated device's ClientApp in a ``ClientAppActor``; when that worker process dies
(killed, out of memory) every message it held, and every later message Ray hands to the same dead actor, comes back
as an error reply whose reason is the Ray exception as text (``<class 'ray.exceptions.ActorDiedError'>:<'The actor
died unexpectedly ...\\n\\tclass_name: ClientAppActor\\n\\tactor_id: ...\\n\\tpid: ...\\n\\tip: ...'>``). Flower never
replaces the actor, so those devices are lost for the rest of the run.

:func:`parse_worker_death` reads such a reason (which worker: actor id, pid, node, exit type, when the text carries
them); :class:`WorkerDied` is what a strategy raises with ``run.on_lost_devices=resume`` to stop the run before the
damaged round is checkpointed; :func:`record_death` / :func:`read_deaths` keep the deaths of a run in
``<run.out_dir>/worker_deaths.jsonl``, the file the launcher watches to restart the run from its checkpoints and the
summary reports as ``restarts``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEATHS_FILE = "worker_deaths.jsonl"  # one JSON object per death, appended by the ServerApp that saw it

# Ray's errors for an actor whose worker is gone (Flower's actors are never restarted, so an unavailable one is gone)
_DEATH_TYPE = re.compile(r"\b(ActorDiedError|RayActorError|ActorUnavailableError)\b")
_FIELDS = {
    "actor_id": re.compile(r"\bactor_id:\s*([0-9a-fA-F]{8,})"),
    "pid": re.compile(r"\bpid:\s*(\d+)"),
    "ip": re.compile(r"\bip:\s*([0-9A-Za-z.:\-]+)"),
    "class_name": re.compile(r"\bclass_name:\s*(\w+)"),
    "exit_type": re.compile(r"Worker exit type:\s*(\w+)"),
}


@dataclass(frozen=True)
class WorkerDeath:
    """Which worker died, as far as Ray's error text says (empty fields where it does not)."""

    error: str  # the Ray exception's class name
    actor_id: str = ""
    pid: int | None = None
    ip: str = ""
    class_name: str = ""
    exit_type: str = ""

    def worker(self) -> str:
        """``Ray worker pid 1234 on 127.0.0.1 (ClientAppActor 45b545a6, UNEXPECTED_SYSTEM_EXIT)``; the parts Ray
        did not give are left out."""
        where = "Ray worker" + (f" pid {self.pid}" if self.pid is not None else "") + (f" on {self.ip}" if self.ip
                                                                                      else "")
        more = [f"{self.class_name or 'actor'} {self.actor_id[:8]}" if self.actor_id else self.class_name,
                self.exit_type]
        more = [m for m in more if m]
        return where + (f" ({', '.join(more)})" if more else "")

    def reason(self) -> str:
        """The failure reason of a device whose message the worker held (one short line; the same for all of them,
        so a dead worker is one log line per round, not one per device)."""
        return f"{self.error}: {self.worker()} died"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


def parse_worker_death(reason: str) -> WorkerDeath | None:
    """The worker death a device's error reply reports, or None when the error is anything else (a ClientApp
    exception, a rejected contract, a timeout)."""
    found = _DEATH_TYPE.search(reason)
    if found is None:
        return None
    values = {key: (m.group(1) if (m := rx.search(reason)) else "") for key, rx in _FIELDS.items()}
    raw_pid = values.pop("pid")
    pid = int(raw_pid) if raw_pid else None
    return WorkerDeath(found.group(1), pid=pid, **values)


@dataclass(eq=False)
class WorkerDied(RuntimeError):
    """A round lost devices to a dead worker and the run stops before that round is checkpointed
    (``run.on_lost_devices=resume``); the launcher resumes it from the last complete round."""

    strategy: str
    round: int
    phase: str
    devices: list[str]  # partition-ids (``node <id>`` where discovery had none)
    death: WorkerDeath
    round_bytes: int = 0  # what the damaged round had moved when it stopped (not in any total)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.line())

    def line(self) -> str:
        """One line: which strategy, round and phase, which devices, which worker."""
        devices = ", ".join(map(str, self.devices[:20])) + (f" and {len(self.devices) - 20} more"
                                                            if len(self.devices) > 20 else "")
        return (f"{self.strategy} round {self.round} {self.phase}: {self.death.worker()} died, "
                f"{len(self.devices)} device(s) lost their messages ({devices})")

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "round": self.round, "phase": self.phase, "devices": list(self.devices),
                "worker": self.death.to_dict(), "round_bytes": self.round_bytes, **self.extra}


def record_death(out_dir: str | Path, event: WorkerDied) -> Path:
    """Append ``event`` to ``<out_dir>/worker_deaths.jsonl`` (the file the launcher watches)."""
    path = Path(out_dir) / DEATHS_FILE
    with path.open("a") as fh:
        fh.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
    return path


def read_deaths(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every death recorded for the run in ``out_dir`` (oldest first; [] when none)."""
    path = Path(out_dir) / DEATHS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def restart_line(death: dict[str, Any], restart: int, max_restarts: int) -> str:
    """The launcher's one line for a recorded death (:meth:`WorkerDied.to_dict`) it restarts after."""
    w = WorkerDeath(**{k: v for k, v in death.get("worker", {}).items() if k in WorkerDeath.__dataclass_fields__})
    devices = death.get("devices", [])
    shown = ", ".join(map(str, devices[:20])) + (f" and {len(devices) - 20} more" if len(devices) > 20 else "")
    done = int(death["round"]) - 1
    since = f"after its round {done}" if done > 0 else "from its start"
    return (f"worker died: {death['strategy']} round {death['round']} {death['phase']}, devices {shown}, "
            f"{w.worker()}; resuming {death['strategy']} {since} in a fresh simulation (restart {restart} of at most "
            f"{max_restarts})")
