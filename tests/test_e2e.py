"""End to end: a real `flwr run .` (Ray simulation) and the public import from an installed wheel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.launch import launch

from .conftest import SMOKE

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_flwr_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # SMOKE's 2 rounds at lr 0.01 are a few SGD steps per device: its headers still predict one class (personalized
    # accuracy at chance, the same for every method). Enough local training to show that the devices learn:
    overrides = [f"{k}={v}" for k, v in SMOKE.items()] + [f"cloud.cache_dir={tmp_path / 'cache'}", "strategy.lr=0.05",
                                                          "strategy.local_epochs=3"]
    home = tmp_path / "flwr-home"  # this test's own FLWR_HOME: it names the SuperLink this test started
    summary_path = launch(out, 4, overrides, stream_to=subprocess.DEVNULL, flwr_home=home)
    summary = json.loads(summary_path.read_text())
    assert summary["strategy"] == "acme" and set(summary["strategies"]) == {"acme", "fedavg_header", "local"}
    for name, block in summary["strategies"].items():
        assert block["failures"]["count"] == 0, (name, block["failures"])
        assert len(block["accuracy"]["personalized"]["per_device"]) == 4
    chance = 1 / 10
    for name, block in summary["strategies"].items():  # every method learns beyond a constant prediction
        assert block["accuracy"]["personalized"]["mean"] > 2 * chance, (name, block["accuracy"]["personalized"])
    assert summary["bytes"]["edge-device"]["up"] > 0 and summary["bytes"]["references"]["centralized"]["bytes"] > 0
    assert summary["versions"]["flwr"].startswith("1.4") and summary["config"]["run"]["seed"] == 0
    assert [r["partition_id"] for r in summary["data"]["label_report"]] == [0, 1, 2, 3]
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy_per_round.png", "accuracy_vs_bytes.png",
                                                         "similarity_weights.png", "subnet_accuracy.png"]
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert {r["tier"] for r in rows} == {"device", "edge", "cloud"}
    assert (out / "summary.csv").read_text().count("\n") == 4  # header + 3 strategies
    assert _processes_of(home) == [], "the launcher must stop the SuperLink (and everything) it started"
    assert not home.exists(), "the launcher removes its FLWR_HOME"


def _processes_of(home: Path) -> list[int]:
    """PIDs of processes started for this FLWR_HOME (in their command line or environment): only this test's."""
    needle = str(home).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.e2e
def test_public_import_from_an_installed_wheel_outside_the_repo(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True)
    code = ("import acme_flwr, acme_flwr.strategies as s, acme_flwr.clients as c;"
            "from acme_flwr import AcmeStrategy, AcmeClient, ElasticViT, create_model;"
            "from acme_flwr.cloud.pfg import select_backbone;"
            "assert all(m.__file__.startswith(r'%s') for m in (acme_flwr, s, c)), (acme_flwr.__file__, s.__file__);"
            "print(AcmeStrategy.__module__, create_model('vit_micro_test').num_parameters())")
    code = code.replace("%s", str(target))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("acme_flwr.strategies.acme ")
