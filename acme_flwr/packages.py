"""Each device class's package, the one module that ties the tiers: an extracted sub-backbone and a warm header.

:func:`build_packages` runs the cloud stage (elastic backbone, cached on disk), picks each device class's
sub-backbone with PFG under that class's size constraint (snapped to a trained grid point), physically extracts it,
and warms a header on the cloud's own training data for each distinct sub-backbone (the original trains its header
centrally too, ACME §3.8). With ``nas.enabled`` the header of each distinct sub-backbone is instead searched by the
edge NAS on the cloud's proxy data (:func:`acme_flwr.edge.nas.header_search.search_header`: train split for the
child, val split for rewards and arc selection), exported with gates and fine-tuned; its arc goes into
``picks[class]["header_arc"]``. With ``nas.reward=federated`` the packages keep their warm headers and
``nas_federated`` says what the strategy needs to search the header with its devices at setup time
(``strategies/nas_search.py``), which then replaces every package's header. Devices receive exactly these bytes
once. (Not to be confused with Flower's Deployment Engine: this module builds what is shipped, not how it is run.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acme_flwr import accel
from acme_flwr.cloud.cost_models import (
    CostModel,
    MacsCostModel,
    MeasuredLatencyCostModel,
    OriginalCostModel,
    ParamCountCostModel,
    ViTArch,
)
from acme_flwr.cloud.elastic_vit import ElasticViT, subnet_shape
from acme_flwr.cloud.models import create_model
from acme_flwr.cloud.pfg import select_backbone, snap_to_grid
from acme_flwr.cloud.stages import CloudStageConfig, build_elastic_backbone
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.device.headers import Header, build_header
from acme_flwr.device.training import (
    TrainHParams,
    backbone_grids,
    evaluate_header,
    train_header_epoch,
    trainable_parameters,
)
from acme_flwr.edge.nas.header_search import EdgeSearch, adapt_header, edge_search_config, search_header
from acme_flwr.edge.nas.search import SearchConfig
from acme_flwr.logs import Progress
from acme_flwr.registry import Registry
from acme_flwr.runtime import fingerprint
from acme_flwr.task import DataContractError, FederatedData, TensorSplit, check_split

logger = logging.getLogger(__name__)


@dataclass
class Package:
    """What one device class receives: its sub-backbone and the initial header."""

    width: float
    depth: float
    backbone: ElasticViT
    header: Header
    header_spec: dict[str, Any]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters()) + sum(p.numel() for p in self.header.parameters())


@dataclass
class CloudPackages:
    """Per device class: a :class:`Package`; plus the full model size for the FedAvg reference."""

    packages: dict[str, Package]
    full_params: int
    table: list[tuple[float, float, float]] | None = None
    picks: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_log: dict[str, Any] = field(default_factory=dict)
    #: ``nas.reward=federated``: what the strategy needs to search a header with its devices at setup time (search
    #: config, child shape, gate placement); ``None`` once done (the searched header then replaced every package's)
    nas_federated: dict[str, Any] | None = None

    def for_class(self, device_class: str) -> Package:
        if device_class not in self.packages:
            raise KeyError(f"device class {device_class!r} has no package; known classes: {sorted(self.packages)}")
        return self.packages[device_class]


@dataclass(frozen=True)
class CloudData:
    """The cloud's own labelled data, for :func:`build_packages` with your own tensors (no :class:`FederatedData`).

    ``build_packages(cfg, CloudData(train, val), cache_dir)`` trains the elastic backbone (cloud stage) on ``train``,
    picks sub-backbones with the accuracy table measured on ``val`` and warms (or searches) the headers on both.
    Neither may hold any device's data; the devices' data stays on the devices.

    Parameters
    ----------
    train, val
        :class:`TensorSplit` s: normalised float images (N, C, H, W) at the model's input shape and integer labels.
    num_classes
        The number of classes the headers predict; ``0`` (default): one more than the largest label in
        ``train``/``val``. Give it when a class may be missing from the cloud's data.
    """

    train: TensorSplit
    val: TensorSplit
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("train", "val"):
            check_split(getattr(self, name), f"CloudData.{name}", error=DataContractError)
        seen = int(max(self.train.y.max(), self.val.y.max())) + 1
        if self.num_classes == 0:
            object.__setattr__(self, "num_classes", seen)
        elif self.num_classes < seen:
            raise DataContractError(f"CloudData.num_classes: expected > the largest label ({seen - 1}), "
                                    f"got {self.num_classes}")

    def cloud(self, val_fraction: float = 0.2) -> tuple[TensorSplit, TensorSplit]:
        """The cloud's (train, val) split (``val_fraction`` is ignored: the split is yours)."""
        return self.train, self.val


def header_spec(cfg: AcmeConfig, in_channels: int, num_classes: int) -> dict[str, Any]:
    """JSON-able recipe the device rebuilds its header from (``create_header(**spec)``)."""
    kwargs: dict[str, Any] = {}
    if cfg.model.header == "gated_temp_cnn":
        kwargs = {"channels": cfg.model.header_channels,
                  "pw_gate_after_bn": cfg.model.gate_placement == "after_bn",
                  "bn_running_stats": cfg.model.header_bn == "running"}
    return {"name": cfg.model.header, "in_channels": in_channels, "num_classes": num_classes, **kwargs}


def cloud_stage_config(cfg: AcmeConfig) -> CloudStageConfig:
    c = cfg.cloud
    return CloudStageConfig(widths=sorted(cfg.widths, reverse=True), depths=sorted(cfg.depths, reverse=True),
                            teacher_epochs=c.teacher_epochs, width_epochs=c.width_epochs, depth_epochs=c.depth_epochs,
                            lr=c.lr, teacher_lr=c.lr, batch_size=c.batch_size, faithful=c.faithful, seed=cfg.cloud_seed)


def build_packages(cfg: AcmeConfig, data: FederatedData | CloudData, cache_dir: str | Path | None,
                   progress: bool = True) -> CloudPackages:
    """Cloud stage → PFG pick per device class → extracted sub-backbones and warm headers, computed on
    ``run.device`` at ``run.precision`` (the packages' tensors are shipped as CPU arrays).

    ``data``: the run's :class:`FederatedData` (its cloud share), or your own cloud tensors as :class:`CloudData`;
    their image shape must be the model's input (DataContractError otherwise, before any training)."""
    device = accel.resolve_device(cfg.run.device)
    with accel.precision(cfg.run.precision):
        return _build_packages(cfg, data, cache_dir, progress, device)


def _build_packages(cfg: AcmeConfig, data: FederatedData | CloudData, cache_dir: str | Path | None, progress: bool,
                    device: torch.device) -> CloudPackages:
    torch.manual_seed(cfg.cloud_seed)
    overrides: dict[str, Any] = {"num_labels": data.num_classes}
    if cfg.model.pretrained_path:
        overrides["pretrained_path"] = cfg.model.pretrained_path
    model = create_model(cfg.model.name, **overrides).to(device)
    check_grid(model, cfg)
    costs = cost_model(cfg, model)  # before the cloud stage: a bad cloud.cost_model stops here, not after training
    full_params = sum(p.numel() for p in model.parameters())
    train, val = data.cloud()
    shape = (model.config.num_channels, model.config.image_size, model.config.image_size)
    for name, split in (("train", train), ("val", val)):
        check_split(split, f"cloud data: {name}", image_shape=shape, num_classes=data.num_classes,
                    error=DataContractError)
    table = None
    stage_log: dict[str, Any] = {}
    if cfg.cloud.enabled:
        # before any message, while the simulated devices wait: the backbone stages get run.threads threads (a fixed
        # count, part of the cache key: the floats depend on it)
        with accel.threads(accel.resolve_threads(cfg.run.threads)):
            model, table, stage_log = build_elastic_backbone(model, (accel.pin(train.x, device), train.y),
                                                             (accel.pin(val.x, device), val.y),
                                                             cloud_stage_config(cfg), cache_dir, progress=progress)
    picks: dict[str, dict[str, Any]] = {}
    spec = header_spec(cfg, model.config.hidden_size, data.num_classes)
    full_params += sum(p.numel() for p in build_header(spec).parameters())
    point_of: dict[str, tuple[float, float]] = {}
    for name, budget in cfg.device_classes:
        if table is None:
            w, d, pick = 1.0, 1.0, {"method": "none (cloud.enabled=false)"}
        else:
            pick = select_backbone(table, budget, method=cfg.cloud.selection, cost_model=costs, seed=cfg.cloud_seed)
            try:
                snapped = snap_to_grid(pick, cfg.widths, cfg.depths, size_constraint=budget, cost_model=costs)
                w, d = float(snapped["width"]), float(snapped["depth"])
            except ValueError:  # no trained point is small enough: ship the smallest one and say so
                w, d = min(cfg.widths), min(cfg.depths)
                pick = {**pick, "over_budget": True}
                logger.warning("device class %s: no trained (width, depth) fits size budget %.2f; using the smallest, "
                               "w=%.2f d=%.2f (add smaller values to cloud.widths/depths)", name, budget, w, d)
        picks[name] = {**pick, "size_constraint": budget, "grid_width": w, "grid_depth": d}
        point_of[name] = (w, d)
        logger.info("device class %s (size budget %.2f): sub-backbone w=%.2f d=%.2f", name, budget, w, d)
    subs: dict[tuple[float, float], ElasticViT] = {}
    for point in dict.fromkeys(point_of.values()):  # distinct, in class order
        sub = model.extract_subnet(*point).eval()
        for p in sub.parameters():
            p.requires_grad_(False)
        subs[point] = sub
    by_point: dict[tuple[float, float], Package] = {}
    if cfg.nas.enabled and cfg.nas.reward == "edge-proxy":
        for point, found in searched_headers(subs, train, val, data.num_classes, cfg, cache_dir, progress).items():
            stage_log.setdefault("nas", {})[f"w{point[0]:g}_d{point[1]:g}"] = found.info
            by_point[point] = Package(*point, subs[point], found.header, found.spec)
        if len({json.dumps(pkg.header_spec, sort_keys=True) for pkg in by_point.values()}) > 1:
            logger.warning("nas.scope=per_backbone gave device classes different header architectures (gate counts "
                           "%s): strategies that mix importance or average headers across classes need "
                           "nas.scope=shared", sorted({pkg.header.num_gates for pkg in by_point.values()}))
    else:
        for point, sub in subs.items():
            by_point[point] = Package(*point, sub, warm_header(sub, spec, train, val, cfg, cache_dir,
                                                               label=f"w={point[0]:g} d={point[1]:g}"), spec)
    packages = {name: by_point[point] for name, point in point_of.items()}
    nas_federated = None
    if cfg.nas.enabled and cfg.nas.reward == "federated":  # the strategy searches with its devices (setup time)
        base_point = min(subs, key=lambda p: (p[0] * p[1], p))
        search_cfg = nas_search_config(cfg, *base_point)
        search_cfg.arcs_per_reward_call = max(1, search_cfg.controller_steps)  # one device round per epoch
        nas_federated = {"search": search_cfg.to_dict(), "device_steps": cfg.nas.device_steps,
                         "pw_gate_after_bn": cfg.model.gate_placement == "after_bn",
                         "bn_running_stats": cfg.nas.bn_running_stats,
                         "in_channels": model.config.hidden_size, "num_classes": data.num_classes,
                         "base_point": list(base_point)}
    if cfg.nas.enabled and nas_federated is None:
        for name, (w, d) in point_of.items():
            info = stage_log["nas"][f"w{w:g}_d{d:g}"]
            picks[name].update({"header": "searched", "header_arc": info["arc"], "header_arc_str": info["arc_str"],
                                "header_val_acc": info["finetune_val_acc"]})
    return CloudPackages(packages, full_params, table, picks, stage_log, nas_federated)


# ``cloud.cost_model`` is ``name`` or ``name:argument``; a factory builds the model for this backbone's geometry
CostModelFactory = Callable[[ViTArch, str], CostModel]
COST_MODELS: Registry[CostModelFactory] = Registry("cost model")
register_cost_model = COST_MODELS.register  # ``fn(arch, argument) -> CostModel`` under a name
list_cost_models = COST_MODELS.names  # names accepted by ``cloud.cost_model``


def _no_argument(name: str, argument: str) -> None:
    if argument:
        raise ValueError(f"cost model {name!r} takes no argument; write just {name!r}")


@register_cost_model("original")
def _original_cost_model(arch: ViTArch, argument: str) -> CostModel:
    """The original's constants (reproduces the published PFG picks)."""
    _no_argument("original", argument)
    return OriginalCostModel()


@register_cost_model("params")
def _params_cost_model(arch: ViTArch, argument: str) -> CostModel:
    """This backbone's analytic parameter count."""
    _no_argument("params", argument)
    return ParamCountCostModel(arch=arch)


@register_cost_model("macs")
def _macs_cost_model(arch: ViTArch, argument: str) -> CostModel:
    """This backbone's analytic MACs."""
    _no_argument("macs", argument)
    return MacsCostModel(arch=arch)


@register_cost_model("measured")
def _measured_cost_model(arch: ViTArch, argument: str) -> CostModel:
    """``measured:<path>``: a JSON latency table measured on the device; its size axis is the parameter count."""
    if not argument:
        raise ValueError("give the latency table's file: measured:<path to a JSON latency table>")
    return MeasuredLatencyCostModel.from_json(argument, size_model=ParamCountCostModel(arch=arch))


def cost_model(cfg: AcmeConfig, model: ElasticViT) -> CostModel:
    """``cloud.cost_model`` for this backbone's geometry (the analytic models count its real parameters/MACs).

    ``measured:<path>`` reads a JSON latency table (:meth:`MeasuredLatencyCostModel.from_json`; a relative path is
    relative to the current directory) whose size axis is this backbone's parameter count; an unknown name, a missing
    or bad file raises :class:`ConfigError` naming the key.
    """
    c = model.config
    arch = ViTArch(hidden=c.hidden_size, num_heads=max(c.heads), ffn=max(c.ffn), num_layers=c.num_layers,
                   image_size=c.image_size, patch_size=c.patch_size, in_chans=c.num_channels)
    value = cfg.cloud.cost_model
    name, _, argument = value.partition(":")
    try:
        return COST_MODELS.get(name)(arch, argument.strip())
    except ValueError as exc:  # RegistryError too
        raise ConfigError(f"cloud.cost_model={value!r}: {exc}") from exc


def check_grid(model: ElasticViT, cfg: AcmeConfig) -> None:
    """Every configured (width, depth) must be a real sub-network of this backbone; else ConfigError, before work."""
    for key, values, axis in (("cloud.widths", cfg.widths, 0), ("cloud.depths", cfg.depths, 1)):
        for v in values:
            try:
                subnet_shape(model.config, *((v, 1.0) if axis == 0 else (1.0, v)))
            except ValueError as exc:
                raise ConfigError(f"{key}={getattr(cfg.cloud, key.split('.')[1])!r} does not fit model "
                                  f"{cfg.model.name!r}: {exc}") from exc


def nas_search_config(cfg: AcmeConfig, width: float, depth: float) -> SearchConfig:
    """The edge search's configuration for the (width, depth) sub-backbone, from the ``nas`` section."""
    n = cfg.nas
    return edge_search_config(width, depth, epochs=n.epochs, controller_steps=n.controller_steps,
                              channels=n.child_channels, batch_size=n.batch_size, lr=n.lr,
                              finetune_epochs=n.finetune_epochs, threshold=n.header_rule_threshold, seed=cfg.cloud_seed)


def searched_headers(subs: dict[tuple[float, float], ElasticViT], train: TensorSplit, val: TensorSplit,
                     num_classes: int, cfg: AcmeConfig, cache_dir: str | Path | None,
                     progress: bool) -> dict[tuple[float, float], EdgeSearch]:
    """Edge-proxy header search on the cloud's train/val split (cached in ``cache_dir``).

    Only for ``nas.reward=edge-proxy``; with ``nas.reward=federated`` the strategy searches with its devices at setup
    time (``strategies/nas_search.py``, from :attr:`CloudPackages.nas_federated`) and this is not called.
    ``nas.scope=per_backbone``: one search per distinct sub-backbone, header size by the ACME §3.6 rule for it.
    ``nas.scope=shared``: one search on the smallest sub-backbone (where the header matters most, ACME §3.6), whose arc
    and weights are then fine-tuned on every other sub-backbone, so all classes share one header architecture (same
    gates: importance mixing and header averaging across classes stay meaningful).
    """
    if cfg.nas.reward != "edge-proxy":
        raise ConfigError(f"searched_headers runs the edge-proxy search only (nas.reward={cfg.nas.reward!r}); "
                          "nas.reward='federated' is searched by the strategy with its devices "
                          "(strategies/nas_search.py)")
    placement = cfg.model.gate_placement == "after_bn"
    if cfg.nas.scope == "per_backbone":
        return {point: search_header(sub, train, val, num_classes, nas_search_config(cfg, *point),
                                     pw_gate_after_bn=placement, bn_running_stats=cfg.nas.bn_running_stats,
                                     cache_dir=cache_dir, progress=progress)
                for point, sub in subs.items()}
    base_point = min(subs, key=lambda p: (p[0] * p[1], p))
    base_cfg = nas_search_config(cfg, *base_point)
    base = search_header(subs[base_point], train, val, num_classes, base_cfg, pw_gate_after_bn=placement,
                         bn_running_stats=cfg.nas.bn_running_stats, cache_dir=cache_dir, progress=progress)
    out = {}
    for point, sub in subs.items():
        out[point] = base if point == base_point else adapt_header(base, sub, train, val, base_cfg, progress=progress)
    return out


def warm_header(backbone: ElasticViT, spec: dict[str, Any], train: TensorSplit, val: TensorSplit,
                cfg: AcmeConfig, cache_dir: str | Path | None = None, label: str = "") -> Header:
    """Train a fresh header on the cloud's data for this sub-backbone; keep the epoch with the best val accuracy.

    With ``cache_dir`` the result is stored under a hash of everything it depends on (the sub-backbone's weights,
    the header spec, the data, the hyper-parameters, seed, device and precision) and loaded on a later call: a sweep
    over device-side settings trains each warm header once, like the cloud stage it follows."""
    torch.manual_seed(cfg.cloud_seed)
    header = build_header(spec).to(accel.device_of(backbone))
    hp = TrainHParams(lr=cfg.strategy.lr, momentum=0.9, weight_decay=cfg.strategy.weight_decay,
                      batch_size=cfg.strategy.batch_size)
    key = json.dumps({"spec": spec, "epochs": cfg.cloud.header_epochs, "hp": hp.__dict__, "seed": cfg.cloud_seed,
                      "device": str(accel.device_of(backbone)), "precision": accel.current_precision(),
                      "data": fingerprint(train.x, train.y, val.x, val.y),
                      "backbone": fingerprint(*backbone.state_dict().values())}, sort_keys=True)
    path = (Path(cache_dir) / "warm_headers" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
            if cache_dir is not None else None)
    if path is not None and path.is_file():
        header.load_state_dict(torch.load(path, map_location=accel.device_of(backbone), weights_only=True))
        logger.info("warm header: cache hit %s", path.name)
        return header.eval()  # the mode a freshly trained one is left in (its last step evaluates it)
    grids, val_grids = backbone_grids(backbone, train.x), backbone_grids(backbone, val.x)  # frozen: once
    labels = train.y.to(grids.device)
    opt = torch.optim.SGD(trainable_parameters(header), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(cfg.cloud_seed)
    best = (-1.0, copy.deepcopy(header.state_dict()))
    layers = len(backbone.arch()["heads"])
    report = Progress(f"warm header {label or f'({layers}-layer sub-backbone)'}", cfg.cloud.header_epochs,
                      unit="epoch", log=logger)
    for _ in range(cfg.cloud.header_epochs):
        order = torch.randperm(len(train), generator=gen)
        batches = [(grids[order[i:i + hp.batch_size]], labels[order[i:i + hp.batch_size]])
                   for i in range(0, len(order), hp.batch_size)]
        train_header_epoch(header, batches, opt)
        _, acc = evaluate_header(None, header, val, grids=val_grids)
        if acc > best[0]:
            best = (acc, copy.deepcopy(header.state_dict()))
        report.step(val_acc=acc)
    header.load_state_dict(best[1])
    logger.info("warm header: val accuracy %.4f after %d epochs", max(best[0], 0.0), cfg.cloud.header_epochs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(header.state_dict(), tmp)
        tmp.replace(path)
    return header
