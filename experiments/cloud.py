"""Run the cloud tier alone: elastic backbone + sub-net accuracy table on the embedded digits data.

    python -m experiments.cloud --model vit_tiny_digits
    python -m experiments.cloud --compare-distillation     # sub-net surfaces after each stage, teacher vs none

The comparison fine-tunes one teacher, then runs the width and depth stages twice from it: with distillation
(DynaBERT losses) and without a teacher (plain CE per sub-net, same re-ordering), and prints the validation accuracy
of every sub-net after each stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acme_flwr.cloud.models import create_model, list_models
from acme_flwr.cloud.stages import AccuracyTable, CloudStageConfig, build_elastic_backbone, subnet_accuracy_table

logger = logging.getLogger("experiments.cloud")

Split = tuple[torch.Tensor, torch.Tensor]


def load_digits_splits(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict[str, Split]:
    """scikit-learn digits as float (N, 1, 8, 8) in [0, 1], stratified train/val/test splits."""
    from sklearn.model_selection import train_test_split

    try:
        from acme_flwr.data import load_dataset

        data = load_dataset("digits", seed=seed)
        images, labels = data.images[..., 0].astype(np.float32) / 255.0, data.labels
    except ImportError:  # the lead's data module is optional here
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images.astype(np.float32) / 16.0, bunch.target
    images = np.clip(images, 0.0, 1.0)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
    )
    x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    return {name: (x[i], y[i]) for name, i in (("train", train), ("val", val), ("test", test))}


def format_surfaces(surfaces: dict[str, AccuracyTable]) -> str:
    """One row per (depth, width), one column per surface, plus the mean over sub-nets."""
    names = list(surfaces)
    keys = [(d, w) for d, w, _ in next(iter(surfaces.values()))]
    lookup = {n: {(d, w): a for d, w, a in t} for n, t in surfaces.items()}
    width = max(12, *(len(n) + 2 for n in names))
    lines = ["depth width " + "".join(f"{n:>{width}}" for n in names)]
    for d, w in keys:
        lines.append(f"{d:5.2f} {w:5.2f} " + "".join(f"{lookup[n][(d, w)]:>{width}.4f}" for n in names))
    lines.append("mean        " + "".join(f"{np.mean(list(lookup[n].values())):>{width}.4f}" for n in names))
    return "\n".join(lines)


def run_cloud(args: argparse.Namespace, cfg: CloudStageConfig, splits: dict[str, Split]) -> dict[str, Any]:
    """The cloud stage as a run would execute it: build (or load from cache) and report the tables."""
    torch.manual_seed(cfg.seed)
    model = create_model(args.model)
    model, table, log = build_elastic_backbone(
        model, splits["train"], splits["val"], cfg, cache_dir=args.cache_dir, progress=not args.no_progress
    )
    test_table = subnet_accuracy_table(model, *splits["test"], cfg.widths, cfg.depths)
    surfaces = {f"after {s}": log[s]["table"] for s in cfg.stages if "table" in log[s]}
    print(format_surfaces({**surfaces, "final val": table, "final test": test_table}))
    return {"table": table, "test_table": test_table, "stage_seconds": {s: log[s]["seconds"] for s in cfg.stages}}


def compare_distillation(
    model_name: str, cfg: CloudStageConfig, splits: dict[str, Split], cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, AccuracyTable]:
    """Sub-net accuracy surfaces after each stage, with the DynaBERT teacher and without any teacher.

    Both arms start from the same fine-tuned teacher and use the same re-ordering; only the losses differ.
    """
    torch.manual_seed(cfg.seed)
    base = create_model(model_name)
    teacher_cfg = _replace(cfg, stages=["teacher"])
    base, teacher_table, _ = build_elastic_backbone(
        base, splits["train"], splits["val"], teacher_cfg, cache_dir=cache_dir, progress=progress
    )
    surfaces: dict[str, AccuracyTable] = {"teacher": teacher_table}
    for arm, distill in (("distill", True), ("no-teacher", False)):
        arm_cfg = _replace(cfg, stages=["width", "depth"], distill=distill, faithful=False)
        start = time.perf_counter()
        _, _, log = build_elastic_backbone(
            copy.deepcopy(base), splits["train"], splits["val"], arm_cfg, cache_dir=cache_dir, progress=progress
        )
        logger.info("%s arm: %.1f s", arm, time.perf_counter() - start)
        surfaces[f"{arm}:width"] = log["width"]["table"]
        surfaces[f"{arm}:depth"] = log["depth"]["table"]
    print(format_surfaces(surfaces))
    return surfaces


def _replace(cfg: CloudStageConfig, **changes: Any) -> CloudStageConfig:
    return CloudStageConfig(**{**cfg.to_dict(), "table_each_stage": True, **changes})


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_digits", choices=list_models())
    p.add_argument("--stages", default="teacher,width,depth")
    p.add_argument("--widths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--depths", default="1.0,0.75,0.5,0.25")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--width-epochs", type=int, default=10)
    p.add_argument("--depth-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--faithful", action="store_true", help="reproduce the shipped code (no teacher, plain CE)")
    p.add_argument("--no-distill", action="store_true", help="keep re-ordering, drop the teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compare-distillation", action="store_true")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    cfg = CloudStageConfig(
        stages=[s for s in args.stages.split(",") if s], widths=_floats(args.widths), depths=_floats(args.depths),
        teacher_epochs=args.teacher_epochs, width_epochs=args.width_epochs, depth_epochs=args.depth_epochs,
        lr=args.lr, teacher_lr=args.teacher_lr, batch_size=args.batch_size, faithful=args.faithful,
        distill=not args.no_distill, seed=args.seed, max_steps=args.max_steps,
    )
    splits = load_digits_splits(args.seed)
    if args.compare_distillation:
        result: dict[str, Any] = {
            "surfaces": compare_distillation(args.model, cfg, splits, args.cache_dir, not args.no_progress)
        }
    else:
        result = run_cloud(args, cfg, splits)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
