"""The cloud's deployment: PFG picks per device class under each cost model, extracted packages, bad grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.packages import build_packages
from acme_flwr.task import federated_data

from .conftest import SMOKE


@pytest.mark.parametrize("costs", ["original", "params", "macs"])
def test_each_device_class_gets_an_extracted_sub_backbone_within_its_budget(costs: str, tmp_path: Path) -> None:
    cfg = AcmeConfig.from_flat({**SMOKE, "cloud.cost_model": costs, "profile.size_constraints": "0.5,0.8,1.0"})
    dep = build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
    assert set(dep.packages) == {"low", "mid", "high"}
    for name, pick in dep.picks.items():
        pkg = dep.packages[name]
        assert (pkg.width, pkg.depth) == (pick["grid_width"], pick["grid_depth"])
        assert pkg.width in cfg.widths and pkg.depth in cfg.depths
        assert pick.get("over_budget") or pick["size"] <= pick["size_constraint"] + 1e-9
        full = dep.full_params
        assert pkg.num_params <= full  # a real, smaller (or equal) standalone model


def test_a_grid_the_model_cannot_cut_is_refused_before_training(tmp_path: Path) -> None:
    cfg = AcmeConfig.from_flat({**SMOKE, "cloud.depths": "0.25,1.0"})  # vit_micro_test has 2 layers: 0.25 keeps 0
    with pytest.raises(ConfigError, match="cloud.depths"):
        build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
