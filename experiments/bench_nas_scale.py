"""Federated header search cost vs number of devices (issue 6).

Runs the federated NAS (``nas.reward=federated``, one shared arc) inside a one-round ACME run at several federation
sizes and prints the search's wall time and its bytes per tier (round 0 of the ledger: discovery, setup and the
search's child/arcs traffic). Small search settings so the whole benchmark stays in minutes on 2 cores.

    python -m experiments.bench_nas_scale [--sizes 4,8,16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json

from .launch import REPO, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = REPO / "outputs" / "bench" / f"nas_scale{n}"
        summary = json.loads(launch(out, n, [
            "nas.enabled=true", "nas.reward=federated", "nas.scope=shared", f"nas.epochs={args.epochs}",
            "nas.controller_steps=5", "strategy.names=acme", "strategy.rounds=1", f"topology.num_devices={n}",
            "partition.min_size=5", "strategy.feature_samples=20"]).read_text())
        block = summary["strategies"]["acme"]
        nas = block.get("nas", {})
        round0 = block["bytes"]["total"] - sum(sum(d.values()) for r in block["rounds"] for d in r["bytes"].values())
        rows.append((n, nas.get("search_time_s"), round0, block["failures"]["count"]))
    print(f"\nfederated header search, {args.epochs} epochs x 5 controller steps, one shared arc:")
    print(f"{'devices':>8}{'search wall s':>15}{'round-0 bytes':>16}{'bytes/device':>14}{'failures':>10}")
    for n, t, b, f in rows:
        print(f"{n:>8}{t:>15}{b:>16,d}{b // n:>14,d}{f:>10}")


if __name__ == "__main__":
    main()
