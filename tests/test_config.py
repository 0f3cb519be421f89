"""Config schema: both front doors agree, bad keys and values stop with a message naming key and allowed values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from acme_flwr.config import AcmeConfig, ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_is_exactly_the_schema_defaults() -> None:
    flat = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flat == AcmeConfig().to_flat()
    assert AcmeConfig.from_flat(flat) == AcmeConfig()


def test_flat_round_trip_and_coercion() -> None:
    cfg = AcmeConfig.from_flat({"partition.alpha": 1, "strategy.rounds": 3.0, "cloud.widths": [0.5, 1.0],
                                "cloud.faithful": "true"})
    assert cfg.partition.alpha == 1.0 and isinstance(cfg.partition.alpha, float)
    assert cfg.strategy.rounds == 3 and cfg.widths == [0.5, 1.0] and cfg.cloud.faithful is True
    assert AcmeConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(("flat", "needle"), [
    ({"partition.alpah": 0.1}, "unknown config key 'partition.alpah'"),
    ({"nosuch.key": 1}, "unknown config section 'nosuch'"),
    ({"alpha": 1}, "must look like 'section.key'"),
    ({"partition.alpha": -1.0}, "partition.alpha=-1.0 is out of range"),
    ({"partition.kind": "zipf"}, "allowed values: ['acme', 'dirichlet', 'exponential', 'iid', 'linear', "
                                  "'pathological', 'quantity_dirichlet', 'shard', 'square']"),
    ({"strategy.variant": "pruning"}, "allowed values: ['wo_pruning'"),
    ({"model.name": "resnet"}, "model.name='resnet' is not a registered model"),
    ({"cloud.widths": "0.5,1.5"}, "cloud.widths='0.5,1.5': every value must be in (0, 1]"),
    ({"cloud.depths": "a,b"}, "cloud.depths"),
    ({"profile.size_constraints": "0.5"}, "give one size constraint per device class"),
    ({"topology.num_edges": 20}, "exceeds topology.num_devices"),
    ({"strategy.rounds": "ten"}, "strategy.rounds='ten': expected a value of type int"),
    ({"cloud.enabled": "yes"}, "expected true or false"),
    ({"strategy.temperature": float("nan")}, "must be a finite number"),
])
def test_bad_input_names_the_key_and_the_fix(flat: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        AcmeConfig.from_flat(flat)
    assert needle in str(err.value)


def test_device_classes_pair_names_with_budgets() -> None:
    cfg = AcmeConfig.from_flat({"profile.classes": "a,b", "profile.size_constraints": "0.2,0.9"})
    assert cfg.device_classes == [("a", 0.2), ("b", 0.9)]


def _hydra_groups() -> list[str]:
    conf = REPO / "conf"
    return [f"{g.name}={f.stem}" for g in sorted(conf.iterdir()) if g.is_dir() and g.name != "experiment"
            for f in sorted(g.glob("*.yaml"))]


def _presets() -> list[str]:
    return [f"+experiment={f.stem}" for f in sorted((REPO / "conf" / "experiment").glob("*.yaml"))]


@pytest.mark.parametrize("override", [*_presets(), *_hydra_groups()])
def test_every_hydra_option_composes_into_a_valid_config(override: str) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        composed = OmegaConf.to_container(compose("config", overrides=[override]))
    if override.split("=")[1] in {"cifar100", "imagefolder", "vit_b16", "paper"}:  # local paths: '???' until given
        composed = {s: {k: ("/some/dir" if v == "???" else v) for k, v in vals.items()} for s, vals in composed.items()}
    AcmeConfig.from_dict(composed)


def test_hydra_defaults_equal_schema_defaults() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        assert AcmeConfig.from_dict(OmegaConf.to_container(compose("config"))) == AcmeConfig()


def test_configuration_reference_equals_the_schema() -> None:
    """docs/configuration.md is generated from the schema and the registries; a stale copy fails here."""
    from acme_flwr.config import config_markdown

    assert (REPO / "docs" / "configuration.md").read_text() == config_markdown(), (
        "docs/configuration.md differs from the schema: run `python -m acme_flwr.config --write` and commit it")


def test_every_key_is_documented_beside_its_field() -> None:
    from dataclasses import fields

    from acme_flwr.config import _SECTIONS, config_markdown

    missing = [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)
               if len(str(f.metadata.get("doc", "")).split()) < 2]
    assert missing == [], f"give these fields metadata['doc']: {missing}"
    text = config_markdown()
    assert all(f"`{key}`" in text for key in AcmeConfig().to_flat())


def test_a_newly_registered_metric_is_a_valid_config_value() -> None:
    """The config's allowed values are the registries' names: registering a metric makes it selectable at once."""
    from acme_flwr.config import config_markdown
    from acme_flwr.edge import similarity

    with pytest.raises(ConfigError, match="strategy.distance='cosine_for_test' is not a registered similarity metric"):
        AcmeConfig.from_flat({"strategy.distance": "cosine_for_test"})

    @similarity.register_metric("cosine_for_test")
    def _cosine(f_k, f_j) -> float:  # noqa: ANN001
        return 1.0

    try:
        cfg = AcmeConfig.from_flat({"strategy.distance": "cosine_for_test"})
        assert cfg.strategy.distance == "cosine_for_test"
        assert similarity.similarity_matrix([[[1.0]], [[2.0]]], metric=cfg.strategy.distance).tolist() == [[1, 1],
                                                                                                          [1, 1]]
        assert "`cosine_for_test`" in config_markdown()
    finally:
        similarity.METRICS.unregister("cosine_for_test")
    with pytest.raises(ConfigError, match="allowed values: \\['emd', 'js'\\]"):
        AcmeConfig.from_flat({"strategy.distance": "cosine_for_test"})


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("cloud.selection", "best", "selection method"),
    ("cloud.cost_model", "flops", "cost model"),
    ("strategy.variant", "pruning", "aggregation variant"),
    ("strategy.importance_accumulation", "sum", "importance accumulation"),
])
def test_registry_backed_keys_list_the_registered_names(key: str, value: str, kind: str) -> None:
    from acme_flwr.registry import registered_names

    with pytest.raises(ConfigError) as err:
        AcmeConfig.from_flat({key: value})
    assert str(err.value) == f"{key}={value!r} is not a registered {kind}; allowed values: {registered_names(kind)}"


def test_no_literal_copy_of_a_registry_in_the_schema() -> None:
    """A field whose choices equal a registry's names must read them from the registry (metadata "registry")."""
    from dataclasses import fields

    from acme_flwr.config import _SECTIONS
    from acme_flwr.registry import registered_names, registry_kinds

    registries = {kind: set(registered_names(kind)) for kind in registry_kinds()}
    copies = [(f"{s}.{f.name}", kind) for s, cls in _SECTIONS.items() for f in fields(cls) if "choices" in f.metadata
              for kind, names in registries.items() if set(f.metadata["choices"]) <= names]
    assert copies == []


def test_measured_cost_model_keeps_its_argument() -> None:
    assert AcmeConfig.from_flat({"cloud.cost_model": "measured:/some/lat.json"}).cloud.cost_model == (
        "measured:/some/lat.json")
