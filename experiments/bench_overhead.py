"""Overhead benchmark (issues 5, 11): device training throughput inside the Flower runtime vs a plain PyTorch loop,
without and with the frozen-feature cache, in one session.

Runs ACME alone through ``flwr run`` three times (Ray): "before" with ``run.feature_cache_mb=0`` (every message
rebuilds the sub-backbone from ``context.state`` and recomputes its token grids, as the handlers did before the cache)
and "after" with the cache on, both with 1 CPU per client (one worker per core), then "after" again with one worker
that has the machine to itself, as the plain loop has. Each device's ``train-time-s`` is measured inside the
``train.acme`` handler (message in to reply built: state decoding, model rebuild, features, training, reply encoding).
Then, in this process, it trains the same devices' headers on the same sub-backbones with the same hyper-parameters in
two plain loops (one thread, as each Ray worker has): grids recomputed every round (what ``train_header`` alone does)
and grids computed once per device (the header's cost only: the floor), alone and as two loops side by side in two
processes (as two Ray workers share the two cores). Ratios from this one run are printed;
target: handler throughput >= 0.9 x plain throughput at 1 local epoch. It also measures what keeping the grids in
``context.state`` instead would cost: their serialized size and encode + decode time per message, against the rest of
the state.

    python -m experiments.bench_overhead [--preset fmnist|default] [--rounds 3] [--devices 10]
    python -m experiments.bench_overhead --preset default --whole-run   # `make run`'s whole run, cache off vs on

``--preset fmnist`` (default when the Fashion-MNIST files are installed) uses ``+experiment=fmnist`` with
``cloud.enabled=false cloud.header_epochs=1``: the overhead depends on the shapes, not on trained weights, so the
~20 min cloud stage is skipped and every device gets the full vit_fmnist backbone (the most expensive sub-net).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.cloud.models import input_shape
from acme_flwr.comm import message_bytes
from acme_flwr.config import AcmeConfig
from acme_flwr.device.training import TrainHParams, backbone_grids, train_header
from acme_flwr.packages import build_packages
from acme_flwr.runtime import cache_dir
from acme_flwr.task import federated_data
from acme_flwr.topology import device_profile

from .launch import REPO, launch

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
PRESETS = {"fmnist": ["+experiment=fmnist", "cloud.enabled=false", "cloud.header_epochs=1"], "default": []}


def _flower(out: Path, devices: int, overrides: list[str], client_cpus: int = 1) -> dict[str, Any]:
    """One ``flwr run`` of ACME; the handlers' train timings and the run's wall time."""
    started = time.perf_counter()
    summary = json.loads(launch(out, devices, overrides, client_cpus=client_cpus).read_text())
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r["tier"] == "device" and r["phase"] == "train"]
    later = [r for r in dev if r["round"] > 1]  # the grids were computed in round 1 (on the worker that served it)
    return {"config": summary["config"], "wall": wall, "time": sum(r["train-time-s"] for r in dev),
            "later_time": sum(r["train-time-s"] for r in later),
            "later_examples": sum(r["num-examples"] for r in later),
            "compute": sum(r["train-compute-s"] for r in dev), "examples": sum(r["num-examples"] for r in dev),
            "rounds_wall": sum(r["wall_time"] for r in rows if r["tier"] == "cloud" and r["phase"] == "train")}


def _setup(config: dict[str, Any]) -> tuple[AcmeConfig, Any, Any, TrainHParams]:
    """The plain loops' config, data, packages (from the cloud cache) and hyper-parameters, on one thread."""
    torch.set_num_threads(1)
    cfg = AcmeConfig.from_dict(config)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, cache_dir(cfg), progress=False)
    s = cfg.strategy
    hp = TrainHParams(lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, batch_size=s.batch_size,
                      local_epochs=s.local_epochs, accumulation=s.importance_accumulation)
    return cfg, data, deployment, hp


def _package(cfg: AcmeConfig, deployment: Any, pid: int) -> Any:
    return deployment.for_class(device_profile(pid, cfg.device_classes).device_class)


def _once(pkg: Any, device: Any, hp: TrainHParams, rounds: int) -> tuple[list[int], list[float], torch.Tensor]:
    """The floor's loop on one device: grids once, then the header's cost only; each round's examples and seconds
    (the first round's include computing the grids) and the grids."""
    header = copy.deepcopy(pkg.header)
    examples, seconds = [], []
    t0 = time.perf_counter()
    grids = backbone_grids(pkg.backbone, device.train.x)
    for rnd in range(1, rounds + 1):
        examples.append(int(train_header(None, header, device.train, hp, seed=rnd, grids=grids)[0]["num_examples"]))
        seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return examples, seconds, grids


def _plain_once(config: dict[str, Any], pids: list[int], rounds: int) -> tuple[int, float]:
    """The floor's loop on ``pids`` in a process of its own: examples and seconds."""
    cfg, data, deployment, hp = _setup(config)
    parts = [_once(_package(cfg, deployment, pid), data.device(pid), hp, rounds)[:2] for pid in pids]
    return sum(sum(e) for e, _ in parts), sum(sum(t) for _, t in parts)


def side_by_side(config: dict[str, Any], devices: int, rounds: int, workers: int) -> float:
    """The floor's throughput with ``workers`` loops running at once, one per core, as the Ray workers run:
    examples over the summed per-device time, the same definition as the handlers' throughput."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_plain_once, [config] * workers,
                              [list(range(devices))[i::workers] for i in range(workers)], [rounds] * workers))
    return sum(e for e, _ in parts) / sum(t for _, t in parts)


def _write(args: argparse.Namespace, flags: str, fields: dict[str, Any]) -> None:
    """With ``--json``: the result file the report reads, with the command that wrote it, the date and the preset."""
    if args.json:
        command = f"python -m experiments.bench_overhead --preset {args.preset}{flags} --json {args.json}"
        args.json.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d"),
                                         "preset": args.preset, **fields}, indent=1) + "\n")


def whole_run(args: argparse.Namespace) -> None:
    """The preset's whole run as configured (every strategy, its devices and rounds: ``make run`` for ``default``),
    feature cache off then on, one session: the wall-time ratio a user sees."""
    runs = {}
    for key, extra in (("off", ["run.feature_cache_mb=0"]), ("on", [])):
        started = time.perf_counter()
        summary = json.loads(launch(args.out / f"whole-{key}", None, [*PRESETS[args.preset], *extra]).read_text())
        runs[key] = {"wall": time.perf_counter() - started, "serverapp": summary["wall_time_s"]}
    ratio = runs["on"]["wall"] / runs["off"]["wall"]
    print(f"\n[{args.preset}] whole run as configured, one session: feature cache off {runs['off']['wall']:.1f} s "
          f"(ServerApp {runs['off']['serverapp']:.1f} s), on {runs['on']['wall']:.1f} s (ServerApp "
          f"{runs['on']['serverapp']:.1f} s): on / off = {ratio:.3f}")
    _write(args, " --whole-run", {
        "wall_cache_off_s": runs["off"]["wall"], "wall_cache_on_s": runs["on"]["wall"],
        "serverapp_cache_off_s": runs["off"]["serverapp"], "serverapp_cache_on_s": runs["on"]["serverapp"],
        "wall_on_over_off": ratio})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fmnist" if FMNIST.exists() else "default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "overhead")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios here (for the report)")
    parser.add_argument("--whole-run", action="store_true",
                        help="time the preset's whole run as configured, cache off vs on (no plain loops)")
    args = parser.parse_args()
    if args.whole_run:
        whole_run(args)
        return
    common = [*PRESETS[args.preset], "strategy.names=acme", f"strategy.rounds={args.rounds}",
              f"topology.num_devices={args.devices}", f"strategy.local_epochs={args.local_epochs}"]
    before = _flower(args.out / "before", args.devices, [*common, "run.feature_cache_mb=0"])
    after = _flower(args.out / "after", args.devices, common)
    # one Ray worker with the machine to itself, as the plain loop below has it: the handler's own cost per message
    alone = _flower(args.out / "one-worker", args.devices, common, client_cpus=accel.cores())

    cfg, data, deployment, hp = _setup(after["config"])
    t_recompute = t_once = t_later = 0.0
    examples = later_examples = 0
    state_bytes = grid_bytes = 0
    t_state = 0.0
    for pid in range(args.devices):
        pkg = _package(cfg, deployment, pid)
        device = data.device(pid)
        header = copy.deepcopy(pkg.header)
        for rnd in range(1, args.rounds + 1):  # plain loop 1: train_header computes the grids every round
            t0 = time.perf_counter()
            metrics, _ = train_header(pkg.backbone, header, device.train, hp, seed=rnd)
            t_recompute += time.perf_counter() - t0
            examples += int(metrics["num_examples"])
        per_round, seconds, grids = _once(pkg, device, hp, args.rounds)  # plain loop 2: grids once per device
        t_once += sum(seconds)
        t_later += sum(seconds[1:])
        later_examples += sum(per_round[1:])
        # the alternative of keeping the grids in context.state: serialized with every message
        state = P.arrays_from_state({**pkg.backbone.state_dict(), **pkg.header.state_dict()})
        state_bytes += message_bytes(RecordDict({"s": state}))
        t0 = time.perf_counter()
        rec = P.arrays_from_state({"grids": grids})  # encode (as context.state would hold it), serialize, decode
        grid_bytes += message_bytes(RecordDict({"grids": rec}))
        torch.from_numpy(np.array(rec["grids"].numpy(), copy=True))
        t_state += time.perf_counter() - t0

    plain_re, plain_once = examples / t_recompute, examples / t_once
    workers = min(accel.cores(), args.devices)  # the run's Ray workers: one per core (1 CPU per client)
    plain_pair = side_by_side(after["config"], args.devices, args.rounds, workers)
    tput = {k: r["examples"] / r["time"] for k, r in (("before", before), ("after", after))}
    print(f"\n[{args.preset}] device training, {args.devices} devices x {args.rounds} rounds x {args.local_epochs} "
          f"local epoch(s) ({after['examples']} examples per run), one session:")
    print(f"  plain loop, grids every round (train_header): {plain_re:10.1f} examples/s")
    print(f"  plain loop, grids once per device:            {plain_once:10.1f} examples/s")
    print(f"  plain loop, grids once, {workers} loops side by side: {plain_pair:10.1f} examples/s   "
          "(as the handlers' workers share the machine)")
    for k, r in (("before", before), ("after", after)):
        print(f"  handler {k:6s} (feature cache {'off' if k == 'before' else 'on '}):  {tput[k]:10.1f} examples/s   "
              f"ratio / plain-every-round {tput[k] / plain_re:.3f}   / plain-once {tput[k] / plain_once:.3f}   "
              f"training share of handler time {r['compute'] / r['time']:.3f}")
    print(f"  handler throughput after / before = {tput['after'] / tput['before']:.3f}   (target after / plain >= 0.9)")
    print(f"  handler after / plain side by side = {tput['after'] / plain_pair:.3f}")
    one = alone["examples"] / alone["time"]
    print(f"  handler after, one Ray worker alone:      {one:10.1f} examples/s   / plain-once (alone too) "
          f"{one / plain_once:.3f}")
    later = {"handler": after["later_examples"] / after["later_time"] if after["later_time"] else float("nan"),
             "plain": later_examples / t_later if t_later else float("nan")}
    print(f"  rounds 2..{args.rounds} only (grids already computed by a worker of this machine): "
          f"handler {later['handler']:.1f} examples/s, plain-once {later['plain']:.1f} examples/s, "
          f"ratio {later['handler'] / later['plain']:.3f}")
    print(f"  whole flwr run wall time after / before = {after['wall'] / before['wall']:.3f} "
          f"({after['wall']:.1f} s vs {before['wall']:.1f} s); train rounds {after['rounds_wall']:.1f} s vs "
          f"{before['rounds_wall']:.1f} s")
    _write(args, "", {
        "devices": args.devices, "rounds": args.rounds,
        "local_epochs": args.local_epochs, "plain_every_round": plain_re, "plain_once": plain_once,
        "handler_before": tput["before"], "handler_after": tput["after"],
        "after_over_plain_once": tput["after"] / plain_once, "plain_side_by_side": plain_pair,
        "side_by_side_workers": workers, "after_over_plain_side_by_side": tput["after"] / plain_pair,
        "wall_after_over_before": after["wall"] / before["wall"],
        "handler_after_later_rounds": later["handler"], "plain_once_later_rounds": later["plain"],
        "later_rounds_ratio": later["handler"] / later["plain"],
        "handler_one_worker": one, "one_worker_over_plain_once": one / plain_once,
        "grid_state_mb_per_message": grid_bytes / args.devices / 1e6})
    print(f"  grids in context.state instead: +{grid_bytes / args.devices / 1e6:.2f} MB per device and message "
          f"(the state already holds {state_bytes / args.devices / 1e6:.2f} MB), "
          f"{t_state / args.devices * 1e3:.1f} ms encode + decode per message")


if __name__ == "__main__":
    main()
