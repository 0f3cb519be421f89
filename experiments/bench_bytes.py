"""Communication benchmark (issue 5): measured bytes of a run, and the same messages at ViT-B/16 size.

Part 1 reads a run's ``summary.json``/``rounds.jsonl`` (default: run the embedded default first) and prints, per
strategy: the largest device uplink in a personalization round, one-time setup bytes, totals, and the ratios to the
two references computed in the same run (formulas printed).

Part 2 builds the real ACME messages for the paper's Part III setting (ViT-B/16, sub-backbone d=w=0.25, TempCNN
header with 256 channels = 1 024 gates, 200×768 [CLS] statistics, 5 devices, 10 rounds) and serializes them with
the same function the strategies use, so the ViT-B/16 numbers are measured bytes, not arithmetic.

    python -m experiments.bench_bytes [--summary outputs/default/summary.json] [--skip-vitb]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict

from acme_flwr import protocol as P
from acme_flwr.cloud.models import create_model
from acme_flwr.comm import CENTRALIZED_FORMULA, FEDAVG_FORMULA, message_bytes
from acme_flwr.device.headers import create_header

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


def vitb_projection(devices: int = 5, rounds: int = 10) -> None:
    """Serialize ACME's messages at ViT-B/16 size (CIFAR-100, 100 classes) and add them up."""
    torch.manual_seed(0)
    full = create_model("vit_b16", num_labels=100)
    full_bytes = message_bytes(RecordDict({P.STD_ARRAYS: P.arrays_from_state(full.state_dict())}))
    sub = full.extract_subnet(0.25, 0.25)
    header = create_header("gated_temp_cnn", 768, 100, channels=256)
    setup = message_bytes(RecordDict({
        P.BACKBONE: P.arrays_from_state(sub.state_dict()), P.HEADER: P.arrays_from_state(header.state_dict()),
        P.CONFIG: ConfigRecord({"tag": "acme", "backbone-arch": json.dumps(sub.arch()), "header-spec": "{}"})}))
    features = message_bytes(RecordDict({P.FEATURES: P.vector_record(np.zeros((200, 768), np.float32), "cls")}))
    importance = message_bytes(RecordDict({P.IMPORTANCE: P.vector_record(np.zeros(header.num_gates, np.float32))}))
    del full
    acme_total = devices * (setup + features + rounds * 2 * importance)
    fedavg_total = 2 * rounds * devices * full_bytes
    raw_32 = devices * 1250 * (32 * 32 * 3 + 1)
    raw_224 = devices * 1250 * (224 * 224 * 3 + 1)
    print(f"\nViT-B/16 Part III setting ({devices} devices, {rounds} rounds, d=w=0.25, 1 024 gates), serialized:")
    for label, value in [("full model message (FedAvg, one direction)", full_bytes),
                         ("setup: sub-backbone + header (once)", setup), ("feature statistics (once)", features),
                         ("importance (per device, per direction, per round)", importance),
                         ("ACME total", acme_total), ("FedAvg full, same devices and rounds", fedavg_total)]:
        print(f"  {label:<52}{value:>15,d} B")
    print(f"  ACME / FedAvg-full = {acme_total / fedavg_total:.4%}")
    print(f"  ACME / centralized (raw 32x32 uint8 upload, 1 250 images/device) = {acme_total / raw_32:.2f}")
    print(f"  ACME / centralized (raw 224x224 uint8 upload) = {acme_total / raw_224:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, default=None, help="summary.json of a finished run")
    parser.add_argument("--skip-vitb", action="store_true", help="skip the ViT-B/16 projection (needs ~1.5 GB RAM)")
    args = parser.parse_args()
    summary = args.summary or launch(REPO / "outputs" / "bench_bytes", 10, ["topology.num_devices=10"])
    measured(summary)
    if not args.skip_vitb:
        vitb_projection()


if __name__ == "__main__":
    main()
