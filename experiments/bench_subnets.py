"""Benchmark extracted sub-backbones against the full model, one run, ratios only (these machines are noisy).

Per (depth, width): parameters, analytic MACs, serialized bytes (``torch.save`` of the state dict) and forward time of
the extracted sub-model, each relative to the full model; the last column is time ratio / MAC ratio (1.0 = time
scales exactly with compute). Full and sub-model are timed interleaved, best of ``--repeats``.

    python -m experiments.bench_subnets --model vit_tiny_digits --batch-size 256
    python -m experiments.bench_subnets --model vit_b16 --batch-size 4 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from acme_flwr.cloud.elastic_vit import ElasticViT, count_macs_formula, count_params_formula
from acme_flwr.cloud.models import create_model, list_models


def serialized_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.inference_mode()
def _time_once(model: ElasticViT, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def bench(
    model: ElasticViT, widths: list[float], depths: list[float], batch_size: int, repeats: int
) -> list[dict[str, Any]]:
    """One row per grid point with absolute numbers and ratios to the full model."""
    model.eval()
    c = model.config
    x = torch.randn(batch_size, c.num_channels, c.image_size, c.image_size)
    full = {
        "params": count_params_formula(model.arch()),
        "macs": count_macs_formula(model.arch()),
        "bytes": serialized_bytes(model),
    }
    rows = []
    for d, w in itertools.product(sorted(depths, reverse=True), sorted(widths, reverse=True)):
        sub = model.extract_subnet(w, d).eval()
        assert sub.num_parameters() == count_params_formula(model.arch(), w, d)
        for _ in range(2):  # warm-up (allocator, first-call dispatch)
            _time_once(model, x), _time_once(sub, x)
        t_full, t_sub = float("inf"), float("inf")
        for _ in range(repeats):  # interleaved so drift hits both
            t_full = min(t_full, _time_once(model, x))
            t_sub = min(t_sub, _time_once(sub, x))
        macs = count_macs_formula(model.arch(), w, d)
        row = {
            "depth": d, "width": w, "params": sub.num_parameters(), "macs": macs, "bytes": serialized_bytes(sub),
            "params_ratio": sub.num_parameters() / full["params"], "macs_ratio": macs / full["macs"],
            "time_ratio": t_sub / t_full,
        }  # fmt: skip
        row["bytes_ratio"] = row["bytes"] / full["bytes"]
        row["time_per_mac"] = row["time_ratio"] / row["macs_ratio"]
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = ["params", "params_ratio", "macs_ratio", "bytes_ratio", "time_ratio", "time_per_mac"]
    lines = ["depth width " + " ".join(f"{c:>12}" for c in cols)]
    for r in rows:
        lines.append(
            f"{r['depth']:5.2f} {r['width']:5.2f} {r['params']:>12d} "
            + " ".join(f"{r[c]:>12.3f}" for c in cols[1:])
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_digits", choices=list_models())
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--depths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = create_model(args.model)
    widths = [float(v) for v in args.widths.split(",")]
    depths = [float(v) for v in args.depths.split(",")]
    rows = bench(model, widths, depths, args.batch_size, args.repeats)
    print(f"{args.model}: batch {args.batch_size}, best of {args.repeats}, {args.threads} thread(s)")
    print(format_rows(rows))
    worst = max(max(r["time_per_mac"], 1 / r["time_per_mac"]) for r in rows)
    print(f"max |time ratio / MAC ratio| deviation factor: {worst:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
