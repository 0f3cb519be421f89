"""Scale benchmark (issue 24): memory and wall time of one run with 10, 100 and 1 000 simulated devices, and at a large
backbone's size.

Each point runs ACME alone through ``flwr run`` (the launcher, as ``make run`` does) with ``cloud.enabled=false`` (the
untrained full backbone is every device's package), cross-device sampling (``strategy.fraction_train`` and
``strategy.fraction_evaluate``, default 0.05, so 1 000 devices stay feasible on 2 cores) and a few rounds. While it
runs, a thread reads the peak resident set (``VmHWM``) of every process the run started (found by the run's private
FLWR_HOME in their environment: SuperLink, ``flwr run``, the simulation with the ServerApp, Ray's services and
ClientApp workers) twice a second. A point reports:

* ``sum_peak_mib``: the sum of those per-process peaks (an upper bound of the run's footprint at any one time);
* ``max_peak_mib``: the largest single process's peak (the ServerApp's simulation process, in practice);
* ``s_per_device_round``: the rounds' wall time (``summary.json``'s per-round ``wall_time_s``, discovery and the
  one-time setup excluded) divided by the device-rounds (devices that replied to a train message, summed over rounds);
* ``setup_s``: everything else (start-up, discovery, shipping every device its package).

The points are ``vit_micro_test`` (a few KB of backbone) at 10, 100 and 1 000 devices and ``vit_b16_sub_test`` (85 MB,
ViT-B/16's sub-backbone at width 1, depth 0.25) at 10 and 100. The targets of issue 24 are checked from the measured
numbers and written with them (``experiments/results/scale.json``; ``python -m experiments.report`` makes the table):

    python -m experiments.bench_scale --json experiments/results/scale.json
    python -m experiments.bench_scale --points vit_micro_test:10,vit_micro_test:100 --rounds 2   # a quick look
    python -m experiments.bench_scale --points vit_b16_sub_test:10,vit_b16_sub_test:100 \
        --extra run.feature_cache_mb=0 --json experiments/results/scale.json --append   # without the grid cache
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from acme_flwr import accel
from acme_flwr.cloud.models import create_model

from .bench_paper_dry import PeakMemory
from .launch import REPO, launch
from .procs import processes_with

DEFAULT_POINTS = ("vit_micro_test:10,vit_micro_test:100,vit_micro_test:1000,"
                  "vit_b16_sub_test:10,vit_b16_sub_test:100")
IMAGES_PER_DEVICE = 60  # synthetic samples per device (issue 24 measured with 60)


class RunPeaks(PeakMemory):
    """Per-process peak RSS of every process whose environment names ``marker`` (the run's FLWR_HOME)."""

    def __init__(self, marker: str, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.marker = marker

    def watched(self) -> Iterable[int]:
        return processes_with(self.marker)

    def largest(self) -> tuple[str, int]:
        cmd, kib = max(self.peaks.values(), key=lambda v: v[1], default=("", 0))
        return " ".join(cmd.split()[:3])[:80], kib


def backbone_mb(model: str) -> float:
    """The model's parameter bytes (fp32) in MB: what one device's package carries."""
    return round(sum(p.numel() for p in create_model(model).parameters()) * 4 / 1e6, 2)


def run_point(model: str, devices: int, rounds: int, fraction: float, out: Path,
              extra: Sequence[str] = ()) -> dict[str, Any]:
    """One run (``extra``: more Hydra overrides, e.g. ``run.feature_cache_mb=0``); its memory, wall time and
    device-rounds."""
    home = Path(tempfile.mkdtemp(prefix="acme-flwr-home-scale-"))
    overrides = ["dataset=synthetic", f"model={model}" if (REPO / "conf" / "model" / f"{model}.yaml").exists()
                 else f"model.name={model}", "cloud.enabled=false", "cloud.widths=1.0", "cloud.depths=1.0",
                 "strategy.names=acme",
                 f"strategy.rounds={rounds}", f"topology.num_devices={devices}",
                 f"data.synthetic_samples={IMAGES_PER_DEVICE * devices}", "partition.min_size=5",
                 "strategy.feature_samples=20", f"strategy.fraction_train={fraction}",
                 f"strategy.fraction_evaluate={fraction}", "model.header_channels=8", *extra]
    monitor = RunPeaks(str(home))
    monitor.start()
    t0 = time.monotonic()
    try:
        path = launch(out, devices, overrides, flwr_home=home)
    finally:
        monitor.stop()
        shutil.rmtree(home, ignore_errors=True)
    wall = time.monotonic() - t0
    block = json.loads(path.read_text())["strategies"]["acme"]
    rounds_wall = sum(float(r.get("wall_time_s", 0.0)) for r in block["rounds"])
    device_rounds = sum(len((r.get("train") or {}).get("device", {})) for r in block["rounds"])
    largest_cmd, largest = monitor.largest()
    return {"model": model, "backbone_mb": backbone_mb(model), "devices": devices, "rounds": rounds,
            "fraction": fraction, "processes": len(monitor.peaks),
            "sum_peak_mib": round(sum(k for _, k in monitor.peaks.values()) / 1024, 1),
            "max_peak_mib": round(largest / 1024, 1), "largest_process": largest_cmd,
            "wall_s": round(wall, 1), "rounds_wall_s": round(rounds_wall, 2),
            "setup_s": round(wall - rounds_wall, 1), "device_rounds": device_rounds,
            "s_per_device_round": round(rounds_wall / device_rounds, 4) if device_rounds else None,
            "failures": block["failures"]["count"], "overrides": overrides, "extra": list(extra)}


def _variant(point: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The series a point belongs to: its model and its extra overrides (compared only within one series)."""
    return point["model"], tuple(point.get("extra", ()))


def check_targets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 24's targets, from the measured points: each with its measured value and whether it holds."""
    out: list[dict[str, Any]] = []
    for model, extra in sorted({_variant(p) for p in points}):
        by_n = {p["devices"]: p for p in points if _variant(p) == (model, extra)}
        name = " ".join((model, *extra))  # the series' name in the targets
        sizes = sorted(by_n)
        if len(sizes) >= 2:
            lo, hi = by_n[sizes[0]], by_n[sizes[-1]]
            per_device = (hi["max_peak_mib"] - lo["max_peak_mib"]) * 1.048576 / (hi["devices"] - lo["devices"])
            out.append({"target": f"{name}: largest process grows <= 1 MB per device ({sizes[0]} -> {sizes[-1]})",
                        "measured": round(per_device, 3), "unit": "MB/device", "holds": per_device <= 1.0})
        if 10 in by_n and 1000 in by_n:
            ratio = by_n[1000]["sum_peak_mib"] / by_n[10]["sum_peak_mib"]
            out.append({"target": f"{name}: summed memory at 1000 devices <= 1.5x that at 10",
                        "measured": round(ratio, 3), "unit": "x", "holds": ratio <= 1.5})
        if 100 in by_n and 1000 in by_n and by_n[100]["s_per_device_round"] and by_n[1000]["s_per_device_round"]:
            ratio = by_n[1000]["s_per_device_round"] / by_n[100]["s_per_device_round"]
            out.append({"target": f"{name}: wall time per device-round at 1000 <= 1.2x that at 100",
                        "measured": round(ratio, 3), "unit": "x", "holds": ratio <= 1.2})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default=DEFAULT_POINTS, help="model:devices, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.05, help="fraction_train and fraction_evaluate")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here (after every point)")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more Hydra overrides for every point of this call (e.g. run.feature_cache_mb=0): a "
                             "series of its own, compared only with itself")
    parser.add_argument("--append", action="store_true",
                        help="keep the points already in --json (a point of the same model, devices and extra "
                             "overrides is replaced) and add this call's command to its commands")
    args = parser.parse_args()
    command = (f"python -m experiments.bench_scale --points {args.points} --rounds {args.rounds} "
               f"--fraction {args.fraction}" + (f" --json {args.json}" if args.json else "")
               + (f" --extra {' '.join(args.extra)}" if args.extra else "") + (" --append" if args.append else ""))
    kept: list[dict[str, Any]] = []
    commands = [command]
    if args.append and args.json and args.json.exists():
        before = json.loads(args.json.read_text())
        kept, commands = before["points"], [*before.get("commands", [before["command"]]), command]
    points: list[dict[str, Any]] = []
    for spec in args.points.split(","):
        model, n = spec.split(":")
        point = run_point(model, int(n), args.rounds, args.fraction,
                          REPO / "outputs" / "bench" / f"scale-{model}-{n}", args.extra)
        points.append(point)
        print(json.dumps(point), flush=True)
        mine = {(_variant(p), p["devices"]) for p in points}
        every = [p for p in kept if (_variant(p), p["devices"]) not in mine] + points
        result = {"command": commands[0], "commands": commands, "points": every, "targets": check_targets(every),
                  "machine": f"{platform.machine()}, {accel.cores()} CPUs, {platform.system()}",
                  "date": time.strftime("%Y-%m-%d")}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    for t in check_targets(points):
        print(f"{'OK  ' if t['holds'] else 'MISS'} {t['target']}: {t['measured']} {t['unit']}")


if __name__ == "__main__":
    main()
