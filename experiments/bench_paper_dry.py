"""The paper's pipeline at full ViT-B/16 size on this machine (issue 14): ``+experiment=paper_dry`` end to end, with
its wall time, each cloud stage's time and the peak memory of every process the run starts.

    python -m experiments.bench_paper_dry --json experiments/results/paper_dry.json

The run goes through the launcher exactly as ``make run RUN_ARGS="+experiment=paper_dry"`` does. While it runs, a
thread reads the peak resident set (``VmHWM``) of every descendant process from ``/proc`` once a second; the result
groups them by role (the launcher's own process, ``flwr run``, the SuperLink, the ServerApp process
``flwr-simulation``, Ray's simulated-device actors, Ray's own services). A valid ``summary.json`` (every strategy
with a personalized accuracy and no failed replies) is required; otherwise the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from acme_flwr import accel

from .launch import PROGRESS, REPO, launch

ROLES = (("ClientAppActor", "ray device actor"), ("flwr-simulation", "ServerApp (flwr-simulation)"),
         ("flower-superlink", "SuperLink"), ("flwr run", "flwr run"), ("raylet", "ray services"),
         ("gcs_server", "ray services"), ("ray::", "ray services"), ("/ray/", "ray services"))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += tree.get(pid, [])
    return out


def _peak_kib(pid: int) -> tuple[str, int] | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return cmd, hwm


class PeakMemory(threading.Thread):
    """Peak RSS per process, sampled until :meth:`stop`: by default every descendant of this process."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._halt = threading.Event()

    def watched(self) -> Iterable[int]:
        """The processes to sample now."""
        return _descendants(os.getpid())

    def run(self) -> None:
        while not self._halt.is_set():
            for pid in self.watched():
                seen = _peak_kib(pid)
                if seen is not None and seen[1] >= self.peaks.get(pid, ("", -1))[1]:
                    self.peaks[pid] = seen
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def by_role(self) -> dict[str, dict[str, float]]:
        roles: dict[str, list[int]] = {}
        for pid, (cmd, kib) in self.peaks.items():
            role = "launcher" if pid == os.getpid() else next((r for key, r in ROLES if key in cmd), "other")
            roles.setdefault(role, []).append(kib)
        return {r: {"processes": len(v), "max_peak_mib": round(max(v) / 1024, 1),
                    "sum_of_peaks_mib": round(sum(v) / 1024, 1)} for r, v in sorted(roles.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "paper_dry")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    parser.add_argument("extra", nargs="*", help="more overrides (e.g. cloud.cache_dir=/tmp/fresh to time it)")
    args = parser.parse_args()
    monitor = PeakMemory()
    monitor.start()
    started = time.monotonic()
    try:
        path = launch(args.out, None, ["+experiment=paper_dry", *args.extra], stream_to=PROGRESS)
    finally:
        monitor.stop()
    wall = time.monotonic() - started
    summary = json.loads(path.read_text())
    blocks = summary["strategies"]
    valid = all(b["accuracy"]["personalized"]["mean"] is not None and b["failures"]["count"] == 0
                for b in blocks.values())
    stages = {k: v.get("seconds") for k, v in summary["cloud"].get("stage_log", {}).items() if isinstance(v, dict)}
    result = {"command": "python -m experiments.bench_paper_dry " + " ".join(
                  [f"--json {args.json}" if args.json else "", *args.extra]).strip(),
              "wall_time_s": round(wall, 1), "run_wall_time_s": summary["wall_time_s"],
              "cloud_wall_time_s": summary["cloud"].get("wall_time_s"), "cloud_stage_seconds": stages,
              "full_params": summary["cloud"]["full_params"], "picks": {
                  c: [p["grid_width"], p["grid_depth"]] for c, p in summary["cloud"]["picks"].items()},
              "devices": len(summary["data"]["device_splits"]), "valid_summary": valid,
              "strategies": {n: {"personalized": b["accuracy"]["personalized"]["mean"],
                                 "failures": b["failures"]["count"], "bytes": b["bytes"]["total"]}
                             for n, b in blocks.items()},
              "peak_memory": monitor.by_role(), "summary": str(path),
              "machine": f"{platform.machine()}, {accel.cores()} CPUs, {platform.system()}",
              "date": time.strftime("%Y-%m-%d")}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if not valid:
        raise SystemExit("paper_dry finished without a valid summary (a strategy has no accuracy or failed replies)")


if __name__ == "__main__":
    main()
