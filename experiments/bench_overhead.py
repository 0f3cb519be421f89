"""Overhead benchmark (issue 5): device training throughput inside the Flower runtime vs a plain PyTorch loop.

Runs ACME alone through ``flwr run`` (Ray, 1 CPU per client) and reads each device's ``train-time-s`` (measured
inside the ``train.acme`` handler, from message in to reply built: state deserialization, model rebuild, data,
training) and its example count. Then, in this process, it trains the same devices' headers on the same
sub-backbones with the same hyper-parameters in a plain loop (one thread, as each Ray worker has). Ratios from one
run are printed; target: handler throughput ≥ 0.9 × plain throughput.

    python -m experiments.bench_overhead [--rounds 3] [--devices 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.device.training import TrainHParams, train_header
from acme_flwr.packages import build_packages
from acme_flwr.runtime import cache_dir
from acme_flwr.task import federated_data
from acme_flwr.topology import device_profile

from .launch import REPO, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "overhead")
    args = parser.parse_args()
    overrides = ["strategy.names=acme", f"strategy.rounds={args.rounds}", f"topology.num_devices={args.devices}",
                 f"strategy.local_epochs={args.local_epochs}"]
    summary_path = launch(args.out, args.devices, overrides)
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (args.out / "rounds.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r["tier"] == "device" and r["phase"] == "train"]
    flower_time = sum(r["train-time-s"] for r in dev)
    flower_compute = sum(r["train-compute-s"] for r in dev)
    flower_examples = sum(r["num-examples"] for r in dev)
    round_wall = sum(r["wall_time"] for r in rows if r["tier"] == "cloud" and r["phase"] == "train")

    torch.set_num_threads(1)
    cfg = AcmeConfig.from_dict(summary["config"])
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, cache_dir(cfg), progress=False)
    s = cfg.strategy
    hp = TrainHParams(lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, batch_size=s.batch_size,
                      local_epochs=s.local_epochs, accumulation=s.importance_accumulation)
    plain_time, plain_examples = 0.0, 0
    for pid in range(args.devices):
        pkg = deployment.for_class(device_profile(pid, cfg.device_classes).device_class)
        header = copy.deepcopy(pkg.header)
        device = data.device(pid)
        for rnd in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            metrics, _ = train_header(pkg.backbone, header, device.train, hp, seed=rnd)
            plain_time += time.perf_counter() - t0
            plain_examples += int(metrics["num_examples"])

    flower_tput = flower_examples / flower_time
    plain_tput = plain_examples / plain_time
    print(f"\ndevice training, {args.devices} devices x {args.rounds} rounds ({flower_examples} examples):")
    print(f"  inside Flower (train.acme handler, Ray worker): {flower_tput:10.1f} examples/s")
    print(f"  plain PyTorch loop, same model and batches:      {plain_tput:10.1f} examples/s")
    print(f"  ratio handler / plain = {flower_tput / plain_tput:.3f}   (target >= 0.9)")
    print(f"  of the handler time, training itself (train_header) is {flower_compute / flower_time:.3f}; the rest "
          "is message decoding, model rebuild from context.state and reply encoding")
    print(f"  training alone inside Flower vs plain loop: {plain_time / flower_compute:.3f} (< 1: the two Ray workers "
          "share 2 cores with the SuperLink, ServerApp and Ray; the plain loop ran alone)")
    print(f"  whole train rounds (send, 2 workers, receive, aggregate): {round_wall:.2f} s wall for "
          f"{plain_time:.2f} s of plain compute -> round efficiency {plain_time / 2 / round_wall:.3f} "
          "(1.0 = both cores busy with training only)")


if __name__ == "__main__":
    main()
