"""A dead simulation worker costs its in-flight messages, not the run (issue 24, point 5).

The Ray error text is recognised and said in one line naming the worker; with ``run.on_lost_devices=resume`` the
strategy stops before the damaged round is checkpointed, the launcher relaunches with ``run.resume=true`` (at most
``run.max_restarts`` times), and the finished run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Error, Message

from acme_flwr import protocol as P
from acme_flwr.checkpoints import load_state
from acme_flwr.clients.client_app import app as acme_client_app
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig
from acme_flwr.packages import build_packages
from acme_flwr.results import RunRecorder
from acme_flwr.strategies import build_strategy
from acme_flwr.strategies.admission import short_reason
from acme_flwr.task import federated_data
from acme_flwr.topology import Topology
from acme_flwr.worker_death import DEATHS_FILE, WorkerDied, parse_worker_death, read_deaths, record_death

from .conftest import SMOKE
from .inprocess import InProcessGrid

# The reason of the error reply Flower's simulation sent for a device whose ClientAppActor was SIGKILLed (recorded
# from a real `+experiment=smoke` run, flwr 1.42 / ray 2.55; vce_api builds it as str(type(ex)) + ":<'" + str(ex) +
# "'>")
RECORDED = (
    "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: ClientAppActor\n\tactor_id: d5c12a0a9bf3a758e4847a7401000000\n\tpid: 29652\n"
    "\tnamespace: 091d49c3-21ee-4789-bc7d-0ad7b3827f16\n\tip: 192.0.2.2\n"
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the "
    "process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the "
    "worker crashed unexpectedly due to SIGSEGV or another unexpected error.'>")
WORKER = "Ray worker pid 29652 on 192.0.2.2 (ClientAppActor d5c12a0a, SYSTEM_ERROR)"


# ------------------------------------------------------------------------------------------------- recognising it
def test_a_recorded_ray_actor_death_names_its_worker_in_one_short_line() -> None:
    death = parse_worker_death(RECORDED)
    assert death is not None
    assert (death.error, death.actor_id, death.pid, death.ip, death.class_name, death.exit_type) == (
        "ActorDiedError", "d5c12a0a9bf3a758e4847a7401000000", 29652, "192.0.2.2", "ClientAppActor", "SYSTEM_ERROR")
    assert death.reason() == f"ActorDiedError: {WORKER} died"
    assert len(short_reason(RECORDED)) > 300  # what the line used to carry, once per device


@pytest.mark.parametrize("reason", [
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. Message: "
    "ValueError: boom'>",
    "DeviceContractError: device 3: data_fn returned 0 training samples",
    "no reply (timeout or lost)",
])
def test_other_client_errors_are_not_worker_deaths(reason: str) -> None:
    assert parse_worker_death(reason) is None


def test_a_death_without_details_still_counts() -> None:
    death = parse_worker_death("ray.exceptions.RayActorError: The actor died unexpectedly before finishing this task.")
    assert death is not None and death.reason() == "RayActorError: Ray worker died"


# ------------------------------------------------------------------------------------------------- the strategy
@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = AcmeConfig.from_flat(dict(SMOKE))
    data = federated_data(cfg, *input_shape(cfg))
    return cfg, build_packages(cfg, data, tmp_path_factory.mktemp("cache"), progress=False)


DEAD = {1, 3}  # partition-ids whose messages the dead worker held in round 2


def _worker_dies_in_round_2(msg: Message, node: int) -> object:
    """From round 2 on, every message to the dead worker's devices fails (Ray keeps handing them to the dead actor)."""
    if (msg.metadata.message_type in (P.TRAIN, P.EVALUATE) and int(msg.content[P.CONFIG]["server-round"]) >= 2
            and (node - 1000) // 7 in DEAD):
        return Message(Error(code=0, reason=RECORDED), reply_to=msg)
    return None


def _run(smoke, out: Path, rounds: int, *, resume: bool = False, intercept=None, stop: bool = True):  # noqa: ANN001, ANN202
    cfg, deployment = smoke
    recorder = RunRecorder(out, cfg.to_dict(), cfg.run.seed, resume=resume)
    strategy = build_strategy("acme", cfg, Topology(4, 2, "round_robin", 1), deployment, recorder)
    strategy.admission.stop_on_worker_death = stop
    done = strategy.restore(out / "checkpoints" / "acme.json") if resume else 0
    grid = InProcessGrid(acme_client_app, 4, {**SMOKE, "run.out_dir": str(out)}, intercept=intercept)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=rounds - done)
    return strategy.finalize(), recorder


def test_a_dead_worker_stops_before_the_damaged_round_is_checkpointed_and_resume_equals_the_uninterrupted_run(
        smoke, tmp_path, caplog) -> None:  # noqa: ANN001
    full, full_rec = _run(smoke, tmp_path / "full", 3)
    cut = tmp_path / "cut"
    with caplog.at_level(logging.WARNING), pytest.raises(WorkerDied) as died:
        _run(smoke, cut, 3, intercept=_worker_dies_in_round_2)
    assert (died.value.strategy, died.value.round, died.value.phase, died.value.devices) == ("acme", 2, "train",
                                                                                              ["1", "3"])
    assert died.value.line() == f"acme round 2 train: {WORKER} died, 2 device(s) lost their messages (1, 3)"
    lines = {r.getMessage() for r in caplog.records if "ActorDiedError" in r.getMessage()}
    assert lines == {f"acme round 2 train: 2 devices failed (1, 3): client error: ActorDiedError: {WORKER} died"}
    # the strategy and every device stay at round 1: the round the worker died in is redone, not half-kept
    assert load_state(cut / "checkpoints" / "acme.json")["round"] == 1
    devices = cut / "checkpoints" / "devices" / "acme"
    assert sorted(p.name for p in devices.iterdir()) == [f"device-{i}-round1.npz" for i in range(4)]

    resumed, resumed_rec = _run(smoke, cut, 3, resume=True)
    assert resumed["accuracy"] == full["accuracy"] and resumed["failures"]["count"] == 0
    assert resumed["bytes"] == full["bytes"]  # the aborted round's bytes are not counted (its redo is)
    assert resumed["resume_setup_bytes"] > 0 and not resumed["degraded"]
    timings = {"wall_time", "train-time-s", "train-compute-s"}

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in timings} for r in rows]

    assert strip(resumed_rec.rows) == strip(full_rec.rows)


def test_in_warn_mode_a_dead_worker_is_one_line_naming_it_and_the_run_goes_on(smoke, tmp_path, caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.WARNING):
        block, _ = _run(smoke, tmp_path, 2, intercept=_worker_dies_in_round_2, stop=False)
    assert block["degraded"] and {d["partition-id"] for d in block["lost_devices"]} == DEAD
    assert all(d["reason"] == f"client error: ActorDiedError: {WORKER} died" for d in block["lost_devices"])
    reason = f"client error: ActorDiedError: {WORKER} died"
    assert {r.getMessage() for r in caplog.records if WORKER in r.getMessage()} == {  # one line per round and phase
        f"acme round 2 train: 2 devices failed (1, 3): {reason}",
        f"acme round 2 evaluate: 2 devices failed (1, 3): {reason}",
        f"DEGRADED: acme reports on 2/4 devices; lost 1, 3 (round 2 train: {reason})"}


# ------------------------------------------------------------------------------------------------- the record
def test_deaths_are_the_summarys_restarts_and_a_fresh_run_forgets_them(tmp_path: Path) -> None:
    cfg = AcmeConfig()
    death = WorkerDied("acme", 2, "train", ["1"], parse_worker_death(RECORDED), round_bytes=123)
    record_death(tmp_path, death)
    rec = RunRecorder(tmp_path, cfg.to_dict(), 0, resume=True)
    rec.strategy("acme")
    summary = json.loads(rec.write_summary("acme").read_text())
    assert summary["restarts"] == [{"strategy": "acme", "round": 2, "phase": "train", "devices": ["1"],
                                    "round_bytes": 123, "worker": {
                                        "error": "ActorDiedError", "actor_id": "d5c12a0a9bf3a758e4847a7401000000",
                                        "pid": 29652, "ip": "192.0.2.2", "class_name": "ClientAppActor",
                                        "exit_type": "SYSTEM_ERROR"}}]
    RunRecorder(tmp_path, cfg.to_dict(), 0)  # a fresh run in the same directory
    assert not (tmp_path / DEATHS_FILE).exists() and read_deaths(tmp_path) == []


# ------------------------------------------------------------------------------------------------- the launcher
def _fake_flwr_run(deaths_on: set[int], calls: list[dict]):  # noqa: ANN202
    """Stands in for one `flwr run`: attempt i records a worker death (as the ServerApp does) if i is in
    ``deaths_on``, else writes the summary."""

    def run(out, cfg, run_config, *args, append_log=False):  # noqa: ANN001, ANN202
        calls.append({"config": Path(run_config).name, "resume": tomllib.loads(Path(run_config).read_text())[
            "run.resume"], "append_log": append_log})
        if len(calls) in deaths_on:
            record_death(out, WorkerDied("fedavg_header", 2, "train", ["1", "2"], parse_worker_death(RECORDED)))
            (out / "summary.json").write_text("{}")  # a partial summary (a strategy that finished before)
        else:
            done = {name: {} for name in cfg.strategy_names}  # a complete run's summary holds every strategy
            (out / "summary.json").write_text(json.dumps({"ok": len(calls), "strategies": done}))
        return 1 if len(calls) in deaths_on else 0, []

    return run


SMOKE_ARGS = ["+experiment=smoke"]


def test_the_launcher_resumes_after_a_dead_worker_with_one_line(tmp_path, monkeypatch, caplog) -> None:  # noqa: ANN001
    from experiments import launch as launcher

    calls: list[dict] = []
    monkeypatch.setattr(launcher, "_flwr_run", _fake_flwr_run({1}, calls))
    with caplog.at_level(logging.WARNING, logger="experiments.launch"):
        summary = launcher.launch(tmp_path, None, [*SMOKE_ARGS, "run.on_lost_devices=resume"])
    assert json.loads(summary.read_text())["ok"] == 2
    assert calls == [{"config": "run_config.toml", "resume": False, "append_log": False},
                     {"config": "run_config.resume.toml", "resume": True, "append_log": True}]
    lines = {id(r): r.getMessage() for r in caplog.records if r.name == "experiments.launch"}  # distinct records
    assert list(lines.values()) == [f"worker died: fedavg_header round 2 train, devices 1, 2, {WORKER}; resuming "
                                    "fedavg_header after its round 1 in a fresh simulation (restart 1 of at most 3)"]


def test_the_launcher_gives_up_after_max_restarts(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from experiments import launch as launcher

    calls: list[dict] = []
    monkeypatch.setattr(launcher, "_flwr_run", _fake_flwr_run({1, 2, 3}, calls))
    with pytest.raises(RuntimeError, match=r"run.max_restarts=2 restarts used up; the checkpoints in .* stay at the "
                                           r"last complete round: launch again with run.resume=true"):
        launcher.launch(tmp_path, None, [*SMOKE_ARGS, "run.on_lost_devices=resume", "run.max_restarts=2"])
    assert len(calls) == 3 and not (tmp_path / "summary.json").exists()


def test_without_resume_a_recorded_death_is_not_relaunched(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from experiments import launch as launcher

    calls: list[dict] = []
    monkeypatch.setattr(launcher, "_flwr_run", _fake_flwr_run({1}, calls))
    with pytest.raises(RuntimeError, match="0 of 3 strategies finished"):  # warn (the default): no relaunch, and
        launcher.launch(tmp_path, None, SMOKE_ARGS)  # the partial summary of the one run is a failure, not a result
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_a_worker_killed_mid_run_finishes_equal_to_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A real `flwr run` (Ray simulation, 2 ClientAppActors): the device of partition 1 SIGKILLs its own worker in
    fedavg_header's round 2 (the ClientApp's test hook, once), after acme finished; the launcher resumes and the
    summary equals a run of the same config that nobody killed. About 3 minutes on 2 loaded cores."""
    from experiments.launch import launch

    overrides = [*SMOKE_ARGS, "strategy.rounds=3", "strategy.names=acme,fedavg_header",
                 f"cloud.cache_dir={tmp_path / 'cache'}", "run.on_lost_devices=resume"]
    started = time.monotonic()
    with monkeypatch.context() as env:
        env.setenv("ACME_TEST_KILL_AT", f"fedavg_header:2:1:{tmp_path / 'killed-once'}")
        killed = json.loads(launch(tmp_path / "killed", None, overrides, stream_to=subprocess.DEVNULL,
                                   flwr_home=tmp_path / "home-killed").read_text())
    assert (tmp_path / "killed-once").exists(), "the hook never fired: nothing was killed"
    whole = json.loads(launch(tmp_path / "whole", None, overrides, stream_to=subprocess.DEVNULL,
                              flwr_home=tmp_path / "home-whole").read_text())
    print(f"killed + resumed run and uninterrupted run: {time.monotonic() - started:.0f} s")

    assert [(r["strategy"], r["round"], r["phase"]) for r in killed["restarts"]] == [("fedavg_header", 2, "train")]
    assert "1" in killed["restarts"][0]["devices"] and killed["restarts"][0]["worker"]["class_name"] == "ClientAppActor"
    assert killed["restarts"][0]["worker"]["pid"] > 0 and "restarts" not in whole
    for name, block in killed["strategies"].items():
        other = whole["strategies"][name]
        assert not block["degraded"] and block["failures"]["count"] == 0, (name, block["failures"])
        assert block["accuracy"] == other["accuracy"], name  # every device's accuracy, at the same chosen round
        assert block["bytes"] == other["bytes"], name  # per device, per tier, references
    assert "resume_setup_bytes" in killed["strategies"]["fedavg_header"]  # re-shipped after the restart, apart
    timings = {"wall_time", "train-time-s", "train-compute-s"}

    def rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "rounds.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in lines]

    assert rows("killed") == rows("whole")


def test_a_strategy_restored_from_a_finished_checkpoint_keeps_its_byte_block(smoke, tmp_path) -> None:  # noqa: ANN001
    """Strategies that finished before the worker died are restored, not run again: their block, byte references
    included (they need the devices' profiles, which only discovery brings), is the one they finished with."""
    finished, _ = _run(smoke, tmp_path, 2)
    cfg, deployment = smoke
    restored = build_strategy("acme", cfg, Topology(4, 2, "round_robin", 1), deployment,
                              RunRecorder(tmp_path, cfg.to_dict(), cfg.run.seed, resume=True))
    assert restored.restore(tmp_path / "checkpoints" / "acme.json") == 2
    block = restored.finalize()
    assert block["bytes"] == finished["bytes"] and block["bytes"]["references"]["centralized"]["bytes"] > 0
    assert block["accuracy"] == finished["accuracy"]


def test_how_a_run_reacts_to_lost_devices_may_change_on_resume(tmp_path: Path) -> None:
    from acme_flwr.strategies.server_app import check_resumable

    check_resumable(AcmeConfig(), tmp_path)
    check_resumable(AcmeConfig.from_flat({"run.resume": True, "run.on_lost_devices": "resume",
                                          "run.max_restarts": 5}), tmp_path)
