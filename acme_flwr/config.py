"""The one typed configuration schema of acme-flwr, with validation.

Two front doors build it: ``[tool.flwr.app.config]`` (flat dotted keys such as ``partition.alpha``, scalars only,
lists as comma-separated strings) via :meth:`AcmeConfig.from_flat`, and Hydra's ``conf/`` groups (nested mappings)
via :meth:`AcmeConfig.from_dict`. Both end in :meth:`AcmeConfig.validate`, which stops a run before any work with a
message naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from acme_flwr.errors import ConfigError as ConfigError  # re-exported: the schema's error


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> dict[str, Any]:
    return {"range": (low, high, low_open)}


class _DeviceChoices(tuple):
    """``run.device`` values: auto, cpu, cuda or cuda:N (checked without touching CUDA)."""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        head, sep, index = value.partition(":")
        return value in ("auto", "cpu", "cuda") or (head == "cuda" and bool(sep) and index.isdigit())


def _registry(kind: str, *, with_argument: bool = False) -> dict[str, Any]:
    """A name looked up in a registry (:mod:`acme_flwr.registry`): its allowed values are what is registered there."""
    return {"registry": kind, "with_argument": with_argument}


@dataclass
class RunSection:
    """Run identity and outputs."""

    seed: int = field(default=0, metadata={"doc": "Seeds data splits, partitions, model init and local training: the "
                                                  "same seed gives the same metrics."})
    out_dir: str = field(default="", metadata={"doc": "Output directory; use an absolute path (the ServerApp runs in "
                                                      "the SuperLink's cwd). Empty: `./outputs/<run.name>`."})
    name: str = field(default="default", metadata={"doc": "Run name (used for the default output directory)."})
    resume: bool = field(default=False, metadata={"doc": "Continue an interrupted run from the checkpoints in "
                                                         "`run.out_dir` (same config required) instead of starting "
                                                         "over."})
    on_lost_devices: str = field(default="warn", metadata={
        **_choices("warn", "fail", "resume"),
        "doc": "A strategy that lost devices (never discovered, or silent in its last round) is reported as DEGRADED "
               "in the summary and the table. `warn`: the run still succeeds, with a warning; `fail`: it exits "
               "non-zero (the launcher with status 3); `resume`: as `warn`, except that devices lost to a dead "
               "simulation worker (a Ray `ClientAppActor` killed or out of memory; Flower never replaces it) stop "
               "the run at once, before the damaged round is checkpointed, and the launcher "
               "(`python -m experiments.launch`) resumes it from the last complete round in a fresh simulation, up "
               "to `run.max_restarts` times: the finished run equals an uninterrupted one and its summary lists the "
               "deaths under `restarts`. Run with `flwr run` directly, the run stops with a `WorkerDied` error and "
               "can be resumed with `run.resume=true`."})
    max_restarts: int = field(default=3, metadata={
        **_range(0, None),
        "doc": "With `run.on_lost_devices=resume`: how many times the launcher resumes a run after a dead worker. "
               "One more death fails the launch (exit status 1, the error names the strategy, round and worker); "
               "the checkpoints stay at the last complete round, so `run.resume=true` can still continue it."})
    device: str = field(default="auto", metadata={
        "choices": _DeviceChoices(("auto", "cpu", "cuda", "cuda:N")),
        "doc": "Where every stage computes (cloud stages, edge search, devices' header training and evaluation): "
               "`auto` is the first CUDA device when one is visible, else the CPU. Wire messages are always CPU "
               "arrays."})
    precision: str = field(default="fp32", metadata={**_choices("fp32", "bf16"),
                                                     "doc": "`bf16`: autocast where the device supports it."})
    client_gpus: float = field(default=0.25, metadata={
        **_range(0.0, 1.0, low_open=True),
        "doc": "GPU share of one simulated device (Ray's `client-resources-num-gpus`) when the run uses CUDA; "
               "ignored on a CPU-only machine."})
    feature_cache_mb: int = field(default=1024, metadata={
        **_range(0, None),
        "doc": "MiB of frozen-backbone token grids a device process keeps between messages (LRU), and in Ray "
               "simulation the bound of the files its workers share; 0: recompute them on every message."})
    threads: int = field(default=2, metadata={**_range(0, None), "doc": (
        "Intra-op CPU threads of the cloud's backbone stages (teacher, width and depth distillation). A fixed number, "
        "not the machine's core count: float sums are split by thread count, so the trained backbone (and every "
        "number downstream) differs between thread counts, while one machine and setting is bit-identical. Part of "
        "the cloud stage's cache key and recorded in config.json (``provenance``). The default 2 is what the "
        "published results used (2-core machines); 0 = every core this process may run on (fastest, reproducible "
        "only on machines with that many cores). The ServerApp's own work and each ClientApp run on 1 thread.")})


@dataclass
class DataSection:
    """Which data set, where it lives, and how much of it the cloud keeps for backbone training."""

    name: str = field(default="digits", metadata={
        **_registry("dataset"),
        "doc": "Registered data set: `digits` (embedded, scikit-learn), `synthetic`, `cifar100` (a local torchvision "
               "copy), `fashion_mnist` (four IDX files), `imagefolder`."})
    root: str = field(default="", metadata={
        "doc": "Local directory of a real data set (`cifar100`, `fashion_mnist`, `imagefolder`); never downloaded. "
               "Empty for `fashion_mnist`: `/usr/share/datasets/fashion-mnist`."})
    cloud_fraction: float = field(default=0.3, metadata={
        **_range(0.0, 0.9),
        "doc": "Stratified share of the training pool the cloud keeps for backbone training (disjoint from every "
               "device's data)."})
    generic_test_fraction: float = field(default=0.1, metadata={
        **_range(0.0, 0.5, low_open=True),
        "doc": "Class-balanced held-out \"generic\" evaluation set (`FederatedData.generic_test`) that no choice "
               "ever uses: this share of the rarest class, per class, from the official test split if any, else from "
               "the pool."})
    synthetic_classes: int = field(default=10, metadata={**_range(2, None),
                                                         "doc": "Number of classes of the `synthetic` data set."})
    synthetic_samples: int = field(default=600, metadata={**_range(10, None),
                                                          "doc": "Number of images of the `synthetic` data set."})


@dataclass
class PartitionSection:
    """How the device pool is split across devices, and each device's train/val/test split."""

    kind: str = field(default="dirichlet", metadata={
        **_registry("partitioner"),
        "doc": "Registered partitioner (flwr-datasets' partitioners behind the names wherever one exists). Label "
               "skew: `iid`, `dirichlet` (by `partition.alpha`), `pathological` (#C=k: "
               "`partition.classes_per_client` classes each), `shard` (`partition.shards_per_client` label-sorted "
               "shards each), `acme` (ACME's IID/C2/C3/C4 class lists, own code). Quantity skew, labels IID: "
               "`linear` / `square` / `exponential` (device i of 1..N gets a share proportional to i, i^2, e^i), "
               "`quantity_dirichlet` (sizes ~ Dir(`partition.beta`)). Feature skew is `partition.feature`, over "
               "any kind."})
    alpha: float = field(default=0.5, metadata={**_range(0.0, None, low_open=True),
                                                "doc": "Dirichlet concentration (smaller: more skewed)."})
    classes_per_client: int = field(default=2, metadata={**_range(1, None),
                                                         "doc": "Classes per device for `pathological`."})
    category: str = field(default="C2", metadata={**_choices("IID", "C2", "C3", "C4"),
                                                  "doc": "ACME's class-list category for `acme`."})
    per_class_fraction: float = field(default=0.1, metadata={
        **_range(0.0, 1.0, low_open=True),
        "doc": "Share of each owned class a device draws for `acme` (the original's 0.1)."})
    min_size: int = field(default=10, metadata={
        **_range(1, None), "doc": "Minimum samples per device for `dirichlet` and `quantity_dirichlet`."})
    val_fraction: float = field(default=0.15, metadata={**_range(0.0, 0.5, low_open=True),
                                                        "doc": "Each device's validation share of its partition."})
    test_fraction: float = field(default=0.2, metadata={
        **_range(0.0, 0.5, low_open=True),
        "doc": "Each device's test share of its partition (when its test set is cut from the partition)."})
    test_source: str = field(default="auto", metadata={
        **_choices("auto", "official", "partition"),
        "doc": "Where device test sets come from: `official`, the data set's official test split following each "
               "device's train label distribution; `partition`, cut from the device's partition (disjoint from every "
               "device's training data); `auto`, official where the data set has one (`cifar100`, "
               "`fashion_mnist`)."})
    max_samples: int = field(default=0, metadata={
        **_range(0, None),
        "doc": "At most this many images per device (its train + val pool, drawn uniformly from its partition; the "
               "test set follows the result unless `partition.test_samples` is set): devices with a few hundred "
               "images, as in cross-device FL. For the quantity-skew kinds the pool shrinks to this many per device "
               "on average instead, so the size law still holds. 0: the whole partition."})
    shards_per_client: int = field(default=2, metadata={**_range(1, None), "doc": (
        "kind=shard: label-sorted shards per device (flwr-datasets' ShardPartitioner, McMahan et al.).")})
    class_assignment: str = field(default="first-deterministic", metadata={
        **_choices("first-deterministic", "random", "deterministic"), "doc": (
            "kind=pathological: how flwr-datasets' PathologicalPartitioner assigns the classes_per_client classes "
            "to devices; first-deterministic (device p's first class is p mod #classes, the rest random) is "
            "NIID-Bench's.")})
    beta: float = field(default=0.5, metadata={**_range(0.0, None, low_open=True), "doc": (
        "kind=quantity_dirichlet: device sizes ~ Dir(beta) (NIID-Bench's quantity skew; smaller is more "
        "skewed), each at least min_size, labels IID.")})
    feature: str = field(default="none", metadata={**_registry("feature_shift"), "doc": (
        "Feature skew applied per device, alike to its train, val and test images and never to the cloud's: "
        "none; noise (device i of N adds Gaussian noise of std noise_sigma*i/N to its normalised images, "
        "NIID-Bench); rotation (IFCA-style domain shift: devices in rotation_groups domains, domain g rotated by "
        "g*360/rotation_groups degrees). Combine with any kind, e.g. kind=dirichlet feature=rotation (mixed).")})
    noise_sigma: float = field(default=0.1, metadata={**_range(0.0, None), "doc": (
        "feature=noise: the noise level sigma (on the model's normalised input scale).")})
    rotation_groups: int = field(default=4, metadata={**_range(1, None), "doc": (
        "feature=rotation: number of domains R; domain g sees its images rotated by g*360/R degrees.")})
    domain_assignment: str = field(default="paired", metadata={**_registry("domain_assignment"), "doc": (
        "feature=rotation: which domain each device gets. paired (default): inside every mixing group (the "
        "devices of one edge with the same device class, i.e. the same package) devices take domains two by "
        "two, the group's starting domain shifted per group, so every group of >= 4 devices has at least two "
        "devices of each of at least two domains; round_robin: domain = partition-id mod R; by_edge: domain = "
        "edge mod R (domain-pure edges); by_class: domain = device class index mod R (domain-pure packages).")})
    test_samples: int = field(default=0, metadata={**_range(0, None), "doc": (
        "Test images per device, sized independently of its training data (100: one image moves a device's "
        "accuracy by 1 point): drawn from the official test split following the device's train label "
        "distribution, or, without one, held out from the device's own partition before max_samples applies "
        "(at most half of it). A device that gets fewer is named in a warning. 0: test_fraction of the "
        "device's data, as before.")})

    def partitioner_params(self) -> dict[str, Any]:
        """The keyword arguments every registered partitioner accepts (each uses the ones it needs)."""
        return {"alpha": self.alpha, "min_size": self.min_size, "classes_per_client": self.classes_per_client,
                "category": self.category, "per_class_fraction": self.per_class_fraction,
                "shards_per_client": self.shards_per_client, "class_assignment": self.class_assignment,
                "beta": self.beta}

    def shift_params(self) -> dict[str, Any]:
        """The keyword arguments every registered feature shift accepts (each uses the ones it needs)."""
        return {"noise_sigma": self.noise_sigma, "rotation_groups": self.rotation_groups,
                "domain_assignment": self.domain_assignment}


@dataclass
class ModelSection:
    """The backbone (a registered elastic ViT) and the header devices refine."""

    name: str = field(default="vit_tiny_digits", metadata={
        **_registry("model"),
        "doc": "Registered backbone: `vit_tiny_digits` (the embedded default), `vit_micro_test` (unit tests), "
               "`vit_fmnist` (the Fashion-MNIST benchmark), `vit_b16` (the paper's ViT-B/16)."})
    pretrained_path: str = field(default="", metadata={
        "doc": "Local `save_pretrained` directory of ViT weights (google/vit-base-patch16-224 layout)."})
    header: str = field(default="gated_temp_cnn", metadata={
        **_registry("header"),
        "doc": "Registered header devices refine: `gated_temp_cnn` (ACME's TempCNN with 4 gate layers) or `linear`; "
               "`searched` comes only from `nas.enabled`."})
    header_channels: int = field(default=64, metadata={
        **_range(1, None), "doc": "Header width (256 in the original; 4 × this many prunable gates)."})
    gate_placement: str = field(default="after_bn", metadata={
        **_choices("after_bn", "original"),
        "doc": "Where the pointwise channel gates of the gated headers sit: after their batch-statistics BN "
               "(`after_bn`, a fix: before it they are normalised away and their Taylor importance is ~0) or before "
               "it, as the original TempCNN (`original`)."})
    header_bn: str = field(default="running", metadata={
        **_choices("running", "batch"),
        "doc": "Header BatchNorms at evaluation: `running` statistics (a sample's prediction does not depend on the "
               "rest of its test batch) or the original's `batch` statistics."})


@dataclass
class CloudSection:
    """Cloud tier: elastic backbone training and per-device sub-backbone selection."""

    enabled: bool = field(default=True, metadata={
        "doc": "Run the cloud stage; false ships the untrained full backbone to every device."})
    widths: str = field(default="0.25,0.5,0.75,1.0", metadata={
        "doc": "Width ratios of the elastic grid (comma-separated, each in (0, 1])."})
    depths: str = field(default="0.25,0.5,0.75,1.0", metadata={
        "doc": "Depth ratios of the elastic grid (comma-separated, each in (0, 1])."})
    teacher_epochs: int = field(default=30, metadata={**_range(0, None),
                                                      "doc": "Epochs of full-size teacher fine-tuning."})
    width_epochs: int = field(default=10, metadata={**_range(0, None), "doc": "Epochs of the width stage."})
    depth_epochs: int = field(default=10, metadata={**_range(0, None),
                                                    "doc": "Epochs of the width × depth stage."})
    lr: float = field(default=1e-3, metadata={**_range(0.0, None, low_open=True),
                                              "doc": "AdamW learning rate of the cloud stages."})
    batch_size: int = field(default=64, metadata={**_range(1, None), "doc": "Batch size of the cloud stages."})
    header_epochs: int = field(default=10, metadata={
        **_range(0, None),
        "doc": "Epochs warming each distinct sub-backbone's header on the cloud's data (best validation epoch "
               "kept)."})
    faithful: bool = field(default=False, metadata={
        "doc": "Reproduce what the original code ran (no distillation, plain cross-entropy in the depth stage)."})
    selection: str = field(default="pfg", metadata={
        **_registry("selection method"),
        "doc": "How each device class's sub-backbone is picked: PFG or one of the baselines it is compared with."})
    cost_model: str = field(default="original", metadata={
        **_registry("cost model", with_argument=True),
        "doc": "What PFG's size/latency/energy axes measure: the original's constants (`original`, reproduces the "
               "published picks), this backbone's analytic parameter count (`params`) or MACs (`macs`), or a "
               "latency table measured on the device, `measured:<path>` (a JSON list of `{\"width\": w, "
               "\"depth\": d, \"latency\": s}` records, optionally with `\"energy\"`, over a full width × depth "
               "grid; size is the parameter count). The file is read on the cloud before the cloud stage; a missing "
               "or bad file stops the run with an error naming this key."})
    cache_dir: str = field(default="", metadata={
        "doc": "Where cloud stages and warm headers are cached (key: a hash of everything that determines them). "
               "Empty: `~/.cache/acme_flwr`."})
    seed: int = field(default=-1, metadata={
        **_range(-1, None),
        "doc": "Seed of the cloud's side: its data cut (cloud share, generic test set), backbone init and training, "
               "warm headers and PFG; -1: `run.seed`. A sweep over `run.seed` with it fixed varies the devices over "
               "one cached cloud stage."})


@dataclass
class TopologySection:
    """How many devices and edges, and how often edges report to the cloud."""

    num_devices: int = field(default=18, metadata={
        **_range(1, None),
        "doc": "Simulated devices (= SuperNodes). Devices mix importance (and baselines average headers) only with "
               "the devices of their edge that received the same package; the default 18 = 2 edges × 3 device "
               "classes × 3 gives every (edge, package) group 3 devices, so no device mixes with itself alone."})
    num_edges: int = field(default=2, metadata={**_range(1, None), "doc": "Number of edges."})
    edge_rounds_per_cloud: int = field(default=2, metadata={
        **_range(1, None), "doc": "Edges report to the cloud every this many rounds."})
    assignment: str = field(default="round_robin", metadata={
        **_choices("round_robin", "contiguous"),
        "doc": "Device → edge: `round_robin` (partition-id p goes to edge p % E) or `contiguous` blocks."})


@dataclass
class ProfileSection:
    """Device classes: each device gets class ``classes[pid % n]`` and that class's normalised size budget."""

    classes: str = field(default="low,mid,high", metadata={
        "doc": "Device class names (comma-separated); device p is class p % n."})
    size_constraints: str = field(default="0.3,0.6,0.9", metadata={
        "doc": "Each device class's normalised size budget (comma-separated, one per class, each in (0, 1])."})


@dataclass
class StrategySection:
    """Which strategies run (ACME and baselines, in one run) and their personalization hyper-parameters."""

    names: str = field(default="acme,fedavg_header,local", metadata={
        "doc": "Strategies run one after another on the same devices: comma-separated names of the strategy registry "
               "(`strategies/registry.py`; ACME, its ablation with the variant fixed, and the baselines of "
               "docs/algorithm.md §4.5 and §5). The first is the primary one in `summary.json`; plain `acme` follows "
               "`strategy.variant` and `strategy.distance`. Checked where the strategies are built."})
    variant: str = field(default="pruning_per", metadata={
        **_registry("aggregation variant"),
        "doc": "ACME's importance aggregation: no pruning, each device alone, the data-size average, or the "
               "similarity-weighted personalised mix (docs/algorithm.md §4.5); the `pruning_*` names are the "
               "original's."})
    distance: str = field(default="emd", metadata={
        **_registry("similarity metric"),
        "doc": "Similarity of the devices' feature statistics for the personalised mix (docs/algorithm.md §4.3)."})
    temperature: float = field(default=1.0, metadata={
        **_range(0.0, None, low_open=True),
        "doc": "Softmax temperature of the similarity weights (1.0: the original, nearly uniform)."})
    rounds: int = field(default=10, metadata={**_range(1, None), "doc": "Federated rounds (= edge rounds)."})
    local_epochs: int = field(default=1, metadata={**_range(1, None), "doc": "Device-side epochs per round."})
    lr: float = field(default=1e-2, metadata={**_range(0.0, None, low_open=True),
                                              "doc": "Device-side SGD learning rate."})
    momentum: float = field(default=0.5, metadata={**_range(0.0, 1.0), "doc": "Device-side SGD momentum."})
    weight_decay: float = field(default=1e-4, metadata={**_range(0.0, None),
                                                        "doc": "Device-side SGD weight decay."})
    batch_size: int = field(default=32, metadata={**_range(1, None), "doc": "Device-side batch size."})
    device_scope: str = field(default="header", metadata={
        **_choices("header", "backbone+header"),
        "doc": "What every device trains locally, alike for every strategy of the run: `header` (its sub-backbone "
               "frozen as received; the backbone's token grids are cached) or `backbone+header` (the original's "
               "device regime: the sub-backbone fine-tunes with the header, everything but the gates, with the same "
               "optimizer settings; it stays on the device, so no message grows, and its grids are never cached)."})
    prune_per_iteration: int = field(default=5, metadata={
        **_range(0, None), "doc": "Gates pruned per round (global rank of the criteria, momentum 0.9)."})
    prune_max_fraction: float = field(default=0.9, metadata={**_range(0.0, 1.0),
                                                             "doc": "Cap on the pruned share of gates."})
    importance_accumulation: str = field(default="mean", metadata={
        **_registry("importance accumulation"),
        "doc": "How a round's per-batch Taylor criteria become one importance vector: `mean` over batches, or "
               "`faithful` (the original's running-sum double counting)."})
    feature_samples: int = field(default=200, metadata={
        **_range(1, None), "doc": "[CLS] feature rows a device sends once for the similarity matrix."})
    fraction_train: float = field(default=1.0, metadata={**_range(0.0, 1.0, low_open=True),
                                                         "doc": "Share of devices trained per round (seeded)."})
    fraction_evaluate: float = field(default=1.0, metadata={
        **_range(0.0, 1.0), "doc": "Share of devices evaluated per round (seeded, drawn apart from the trained "
                                   "ones; 0: no evaluation). Below 1 with many devices, a round's work, rows and "
                                   "summary entries grow with the devices sampled, not with all devices."})
    timeout: float = field(default=600.0, metadata={**_range(1.0, None),
                                                    "doc": "Seconds to wait for replies per round."})
    max_reply_bytes: int = field(default=512 * 1024 * 1024, metadata={
        **_range(0, None),
        "doc": "A device reply larger than this many serialized bytes is rejected and recorded; 0: no cap."})
    fedrep_head_epochs: int = field(default=10, metadata={
        **_range(0, None),
        "doc": "FedRep: per round, epochs on the classifier with the body frozen (Collins et al. 2021)."})
    fedrep_body_epochs: int = field(default=1, metadata={
        **_range(1, None), "doc": "FedRep: per round, epochs on the body with the classifier frozen, after the head."})
    fedbabu_finetune_epochs: int = field(default=5, metadata={
        **_range(0, None),
        "doc": "FedBABU: epochs a device fine-tunes (a copy of) its classifier on its training data before each "
               "evaluation; 0: none (Oh et al. 2022)."})
    ditto_lambda: float = field(default=0.1, metadata={
        **_range(0.0, None),
        "doc": "Ditto: weight λ of the personal header's proximal term λ/2·‖v − w‖² (the paper picks it on "
               "validation from about 0.01–2: sweep it)."})
    ditto_personal_epochs: int = field(default=0, metadata={
        **_range(0, None),
        "doc": "Ditto: personal-header epochs per round; 0: `strategy.local_epochs` (Li et al. 2021)."})


@dataclass
class NasSection:
    """Edge tier header search (ENAS, docs/algorithm.md §3): per distinct sub-backbone, search a header on the cloud's
    proxy data (train split: child training; val split: rewards and arc selection), export it with gates and fine-tune
    it."""

    enabled: bool = field(default=False, metadata={
        "doc": "Search each device class's header at the edge (ENAS) instead of using the fixed `model.header`."})
    reward: str = field(default="edge-proxy", metadata={
        **_choices("edge-proxy", "federated"),
        "doc": "`edge-proxy`: the child trains on the cloud's train split, rewards and the arc choice use its val "
               "split; `federated`: devices train the shared child and score arcs on their own data "
               "(`query.acme_nas`), bytes counted."})
    scope: str = field(default="per_backbone", metadata={
        **_choices("per_backbone", "shared"),
        "doc": "`per_backbone`: one search per distinct sub-backbone (header size by the rule of "
               "docs/algorithm.md §3.6); `shared`: one search on the smallest, the arc fine-tuned on every other one "
               "(one header architecture, so ACME can mix importance across device classes)."})
    epochs: int = field(default=20, metadata={**_range(1, None), "doc": "Search epochs."})
    controller_steps: int = field(default=30, metadata={**_range(0, None),
                                                        "doc": "REINFORCE steps of the controller per epoch."})
    child_channels: int = field(default=32, metadata={**_range(1, None),
                                                      "doc": "Width of the weight-shared child."})
    batch_size: int = field(default=64, metadata={**_range(1, None), "doc": "Batch size of the search."})
    lr: float = field(default=0.05, metadata={**_range(0.0, None, low_open=True),
                                              "doc": "Peak (SGDR) learning rate of the child."})
    finetune_epochs: int = field(default=10, metadata={
        **_range(0, None), "doc": "Fine-tuning epochs of the exported header (best validation epoch kept)."})
    header_rule_threshold: float = field(default=0.25, metadata={
        **_range(0.0, 1.0),
        "doc": "Header-size rule: `width·depth > threshold` gives 1 cell × 1 layer, else 1 cell × 3 layers."})
    bn_running_stats: bool = field(default=True, metadata={
        "doc": "The searched header's cell BNs keep running statistics (calibrated, then fine-tuned); false: the "
               "child's batch statistics, which normalise away the class signal of a device's small non-IID "
               "evaluation batch."})
    device_steps: int = field(default=4, metadata={
        **_range(1, None),
        "doc": "Federated reward: local SGD steps (one sampled arc each) a device takes on the shared child per "
               "search epoch."})


_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "partition": PartitionSection,
    "model": ModelSection,
    "cloud": CloudSection,
    "topology": TopologySection,
    "profile": ProfileSection,
    "strategy": StrategySection,
    "nas": NasSection,
}


def parse_list(text: str | list | tuple, cast: type = str, *, key: str = "") -> list:
    """Parse a comma-separated run-config string (or a Hydra list) into a typed list."""
    items = list(text) if isinstance(text, (list, tuple)) else [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [cast(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {text!r} as a comma-separated list of {cast.__name__}") from exc


@dataclass
class AcmeConfig:
    """The resolved configuration of one run (all sections)."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    partition: PartitionSection = field(default_factory=PartitionSection)
    model: ModelSection = field(default_factory=ModelSection)
    cloud: CloudSection = field(default_factory=CloudSection)
    topology: TopologySection = field(default_factory=TopologySection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    nas: NasSection = field(default_factory=NasSection)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcmeConfig:
        """Build from a nested mapping (Hydra / YAML / JSON); unknown sections or keys raise ConfigError."""
        cfg = cls()
        for section_name, values in data.items():
            if section_name not in _SECTIONS:
                raise ConfigError(f"unknown config section {section_name!r}; allowed: {sorted(_SECTIONS)}")
            if not isinstance(values, Mapping):
                raise ConfigError(f"config section {section_name!r} must be a mapping, got {values!r}")
            section = getattr(cfg, section_name)
            for key, value in values.items():
                _set_field(section, section_name, key, value)
        cfg.validate()
        return cfg

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> AcmeConfig:
        """Build from flat dotted keys (``context.run_config``): ``{"partition.alpha": 0.1, ...}``."""
        nested: dict[str, dict[str, Any]] = {}
        for dotted, value in flat.items():
            section, _, key = dotted.partition(".")
            if not key:
                raise ConfigError(
                    f"run-config key {dotted!r} must look like 'section.key'; sections: {sorted(_SECTIONS)}")
            nested.setdefault(section, {})[key.replace("-", "_")] = value
        return cls.from_dict(nested)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Flat dotted keys with scalar values, the shape ``[tool.flwr.app.config]`` and ``--run-config`` use."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    # ----------------------------------------------------------------------------------------------- validation
    def validate(self) -> AcmeConfig:
        """Check ranges, choices, registry names and cross-field rules; raise ConfigError naming the key."""
        for section_name in _SECTIONS:
            section = getattr(self, section_name)
            for f in fields(section):
                _check_value(f"{section_name}.{f.name}", getattr(section, f.name), f.metadata)
        self._check_lists()
        if self.topology.num_edges > self.topology.num_devices:
            raise ConfigError(
                f"topology.num_edges={self.topology.num_edges} exceeds topology.num_devices="
                f"{self.topology.num_devices}; every edge needs at least one device"
            )
        if self.model.header == "searched":
            raise ConfigError("model.header='searched' cannot be built from the config alone (it needs a searched "
                              "arc); set nas.enabled=true to search one per sub-backbone and keep model.header "
                              "one of the fixed headers, e.g. 'gated_temp_cnn'")
        if self.partition.val_fraction + self.partition.test_fraction >= 0.9:
            raise ConfigError(
                "partition.val_fraction + partition.test_fraction must be < 0.9 (devices need training data)")
        from acme_flwr.registry import check_registered  # late: registries import heavy modules

        for section_name in _SECTIONS:
            section = getattr(self, section_name)
            for f in fields(section):
                if "registry" in f.metadata:
                    check_registered(f.metadata["registry"], f"{section_name}.{f.name}", getattr(section, f.name),
                                     with_argument=f.metadata.get("with_argument", False))
        return self  # strategy.names is checked against the strategy registry where strategies are built

    def _check_lists(self) -> None:
        for key in ("widths", "depths"):
            values = parse_list(getattr(self.cloud, key), float, key=f"cloud.{key}")
            if not values or any(not (0.0 < v <= 1.0) for v in values):
                raise ConfigError(f"cloud.{key}={getattr(self.cloud, key)!r}: every value must be in (0, 1]")
        classes = parse_list(self.profile.classes, str, key="profile.classes")
        budgets = parse_list(self.profile.size_constraints, float, key="profile.size_constraints")
        if not classes or len(classes) != len(budgets):
            raise ConfigError(
                f"profile.classes has {len(classes)} entries but profile.size_constraints has {len(budgets)}; "
                "give one size constraint per device class"
            )
        if any(not (0.0 < b <= 1.0) for b in budgets):
            raise ConfigError(f"profile.size_constraints={self.profile.size_constraints!r}: values must be in (0, 1]")
        if not self.strategy_names:
            raise ConfigError("strategy.names is empty; give at least one strategy, e.g. 'acme'")

    # ----------------------------------------------------------------------------------------------- derived views
    @property
    def widths(self) -> list[float]:
        return parse_list(self.cloud.widths, float)

    @property
    def depths(self) -> list[float]:
        return parse_list(self.cloud.depths, float)

    @property
    def cloud_seed(self) -> int:
        """The seed of everything the cloud does (``cloud.seed``, or ``run.seed`` when it is -1)."""
        return self.cloud.seed if self.cloud.seed >= 0 else self.run.seed

    @property
    def strategy_names(self) -> list[str]:
        return parse_list(self.strategy.names, str)

    @property
    def device_classes(self) -> list[tuple[str, float]]:
        return list(zip(parse_list(self.profile.classes, str), parse_list(self.profile.size_constraints, float),
                        strict=True))


def _set_field(section: Any, section_name: str, key: str, value: Any) -> None:
    known = {f.name: f for f in fields(section)}
    if key not in known:
        raise ConfigError(
            f"unknown config key '{section_name}.{key}'; allowed keys in '{section_name}': {sorted(known)}")
    setattr(section, key, _coerce(f"{section_name}.{key}", value, type(getattr(section, key))))


def _coerce(key: str, value: Any, target: type) -> Any:
    """Coerce run-config scalars (TOML/CLI give int for 1.0-like values, Hydra may give lists) to the field type."""
    if target is str and isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}={value!r}: expected a value of type {target.__name__}")


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {list(meta['choices'])}")
    if "range" in meta:
        low, high, low_open = meta["range"]
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            lo = "-inf" if low is None else f"{'(' if low_open else '['}{low}"
            hi = "inf)" if high is None else f"{high}]"
            raise ConfigError(f"{key}={value!r} is out of range; allowed: {lo}, {hi}")


# ---------------------------------------------------------------------------------------------------- documentation
def _allowed(meta: Mapping[str, Any]) -> str:
    """The allowed values of a field, as the reference shows them (registries read now, never a literal list)."""
    if "registry" in meta:
        from acme_flwr.registry import registered_names  # late: registries import heavy modules

        names = ", ".join(f"`{n}`" for n in registered_names(meta["registry"]))
        suffix = " (`name:argument` where that one takes an argument)" if meta.get("with_argument") else ""
        return f"registered {meta['registry']}: {names}{suffix}"
    if "choices" in meta:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    if "range" in meta:
        low, high, low_open = meta["range"]
        lo = "(-∞" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "∞)" if high is None else f"{high}]"
        return f"{lo}, {hi}"
    return "any"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_markdown() -> str:
    """``docs/configuration.md``: every key of the schema with its type, default, allowed values and description.

    Generated from the dataclasses (each field's ``metadata["doc"]``) and the registries, so the reference cannot
    drift from the code; ``python -m acme_flwr.config --markdown`` prints it and ``--write`` rewrites the file.
    """
    lines = [
        "# Configuration",
        "",
        "<!-- generated by `python -m acme_flwr.config --write` from acme_flwr/config.py; do not edit by hand -->",
        "",
        "One typed schema, `acme_flwr.config.AcmeConfig`, with two front doors: `[tool.flwr.app.config]` in "
        "`pyproject.toml` (flat dotted keys, lists as comma-separated strings, overridable with `flwr run "
        "--run-config`) and Hydra's `conf/` (groups `dataset`, `model`, `partition`, `strategy`, `topology`, "
        "`profile`; presets in `conf/experiment/`). A test keeps the two equal. An unknown key or a bad value stops "
        "the run before any work with one line naming the key and the allowed values. Every run writes its resolved "
        "config, seed and package versions to `config.json` and `summary.json`.",
        "",
        "Allowed values marked *registered* are read from the registries when this page is generated: registering "
        "a new one (e.g. `@register_metric(\"cosine\")` in `acme_flwr.edge.similarity`) makes it a valid value.",
    ]
    for section_name, section_cls in _SECTIONS.items():
        lines += ["", f"## `{section_name}`", "", " ".join((section_cls.__doc__ or "").split()), "",
                  "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for f in fields(section_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = '`""`' if default == "" else f"`{str(default).lower() if isinstance(default, bool) else default}`"
            doc = " ".join(str(f.metadata.get("doc", "")).split())
            lines.append(f"| `{section_name}.{f.name}` | {f.type} | {shown} | {_cell(_allowed(f.metadata))} | "
                         f"{_cell(doc)} |")
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m acme_flwr.config", description="The configuration reference.")
    parser.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    parser.add_argument("--write", type=Path, nargs="?", const=Path("docs/configuration.md"), default=None,
                        help="write it (default docs/configuration.md)")
    args = parser.parse_args(argv)
    text = config_markdown()
    if args.write is not None:
        args.write.write_text(text)
    if args.markdown or args.write is None:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
