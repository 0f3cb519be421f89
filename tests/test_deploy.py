"""The same ServerApp and ClientApp on Flower's Deployment Engine (loopback only): a TLS SuperLink with SuperNode
authentication and one SuperNode per device gives the simulation's metrics; an unregistered key and plain text are
refused; nothing the deployment started is left behind."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from experiments import procs
from experiments.deploy_local import LocalDeployment, deploy, make_node_key
from experiments.launch import launch

from .conftest import SMOKE

TIMINGS = {"wall_time", "train-time-s", "train-compute-s"}
# two SuperNodes, one edge, one strategy, one round: every ClientApp message of the deployment is a fresh process
SMALL = {**SMOKE, "topology.num_devices": 2, "topology.num_edges": 1, "strategy.names": "acme", "strategy.rounds": 1}


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    return a == b


@pytest.mark.e2e
def test_deployed_run_gives_the_simulations_metrics(tmp_path: Path) -> None:
    overrides = [f"{k}={v}" for k, v in SMALL.items()] + [f"cloud.cache_dir={tmp_path / 'cache'}"]
    sim = json.loads(launch(tmp_path / "sim", 2, overrides, stream_to=subprocess.DEVNULL,
                            flwr_home=tmp_path / "sim-home").read_text())
    home = tmp_path / "deploy-home"
    started = time.monotonic()
    dep = json.loads(deploy(tmp_path / "dep", 2, overrides, stream_to=subprocess.DEVNULL, flwr_home=home).read_text())
    took = time.monotonic() - started
    for summary in (sim, dep):
        assert summary["failures"]["count"] == 0, summary["failures"]
        assert summary["devices"] == {"expected": 2, "reported": 2} and summary["lost_devices"] == []
    assert _close(dep["accuracy"], sim["accuracy"]), (dep["accuracy"], sim["accuracy"])
    assert dep["bytes"]["total"] == sim["bytes"]["total"]
    assert _close(_rows(tmp_path / "dep"), _rows(tmp_path / "sim"))  # every device, edge and cloud row
    assert procs.processes_with(str(home)) == [] and not home.exists(), "the deployment left processes or files"
    print(f"deployed run: {took:.0f} s")


@pytest.mark.e2e
def test_unregistered_supernode_and_plain_text_are_refused(tmp_path: Path) -> None:
    run = LocalDeployment(tmp_path / "home")
    try:
        run.start_superlink()
        with pytest.raises(OSError):  # plain HTTP to the TLS SuperLink: no answer
            urllib.request.urlopen(f"http://{run.address}/health", timeout=5)  # noqa: S310 - loopback test
        registered = make_node_key(run.home / "keys", "registered")
        run.register(registered)
        stranger = run.start_supernode(1, 2, make_node_key(run.home / "keys", "stranger"), max_retries=0)
        good = run.start_supernode(0, 2, registered)
        assert stranger.wait(timeout=90) != 0, "a SuperNode whose key is not registered must not join"
        log = (run.logs / "supernode-1.log").read_text()
        assert "Failed to activate SuperNode" in log or "2004" in log, log[-500:]
        deadline = time.monotonic() + 60
        while "online" not in run.flwr("supernode", "ls").stdout and time.monotonic() < deadline:
            time.sleep(1)
        nodes = run.flwr("supernode", "ls", "--format", "json").stdout
        assert good.poll() is None and json.loads(nodes[nodes.index("{"):]).get("nodes"), nodes
    finally:
        run.close()
    assert procs.processes_with(str(run.home)) == [] and not run.home.exists()
