"""The cloud's deployment: PFG picks per device class under each cost model, extracted packages, bad grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acme_flwr.cloud.cost_models import OriginalCostModel
from acme_flwr.cloud.elastic_vit import ElasticViT, count_params_formula, subnet_shape
from acme_flwr.cloud.models import input_shape
from acme_flwr.cloud.stages import load_backbone
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.packages import build_packages
from acme_flwr.task import federated_data

from .conftest import SMOKE


def normalised_size(costs: str, full: ElasticViT, sub: ElasticViT, width: float, depth: float) -> float:
    """The sub-backbone's S̃ as PFG's budget means it: the original's size formula, or the extracted model's real
    parameter count min-max normalised between the smallest candidate (1 head, 1 layer) and the full model."""
    if costs == "original":
        cm = OriginalCostModel()
        return float(cm.size(np.array([width]), np.array([depth]))[0] / cm.size(np.array([1.0]), np.array([1.0]))[0])
    c = full.config
    lo = count_params_formula(full.arch(), 1 / max(c.heads), 1 / c.num_layers)
    return (sub.num_parameters() - lo) / (full.num_parameters() - lo)


def latency_table(path: Path, widths: list[float], depths: list[float]) -> str:
    """A measured-latency JSON file over the trained grid; returns the ``cloud.cost_model`` value that selects it."""
    path.write_text(json.dumps([{"width": w, "depth": d, "latency": 0.01 + 0.2 * w * d} for w in widths
                                for d in depths]))
    return f"measured:{path}"


@pytest.mark.parametrize("costs", ["original", "params", "macs", "measured"])
def test_each_device_class_gets_an_extracted_sub_backbone_within_its_budget(costs: str, tmp_path: Path) -> None:
    flat = {**SMOKE, "profile.size_constraints": "0.5,0.8,1.0"}
    grid = AcmeConfig.from_flat(flat)
    value = latency_table(tmp_path / "lat.json", grid.widths, grid.depths) if costs == "measured" else costs
    cfg = AcmeConfig.from_flat({**flat, "cloud.cost_model": value})
    dep = build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
    assert set(dep.packages) == {"low", "mid", "high"}
    (ckpt,) = tmp_path.glob("elastic_backbone_*.pt")  # the trained elastic backbone the packages were cut from
    full, _, _ = load_backbone(ckpt)
    size, channels = input_shape(cfg)
    x = torch.rand(4, channels, size, size)
    full_names = {id(p) for p in full.parameters()}
    for name, pick in dep.picks.items():
        pkg = dep.packages[name]
        w, d = pkg.width, pkg.depth
        assert (w, d) == (pick["grid_width"], pick["grid_depth"])
        assert w in cfg.widths and d in cfg.depths
        sub = pkg.backbone
        assert isinstance(sub, ElasticViT) and not full_names & {id(p) for p in sub.parameters()}
        # physically cut: its own architecture is the (w, d) shape, its size the analytic formula's
        layers, heads, ffn = subnet_shape(full.config, w, d)
        assert (sub.config.num_layers, sub.config.heads, sub.config.ffn) == (len(layers), heads, ffn)
        assert sub.num_parameters() == count_params_formula(full.arch(), w, d)
        if (w, d) != (1.0, 1.0):
            assert sub.num_parameters() < full.num_parameters()
        with torch.no_grad():
            torch.testing.assert_close(sub(x), full.set_subnet(w, d)(x), atol=1e-5, rtol=1e-5)
        assert pkg.num_params == sub.num_parameters() + sum(p.numel() for p in pkg.header.parameters())
        budget = pick["size_constraint"]
        if pick.get("over_budget"):  # nothing trained fits: the smallest grid point, said so
            assert (w, d) == (min(cfg.widths), min(cfg.depths))
        else:
            assert normalised_size(costs, full, sub, w, d) <= budget + 1e-9
    assert dep.picks["low"]["size_constraint"] == 0.5
    assert dep.packages["low"].backbone.num_parameters() < full.num_parameters()  # something was really cut


def test_a_grid_the_model_cannot_cut_is_refused_before_training(tmp_path: Path) -> None:
    cfg = AcmeConfig.from_flat({**SMOKE, "cloud.depths": "0.25,1.0"})  # vit_micro_test has 2 layers: 0.25 keeps 0
    with pytest.raises(ConfigError, match="cloud.depths"):
        build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)


@pytest.mark.parametrize(("content", "needle"), [
    (None, "No such file"),
    ("{not json", "cannot read latency table"),
    ('[{"width": 0.5, "depth": 0.5}]', "record 0"),
    ('[{"width": 0.5, "depth": 0.5, "latency": 1.0}, {"width": 1.0, "depth": 1.0, "latency": 2.0}]', "full grid"),
])
def test_a_bad_latency_table_is_refused_before_training(content: str | None, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "lat.json"
    if content is not None:
        path.write_text(content)
    cfg = AcmeConfig.from_flat({**SMOKE, "cloud.cost_model": f"measured:{path}"})
    with pytest.raises(ConfigError, match=needle) as err:
        build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
    message = str(err.value)
    assert message.startswith(f"cloud.cost_model='measured:{path}'") and "\n" not in message
    assert not list(tmp_path.glob("elastic_backbone_*.pt"))  # nothing trained


def test_warm_headers_are_cached_and_keyed_by_what_they_depend_on(tmp_path: Path) -> None:
    """A second build loads each warm header from the cache (bit-identical); other header epochs train anew."""
    from acme_flwr.packages import warm_header

    cfg = AcmeConfig.from_flat(SMOKE)
    data = federated_data(cfg, *input_shape(cfg))
    first = build_packages(cfg, data, tmp_path, progress=False)
    cached = sorted((tmp_path / "warm_headers").glob("*.pt"))
    assert len(cached) == len({(p.width, p.depth) for p in first.packages.values()})
    second = build_packages(cfg, data, tmp_path, progress=False)
    for name, pkg in first.packages.items():
        for k, v in pkg.header.state_dict().items():
            torch.testing.assert_close(second.packages[name].header.state_dict()[k], v, rtol=0, atol=0)
    pkg = next(iter(first.packages.values()))
    train, val = data.cloud()
    other = AcmeConfig.from_flat({**SMOKE, "cloud.header_epochs": 1})
    warm_header(pkg.backbone, pkg.header_spec, train, val, other, tmp_path)
    assert len(sorted((tmp_path / "warm_headers").glob("*.pt"))) == len(cached) + 1
