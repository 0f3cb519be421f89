"""The tutorial's app (docs/tutorial-own-app.md, tests/own_app): a user's own Flower app with the full ACME loop on
its own data, under ``flwr run``, so the tutorial cannot rot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from acme_flwr.config import AcmeConfig
from acme_flwr.packages import CloudData, build_packages
from acme_flwr.task import DataContractError, TensorSplit

APP = Path(__file__).resolve().parent / "own_app"
DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial-own-app.md"


def test_the_tutorial_shows_the_apps_code() -> None:
    """Every code block of the tutorial that names a file of the app is that file's text (or a part of it)."""
    doc = DOC.read_text()
    blocks = doc.split("```python\n")[1:]
    assert len(blocks) >= 3
    for block in blocks:
        code, _, _ = block.partition("```")
        first = code.splitlines()[0]
        if first.startswith("# ownapp/"):
            body = "\n".join(code.splitlines()[1:]).strip()
            assert body in (APP / first[2:].strip()).read_text(), first


def test_cloud_data_takes_the_users_tensors_and_checks_them(tmp_path: Path) -> None:
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 3
    data = CloudData(TensorSplit(x, y), TensorSplit(x[:10], y[:10]))
    assert data.num_classes == 3 and data.cloud() == (data.train, data.val)
    with pytest.raises(DataContractError, match=r"CloudData.val.y: expected shape \(10,\)"):
        CloudData(TensorSplit(x, y), TensorSplit(x[:10], y[:9]))
    with pytest.raises(DataContractError, match="CloudData.num_classes: expected > the largest label"):
        CloudData(TensorSplit(x, y), TensorSplit(x, y), num_classes=2)
    cfg = AcmeConfig.from_flat({"model.name": "vit_micro_test", "cloud.enabled": False, "model.header_channels": 4,
                                "cloud.depths": "0.5,1.0",
                                "cloud.header_epochs": 1})
    wrong = CloudData(TensorSplit(torch.randn(8, 3, 8, 8), y[:8]), TensorSplit(torch.randn(8, 3, 8, 8), y[:8]))
    with pytest.raises(DataContractError, match=r"cloud data: train.x: expected shape \(N, 1, 8, 8\)"):
        build_packages(cfg, wrong, None, progress=False)
    packages = build_packages(cfg, data, None, progress=False)
    assert {p.header_spec["num_classes"] for p in packages.packages.values()} == {3}


@pytest.mark.e2e
def test_own_app_runs_full_acme_under_flwr_run(tmp_path: Path) -> None:
    from experiments.launch import _Launch, _tool

    app, out = tmp_path / "app", tmp_path / "out"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    out.mkdir()
    run = _Launch(tmp_path / "flwr-home")
    try:
        run.start_superlink()
        cmd = [_tool("flwr"), "run", str(app), "--stream", "--run-config", f"out-dir={json.dumps(str(out))}",
               "--federation-config", "num-supernodes=4 client-resources-num-cpus=1"]
        proc = run.spawn(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log = proc.communicate(timeout=420)[0].decode(errors="replace")
    finally:
        run.close()
    (tmp_path / "run.log").write_text(log)
    assert "Traceback" not in log, log[-3000:]
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["mode"].startswith("acme (") and summary["failures"]["count"] == 0, summary["failures"]
    assert summary["devices"]["reported"] == 4
    assert summary["accuracy"]["personalized"]["mean"] is not None
    assert summary["bytes"]["references"]["centralized"]["bytes"] == sum(48 * (64 + 1) for _ in range(4))
    assert set(report["picks"]) == {"small", "large"}
    # start()'s Result holds FedAvg-style aggregated device metrics for every round (full mode has no global model)
    assert sorted(report["rounds"]["evaluate"]) == ["1", "2", "3"], report["rounds"]
    assert all("val-acc" in m and "test-acc" in m for m in report["rounds"]["evaluate"].values()), report["rounds"]
    assert sorted(report["rounds"]["train"]) == ["1", "2", "3"], report["rounds"]
    # the strategy removed this run's own directories (only its run id: other runs on the machine have theirs)
    run_id = re.search(r"Successfully started run (\d+)", log)
    assert run_id, log[:2000]
    left = [Path(tempfile.gettempdir()) / f"acme-{kind}-{run_id.group(1)}" for kind in ("models", "features")]
    assert not [p for p in left if p.exists()], left
