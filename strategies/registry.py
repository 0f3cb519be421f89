"""Strategy factories by name: how a run's config becomes each strategy it compares (decorator registry).

A factory takes ``(cfg, topology, deployment, recorder)`` and returns the strategy; ``_common`` gives the settings
every strategy of a run takes from the config. The ServerApp removes the shared feature directory itself at the end
of the run (its strategies share it), so the strategies built here leave it in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import Strategy

from acme_flwr.config import AcmeConfig
from acme_flwr.packages import CloudPackages
from acme_flwr.registry import Registry
from acme_flwr.results import RunRecorder
from acme_flwr.topology import Topology

from .acme import AcmeStrategy
from .ditto import Ditto
from .fedbabu import FedBABU
from .fedrep import FedRep
from .harness import config_kwargs
from .header_fedavg import HeaderFedAvg

Factory = Callable[[AcmeConfig, Topology, CloudPackages, RunRecorder], Strategy]
STRATEGIES: Registry[Factory] = Registry("strategy")


def _common(cfg: AcmeConfig, recorder: RunRecorder, name: str) -> dict[str, Any]:
    return {**config_kwargs(cfg, recorder, name), "remove_run_files": False}


def _acme_variant(name: str, variant: str | None = None, distance: str | None = None,
                  temperature: float | None = None) -> Factory:
    """ACME with ``variant``/``distance``/``temperature`` fixed (``None``: the ``strategy.*`` config value)."""
    def factory(cfg: AcmeConfig, topology: Topology, deployment: CloudPackages, recorder: RunRecorder) -> Strategy:
        fixed = {k: v for k, v in (("variant", variant), ("distance", distance), ("temperature", temperature))
                 if v is not None}
        return AcmeStrategy.from_config(cfg, topology=topology, deployment=deployment, recorder=recorder, name=name,
                                        remove_run_files=False, **fixed)

    return factory


STRATEGIES.register("acme")(_acme_variant("acme"))
# the paper's ablation (Table IV) as names, so one run compares them on the same devices and packages
for _variant, _distance in (("wo_pruning", None), ("pruning_alone", None), ("pruning_avg", None),
                            ("pruning_per", "emd"), ("pruning_per", "js")):
    _vname = f"acme_{_variant}" + (f"_{_distance}" if _distance else "")
    STRATEGIES.register(_vname)(_acme_variant(_vname, _variant, _distance))
# similarity-weighted ACME at fixed softmax temperatures (T = 1 is the original's nearly uniform weights): the report
# derives "acme_valT", the temperature with the best mean validation accuracy per job, from these runs
for _temperature in ("1", "0.1", "0.01"):
    STRATEGIES.register(f"acme_t{_temperature}")(
        _acme_variant(f"acme_t{_temperature}", "pruning_per", None, float(_temperature)))


def _header_baseline(name: str, share: str) -> Factory:
    def factory(cfg: AcmeConfig, topology: Topology, deployment: CloudPackages, recorder: RunRecorder) -> Strategy:
        return HeaderFedAvg(topology=topology, deployment=deployment, share=share, **_common(cfg, recorder, name))

    return factory


for _name, _share in (("fedavg_header", "all"), ("fedper", "body"), ("local", "none")):
    STRATEGIES.register(_name)(_header_baseline(_name, _share))


@STRATEGIES.register("fedrep")
def _fedrep(cfg: AcmeConfig, topology: Topology, deployment: CloudPackages, recorder: RunRecorder) -> Strategy:
    s = cfg.strategy
    return FedRep(topology=topology, deployment=deployment, head_epochs=s.fedrep_head_epochs,
                  body_epochs=s.fedrep_body_epochs, **_common(cfg, recorder, "fedrep"))


@STRATEGIES.register("fedbabu")
def _fedbabu(cfg: AcmeConfig, topology: Topology, deployment: CloudPackages, recorder: RunRecorder) -> Strategy:
    return FedBABU(topology=topology, deployment=deployment, finetune_epochs=cfg.strategy.fedbabu_finetune_epochs,
                   **_common(cfg, recorder, "fedbabu"))


@STRATEGIES.register("ditto")
def _ditto(cfg: AcmeConfig, topology: Topology, deployment: CloudPackages, recorder: RunRecorder) -> Strategy:
    s = cfg.strategy
    return Ditto(topology=topology, deployment=deployment, lam=s.ditto_lambda, personal_epochs=s.ditto_personal_epochs,
                 **_common(cfg, recorder, "ditto"))


def build_strategy(name: str, cfg: AcmeConfig, topology: Topology, deployment: CloudPackages,
                   recorder: RunRecorder) -> Strategy:
    return STRATEGIES.get(name)(cfg, topology, deployment, recorder)
