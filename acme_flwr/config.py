"""The one typed configuration schema of acme-flwr, with validation.

Two front doors build it: ``[tool.flwr.app.config]`` (flat dotted keys such as ``partition.alpha``, scalars only,
lists as comma-separated strings) via :meth:`AcmeConfig.from_flat`, and Hydra's ``conf/`` groups (nested mappings)
via :meth:`AcmeConfig.from_dict`. Both end in :meth:`AcmeConfig.validate`, which stops a run before any work with a
message naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
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


@dataclass
class RunSection:
    """Run identity and outputs."""

    seed: int = 0
    out_dir: str = ""  # absolute path recommended: the ServerApp runs in the SuperLink's cwd
    name: str = "default"
    resume: bool = False  # continue from the checkpoints in run.out_dir (same config) instead of starting over
    # a strategy that lost devices (never discovered, or silent in its last round) is reported as degraded in the
    # summary and the table; warn: the run still succeeds with a warning, fail: it exits non-zero
    on_lost_devices: str = field(default="warn", metadata=_choices("warn", "fail"))
    # where every stage computes (cloud stages, edge search, devices' header training and evaluation): auto = the
    # first CUDA device when one is visible, else the CPU; wire messages are always CPU arrays
    device: str = field(default="auto", metadata={"choices": _DeviceChoices(("auto", "cpu", "cuda", "cuda:N"))})
    precision: str = field(default="fp32", metadata=_choices("fp32", "bf16"))  # bf16 = autocast where supported
    # GPU share of one simulated device (Ray's client-resources-num-gpus) when the run uses CUDA; ignored on CPU
    client_gpus: float = field(default=0.25, metadata=_range(0.0, 1.0, low_open=True))
    # devices keep their frozen sub-backbone's token grids in memory between messages (per worker process, LRU, at
    # most this many MiB); 0 = recompute them on every message
    feature_cache_mb: int = field(default=1024, metadata=_range(0, None))


@dataclass
class DataSection:
    """Which data set, where it lives, and how much of it the cloud keeps for backbone training."""

    name: str = field(default="digits", metadata={"registry": "dataset"})
    root: str = ""  # local directory for real data sets (CIFAR-100 / Fashion-MNIST / ImageFolder); never downloaded
    cloud_fraction: float = field(default=0.3, metadata=_range(0.0, 0.9))
    # class-balanced held-out "generic" evaluation set (FederatedData.generic_test) that no choice ever uses: this
    # share of the rarest class, per class, from the official test split if any, else from the pool
    generic_test_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5, low_open=True))
    synthetic_classes: int = field(default=10, metadata=_range(2, None))
    synthetic_samples: int = field(default=600, metadata=_range(10, None))


@dataclass
class PartitionSection:
    """How the device pool is split across devices, and each device's train/val/test split."""

    kind: str = field(default="dirichlet", metadata={"registry": "partitioner"})
    alpha: float = field(default=0.5, metadata=_range(0.0, None, low_open=True))
    classes_per_client: int = field(default=2, metadata=_range(1, None))
    category: str = field(default="C2", metadata=_choices("IID", "C2", "C3", "C4"))
    per_class_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0, low_open=True))
    min_size: int = field(default=10, metadata=_range(1, None))
    val_fraction: float = field(default=0.15, metadata=_range(0.0, 0.5, low_open=True))
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.5, low_open=True))
    # where device test sets come from: the data set's official test split (following each device's train label
    # distribution), cut from the device's partition (disjoint from every device's training data), or auto: official
    # where the data set has one
    test_source: str = field(default="auto", metadata=_choices("auto", "official", "partition"))
    # at most this many images per device (its train + val pool, drawn uniformly from its partition; the test set
    # follows the result): devices with a few hundred images, as in cross-device FL; 0: the whole partition
    max_samples: int = field(default=0, metadata=_range(0, None))
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
    feature: str = field(default="none", metadata={"registry": "feature_shift", "doc": (
        "Feature skew applied per device, alike to its train, val and test images and never to the cloud's: "
        "none; noise (device i of N adds Gaussian noise of std noise_sigma*i/N to its normalised images, "
        "NIID-Bench); rotation (IFCA-style domain shift: devices in rotation_groups domains, domain g rotated by "
        "g*360/rotation_groups degrees). Combine with any kind, e.g. kind=dirichlet feature=rotation (mixed).")})
    noise_sigma: float = field(default=0.1, metadata={**_range(0.0, None), "doc": (
        "feature=noise: the noise level sigma (on the model's normalised input scale).")})
    rotation_groups: int = field(default=4, metadata={**_range(1, None), "doc": (
        "feature=rotation: number of domains R; domain g sees its images rotated by g*360/R degrees.")})
    domain_assignment: str = field(default="paired", metadata={"registry": "domain_assignment", "doc": (
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

    name: str = field(default="vit_tiny_digits", metadata={"registry": "model"})
    pretrained_path: str = ""  # local save_pretrained directory of ViT weights
    header: str = field(default="gated_temp_cnn", metadata={"registry": "header"})
    header_channels: int = field(default=64, metadata=_range(1, None))
    # where the pointwise channel gates of the gated headers sit: after their batch-statistics BN (a fix: before it
    # they are normalised away and their Taylor importance is ~0) or before it, as the original TempCNN
    gate_placement: str = field(default="after_bn", metadata=_choices("after_bn", "original"))
    # header BatchNorms at evaluation: running statistics (per-sample, independent of the test batch) or the
    # original's batch statistics (a device's accuracy then depends on what else is in its test batch)
    header_bn: str = field(default="running", metadata=_choices("running", "batch"))


class _CostModelChoices(tuple):
    """``cloud.cost_model`` values: the named models, or ``measured:`` followed by a (non-empty) file path."""

    def __contains__(self, value: object) -> bool:
        return value in tuple(self)[:-1] or (isinstance(value, str) and value.startswith("measured:")
                                              and bool(value[len("measured:"):].strip()))


@dataclass
class CloudSection:
    """Cloud tier: elastic backbone training and per-device sub-backbone selection."""

    enabled: bool = True
    widths: str = "0.25,0.5,0.75,1.0"
    depths: str = "0.25,0.5,0.75,1.0"
    teacher_epochs: int = field(default=30, metadata=_range(0, None))
    width_epochs: int = field(default=10, metadata=_range(0, None))
    depth_epochs: int = field(default=10, metadata=_range(0, None))
    lr: float = field(default=1e-3, metadata=_range(0.0, None, low_open=True))
    batch_size: int = field(default=64, metadata=_range(1, None))
    header_epochs: int = field(default=10, metadata=_range(0, None))
    faithful: bool = False
    selection: str = field(default="pfg", metadata=_choices("pfg", "highest_accuracy", "largest_size", "random",
                                                            "traverse", "worst"))
    # what PFG's size/latency/energy axes measure: the original's constants, this backbone's analytic parameter
    # count or MACs, or a latency table measured on the device (cost_models.OriginalCostModel / ParamCountCostModel /
    # MacsCostModel / MeasuredLatencyCostModel.from_json; the file is read on the cloud, before the cloud stage)
    cost_model: str = field(default="original", metadata={"choices": _CostModelChoices(
        ("original", "params", "macs", "measured:<path to a JSON latency table>"))})
    cache_dir: str = ""
    # seed of the cloud's side: its data cut (cloud share, generic test set), backbone init and training, warm headers
    # and PFG; -1: run.seed. A sweep over run.seed with it fixed varies the devices over one cached cloud stage
    seed: int = field(default=-1, metadata=_range(-1, None))


@dataclass
class TopologySection:
    """How many devices and edges, and how often edges report to the cloud."""

    # 18 = 2 edges x 3 device classes x 3: round-robin edges (p % 2) and classes (p % 3) give every (edge, package)
    # mixing group 3 devices, so no device mixes importance with itself alone
    num_devices: int = field(default=18, metadata=_range(1, None))
    num_edges: int = field(default=2, metadata=_range(1, None))
    edge_rounds_per_cloud: int = field(default=2, metadata=_range(1, None))
    assignment: str = field(default="round_robin", metadata=_choices("round_robin", "contiguous"))


@dataclass
class ProfileSection:
    """Device classes: each device gets class ``classes[pid % n]`` and that class's normalised size budget."""

    classes: str = "low,mid,high"
    size_constraints: str = "0.3,0.6,0.9"


@dataclass
class StrategySection:
    """Which strategies run (ACME and baselines, in one run) and their personalization hyper-parameters."""

    names: str = "acme,fedavg_header,local"
    variant: str = field(default="pruning_per", metadata=_choices("wo_pruning", "pruning_alone", "pruning_avg",
                                                                  "pruning_per"))
    distance: str = field(default="emd", metadata=_choices("emd", "js"))
    temperature: float = field(default=1.0, metadata=_range(0.0, None, low_open=True))
    rounds: int = field(default=10, metadata=_range(1, None))
    local_epochs: int = field(default=1, metadata=_range(1, None))
    lr: float = field(default=1e-2, metadata=_range(0.0, None, low_open=True))
    momentum: float = field(default=0.5, metadata=_range(0.0, 1.0))
    weight_decay: float = field(default=1e-4, metadata=_range(0.0, None))
    batch_size: int = field(default=32, metadata=_range(1, None))
    prune_per_iteration: int = field(default=5, metadata=_range(0, None))
    prune_max_fraction: float = field(default=0.9, metadata=_range(0.0, 1.0))
    importance_accumulation: str = field(default="mean", metadata=_choices("mean", "faithful"))
    feature_samples: int = field(default=200, metadata=_range(1, None))
    fraction_train: float = field(default=1.0, metadata=_range(0.0, 1.0, low_open=True))
    timeout: float = field(default=600.0, metadata=_range(1.0, None))
    # a device reply larger than this many serialized bytes is rejected and recorded (0: no cap)
    max_reply_bytes: int = field(default=512 * 1024 * 1024, metadata=_range(0, None))
    # baselines' hyper-parameters (their papers' values; reference/pfl-baselines.md)
    fedrep_head_epochs: int = field(default=10, metadata=_range(0, None))  # FedRep: head epochs per round
    fedrep_body_epochs: int = field(default=1, metadata=_range(1, None))  # FedRep: body epochs per round
    fedbabu_finetune_epochs: int = field(default=5, metadata=_range(0, None))  # FedBABU: head fine-tuning to evaluate
    ditto_lambda: float = field(default=0.1, metadata=_range(0.0, None))  # Ditto: proximal weight λ
    ditto_personal_epochs: int = field(default=0, metadata=_range(0, None))  # Ditto: personal epochs (0: local)


@dataclass
class NasSection:
    """Edge tier header search (ENAS, spec §3): per distinct sub-backbone, search a header on the cloud's proxy data
    (train split: child training; val split: rewards and arc selection), export it with gates and fine-tune it."""

    enabled: bool = False
    reward: str = field(default="edge-proxy", metadata=_choices("edge-proxy", "federated"))
    # per_backbone: one search per distinct sub-backbone (header size by the §3.6 rule); shared: one search on the
    # smallest, the arc fine-tuned on every other one (one header architecture: ACME can mix importance across classes)
    scope: str = field(default="per_backbone", metadata=_choices("per_backbone", "shared"))
    epochs: int = field(default=20, metadata=_range(1, None))
    controller_steps: int = field(default=30, metadata=_range(0, None))
    child_channels: int = field(default=32, metadata=_range(1, None))
    batch_size: int = field(default=64, metadata=_range(1, None))
    lr: float = field(default=0.05, metadata=_range(0.0, None, low_open=True))
    finetune_epochs: int = field(default=10, metadata=_range(0, None))
    header_rule_threshold: float = field(default=0.25, metadata=_range(0.0, 1.0))
    # the searched header's cell BNs keep running statistics (calibrated, then fine-tuned); false = the child's batch
    # statistics, which normalise away the class signal of a device's small non-IID evaluation batch
    bn_running_stats: bool = True
    # federated reward: local SGD steps (one sampled arc each) a device takes on the shared child per search epoch
    device_steps: int = field(default=4, metadata=_range(1, None))


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
                    check_registered(f.metadata["registry"], f"{section_name}.{f.name}", getattr(section, f.name))
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
