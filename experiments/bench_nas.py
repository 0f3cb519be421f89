"""Benchmark the edge NAS search cost on the tiny setting (one run; these machines are noisy, compare within a run).

Synthetic class-conditional grids shaped like the embedded default sub-backbone's patch tokens (hidden 64 on a 4×4
grid, 10 classes; 1 000 train / 300 reward / 300 validation samples, about the digits data set) feed a ``ProxyReward``
search for each header size (B cells, L layers). Per size: shared-child and exported-header parameters, gates, and
time per child SGD step, per controller step (sample + reward batch + REINFORCE update, and the parts), per
validation pass, per epoch, plus the epoch time extrapolated to the original's 300 controller steps.

    python -m experiments.bench_nas                      # < 2 min on 2 shared cores
    python -m experiments.bench_nas --sizes 1x1,1x3,3x3 --channels 64 --epochs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from acme_flwr.device.gates import gate_layers
from acme_flwr.edge.nas import Controller, ENASChild, ProxyReward, Reinforce, SearchConfig, export_header, search


def synthetic(n: int, hidden: int, side: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means + noise on a ``(n, hidden, side, side)`` grid."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, hidden, side, side, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(classes, (n,), generator=gen)
    return means[y] + 1.0 * torch.randn(n, hidden, side, side, generator=gen), y


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_size(num_cells: int, num_layers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run a short search for one header size and time its parts."""
    cfg = SearchConfig(epochs=args.epochs, controller_steps=args.controller_steps, batch_size=args.batch_size,
                       num_cells=num_cells, num_layers=num_layers, out_filters=args.channels, child_lr_t0=2,
                       num_eval_arcs=args.eval_arcs, seed=args.seed)
    data = [synthetic(n, args.hidden, args.grid, args.classes, seed) for seed, n in
            enumerate((args.train, args.reward, args.val))]
    child = ENASChild(args.hidden, args.classes, args.channels, num_cells, num_layers, seed=args.seed)
    source = ProxyReward.from_config(child, cfg, x_train=data[0][0], y_train=data[0][1], x_val=data[1][0],
                                     y_val=data[1][1], x_select=data[2][0], y_select=data[2][1])
    start = time.perf_counter()
    result = search(source, cfg, progress=not args.no_progress)
    total = time.perf_counter() - start
    hist = result.history

    # controller parts, timed in isolation on a fresh controller
    ctrl = Controller(num_cells, seed=args.seed)
    trainer = Reinforce.from_config(ctrl, cfg)
    arc = result.best_arc

    def sample() -> None:
        with torch.no_grad():
            ctrl()

    header = export_header(result.best_arc, child)
    steps_child = sum(h["child_steps"] for h in hist)
    ctrl_step_ms = 1000 * sum(h["time_controller_s"] for h in hist) / (cfg.controller_steps * len(hist))
    epoch_s = statistics.mean(h["time_epoch_s"] for h in hist)
    child_epoch_s = statistics.mean(h["time_child_s"] for h in hist)
    eval_s = statistics.mean(h["time_eval_s"] for h in hist)
    return {
        "B": num_cells, "L": num_layers,
        "child_params": sum(p.numel() for p in child.parameters()),
        "header_params": sum(p.numel() for name, p in header.named_parameters() if "gate_" not in name),
        "gates": sum(g.num_channels for g in gate_layers(header)),
        "child_step_ms": 1000 * sum(h["time_child_s"] for h in hist) / steps_child,
        "ctrl_step_ms": ctrl_step_ms,
        "ctrl_sample_ms": _median_ms(sample, 30),
        "reward_ms": _median_ms(lambda: source.reward(arc), 30),
        "update_ms": _median_ms(lambda: trainer.update(arc, 0.5), 30),
        "validate_s": eval_s,
        "epoch_s": epoch_s,
        "epoch_at_300_steps_s": child_epoch_s + eval_s + 300 * ctrl_step_ms / 1000,
        "search_s": total,
        "best_val_acc": result.best_score,
        "best_arc": result.best_arc,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1x1,1x3,3x3", help="comma-separated BxL header sizes")
    parser.add_argument("--hidden", type=int, default=64, help="sub-backbone hidden size (grid channels)")
    parser.add_argument("--grid", type=int, default=4, help="patch grid side")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--channels", type=int, default=32, help="cell width C (spec: 256)")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--reward", type=int, default=300)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--controller-steps", type=int, default=50)
    parser.add_argument("--eval-arcs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes.split(","):
        b, layers = (int(v) for v in size.lower().split("x"))
        rows.append(bench_size(b, layers, args))

    cols = ["B", "L", "child_params", "header_params", "gates", "child_step_ms", "ctrl_step_ms", "ctrl_sample_ms",
            "reward_ms", "update_ms", "validate_s", "epoch_s", "epoch_at_300_steps_s", "best_val_acc"]
    print(f"NAS search cost: hidden {args.hidden}, grid {args.grid}x{args.grid}, C {args.channels}, batch "
          f"{args.batch_size}, {args.train}/{args.reward}/{args.val} samples, {args.epochs} epochs x "
          f"{args.controller_steps} controller steps, {args.threads} thread(s)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
