"""Logging the way Flower does it: acme-flwr's loggers forward to Flower's ``flwr`` logger, so every line is printed
once, in Flower's format, by Flower's handlers (console, log file, the log stream of ``flwr run --stream``).

Nothing here adds a root handler: a ServerApp that called ``logging.basicConfig`` printed every Flower line twice
(``INFO :`` from Flower's handler, ``INFO flwr:`` from the root one).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

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
