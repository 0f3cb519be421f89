"""Operations: the launcher's preflight and failure lines, the sweep's table, Flower's transport bytes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from acme_flwr.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE_ARGS = ["+experiment=smoke", "strategy.rounds=1"]


def _env(tmp_path: Path) -> dict[str, str]:
    """A private cache; Flower's tools resolvable even from a venv that layers over another one."""
    bins = {str(Path(sys.executable).parent), str(Path(sys.executable).resolve().parent)}
    return {**os.environ, "ACME_CACHE_DIR": str(tmp_path / "cache"), "ACME_PROGRESS_SECONDS": "0",
            "PATH": os.pathsep.join([os.environ.get("PATH", ""), *sorted(bins)])}


# ------------------------------------------------------------------------------------------------------- preflight


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_config_error_before_anything_starts(tmp_path: Path) -> None:
    from experiments.launch import prepare

    with pytest.raises(ConfigError, match=r"run.device='cuda' but no CUDA device is visible here; use run.device="):
        prepare(tmp_path / "out", overrides=[*SMOKE_ARGS, "run.device=cuda"])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--out", str(tmp_path / "out"), *SMOKE_ARGS,
                           "run.device=cuda"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "config error: run.device='cuda' but no CUDA device is visible here; use run.device=auto or cpu"]
    assert not (tmp_path / "out").exists() and time.monotonic() - started < 60


def test_preflight_calls_check_data_files_when_the_data_module_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call site for corrupt files: whatever ``acme_flwr.data.check_data_files`` raises as a missing/corrupt
    file becomes one ConfigError line."""
    import acme_flwr.data as data
    from acme_flwr.config import AcmeConfig
    from experiments.launch import preflight

    seen = []

    def check(cfg: AcmeConfig) -> None:
        seen.append(cfg.data.name)
        raise data.DataNotFoundError("data.root='/x': train-images-idx3-ubyte.gz is truncated; re-install it\nmore")

    monkeypatch.setattr(data, "check_data_files", check, raising=False)
    with pytest.raises(ConfigError) as err:
        preflight(AcmeConfig())
    assert seen == ["digits"] and str(err.value) == "data.root='/x': train-images-idx3-ubyte.gz is truncated; " \
                                                    "re-install it"


# ------------------------------------------------------------------------------------------- ServerApp failures


def test_the_serverapps_exception_line_reaches_the_terminal_and_the_error() -> None:
    from experiments.launch import failure_line, show_progress

    log = "\n".join([
        "\x1b[92mINFO \x1b[0m:      results go to /tmp/x",
        "\x1b[91mERROR \x1b[0m:     Simulation raised an exception",
        "Traceback (most recent call last):",
        '  File "/x/flwr/simulation/app.py", line 337, in run_simulation_process',
        "FileNotFoundError: [Errno 2] No such file or directory: '/nope.json'",
        "The above exception was the direct cause of the following exception:",
        "    raise ConfigError(msg)",
        "acme_flwr.errors.ConfigError: cloud.cost_model='measured:/nope.json': no such file; give a JSON latency "
        "table",
        "Exit Code: 700",
    ]) + "\n"
    term, full = io.StringIO(), io.StringIO()
    errors = show_progress(io.BytesIO(log.encode()), full, term)
    why = ("acme_flwr.errors.ConfigError: cloud.cost_model='measured:/nope.json': no such file; give a JSON latency "
           "table")
    assert errors == ["ERROR Simulation raised an exception", "FileNotFoundError: [Errno 2] No such file or "
                      "directory: '/nope.json'", why] and failure_line(errors) == why  # the raised one, not its cause
    assert f"  {why}" in term.getvalue().splitlines() and full.getvalue() == log
    # Flower's generic wrappers do not hide the line that says why; without an exception line, the first ERROR line
    assert failure_line(["ERROR Simulation raised an exception", "RuntimeError: Simulation Runtime crashed.", why,
                         "RuntimeError: An error was encountered. Ending simulation."]) == why
    ray_failed = "ERROR The current node timed out during startup."
    assert failure_line([ray_failed, "RuntimeError: Simulation Runtime crashed."]) == ray_failed
    verbose = io.StringIO()
    assert show_progress(io.BytesIO(log.encode()), io.StringIO(), verbose, verbose=True) == errors
    assert verbose.getvalue() == log  # everything, each line once


@pytest.mark.e2e
def test_a_failing_serverapp_says_why_on_stderr(tmp_path: Path) -> None:
    """A ConfigError only the ServerApp can raise (a missing measured cost-model file) is printed by the launcher,
    not only in run.log."""
    missing = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", "--out", str(tmp_path / "out"), *SMOKE_ARGS,
                           f"cloud.cost_model=measured:{missing}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=_env(tmp_path))
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: acme_flwr.errors.ConfigError: cloud.cost_model='measured:{missing}'"), last
    assert "run.log" in last and f"ConfigError: cloud.cost_model='measured:{missing}'" in proc.stdout


# ------------------------------------------------------------------------------------------------------- sweeps


def test_the_sweep_plans_its_jobs_and_keys() -> None:
    from experiments.sweep import _Sweep

    sweep = _Sweep()
    sweep.plan(["+experiment=smoke", "partition.alpha=0.1,1.0", "run.seed=range(0,3)", "strategy.names=[a,b]"])
    assert sweep.keys == ["partition.alpha", "run.seed"] and sweep.total == 6
    assert sweep.job_line(0, {"partition.alpha": "0.1", "run.seed": "0"}) == "job 1/6: partition.alpha=0.1 run.seed=0"


def _summary(path: Path, accs: dict[str, float]) -> Path:
    block = {name: {"accuracy": {"personalized": {"mean": a, "std": 0.1, "worst10": a / 2}},
                    "bytes": {"total": 1000, "references": {"fedavg_full": {"bytes": 4000}}},
                    "failures": {"count": 0}, "devices": {"reported": 4, "expected": 4}} for name, a in accs.items()}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"strategies": block, "out_dir": str(path)}))
    return path / "summary.json"


def test_the_sweep_ends_with_one_table_and_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.sweep import _Sweep

    sweep = _Sweep()
    sweep.plan(["partition.alpha=0.1,1.0,5.0"])
    sweep.dir = tmp_path
    sweep.jobs = [{"num": 0, "values": {"partition.alpha": "0.1"},
                   "summary": str(_summary(tmp_path / "0", {"acme": 0.8, "local": 0.7}))},
                  {"num": 1, "values": {"partition.alpha": "1.0"}, "error": "the run wrote no summary.json"},
                  {"num": 2, "values": {"partition.alpha": "5.0"},
                   "summary": str(_summary(tmp_path / "2", {"acme": 0.9, "local": 0.6}))}]
    assert sweep.finish() == 1  # a job failed
    out = capsys.readouterr().out.splitlines()
    table = out[out.index(next(line for line in out if line.startswith("job  partition.alpha"))):]
    assert table[0].split()[:4] == ["job", "partition.alpha", "strategy", "acc_mean"]
    assert [r.split()[:4] for r in table[1:6]] == [["0", "0.1", "acme", "0.8"], ["0", "0.1", "local", "0.7"],
                                                   ["1", "1.0", "-", "FAILED:"], ["2", "5.0", "acme", "0.9"],
                                                   ["2", "5.0", "local", "0.6"]]
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["job"], r["partition.alpha"], r["strategy"], r["acc_mean"]) for r in rows] == [
        ("0", "0.1", "acme", "0.8"), ("0", "0.1", "local", "0.7"), ("1", "1.0", "-", ""), ("2", "5.0", "acme", "0.9"),
        ("2", "5.0", "local", "0.6")]
    assert rows[0]["ratio_to_fedavg"] == "0.25" and rows[0]["devices"] == "4/4"


@pytest.mark.e2e
def test_a_two_job_hydra_sweep_prints_short_jobs_and_one_table(tmp_path: Path) -> None:
    """``-m +experiment=smoke partition.alpha=0.1,1.0``: each job prints the launcher's short view under job i/n (no
    Flower INFO lines), the sweep ends with a row per job x strategy and writes sweep.csv; ~2 min here."""
    multirun = tmp_path / "multirun"
    proc = subprocess.run([sys.executable, "-m", "experiments.sweep", "-m", *SMOKE_ARGS, "partition.alpha=0.1,1.0",
                           f"hydra.sweep.dir={multirun}"], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert "job 1/2: partition.alpha=0.1" in out
    assert any(line.startswith("job 2/2: partition.alpha=1.0 (") and "ETA" in line for line in out)
    assert any("cloud stage teacher: step 1/" in line for line in out)  # the first job trains the cloud stage
    assert not any("configure_train" in line or "aggregate_train" in line for line in out)  # not the full log
    assert all((multirun / str(i) / "run.log").stat().st_size > 0 for i in (0, 1))
    rows = list(csv.DictReader((multirun / "sweep.csv").open()))
    strategies = json.loads((multirun / "0" / "summary.json").read_text())["strategies"]
    assert [(r["job"], r["partition.alpha"]) for r in rows] == [
        (j, a) for j, a in (("0", "0.1"), ("1", "1.0")) for _ in strategies]
    assert {r["strategy"] for r in rows} == set(strategies)
    header = next(i for i, line in enumerate(out) if line.startswith("job  partition.alpha  strategy"))
    assert len(out[header + 1:header + 1 + len(rows)]) == len(rows) and f"table: {multirun / 'sweep.csv'}" in out


# --------------------------------------------------------------------------------------------------------- bytes


def test_transport_bytes_count_the_object_tree_beside_the_content() -> None:
    """Flower's transport of a message with arrays moves more than its content (a header per object, ids); identical
    arrays travel once (one object id); the content count is what the ledger adds."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from acme_flwr.comm import message_bytes
    from experiments.bench_bytes import transport_bytes

    arrays = [np.arange(i, i + 100, dtype=np.float32) for i in range(10)]
    one = transport_bytes(RecordDict({"a": ArrayRecord(arrays), "c": ConfigRecord({"x": 1})}))
    assert one["content"] == message_bytes(RecordDict({"a": ArrayRecord(arrays), "c": ConfigRecord({"x": 1})}))
    assert one["arrays"] == 10 and one["objects"] == 10 * 2 + 4  # array + chunk each, records, dict, message
    assert one["transport"] > one["content"] + 10 * 2 * 64  # at least an id per array and per chunk
    same = transport_bytes(RecordDict({"a": ArrayRecord([arrays[0]] * 10), "c": ConfigRecord({"x": 1})}))
    assert same["content"] == one["content"] and same["objects"] == 1 * 2 + 4 and same["transport"] < one["transport"]
