"""Communication accounting: exact serialized bytes per message, tier and direction, and the reference volumes.

A message's size is the protobuf wire size of its content (``RecordDict``), the same serialization Flower uses to
ship it; message headers (ids, TTL) are excluded. References, computed in the same run:

- ``fedavg_full``: FedAvg of the full backbone+header for the same devices and rounds, ``2 · rounds · devices · P · 4``
  bytes (fp32 down and up, P = parameter count).
- ``centralized``: every device uploads its raw training set once, ``Σ_devices n_train · (H·W·C + label bytes)``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict
from flwr.common.serde import recorddict_to_proto

TIERS = ("cloud-edge", "edge-device")
DIRECTIONS = ("up", "down")


def message_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content in bytes."""
    return int(recorddict_to_proto(content).ByteSize())


def fedavg_full_bytes(num_params: int, num_devices: int, rounds: int, bytes_per_param: int = 4) -> int:
    return 2 * rounds * num_devices * num_params * bytes_per_param


FEDAVG_FORMULA = "2 * rounds * devices * params * 4 (fp32 full model down and up, every round)"
CENTRALIZED_FORMULA = "sum over devices of n_train * (H*W*C uint8 pixels + label bytes), uploaded once"


def _zero() -> dict[str, dict[str, int]]:
    return {t: {"up": 0, "down": 0} for t in TIERS}


@dataclass
class CommLedger:
    """Bytes per (round, tier, direction), per device, per phase, and totals.

    ``phase`` names what the bytes added now belong to (``discover``, ``setup``, ``nas``, ``train``, ``evaluate``);
    the strategy sets it as a round moves on, so ``rounds.jsonl`` rows can hold each phase's own bytes (they sum to
    the totals) while ``per_round`` keeps the round's running total."""

    per_round: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)
    per_device: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: {"up": 0, "down": 0}))
    per_round_device: dict[tuple[int, int], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: {"up": 0, "down": 0}))
    per_phase: dict[tuple[int, str], dict[str, dict[str, int]]] = field(default_factory=dict)
    per_phase_device: dict[tuple[int, str, int], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: {"up": 0, "down": 0}))
    phase: str = ""

    def add(self, server_round: int, tier: str, direction: str, nbytes: int, partition_id: int | None = None) -> None:
        if tier not in TIERS or direction not in DIRECTIONS:
            raise ValueError(f"unknown tier/direction {tier!r}/{direction!r}; allowed {TIERS} × {DIRECTIONS}")
        rnd = self.per_round.setdefault(server_round, _zero())
        rnd[tier][direction] += int(nbytes)
        self.per_phase.setdefault((server_round, self.phase), _zero())[tier][direction] += int(nbytes)
        if partition_id is not None and tier == "edge-device":
            self.per_device[partition_id][direction] += int(nbytes)
            self.per_round_device[(server_round, partition_id)][direction] += int(nbytes)
            self.per_phase_device[(server_round, self.phase, partition_id)][direction] += int(nbytes)

    def add_message(self, server_round: int, tier: str, direction: str, content: RecordDict,
                    partition_id: int | None = None) -> int:
        n = message_bytes(content)
        self.add(server_round, tier, direction, n, partition_id)
        return n

    def state_dict(self) -> dict[str, Any]:
        return {"per_round": self.per_round, "per_device": dict(self.per_device),
                "per_round_device": dict(self.per_round_device), "per_phase": self.per_phase,
                "per_phase_device": dict(self.per_phase_device)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_round = dict(state["per_round"])
        self.per_device.clear()
        self.per_device.update(state["per_device"])
        self.per_round_device.clear()
        self.per_round_device.update(state["per_round_device"])
        self.per_phase = dict(state.get("per_phase", {}))
        self.per_phase_device.clear()
        self.per_phase_device.update(state.get("per_phase_device", {}))

    def totals(self) -> dict[str, dict[str, int]]:
        out = {t: {"up": 0, "down": 0} for t in TIERS}
        for rnd in self.per_round.values():
            for t in TIERS:
                for d in DIRECTIONS:
                    out[t][d] += rnd[t][d]
        return out

    def total(self) -> int:
        return sum(v for t in self.totals().values() for v in t.values())

    def round_totals(self, server_round: int) -> dict[str, dict[str, int]]:
        """The round's running total over all its phases."""
        return self.per_round.get(server_round, _zero())

    def phase_totals(self, server_round: int, phase: str) -> dict[str, dict[str, int]]:
        """The bytes of one phase of a round only (what its ``rounds.jsonl`` cloud row holds)."""
        return self.per_phase.get((server_round, phase), _zero())

    def phase_device(self, server_round: int, phase: str, partition_id: int) -> dict[str, int]:
        """Device ``partition_id``'s edge-device bytes in one phase of a round."""
        return dict(self.per_phase_device.get((server_round, phase, partition_id), {"up": 0, "down": 0}))

    def phases(self, server_round: int) -> list[str]:
        """The phases of a round that moved bytes, in the order they first did."""
        return [ph for (rnd, ph) in self.per_phase if rnd == server_round]
