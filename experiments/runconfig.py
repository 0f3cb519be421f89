"""One way from command-line overrides to a validated :class:`AcmeConfig`, shared by the launcher and the sweep.

Overrides use Hydra's syntax on ``conf/``: ``section.key=value`` (a key of the schema), ``group=option`` (a config
group such as ``dataset=synthetic``) and ``+experiment=name`` (a preset in ``conf/experiment/``). Before Hydra sees
them they are checked here, so a typo gets a one-line error naming the nearest valid key or option: unknown keys,
unknown groups/options/presets, malformed overrides and **duplicate keys (an error naming the key: a key given twice
is almost always a mistake, and silently letting one win hides it)**. Values are then checked by the schema
(``AcmeConfig.from_dict`` → ``validate``) and strategy names by the strategy registry.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.results import resume_conflicts

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
CONFIG_NAME = "config"
PRESET_GROUP = "experiment"  # selected with +experiment=name (not in the defaults list)


def schema_keys() -> list[str]:
    """Every flat key of the schema (``section.key``), the keys ``[tool.flwr.app.config]`` must hold."""
    return sorted(AcmeConfig().to_flat())


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Hydra config groups of ``conf_dir`` and their options (file stems)."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(conf_dir.iterdir()) if d.is_dir()}


def _nearest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def check_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise ConfigError (one line) on a malformed, unknown or duplicate override; values are checked later."""
    keys = schema_keys()
    groups = config_groups(conf_dir)
    seen: dict[str, str] = {}
    for override in overrides:
        name, sep, value = override.partition("=")
        if not sep or not name.strip("+~"):
            raise ConfigError(f"override {override!r} must look like section.key=value, group=option or "
                              f"+{PRESET_GROUP}=name")
        bare = name.lstrip("+~")
        if bare == "hydra" or bare.startswith(("hydra.", "hydra/")):
            continue  # Hydra's own settings (sweep only)
        if bare in seen:
            raise ConfigError(f"duplicate override of {bare!r} ({seen[bare]!r} and {override!r}); give each key once")
        seen[bare] = override
        if "." in bare:
            if bare not in keys:
                raise ConfigError(f"unknown config key {bare!r}{_nearest(bare, keys)} "
                                  f"(keys of section '{bare.split('.')[0]}': "
                                  f"{[k for k in keys if k.startswith(bare.split('.')[0] + '.')] or 'none'})")
            if name.startswith("+"):
                raise ConfigError(f"{override!r}: {bare!r} already exists; override it without '+'")
            continue
        if bare not in groups:
            raise ConfigError(f"unknown config group or key {bare!r}{_nearest(bare, [*groups, *keys])}; "
                              f"groups: {sorted(groups)}, keys look like section.key")
        if bare == PRESET_GROUP and not name.startswith("+"):
            raise ConfigError(f"{override!r}: presets are added, write +{PRESET_GROUP}={value}")
        options = groups[bare]
        if "(" in value:  # a sweep function such as glob(*) is Hydra's to expand
            continue
        for option in (v.strip() for v in value.split(",")):  # a sweep may list several
            if option not in options:
                raise ConfigError(f"{bare}={option!r} is not a known option{_nearest(option, options)}; "
                                  f"allowed: {options}")


def config_from_hydra(dcfg: Any) -> AcmeConfig:
    """A composed Hydra config (DictConfig) → validated AcmeConfig; the ``hydra`` node is ignored."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:  # a preset's `???`: the user must give it
        key = getattr(exc, "full_key", None) or "a key"
        raise ConfigError(f"{key} has no value (the preset marks it required); give it, e.g. {key}=/path") from None
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    cfg = AcmeConfig.from_dict(raw)
    check_strategy_names(cfg)
    return cfg


def quote_lists(override: str) -> str:
    """``section.key=a,b`` → ``section.key='a,b'``: outside a sweep, a comma list is one value (the schema's list
    strings, as in ``[tool.flwr.app.config]``), not Hydra's ambiguous sweep syntax."""
    name, _, value = override.partition("=")
    if "." not in name or "," not in value or value[:1] in "'\"[{" or "(" in value:
        return override
    return f"{name}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> AcmeConfig:
    """Check ``overrides``, compose ``conf/`` with them (presets included) and validate; raise ConfigError."""
    check_overrides(overrides, conf_dir)
    overrides = [quote_lists(o) for o in overrides]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
            dcfg = hydra_compose(CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    return config_from_hydra(dcfg)


def check_strategy_names(cfg: AcmeConfig) -> None:
    """``strategy.names`` against the strategy registry (the one check the schema leaves to where they are built)."""
    try:
        from strategies.registry import STRATEGIES
    except ImportError:  # installed layout
        from acme_flwr.strategies.registry import STRATEGIES
    for name in cfg.strategy_names:
        if name not in STRATEGIES:
            raise ConfigError(f"strategy.names contains {name!r}{_nearest(name, STRATEGIES.names())}; "
                              f"allowed values: {STRATEGIES.names()}")


def check_resume(cfg: AcmeConfig, out: Path) -> None:
    """Refuse ``run.resume=true`` when ``out``'s checkpoints were written under another config (reads only)."""
    if not cfg.run.resume:
        return
    checkpoint_dir = out / "checkpoints"
    changed = resume_conflicts(checkpoint_dir, cfg.to_flat())
    if changed:
        raise ConfigError(f"run.resume=true but the checkpoints in {checkpoint_dir} were written with different "
                          f"values of {changed}; resume with the same config or use a new run.out_dir")


def toml_lines(flat: dict[str, Any]) -> str:
    """Flat config → ``--run-config`` TOML (quoted dotted keys; JSON literals are valid TOML for scalars)."""
    return "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in flat.items())
