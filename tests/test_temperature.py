"""ACME at fixed similarity temperatures (acme_t1 / acme_t0.1 / acme_t0.01): the runs acme_valT is chosen from."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from acme_flwr.clients.client_app import app as acme_client_app
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import AcmeStrategy, build_strategy
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology

from .conftest import SMOKE
from .inprocess import InProcessGrid


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    flat = {**SMOKE, "strategy.variant": "pruning_avg", "strategy.temperature": 0.5}  # the names override both
    cfg = AcmeConfig.from_flat(flat)
    data = federated_data(cfg, *input_shape(cfg))
    deployment = build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)
    return flat, cfg, deployment, Topology(4, 1, "round_robin", 2)


@pytest.mark.parametrize(("name", "temperature"), [("acme_t1", 1.0), ("acme_t0.1", 0.1), ("acme_t0.01", 0.01)])
def test_temperature_names_fix_the_temperature_and_the_weighted_variant(name: str, temperature: float, setup,  # noqa: ANN001
                                                                         tmp_path) -> None:  # noqa: ANN001
    _, cfg, deployment, topology = setup
    strategy = build_strategy(name, cfg, topology, deployment, RunRecorder(tmp_path, cfg.to_dict(), 0))
    assert isinstance(strategy, AcmeStrategy)
    assert (strategy.temperature, strategy.variant_name, strategy.distance, strategy.tag) == (
        temperature, "pruning_per", cfg.strategy.distance, name)
    plain = build_strategy("acme", cfg, topology, deployment, RunRecorder(tmp_path / "p", cfg.to_dict(), 0))
    assert (plain.temperature, plain.variant_name) == (0.5, "pruning_avg")  # acme still follows the config


def test_a_lower_temperature_sharpens_the_similarity_weights(setup, tmp_path) -> None:  # noqa: ANN001
    """The same devices and features: at T = 0.01 each device's weight on itself is larger than at T = 1."""
    flat, cfg, deployment, topology = setup
    diagonal = {}
    for name in ("acme_t1", "acme_t0.01"):
        strategy = build_strategy(name, cfg, topology, deployment, RunRecorder(tmp_path / name, cfg.to_dict(), 0))
        strategy.start(grid=InProcessGrid(acme_client_app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=1)
        block = strategy.finalize()
        assert block["failures"]["count"] == 0
        weights = [np.array(e["weights"]) for e in block["similarity"].values()]
        assert weights and all(np.allclose(w.sum(axis=1), 1.0) for w in weights)
        diagonal[name] = np.mean([np.diag(w).mean() for w in weights])
    assert diagonal["acme_t0.01"] > diagonal["acme_t1"] + 1e-3
