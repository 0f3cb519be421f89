"""Scale benchmark (issue 5): host memory of a run with 100 simulated devices vs 10.

Runs ACME alone (2 rounds) through ``flwr run`` at both sizes and samples, every 0.25 s, the summed resident memory
of every process the run started (SuperLink, simulation runtime with the ServerApp, Ray, ClientApp workers), found by
the run's private FLWR_HOME in their environment. Prints the peaks and their ratio (target ≤ 1.2×).

    python -m experiments.bench_scale [--sizes 10,100]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from .launch import REPO, _processes_with, launch


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def peak_memory(devices: int, rounds: int, out: Path) -> tuple[int, float]:
    home = Path(tempfile.mkdtemp(prefix="acme-flwr-home-scale-"))
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(_processes_with(str(home))))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    try:
        launch(out, devices, ["strategy.names=acme", f"strategy.rounds={rounds}", f"topology.num_devices={devices}",
                              "partition.min_size=5", "strategy.feature_samples=20"], flwr_home=home)
    finally:
        done.set()
        sampler.join()
    return peak, time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: peak_memory(n, args.rounds, REPO / "outputs" / "bench" / f"scale{n}") for n in sizes}
    for n, (peak, wall) in results.items():
        print(f"{n:>5} devices: peak host memory {peak / 2**20:8.1f} MiB, wall {wall:6.1f} s")
    base = results[sizes[0]][0]
    for n in sizes[1:]:
        print(f"ratio {n} / {sizes[0]} devices: {results[n][0] / base:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
