"""RoundsPolicy: what a round of an :class:`~.base.EdgeTierStrategy` does, apart from running it.

The template runs every round the same way (sampling, sending, admitting replies, books, checkpoints); a policy
decides what the round is about: what each device is sent, what a reply must hold, how an edge merges its devices'
replies, what the cloud does, what the global arrays are and what extra state a resumed run needs. A strategy may
be its own policy (the ACME harness and its baselines implement these methods themselves) or hold another one
(:class:`~.fedavg_policy.FedAvgPolicy`, which hierarchical FedAvg and ACME's drop-in mode use).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from acme_flwr.protocol import METRICS

from .admission import ReplyRejected


class RoundsPolicy(ABC):
    """The round's content, checks and aggregation; see the module docstring."""

    policy_name = "policy"
    train_type = "train"  # message types of the round's messages
    evaluate_type = "evaluate"
    late_joiners = True  # nodes that connect after discovery join as new devices (False where devices need setup)
    has_cloud_step = False  # whether aggregate_cloud does anything (the round's log line says when it runs)

    @abstractmethod
    def train_content(self, server_round: int, pid: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The training message for device ``pid``."""

    @abstractmethod
    def aggregate_edge(self, server_round: int, edge: int, replies: dict[int, RecordDict]) -> None:
        """Merge the admitted train replies of one edge's devices (keyed by partition-id)."""

    def aggregate_cloud(self, server_round: int) -> None:
        """Cloud step every ``edge_rounds_per_cloud`` rounds and at the last round. Default: nothing."""
        return None

    def evaluate_content(self, server_round: int, pid: int, arrays: ArrayRecord,
                         config: ConfigRecord) -> RecordDict | None:
        """The evaluation message for device ``pid`` (None: do not evaluate it)."""
        return None

    def validate_train_reply(self, pid: int, content: RecordDict) -> None:
        """Raise :class:`ReplyRejected` if a train reply is malformed. Default: a metrics record must exist."""
        if METRICS not in content.metric_records:
            raise ReplyRejected(f"reply has no MetricRecord {METRICS!r}; keys: {list(content.keys())}")

    def validate_evaluate_reply(self, pid: int, content: RecordDict) -> None:
        """Raise :class:`ReplyRejected` if an evaluate reply is malformed. Default: nothing beyond the checks every
        reply gets (finite metrics)."""
        return None

    def global_arrays(self) -> ArrayRecord | None:
        """Arrays returned to ``Strategy.start`` after each round (None keeps the previous)."""
        return None

    def model_params(self) -> int:
        """Parameters of the model the FedAvg-full byte reference counts, when the policy knows it (0: unknown)."""
        return 0

    def extra_state(self) -> dict[str, Any]:
        """Policy state a resumed run needs (plain Python / numpy). Default: nothing."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""
        return None

    def describe(self) -> str:
        """One line for the summary block's ``mode`` ("": no such entry)."""
        return ""
