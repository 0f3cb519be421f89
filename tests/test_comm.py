"""Byte accounting: serialized sizes, ledger sums, reference formulas."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from acme_flwr import protocol as P
from acme_flwr.comm import CommLedger, fedavg_full_bytes, message_bytes


def test_message_bytes_tracks_payload_size() -> None:
    small = RecordDict({P.IMPORTANCE: P.vector_record(np.zeros(256, np.float32))})
    large = RecordDict({P.IMPORTANCE: P.vector_record(np.zeros(2560, np.float32))})
    assert 1024 <= message_bytes(small) < 1024 + 200  # 256 float32 + framing
    assert message_bytes(large) - message_bytes(small) == 4 * (2560 - 256)
    with_cfg = RecordDict({P.CONFIG: ConfigRecord({"tag": "x" * 100})})
    assert message_bytes(with_cfg) > 100


def test_ledger_sums_per_tier_direction_round_and_device() -> None:
    led = CommLedger()
    led.add(1, "edge-device", "up", 10, partition_id=0)
    led.add(1, "edge-device", "down", 5, partition_id=1)
    led.add(2, "cloud-edge", "up", 7)
    assert led.totals() == {"cloud-edge": {"up": 7, "down": 0}, "edge-device": {"up": 10, "down": 5}}
    assert led.total() == 22 and led.per_device[0] == {"up": 10, "down": 0}
    assert led.per_round_device[(1, 1)]["down"] == 5


def test_fedavg_reference_formula() -> None:
    assert fedavg_full_bytes(num_params=1000, num_devices=5, rounds=10) == 2 * 10 * 5 * 1000 * 4
