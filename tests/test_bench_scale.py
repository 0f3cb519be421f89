"""bench_scale's bookkeeping (no run): targets per series (model and extra overrides), and the report's table."""

from __future__ import annotations

import json
from pathlib import Path

from experiments import report
from experiments.bench_scale import check_targets


def _point(model: str, devices: int, largest: float, extra: tuple[str, ...] = ()) -> dict:
    return {"model": model, "backbone_mb": 85.0, "devices": devices, "fraction": 0.05, "device_rounds": 6,
            "sum_peak_mib": 4000.0, "max_peak_mib": largest, "s_per_device_round": 0.2, "setup_s": 10.0,
            "wall_s": 20.0, "failures": 0, "extra": list(extra)}


def test_targets_compare_points_only_within_their_series(tmp_path: Path) -> None:
    """A run without the grid cache is a series of its own: its 10 -> 100 growth is measured against its own 10, never
    against the default series' point of the same model and size."""
    nocache = ("run.feature_cache_mb=0",)
    points = [_point("vit_b16_sub_test", 10, 1800.0), _point("vit_b16_sub_test", 100, 1900.0),
              _point("vit_b16_sub_test", 10, 1500.0, nocache), _point("vit_b16_sub_test", 100, 1510.0, nocache)]
    targets = {t["target"]: t for t in check_targets(points)}
    default = targets["vit_b16_sub_test: largest process grows <= 1 MB per device (10 -> 100)"]
    without = targets["vit_b16_sub_test run.feature_cache_mb=0: largest process grows <= 1 MB per device (10 -> 100)"]
    assert default["measured"] == round(100 * 1.048576 / 90, 3) and not default["holds"]
    assert without["measured"] == round(10 * 1.048576 / 90, 3) and without["holds"]
    (tmp_path / "scale.json").write_text(json.dumps({
        "command": "first", "commands": ["first", "second"], "points": points, "targets": list(targets.values()),
        "machine": "m", "date": "d"}))
    header, rows, note = report.scale(tmp_path)
    assert rows[2][0] == "`vit_b16_sub_test` (85 MB), `run.feature_cache_mb=0`" and rows[0][0].endswith("(85 MB)")
    assert "produced by `first`, then `second` on d" in note
