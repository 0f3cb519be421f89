"""Header benchmark (issue 6): the NAS-searched header vs the fixed default header (GatedTempCNN) vs a linear head,
on the same sub-backbones (same cloud stage, same PFG picks), embedded default data at Dirichlet α (default 0.1).

One ``flwr run`` per (header, seed). Gated headers run ``acme`` (importance mixing + pruning) and ``local`` (local
refinement only); the linear head has no gates, so it runs ``local`` only. Personalized accuracy is the summary's
per-run device mean (taken at the round with the best mean validation accuracy); the table shows mean ± std over
seeds. Header bytes = the serialized header state a device downloads once (``ArrayRecord.count_bytes()``), from the
same deployment rebuilt in-process (cloud stage and search are cache hits).

The code is snapshotted first (editing the repo during the sweep cannot mix versions); finished runs are skipped.

    python -m experiments.bench_headers --seeds 0,1,2            # ~1 min per run on 2 cores
    python -m experiments.bench_headers --seeds 0 --rounds 5     # reduced
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from .launch import REPO, launch, snapshot

VARIANTS: dict[str, list[str]] = {
    "searched": ["nas.enabled=true", "nas.scope=shared", "strategy.names=acme,local"],
    "gated_temp_cnn": ["model.header=gated_temp_cnn", "strategy.names=acme,local"],
    "linear": ["model.header=linear", "strategy.names=local"],
}


def header_bytes(overrides: list[str]) -> dict[str, Any]:
    """Per device class: header params, gates and serialized bytes, from the deployment the run used."""
    import torch

    from acme_flwr import protocol as P
    from acme_flwr.cloud.models import input_shape
    from acme_flwr.config import AcmeConfig
    from acme_flwr.packages import build_packages
    from acme_flwr.runtime import cache_dir
    from acme_flwr.task import federated_data

    from .launch import _toml_pair

    torch.set_num_threads(1)
    flat = tomllib.loads("\n".join(_toml_pair(o) for o in overrides))
    cfg = AcmeConfig.from_flat(flat)
    dep = build_packages(cfg, federated_data(cfg, *input_shape(cfg)), cache_dir(cfg), progress=False)
    out = {}
    for name, pkg in dep.packages.items():
        out[name] = {"params": sum(p.numel() for p in pkg.header.parameters()), "gates": pkg.header.num_gates,
                     "bytes": P.arrays_from_state(pkg.header.state_dict()).count_bytes(),
                     "backbone_bytes": P.arrays_from_state(pkg.backbone.state_dict()).count_bytes(),
                     "w": pkg.width, "d": pkg.depth, "spec": pkg.header_spec.get("arc")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "headers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=None, help="strategy.rounds (default: the app default)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-supernodes", type=int, default=10)
    parser.add_argument("extra", nargs="*", help="more section.key=value overrides for every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    common = ["partition.kind=dirichlet", f"partition.alpha={args.alpha}", *args.extra]
    if args.rounds:
        common.append(f"strategy.rounds={args.rounds}")
    app = snapshot()
    try:
        for seed in seeds:  # seed-major: a cut-short sweep still compares every header
            for variant in variants:
                out = args.out / variant / f"seed{seed}"
                if (out / "summary.json").exists():
                    continue
                print(f"== {variant} seed {seed}", flush=True)
                out.mkdir(parents=True, exist_ok=True)
                with (out.parent / f"seed{seed}.log").open("w") as log:
                    launch(out, args.num_supernodes, [*common, f"run.seed={seed}", *VARIANTS[variant]], app_dir=app,
                           stream_to=log)
    finally:
        shutil.rmtree(app, ignore_errors=True)

    rows: dict[tuple[str, str], list[float]] = {}
    nas: dict[str, Any] = {}
    for variant in variants:
        for seed in seeds:
            path = args.out / variant / f"seed{seed}" / "summary.json"
            if not path.exists():
                continue
            summary = json.loads(path.read_text())
            for name, block in summary["strategies"].items():
                rows.setdefault((variant, name), []).append(block["accuracy"]["personalized"]["mean"])
            if variant == "searched":
                nas[f"seed{seed}"] = {k: {kk: v.get(kk) for kk in ("arc_str", "num_gates", "search_val_acc",
                                                                   "finetune_val_acc", "search_time_s")}
                                      for k, v in summary["cloud"]["stage_log"].get("nas", {}).items()}
    sizes = {v: header_bytes([*common, "run.seed=0", *VARIANTS[v]]) for v in variants}
    lines = [f"Dirichlet α={args.alpha}, seeds {seeds}, personalized accuracy (%) mean ± std over seeds",
             "| header | strategy | personalized acc | seeds | header params | gates | header bytes (per class) |",
             "|---|---|---|---|---|---|---|"]
    for (variant, name), vals in rows.items():
        a = np.array(vals) * 100
        s = sizes[variant]
        per_class = ", ".join(f"{c}: {v['bytes']}" for c, v in s.items())
        first = next(iter(s.values()))
        lines.append(f"| {variant} | {name} | {a.mean():.1f} ± {a.std():.1f} | {len(a)} | {first['params']} | "
                     f"{first['gates']} | {per_class} |")
    text = "\n".join(lines)
    print(text)
    print("searched arcs:", json.dumps(nas, indent=1))
    (args.out / "table.md").write_text(text + "\n\n```\n" + json.dumps({"nas": nas, "sizes": sizes}, indent=1)
                                       + "\n```\n")


if __name__ == "__main__":
    main()
