"""Communication benchmark (issue 5): measured bytes of a run, and the same messages at ViT-B/16 size.

Part 1 reads a run's ``summary.json``/``rounds.jsonl`` (default: run the embedded default first) and prints, per
strategy: the largest device uplink in a personalization round, one-time setup bytes, totals, and the ratios to the
two references computed in the same run (formulas printed).

Part 2 builds every message type of an ACME run in the paper's Part III setting (ViT-B/16, sub-backbone d=w=0.25,
TempCNN header with 256 channels = 1 024 gates, [CLS] statistics of ``strategy.feature_samples`` rows, 5 devices,
10 rounds, images per device from the configured partitioner on CIFAR-100's layout) with the strategy's own message
builders, and serializes them as Flower does, so the ViT-B/16 numbers are measured bytes, not arithmetic.

    python -m experiments.bench_bytes [--summary outputs/default/summary.json] [--skip-vitb | --vitb-only]
        [--json experiments/results/bytes_vitb16.json] [key=value ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from acme_flwr import protocol as P
from acme_flwr.cloud.models import create_model
from acme_flwr.comm import CENTRALIZED_FORMULA, FEDAVG_FORMULA, message_bytes
from acme_flwr.config import AcmeConfig
from acme_flwr.device.headers import create_header
from acme_flwr.partition import partition, split_clients

from .launch import REPO, launch


def measured(summary_path: Path) -> None:
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (summary_path.parent / "rounds.jsonl").read_text().splitlines()]
    print(f"run: {summary_path}")
    print(f"references: fedavg_full = {FEDAVG_FORMULA}; centralized = {CENTRALIZED_FORMULA}\n")
    head = f"{'strategy':<14}{'max up/dev/round':>17}{'setup bytes':>13}{'total bytes':>13}{'/fedavg_full':>13}" \
           f"{'/centralized':>13}{'per-round only /fedavg':>24}"
    print(head)
    print("-" * len(head))
    for name, block in summary["strategies"].items():
        ups = [r["bytes_up"] for r in rows if r["strategy"] == name and r["tier"] == "device"
               and r["phase"] == "train"]
        by = block["bytes"]
        setup = by["total"] - sum(sum(dd.values()) for r in block["rounds"] for dd in r["bytes"].values())
        fed = by["references"]["fedavg_full"]["bytes"]
        cen = by["references"]["centralized"]["bytes"]
        per_round = by["total"] - setup
        print(f"{name:<14}{max(ups, default=0):>17}{setup:>13}{by['total']:>13}{by['total'] / fed:>13.4%}"
              f"{by['total'] / cen:>13.2f}{per_round / fed:>24.4%}")


def _device_train_sizes(cfg: AcmeConfig, devices: int, per_class: int) -> list[int]:
    """Training images per device from the config's partitioner on CIFAR-100's label layout (``per_class`` each)."""
    labels = np.repeat(np.arange(100), per_class)
    p = cfg.partition
    parts = partition(p.kind, labels, devices, cfg.run.seed + 1, **p.partitioner_params())  # as FederatedData does
    # CIFAR-100 has an official test split: device test sets come from it, val is cut from the partition
    return [len(s.train) for s in split_clients(parts, p.val_fraction, 0.0, cfg.run.seed)]


def vitb_projection(devices: int = 5, rounds: int = 10, overrides: list[str] | None = None) -> dict:
    """Every message type of an ACME run at ViT-B/16 size (CIFAR-100, 100 classes), built by the strategy's own
    message builders and serialized like Flower does, and added up: discovery (query and reply), setup (sub-backbone,
    header, recipes; reply with feature statistics), and per round the train message (config), its reply
    (importance + metrics), the evaluate message (config + personalised importance) and its reply (metrics)."""
    from acme_flwr.packages import CloudPackages, Package
    from acme_flwr.strategies import AcmeStrategy
    from acme_flwr.topology import Topology

    flat = {"data.name": "cifar100", "partition.kind": "acme", "partition.category": "C2",
            "topology.num_devices": devices, "topology.num_edges": 1, "strategy.rounds": rounds,
            "model.header_channels": 256}
    for item in overrides or []:
        key, _, value = item.partition("=")
        flat[key] = value
    cfg = AcmeConfig.from_flat(flat)
    devices, rounds = cfg.topology.num_devices, cfg.strategy.rounds
    torch.manual_seed(0)
    full = create_model("vit_b16", num_labels=100)
    full_bytes = message_bytes(RecordDict({P.STD_ARRAYS: P.arrays_from_state(full.state_dict())}))
    sub = full.extract_subnet(0.25, 0.25)
    del full
    spec = {"name": "gated_temp_cnn", "in_channels": 768, "num_classes": 100, "channels": cfg.model.header_channels}
    header = create_header("gated_temp_cnn", 768, 100, channels=cfg.model.header_channels)
    pkg = Package(0.25, 0.25, sub, header, spec)
    strategy = AcmeStrategy(topology=Topology(devices, 1), deployment=CloudPackages({"c": pkg}, 0),
                            prune_per_iteration=cfg.strategy.prune_per_iteration,
                            feature_samples=cfg.strategy.feature_samples)
    gates = header.num_gates
    imp = P.vector_record(np.zeros(gates, np.float32))
    strategy.mixed, strategy.mixed_round = {0: np.zeros(gates, np.float32)}, {0: 1}
    strategy.profiles[0] = {"device-class": "c"}
    sizes = _device_train_sizes(cfg, devices, 500)
    k = cfg.strategy.feature_samples
    eval_metrics = {P.NUM_EXAMPLES: 100, "val-acc": 0.0, "val-loss": 0.0, "test-acc": 0.0, "test-loss": 0.0,
                    "pruned-gates": 0, "generic-acc": 0.0}
    train_metrics = {P.NUM_EXAMPLES: 100, "train-loss": 0.0, "train-acc": 0.0, "train-time-s": 0.0,
                     "train-compute-s": 0.0}
    profile = {"device-class": "c", "size-constraint": 0.3, "partition-id": 0, "num-train": max(sizes),
               "raw-train-bytes": max(sizes) * (32 * 32 * 3 + 1)}
    once = {
        "discovery query (down)": message_bytes(strategy.profile_query()),
        "discovery reply: profile (up)": message_bytes(RecordDict({P.PROFILE_REC: ConfigRecord(profile)})),
        "setup: sub-backbone + header + recipes (down)": message_bytes(strategy.setup_content(pkg, k)),
        f"setup reply: {k}x768 [CLS] feature statistics (up)": message_bytes(RecordDict({
            P.FEATURES: P.vector_record(np.zeros((k, 768), np.float32), "cls"),
            P.METRICS: MetricRecord({"setup": 1})})),
    }
    per_round = {
        "train message: config (down)": message_bytes(strategy.train_content(1, 0, ArrayRecord(), ConfigRecord())),
        f"train reply: importance ({gates} gates) + metrics (up)": message_bytes(RecordDict({
            P.IMPORTANCE: imp, P.METRICS: MetricRecord(train_metrics)})),
        "evaluate message: config + personalised importance (down)": message_bytes(
            strategy.evaluate_content(1, 0, ArrayRecord(), ConfigRecord())),
        "evaluate reply: metrics (up)": message_bytes(RecordDict({P.METRICS: MetricRecord(eval_metrics)})),
    }
    acme_total = devices * (sum(once.values()) + rounds * sum(per_round.values()))
    fedavg_total = 2 * rounds * devices * full_bytes
    raw_32 = sum(sizes) * (32 * 32 * 3 + 1)
    raw_224 = sum(sizes) * (224 * 224 * 3 + 1)
    print(f"\nViT-B/16, {cfg.partition.kind} {cfg.partition.category} partition of CIFAR-100's training layout: "
          f"{devices} devices ({min(sizes)}-{max(sizes)} training images each), {rounds} rounds, sub-backbone "
          f"d=w=0.25, {gates} gates; every message serialized:")
    print(f"  {'full model message (FedAvg, one direction)':<64}{full_bytes:>15,d} B")
    for label, value in once.items():
        print(f"  {label + ', once per device':<64}{value:>15,d} B")
    for label, value in per_round.items():
        print(f"  {label + ', per device per round':<64}{value:>15,d} B")
    print(f"  {'ACME total (all of the above, all devices and rounds)':<64}{acme_total:>15,d} B")
    print(f"  {'FedAvg full, same devices and rounds':<64}{fedavg_total:>15,d} B")
    print(f"  ACME / FedAvg-full = {acme_total / fedavg_total:.4%}")
    print(f"  ACME / centralized (raw 32x32 uint8 upload of the devices' training images) = {acme_total / raw_32:.2f}")
    print(f"  ACME / centralized (raw 224x224 uint8 upload) = {acme_total / raw_224:.4f}")
    return {"setting": {"devices": devices, "rounds": rounds, "partition": f"{cfg.partition.kind} "
                        f"{cfg.partition.category}", "train_images": sizes, "gates": gates, "subnet": [0.25, 0.25]},
            "full_model_message": full_bytes, "once_per_device": once, "per_device_per_round": per_round,
            "acme_total": acme_total, "fedavg_full_total": fedavg_total, "raw_32_total": raw_32,
            "raw_224_total": raw_224}


# --------------------------------------------------------------------------------------------------------------------
# What the ledger counts, and what Flower's transport moves for the same messages
# --------------------------------------------------------------------------------------------------------------------

COUNTED = ("the protobuf size of each message's content (RecordDict: every ArrayRecord, ConfigRecord and MetricRecord, "
           "arrays as their .npy bytes), summed per tier and direction; message metadata (ids, TTL, type) excluded")
TRANSPORT = ("what flwr 1.42's deployment transport sends for the same message: the message's metadata (PushMessages), "
             "its object tree (every object's 64-hex id, nested), and one PushObject request per distinct object "
             "(object id + deflated object: a text header naming its type and children's ids, then the body; an Array "
             "is one object of JSON metadata plus one ArrayChunk per 5 MiB of its .npy bytes). Not counted: the "
             "node/run/session fields of each request, gRPC/HTTP2/TLS framing, and de-duplication of objects a "
             "SuperLink already holds (identical sub-backbones sent to several devices)")


def transport_bytes(content: RecordDict, message_type: str = "train", reply: bool = False) -> dict[str, int]:
    """One message's content count (what the ledger adds) beside the bytes Flower's object-tree transport moves."""
    import time

    from flwr.app import Message, Metadata
    from flwr.app.message.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    metadata = Metadata(run_id=2**63 - 25, message_id="", src_node_id=1 if not reply else 2**63 - 7,
                        dst_node_id=2**63 - 7 if not reply else 1, reply_to_message_id="f" * 64 if reply else "",
                        group_id="10", created_at=time.time(), ttl=43200.0, message_type=message_type)
    msg = Message(metadata=metadata, content=content)
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as the grid sets it before pushing
    objects = get_all_nested_objects(msg)
    pushed = sum(PushObjectRequest(object_id=oid, object_content=bytes(obj.deflate())).ByteSize()
                 for oid, obj in objects.items())
    head = message_to_proto(remove_content_from_message(msg)).ByteSize() + get_object_tree(msg).ByteSize()
    arrays = sum(len(rec) for rec in content.array_records.values())
    return {"content": message_bytes(content), "transport": head + pushed, "objects": len(objects), "arrays": arrays}


def _acme_messages(pkg: Any, cfg: AcmeConfig, devices: int) -> dict[str, tuple[str, RecordDict, int]]:
    """Every ACME message one device sends or receives in a run, built by the strategy's own builders: label →
    (direction, content, times per run)."""
    from acme_flwr.packages import CloudPackages
    from acme_flwr.strategies import AcmeStrategy
    from acme_flwr.topology import Topology

    rounds, k = cfg.strategy.rounds, cfg.strategy.feature_samples
    strategy = AcmeStrategy(topology=Topology(devices, 1), deployment=CloudPackages({"c": pkg}, 0),
                            prune_per_iteration=cfg.strategy.prune_per_iteration, feature_samples=k)
    gates, hidden = pkg.header.num_gates, pkg.backbone.config.hidden_size
    strategy.mixed, strategy.mixed_round = {0: np.zeros(gates, np.float32)}, {0: 1}
    strategy.profiles[0] = {"device-class": "c"}
    metrics = {P.NUM_EXAMPLES: 100, "train-loss": 0.0, "train-acc": 0.0, "train-time-s": 0.0, "train-compute-s": 0.0}
    evals = {P.NUM_EXAMPLES: 100, "val-acc": 0.0, "val-loss": 0.0, "test-acc": 0.0, "test-loss": 0.0,
             "pruned-gates": 0, "generic-acc": 0.0}
    profile = {"device-class": "c", "size-constraint": 0.3, "partition-id": 0, "num-train": 300,
               "raw-train-bytes": 300 * 785}
    return {
        "discovery query": ("down", strategy.profile_query(), 1),
        "discovery reply (profile)": ("up", RecordDict({P.PROFILE_REC: ConfigRecord(profile)}), 1),
        "setup (sub-backbone + header + recipes)": ("down", strategy.setup_content(pkg, k), 1),
        "setup reply ([CLS] feature statistics)": ("up", RecordDict({
            P.FEATURES: P.vector_record(np.zeros((k, hidden), np.float32), "cls"),
            P.METRICS: MetricRecord({"setup": 1})}), 1),
        "train (config)": ("down", strategy.train_content(1, 0, ArrayRecord(), ConfigRecord()), rounds),
        "train reply (importance + metrics)": ("up", RecordDict({
            P.IMPORTANCE: P.vector_record(np.zeros(gates, np.float32)), P.METRICS: MetricRecord(metrics)}), rounds),
        "evaluate (config + personalised importance)": (
            "down", strategy.evaluate_content(1, 0, ArrayRecord(), ConfigRecord()), rounds),
        "evaluate reply (metrics)": ("up", RecordDict({P.METRICS: MetricRecord(evals)}), rounds),
        "header-averaging round (FedAvg-header: header arrays + config)": (
            "down", RecordDict({P.STD_ARRAYS: P.arrays_from_state(pkg.header.state_dict()),
                                "config": ConfigRecord({"server-round": 1})}), 0),
    }


def transport_overhead(size: str, devices: int = 9) -> dict[str, Any]:
    """Content count vs transport bytes of every ACME message at ``size`` (``fmnist``: vit_fmnist with the three
    sub-backbones the committed Fashion-MNIST run shipped; ``vitb16``: ViT-B/16's (0.25, 0.25) sub-backbone with a
    1 024-gate header, as in the paper's Part III), per message and summed over one device's run per direction."""
    from acme_flwr.packages import Package

    if size == "smoke":  # the +experiment=smoke preset's micro ViT and 8-channel header
        cfg = AcmeConfig.from_flat({"data.name": "synthetic", "model.name": "vit_micro_test", "strategy.rounds": 2,
                                    "model.header_channels": 8, "strategy.feature_samples": 20,
                                    "topology.num_devices": 4, "topology.num_edges": 2})
        model, classes, points = "vit_micro_test", 10, [(0.25, 0.5), (1.0, 1.0)]
    elif size == "fmnist":
        cfg = AcmeConfig.from_flat({"data.name": "synthetic", "model.name": "vit_fmnist", "strategy.rounds": 10,
                                    "topology.num_devices": devices, "topology.num_edges": 1})
        model, classes, points = "vit_fmnist", 10, [(0.5, 0.167), (1.0, 0.333), (0.75, 0.667)]
    elif size == "vitb16":
        cfg = AcmeConfig.from_flat({"data.name": "synthetic", "model.header_channels": 256, "strategy.rounds": 10,
                                    "topology.num_devices": devices, "topology.num_edges": 1})
        model, classes, points = "vit_b16", 100, [(0.25, 0.25)]
    else:
        raise ValueError(f"size={size!r}; allowed: smoke, fmnist, vitb16")
    torch.manual_seed(0)
    full = create_model(model, num_labels=classes)
    out: dict[str, Any] = {"model": model, "rounds": cfg.strategy.rounds, "points": {}}
    for w, d in points:
        sub = full.extract_subnet(w, d)
        hidden = sub.config.hidden_size
        spec = {"name": "gated_temp_cnn", "in_channels": hidden, "num_classes": classes,
                "channels": cfg.model.header_channels}
        header = create_header("gated_temp_cnn", hidden, classes, channels=cfg.model.header_channels)
        pkg = Package(w, d, sub, header, spec)
        per_message, totals = {}, {"down": {"content": 0, "transport": 0}, "up": {"content": 0, "transport": 0}}
        for label, (direction, content, times) in _acme_messages(pkg, cfg, devices).items():
            counted = transport_bytes(content, reply=direction == "up")
            per_message[label] = {"direction": direction, "per_run": times, **counted,
                                  "ratio": round(counted["transport"] / counted["content"], 4)}
            for key in ("content", "transport"):
                totals[direction][key] += times * counted[key]
        for direction in totals.values():
            direction["ratio"] = round(direction["transport"] / direction["content"], 4)
        out["points"][f"w={w:g} d={d:g}"] = {"params": sum(p.numel() for p in sub.parameters()),
                                             "gates": header.num_gates, "messages": per_message,
                                             "one_device_run": totals}
    return out


def print_overhead(result: dict[str, Any]) -> None:
    print(f"\n{result['model']}: content count (ledger) vs Flower transport, per message and over one device's run "
          f"({result['rounds']} rounds)")
    for point, block in result["points"].items():
        print(f"  sub-backbone {point} ({block['params']:,d} parameters, {block['gates']} gates)")
        for label, m in block["messages"].items():
            print(f"    {label:<64}{m['direction']:>5}{m['content']:>14,d}{m['transport']:>14,d}  x{m['ratio']:.3f}"
                  f"  ({m['arrays']} arrays, {m['objects']} objects)")
        for direction, t in block["one_device_run"].items():
            print(f"    {'one device, whole run, ' + direction:<69}{t['content']:>14,d}{t['transport']:>14,d}"
                  f"  x{t['ratio']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, default=None, help="summary.json of a finished run")
    parser.add_argument("--skip-vitb", action="store_true", help="skip the ViT-B/16 projection (needs ~1.5 GB RAM)")
    parser.add_argument("overrides", nargs="*", help="run-config overrides of the ViT-B/16 setting (key=value)")
    parser.add_argument("--vitb-only", action="store_true", help="only the ViT-B/16 projection (no run)")
    parser.add_argument("--json", type=Path, default=None, help="write the ViT-B/16 projection here (report input)")
    parser.add_argument("--transport", type=Path, default=None, metavar="JSON",
                        help="only measure Flower's transport bytes beside the ledger's content count at the fmnist "
                             "and ViT-B/16 sizes, and write them here (e.g. experiments/results/bytes_transport.json)")
    args = parser.parse_args()
    if args.transport:
        result = {"command": f"python -m experiments.bench_bytes --transport {args.transport}",
                  "counted": COUNTED, "transport": TRANSPORT, "flwr": importlib.metadata.version("flwr"),
                  "sizes": {size: transport_overhead(size) for size in ("smoke", "fmnist", "vitb16")}}
        for block in result["sizes"].values():
            print_overhead(block)
        args.transport.parent.mkdir(parents=True, exist_ok=True)
        args.transport.write_text(json.dumps(result, indent=1) + "\n")
        return
    if not args.vitb_only:
        measured(args.summary or launch(REPO / "outputs" / "bench_bytes", 10, []))
    if not args.skip_vitb:
        result = vitb_projection(overrides=args.overrides)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"command": "python -m experiments.bench_bytes --vitb-only --json "
                                             f"{args.json}", **result}, indent=1))


if __name__ == "__main__":
    main()
