"""Progress of long work (stage, step/epoch, ETA, one line each) and explicit thread counts (cache key, provenance)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from acme_flwr import accel
from acme_flwr.cloud.models import input_shape
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.logs import PROGRESS_ENV, PROGRESS_MARK, Progress, format_seconds
from acme_flwr.packages import build_packages
from acme_flwr.task import federated_data

from .conftest import SMOKE


class _Lines(logging.Handler):
    def __init__(self, only_progress: bool = False) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.only_progress = only_progress

    def emit(self, record: logging.LogRecord) -> None:
        if not self.only_progress or record.getMessage().startswith(PROGRESS_MARK):
            self.lines.append(record.getMessage())


@pytest.fixture
def progress_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``[PROGRESS]`` line our loggers write (a line per step: ``ACME_PROGRESS_SECONDS=0``)."""
    monkeypatch.setenv(PROGRESS_ENV, "0")
    handler = _Lines(only_progress=True)
    root = logging.getLogger("acme_flwr")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_progress_lines_are_throttled_carry_epoch_and_eta_and_end_with_done() -> None:
    clock = [0.0]
    handler = _Lines()
    log = logging.getLogger("test_progress.unit")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    report = Progress("cloud stage teacher", 30, per_epoch=10, every=10.0, log=log, clock=lambda: clock[0])
    for i in range(30):
        clock[0] += 10.0 if i == 0 else 2.0  # the first step carries start-up costs: not part of the ETA's rate
        report.step(loss=0.5)
    log.removeHandler(handler)
    lines = handler.lines
    # the first step, then one line per 10 s (every 5th step), and the last: 7 lines for 30 steps, not 30
    assert len(lines) == 7, lines
    assert lines[0] == f"{PROGRESS_MARK} cloud stage teacher: step 1/30, epoch 1/3, loss 0.5000, 10 s elapsed"
    assert "step 11/30, epoch 2/3" in lines[2] and "ETA 38 s" in lines[2]
    assert lines[-1].endswith("step 30/30, epoch 3/3, loss 0.5000, 1 min 08 s elapsed, done")
    assert len(set(lines)) == len(lines)  # each line once
    assert format_seconds(4000) == "1 h 06 min" and format_seconds(59.4) == "59 s"


def test_every_cloud_and_edge_stage_reports_progress(tmp_path: Path, progress_lines: list[str]) -> None:
    """The three cloud stages, every warm header and (with NAS) the header search and fine-tune each report their
    step/epoch out of the total, and finish with a ``done`` line."""
    cfg = AcmeConfig.from_flat(SMOKE)
    build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
    for stage in ("teacher", "width", "depth"):
        mine = [line for line in progress_lines if f"cloud stage {stage}:" in line]
        assert mine and "step 1/" in mine[0] and mine[-1].endswith("done"), (stage, mine)
        assert all("ETA" in line for line in mine[1:-1]) and (stage != "teacher" or len(mine) > 2), (stage, mine)
    warm = [line for line in progress_lines if "warm header w=" in line]
    assert any("epoch 5/5" in line and line.endswith("done") for line in warm), warm

    nas = AcmeConfig.from_flat({**SMOKE, "cloud.teacher_epochs": 2, "cloud.header_epochs": 1, "nas.enabled": True,
                                "nas.epochs": 2, "nas.controller_steps": 3, "nas.child_channels": 4,
                                "nas.finetune_epochs": 2})
    progress_lines.clear()
    build_packages(nas, federated_data(nas, *input_shape(nas)), tmp_path / "nas", progress=False)
    search = [line for line in progress_lines if "header search:" in line]
    assert [s.split(": ", 1)[1].split(",")[0] for s in search] == ["epoch 1/2", "epoch 2/2"]
    assert search[-1].endswith("done") and "best_val" in search[-1]
    assert any("header fine-tune: epoch 2/2" in line for line in progress_lines)


def test_the_launcher_shows_progress_lines_once_and_keeps_the_full_log() -> None:
    from experiments.launch import show_progress

    log = "\n".join([
        "\x1b[92mINFO \x1b[0m:      [PROGRESS] cloud stage teacher: step 1/90, epoch 1/3, loss 2.3000, 1 s elapsed, "
        "ETA 1 min 29 s",
        "\x1b[92mINFO \x1b[0m:      cloud stage teacher: 90 steps, loss 2.3 -> 0.4, 90.0 s",
        "\x1b[92mINFO \x1b[0m:      cloud cache miss: saved elastic backbone to /x.pt",
        "\x1b[92mINFO \x1b[0m:      [PROGRESS] warm header w=0.5 d=1: epoch 5/5, val_acc 0.9000, 3 s elapsed, done",
    ]) + "\n"
    full, term = io.StringIO(), io.StringIO()
    show_progress(io.BytesIO(log.encode()), full, term)
    assert full.getvalue() == log
    assert term.getvalue().splitlines() == [
        "  cloud stage teacher: step 1/90, epoch 1/3, loss 2.3000, 1 s elapsed, ETA 1 min 29 s",
        "  cloud cache miss: saved elastic backbone to /x.pt",
        "  warm header w=0.5 d=1: epoch 5/5, val_acc 0.9000, 3 s elapsed, done"]


# ------------------------------------------------------------------------------------------------------ thread counts


def test_run_threads_is_validated_and_resolved_without_the_core_count_by_default() -> None:
    assert AcmeConfig().run.threads == 2  # a fixed default, whatever this machine has
    assert accel.resolve_threads(3) == 3 and accel.resolve_threads(0) == accel.cores()
    with pytest.raises(ConfigError, match="run.threads"):
        AcmeConfig.from_flat({"run.threads": -1})


def test_the_cloud_stage_runs_with_run_threads_and_its_cache_key_holds_them(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages run at ``run.threads`` (whatever the caller had), the cached backbone's key records the count, a
    different count is a cache miss, and the caller's thread count is restored."""
    import acme_flwr.cloud.stages as stages

    seen: list[int] = []
    real = stages.finetune_teacher

    def spy(*args: object, **kwargs: object) -> dict:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "_STAGES", {**stages._STAGES, "teacher": lambda run: spy(
        run.model, run.train, run.cfg, run.progress)})
    before = torch.get_num_threads()
    paths = {}
    for n in (2, 1):
        cfg = AcmeConfig.from_flat({**SMOKE, "run.threads": n, "cloud.width_epochs": 0, "cloud.depth_epochs": 0})
        build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path, progress=False)
        paths[n] = set(tmp_path.glob("elastic_backbone_*.pt")) - set().union(*paths.values())
    assert seen == [2, 1] and torch.get_num_threads() == before
    assert len(paths[2]) == 1 and len(paths[1]) == 1  # another thread count: another key, trained anew
    for n, (path,) in paths.items():
        assert torch.load(path, map_location="cpu", weights_only=False)["meta"]["threads"] == n


def test_fixed_threads_give_a_bit_identical_cloud_stage(tmp_path: Path) -> None:
    cfg = AcmeConfig.from_flat({**SMOKE, "run.threads": 2})
    data = federated_data(cfg, *input_shape(cfg))
    a = build_packages(cfg, data, tmp_path / "a", progress=False)
    b = build_packages(cfg, data, tmp_path / "b", progress=False)
    assert a.table == b.table
    for name, pkg in a.packages.items():
        other = b.packages[name].backbone.state_dict()
        assert all(torch.equal(v, other[k]) for k, v in pkg.backbone.state_dict().items())


def test_config_json_records_the_machine_and_every_stages_threads(tmp_path: Path) -> None:
    from acme_flwr.results import RunRecorder

    cfg = AcmeConfig.from_flat({"run.threads": 0})
    RunRecorder(tmp_path, cfg.to_dict(), 0)
    prov = json.loads((tmp_path / "config.json").read_text())["provenance"]
    assert prov["threads"] == {"cloud_stages": accel.cores(), "server_app": torch.get_num_threads(), "client_app": 1}
    assert prov["cores"] == accel.cores() and prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_whole_jobs_get_an_eta_from_the_first_one_on() -> None:
    clock = [0.0]
    jobs = Progress("grid fmnist", 3, unit="job", warmup=False, clock=lambda: clock[0])
    clock[0] = 100.0
    assert jobs.advance().endswith("grid fmnist: job 1/3, 1 min 40 s elapsed, ETA 3 min 20 s")
    clock[0] = 300.0
    assert jobs.advance().endswith("job 2/3, 5 min 00 s elapsed, ETA 2 min 30 s")
