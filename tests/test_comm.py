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


def test_plots_are_written_for_a_summary(tmp_path) -> None:  # noqa: ANN001
    import json

    from acme_flwr.plots import plot_run

    block = {"rounds": [{"round": 1, "evaluate": {"cloud": {"test-acc": 0.5}}},
                        {"round": 2, "evaluate": {"cloud": {"test-acc": 0.6}}}],
             "bytes": {"total": 1000}, "accuracy": {"personalized": {"mean": 0.6}},
             "similarity": {"0": {"devices": [0, 2], "weights": [[0.6, 0.4], [0.3, 0.7]]}}}
    summary = {"cloud": {"table": [[1.0, 1.0, 0.9], [1.0, 0.5, 0.8], [0.5, 1.0, 0.7], [0.5, 0.5, 0.6]]},
               "strategies": {"acme": block}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    names = sorted(p.name for p in plot_run(tmp_path / "summary.json"))
    assert names == ["accuracy_per_round.png", "accuracy_vs_bytes.png", "similarity_weights.png",
                     "subnet_accuracy.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
