"""The launcher (issue 13): config errors in one line before anything starts, no results lost, no process left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from acme_flwr.config import AcmeConfig, ConfigError
from experiments import procs
from experiments.launch import fab_source, launch
from experiments.runconfig import check_overrides, compose, schema_keys

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, object]:
    """Every file's bytes and mtime and every directory under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _previous_run(out: Path, cfg: AcmeConfig) -> None:
    """A finished run's files in ``out`` (checkpoints written under ``cfg``)."""
    (out / "checkpoints").mkdir(parents=True)
    for name, text in {"summary.json": '{"old": true}', "summary.csv": "strategy\nacme\n", "config.json": "{}",
                       "rounds.jsonl": '{"round": 1}\n', "run_config.toml": '"run.seed" = 0\n'}.items():
        (out / name).write_text(text)
    flat = {k: v for k, v in cfg.to_flat().items() if k != "run.resume"}
    (out / "checkpoints" / "config.json").write_text(json.dumps(flat, indent=1, sort_keys=True))
    (out / "checkpoints" / "acme.pkl").write_bytes(b"\x80state")


# ------------------------------------------------------------------------------------------------- 1. fail fast
@pytest.mark.parametrize(("overrides", "message"), [
    (["partition.alpah=0.1"], "unknown config key 'partition.alpah'; did you mean 'partition.alpha'?"),
    (["strategy.round=3"], "did you mean 'strategy.rounds'?"),
    (["+experiment=smok"], "experiment='smok' is not a known option; did you mean 'smoke'?"),
    (["experiment=smoke"], "write +experiment=smoke"),
    (["dataset=synth"], "did you mean 'synthetic'?"),
    (["partition.alpha=0.1", "partition.alpha=0.5"], "duplicate override of 'partition.alpha'"),
    (["alpha"], "must look like section.key=value"),
])
def test_bad_overrides_are_named_before_hydra(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_overrides(overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["partition.alpha=-1"], "partition.alpha=-1.0 is out of range"),
    (["topology.num_edges=5", "+experiment=smoke"], "topology.num_edges=5 exceeds topology.num_devices=4"),
    (["strategy.names=acme,fedavgg"], "strategy.names contains 'fedavgg'; did you mean 'fedavg_header'?"),
    (["cloud.enabled=maybe"], "cloud.enabled='maybe': expected true or false"),
])
def test_bad_values_are_refused_by_the_schema(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose(overrides)


def test_presets_and_lists_compose_as_in_the_sweep() -> None:
    cfg = compose(["+experiment=smoke", "cloud.widths=0.5,1.0", "strategy.names=acme,local"])
    assert cfg.topology.num_devices == 4 and cfg.model.name == "vit_micro_test" and cfg.data.name == "synthetic"
    assert cfg.cloud.widths == "0.5,1.0" and cfg.strategy_names == ["acme", "local"]
    assert compose([]).to_flat() == AcmeConfig().to_flat()  # conf/ defaults are the schema's


def test_every_schema_key_is_a_flower_run_config_key() -> None:
    """Otherwise `flwr run` refuses the launcher's run config with an anonymous '[code: 15]'."""
    defaults = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert sorted(defaults) == schema_keys()


@pytest.mark.parametrize("module", ["experiments.launch", "experiments.sweep"])
def test_cli_config_error_is_one_line_fast_and_touches_nothing(tmp_path: Path, module: str) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", module, f"run.out_dir={out}", "+experiment=smoke",
                          "partition.alpah=0.1"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "config error: unknown config key 'partition.alpah'; did you mean 'partition.alpha'? (keys of section "
        f"'partition': {[k for k in schema_keys() if k.startswith('partition.')]})"]
    assert elapsed < 20 and not out.exists() and not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------------------------------------- 2. nothing lost
def test_a_refused_config_leaves_the_previous_results_byte_identical(tmp_path: Path) -> None:
    _previous_run(tmp_path, AcmeConfig.from_flat({"run.out_dir": str(tmp_path)}))
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match="out of range"):
        launch(tmp_path, None, ["partition.alpha=0"])
    assert _snapshot(tmp_path) == before


def test_a_refused_resume_leaves_the_directory_byte_identical(tmp_path: Path) -> None:
    _previous_run(tmp_path, AcmeConfig.from_flat({"run.out_dir": str(tmp_path), "partition.alpha": 0.5}))
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"different values of \['partition.alpha'\]"):
        launch(tmp_path, None, ["run.resume=true", "partition.alpha=0.1"])
    assert _snapshot(tmp_path) == before
    # the ServerApp's own check refuses before it writes anything, too
    from strategies.server_app import check_resumable

    cfg = AcmeConfig.from_flat({"run.out_dir": str(tmp_path), "run.resume": True, "partition.alpha": 0.1})
    with pytest.raises(ConfigError, match="different values"):
        check_resumable(cfg, tmp_path / "checkpoints")
    assert _snapshot(tmp_path) == before


def test_a_fresh_run_removes_the_previous_summary_only_once_accepted(tmp_path: Path) -> None:
    from acme_flwr.results import RunRecorder

    _previous_run(tmp_path, AcmeConfig())
    RunRecorder(tmp_path, {}, 0, resume=True)
    assert (tmp_path / "summary.json").exists()  # a resume keeps what is done
    RunRecorder(tmp_path, {}, 0, resume=False)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "summary.csv").exists()
    assert (tmp_path / "rounds.jsonl").read_text() == ""


def test_a_run_whose_later_strategy_failed_is_a_failure_that_keeps_the_finished_ones(tmp_path: Path) -> None:
    """The ServerApp rewrites summary.json after every strategy, so a run that crashed in its 4th strategy leaves a
    fresh summary of the first 3: that is not success (a regime-grid job was once recorded as done that way)."""
    from experiments.launch import accept_run

    out, cfg, _, written = accept_run(tmp_path / "out", None, ["+experiment=smoke", "strategy.names=acme,local"],
                                      None, REPO)
    (out / "summary.json").write_text(json.dumps({"strategies": {"acme": {}}}))
    with pytest.raises(RuntimeError, match=r"ValueError: boom \(the run failed: flwr exit code 1; 1 of 2 strategies "
                                           r"finished, local did not; the finished ones are kept in .*summary.json"):
        written("the run", 1, "ValueError: boom")
    assert json.loads((out / "summary.json").read_text()) == {"strategies": {"acme": {}}}  # nothing lost
    (out / "summary.json").write_text(json.dumps({"strategies": {"acme": {}, "local": {}}}))
    assert written("the run", 0) == out / "summary.json"


# ------------------------------------------------------------------------------------------------- 3. processes
def _start_smoke_launcher(tmp_path: Path, waits: dict[str, float]) -> tuple[subprocess.Popen[str], int, Path]:
    """A launcher on the smoke preset, returned once its SuperLink is up and then the processes named in ``waits``
    (comm name → seconds to wait at most) are."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.launch", "--out", str(tmp_path / "out"),
                             "+experiment=smoke", f"cloud.cache_dir={tmp_path / 'cache'}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 90
    for line in proc.stderr:
        found = re.match(r"SuperLink up: pid (\d+) \(process group \d+\), FLWR_HOME (\S+)", line)
        if found:
            superlink, home = int(found[1]), Path(found[2])
            break
        assert time.monotonic() < deadline, "no SuperLink within 90 s"
    else:
        pytest.fail(f"the launcher ended (rc {proc.wait()}) before its SuperLink was up")
    # then until the run is going (watchdog, SuperLink, SuperExec, flwr run, flwr-simulation), and Ray if it comes
    for name, wait in waits.items():
        until = time.monotonic() + wait
        while time.monotonic() < until and name not in _names(procs.processes_with(str(home))):
            time.sleep(0.2)
    return proc, superlink, home


def _names(pids: list[int] | set[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return sorted(out)


def _ours(proc: subprocess.Popen[str], superlink: int, home: Path) -> set[int]:
    """Every process this launch started: the launcher's descendants, the SuperLink's group and FLWR_HOME users."""
    started = procs.with_descendants([proc.pid, *procs.processes_with(str(home)), *procs.group_members([superlink])])
    return started - {proc.pid}


def _gone_within(pids: set[int], home: Path, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not any(procs.alive(p) for p in pids) and not procs.processes_with(str(home)) and not home.exists():
            return time.monotonic() - started
        time.sleep(0.1)
    left = sorted(p for p in pids if procs.alive(p))
    procs.cleanup(home)  # do not leave them to the next test
    pytest.fail(f"after {seconds} s still alive: {left}; FLWR_HOME exists: {home.exists()}")


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "waits"), [
    (signal.SIGKILL, {"flwr-simulation": 60.0}),  # the run is under way: SuperLink, SuperExec, flwr-simulation
    (signal.SIGTERM, {"flower-superexe": 20.0}),
])
def test_nothing_outlives_the_launcher(tmp_path: Path, sig: signal.Signals, waits: dict[str, float]) -> None:
    t0 = time.monotonic()
    proc, superlink, home = _start_smoke_launcher(tmp_path, waits)
    print(f"launch to signal {time.monotonic() - t0:.1f} s")
    try:
        pids = _ours(proc, superlink, home)
        assert superlink in pids and len(pids) >= 3, pids  # SuperLink, flwr run, watchdog (and SuperExec, ...)
        names = _names(pids)
        killed = time.monotonic()
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=30)
        _gone_within(pids, home, 15.0)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        procs.cleanup(home, [superlink])
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM)
    print(f"{sig.name}: {len(pids)} processes of the launch ({', '.join(names)}) gone and FLWR_HOME removed "
          f"{took:.2f} s after the signal")


def test_peak_memory_sees_the_processes_a_benchmark_starts() -> None:
    """bench_paper_dry's monitor reads every descendant's peak RSS (here a child holding 64 MiB)."""
    import subprocess
    import sys

    from experiments.bench_paper_dry import PeakMemory

    monitor = PeakMemory(interval=0.1)
    monitor.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(1.5)"])
    child.wait()
    monitor.stop()
    roles = monitor.by_role()
    assert roles["other"]["max_peak_mib"] >= 64
    assert roles["launcher"]["processes"] == 1


def test_the_fab_is_built_from_a_snapshot_of_the_app_not_the_checkout(tmp_path: Path) -> None:
    """Flower reads every file under the app directory before filtering (``.venv`` too: ~9 s per run)."""
    with fab_source(REPO) as fab:
        assert fab != REPO
        assert (fab / "pyproject.toml").read_bytes() == (REPO / "pyproject.toml").read_bytes()
        assert (fab / "strategies" / "server_app.py").is_file() and (fab / "clients" / "client_app.py").is_file()
        assert (fab / "conf" / "config.yaml").is_file()
        assert not (fab / ".venv").exists() and not (fab / "tests").exists() and not (fab / ".git").exists()
    assert not fab.exists()
    with fab_source(tmp_path) as same:  # not a checkout (e.g. a sweep's own snapshot): used as it is
        assert same == tmp_path
    assert tmp_path.exists()
