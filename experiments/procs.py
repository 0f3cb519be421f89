"""Processes a launch starts never outlive it (stdlib only: it also runs as the watchdog script).

The launcher starts the SuperLink (and ``flwr run``) each in a process group of its own, with a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and starts this file as a **watchdog** in its own session. The watchdog reads
its stdin, a pipe whose only writer is the launcher: lines ``pgid N`` register process groups; end of file means the
launcher ended, however it ended (return, exception, SIGTERM, SIGKILL). It then kills what is left — the registered
groups, every process whose environment carries the launch's private ``FLWR_HOME`` (the SuperLink detaches its
SuperExec into a new session; Ray starts more), and their descendants — and removes that directory.

    python experiments/procs.py FLWR_HOME < pipe
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that started it dies (Linux; no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return lambda: None

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def _ppid_map() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    return out


def processes_with(marker: str) -> list[int]:
    """PIDs (not this one) whose command line or environment mentions ``marker`` (a launch's private FLWR_HOME)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            pids.append(int(proc.name))
    return pids


def group_members(pgids: Iterable[int]) -> list[int]:
    wanted = set(pgids)
    out = []
    for pid in _ppid_map():
        try:
            if os.getpgid(pid) in wanted:
                out.append(pid)
        except OSError:
            continue
    return out


def with_descendants(pids: Iterable[int]) -> set[int]:
    ppid = _ppid_map()
    found = {p for p in pids if p in ppid}
    grew = True
    while grew:
        kids = {p for p, parent in ppid.items() if parent in found} - found
        found |= kids
        grew = bool(kids)
    return found - {os.getpid()}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap(marker: str, pgids: Iterable[int] = (), grace: float = 5.0, kill_for: float = 5.0) -> list[int]:
    """SIGTERM everything of a launch, after ``grace`` s SIGKILL what is left or new (for up to ``kill_for`` s);
    return the PIDs that survived (normally [])."""
    pgids = list(pgids)

    def targets() -> set[int]:
        return {p for p in with_descendants([*processes_with(marker), *group_members(pgids)]) if alive(p)}

    def send(pids: set[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    pids = targets()
    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    deadline = time.monotonic() + kill_for
    while True:
        pids = {p for p in pids | targets() if alive(p)}  # anything forked meanwhile too
        if not pids or time.monotonic() > deadline:
            return sorted(pids)
        send(pids, signal.SIGKILL)
        time.sleep(0.1)


def cleanup(flwr_home: Path, pgids: Iterable[int] = (), grace: float = 5.0) -> list[int]:
    """Stop every process of the launch and remove its private FLWR_HOME; return the PIDs that survived."""
    left = reap(str(flwr_home), pgids, grace)
    shutil.rmtree(flwr_home, ignore_errors=True)
    return left


def watchdog_main(flwr_home: str) -> None:
    """Wait for the launcher's end (EOF on stdin), then clean up after it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the launcher; the watchdog outlives it
    pgids: list[int] = []
    for line in sys.stdin:
        word, _, value = line.partition(" ")
        if word == "pgid" and value.strip().isdigit():
            pgids.append(int(value))
    cleanup(Path(flwr_home), pgids, grace=3.0)


if __name__ == "__main__":
    watchdog_main(sys.argv[1])
