"""Checkpointer: one strategy's state after each finished round, written and read back without pickle.

The state is the strategy's books (rounds, failures, evaluation history, ``rounds.jsonl`` rows), its byte ledger and
the extra state of its rounds policy (edge models, importance mixes), tagged with the policy's name so that a state
is only ever loaded into the policy that wrote it. Devices keep their own state themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from acme_flwr.checkpoints import load_state, save_state
from acme_flwr.comm import CommLedger
from acme_flwr.round_books import RoundBooks

logger = logging.getLogger(__name__)


def checkpoint_path(checkpoint_dir: str | Path, name: str) -> Path:
    """Where strategy ``name`` keeps its checkpoint: ``<dir>/<name>.json`` (its arrays in ``<name>.npz`` beside)."""
    return Path(checkpoint_dir) / f"{name}.json"


class Checkpointer:
    """Saves and restores one strategy's state in ``checkpoint_dir`` (nothing is saved without one)."""

    def __init__(self, checkpoint_dir: str | Path | None, name: str) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.name = name

    def save(self, server_round: int, books: RoundBooks, ledger: CommLedger, policy: str,
             extra: dict[str, Any]) -> Path | None:
        """Write the state after a finished round (atomic replace); None without a checkpoint directory."""
        if self.checkpoint_dir is None:
            return None
        rows = books.recorder.rows_of(self.name) if books.recorder is not None else []
        state = {"round": server_round, "name": self.name, "eval_history": books.eval_history,
                 "ledger": ledger.state_dict(), "record": books.record.to_state(), "rows": rows, "policy": policy,
                 "extra": extra}
        return save_state(checkpoint_path(self.checkpoint_dir, self.name), state)

    def restore(self, path: str | Path, books: RoundBooks, ledger: CommLedger) -> tuple[int, str | None, dict]:
        """Load a checkpoint written by :meth:`save` (``<name>.json`` + ``<name>.npz``, never a pickle; ``path`` may
        name either file or the stem) into ``books`` and ``ledger``; returns (finished rounds, the policy that wrote
        the extra state, that state)."""
        state = load_state(path)
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint {path} belongs to strategy {state.get('name')!r}, not {self.name!r}")
        books.eval_history = state["eval_history"]
        ledger.load_state_dict(state["ledger"])
        books.record.load_state(state["record"])
        if books.recorder is not None:
            books.recorder.restore_rows(self.name, state["rows"])
        finished = int(state["round"])
        logger.info("%s: resumed after round %d from %s", self.name, finished, path)
        return finished, state.get("policy"), state["extra"]
