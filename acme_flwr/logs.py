"""Logging the way Flower does it: acme-flwr's loggers forward to Flower's ``flwr`` logger, so every line is printed
once, in Flower's format, by Flower's handlers (console, log file, the log stream of ``flwr run --stream``).

Nothing here adds a root handler: a ServerApp that called ``logging.basicConfig`` printed every Flower line twice
(``INFO :`` from Flower's handler, ``INFO flwr:`` from the root one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

FLOWER = "flwr"
# the package names our code logs under: installed (acme_flwr.*) and inside a FAB (strategies.*, clients.*)
OWN_LOGGERS = ("acme_flwr", "strategies", "clients", "experiments")


class ToFlower(logging.Handler):
    """Hand every record to Flower's logger (its handlers format and route it)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(FLOWER).handle(record)


def use_flower_logging(level: int = logging.INFO, names: tuple[str, ...] = OWN_LOGGERS) -> None:
    """Route our loggers to Flower's (idempotent). A logger the user already gave handlers is left alone."""
    for name in names:
        lg = logging.getLogger(name)
        if any(isinstance(h, ToFlower) for h in lg.handlers):
            continue
        if lg.handlers:  # configured by the application: respect it
            continue
        lg.addHandler(ToFlower())
        lg.setLevel(level)
        lg.propagate = False


@contextlib.contextmanager
def quiet_flower_errors(match: Callable[[logging.LogRecord], bool]) -> Iterator[list[logging.LogRecord]]:
    """Drop the records of Flower's logger that ``match`` accepts while the block runs (they are collected in the
    yielded list). Used around the ACME capability probe: in the simulation engine a ClientApp without the ACME
    handlers answers with an error reply *and* Flower logs the exception with its traceback; the strategy reports
    the outcome in one line instead."""
    dropped: list[logging.LogRecord] = []

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if match(record):
                dropped.append(record)
                return False
            return True

    flt = _Filter()
    flower = logging.getLogger(FLOWER)
    flower.addFilter(flt)
    try:
        yield dropped
    finally:
        flower.removeFilter(flt)


# --------------------------------------------------------------------------------------------------------------------
# Progress of long work, as log lines
# --------------------------------------------------------------------------------------------------------------------

PROGRESS_MARK = "[PROGRESS]"  # the launcher shows every log line that carries it (experiments.launch.show_progress)
PROGRESS_ENV = "ACME_PROGRESS_SECONDS"  # seconds between two lines of one piece of work (default 10; 0: every step)
_DEFAULT_EVERY = 10.0


def progress_interval() -> float:
    """Seconds between two progress lines: ``$ACME_PROGRESS_SECONDS`` or 10 (a bad value falls back to 10)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, _DEFAULT_EVERY)))
    except ValueError:
        return _DEFAULT_EVERY


def format_seconds(seconds: float) -> str:
    """``75`` → ``1 min 15 s``; ``4000`` → ``1 h 06 min``; short, for progress lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """One piece of long work reported as log lines: ``[PROGRESS] <what>: <unit> i/n (...), elapsed, ETA``.

    A line is written for the first step, then at most every ``every`` seconds, and for the last step, so a stage of
    any length gives a bounded number of lines, each printed once (plain log records: no carriage returns, nothing
    redrawn). The ETA is the mean time per step since the first (which carries start-up costs) times the steps
    left; the first line has none."""

    def __init__(self, what: str, total: int, *, unit: str = "step", log: logging.Logger | None = None,
                 every: float | None = None, per_epoch: int | None = None, warmup: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.log = log or logging.getLogger("acme_flwr.progress")
        self.every = progress_interval() if every is None else every
        self.per_epoch = per_epoch if per_epoch and per_epoch > 0 else None
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last: float | None = None
        self._first: float | None = None  # when the first step ended: the ETA's rate leaves out start-up costs
        self.warmup = warmup  # False: every step costs alike (e.g. whole jobs), the rate counts the first one too

    def advance(self, n: int = 1, **fields: Any) -> str:
        """Count ``n`` finished steps and return the line for the new count (for callers that print it)."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = self.clock()
        if self._first is None:
            self._first = now
        return self.line(now, **fields)

    def step(self, n: int = 1, **fields: Any) -> None:
        """Count ``n`` finished steps; ``fields`` (e.g. ``loss=0.53``) are shown on the line if one is due."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = self.clock()
        if self._first is None:
            self._first = now
        if self._last is None or self.done >= self.total or now - self._last >= self.every:
            self._last = now
            self.log.info("%s", self.line(now, **fields))

    def line(self, now: float | None = None, **fields: Any) -> str:
        """The progress line for the current count."""
        now = self.clock() if now is None else now
        elapsed = now - self.started
        parts = [f"{self.unit} {self.done}/{self.total}"]
        if self.per_epoch:
            epochs = -(-self.total // self.per_epoch)
            parts.append(f"epoch {max(1, -(-self.done // self.per_epoch))}/{epochs}")  # the one the step was in
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if self.done >= self.total:
            parts.append("done")
        elif not self.warmup and self.done:
            parts.append(f"ETA {format_seconds(elapsed / self.done * (self.total - self.done))}")
        elif self.done > 1 and self._first is not None:  # the steps after the first, at their own rate
            rate = (now - self._first) / (self.done - 1)
            parts.append(f"ETA {format_seconds(rate * (self.total - self.done))}")
        return f"{PROGRESS_MARK} {self.what}: " + ", ".join(parts)
