"""The regime grid runner (settings file → seed-major jobs, resumable, results recorded) and the regime map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acme_flwr.config import ConfigError
from acme_flwr.plots import regime_map
from experiments import regime, report

SETTINGS = """
base: [+experiment=smoke]
methods: acme,acme_t0.1,local
seeds: [0, 1]
axes:
  kind:
    dir0.5: [partition.kind=dirichlet, partition.alpha=0.5]
    pat2: [partition.kind=pathological, partition.classes_per_client=2]
  scale:
    n25: [partition.max_samples=25]
    n100: [partition.max_samples=100]
exclude: [pat2-n100]
"""


def _plan(tmp_path: Path, text: str = SETTINGS) -> regime.Plan:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return regime.load_plan(path)


def test_settings_are_the_product_of_the_axes_and_jobs_are_seed_major(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert [s.name for s in plan.settings] == ["dir0.5-n25", "dir0.5-n100", "pat2-n25"]
    assert plan.settings[2].axes == {"kind": "pat2", "scale": "n25"} and plan.settings[2].order == 2
    assert plan.settings[1].overrides == ("partition.kind=dirichlet", "partition.alpha=0.5",
                                          "partition.max_samples=100")
    jobs = plan.jobs(["strategy.rounds=1"])
    assert [(j.setting.name, j.seed) for j in jobs] == [
        ("dir0.5-n25", 0), ("dir0.5-n100", 0), ("pat2-n25", 0), ("dir0.5-n25", 1), ("dir0.5-n100", 1), ("pat2-n25", 1)]
    assert jobs[0].overrides == ("+experiment=smoke", "partition.kind=dirichlet", "partition.alpha=0.5",
                                 "partition.max_samples=25", "strategy.names=acme,acme_t0.1,local", "run.seed=0",
                                 "strategy.rounds=1")
    assert jobs[4].rel == Path("dir0.5-n100") / "seed1"
    regime.validate(jobs[0])  # composes into a valid config with registered strategy names


@pytest.mark.parametrize(("text", "message"), [
    ("methods: acme\naxes: {kind: {a: []}}\ncolour: red\n", "unknown keys ['colour']"),
    ("axes: {kind: {a: []}}\n", "methods must be"),
    ("methods: acme\naxes: {}\n", "axes must map"),
    ("methods: acme\naxes: {kind: {a: partition.alpha=1}}\n", "must be a list of Hydra overrides"),
    ("methods: acme\naxes: {kind: {a: []}}\nexclude: [b]\n", "exclude names settings that are not in the grid"),
    ("methods: acme\nseeds: []\naxes: {kind: {a: []}}\n", "seeds must be"),
])
def test_a_bad_settings_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _plan(tmp_path, text)


def test_a_bad_override_is_caught_by_validation_before_anything_runs(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "methods: acme,nope\naxes: {kind: {a: [partition.alpha=0.5]}}\n")
    with pytest.raises(ConfigError, match="strategy.names contains 'nope'"):
        regime.validate(plan.jobs()[0])
    plan = _plan(tmp_path, "methods: acme\naxes: {kind: {a: [partition.alpah=0.5]}}\n")
    with pytest.raises(ConfigError, match="alpah"):
        regime.validate(plan.jobs()[0])


def test_the_default_grid_lists_valid_jobs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert regime.main(["--dry-run", "--seeds", "0", "--results", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    plan = regime.load_plan(regime.DEFAULT_SETTINGS)
    assert f"{len(plan.settings)} jobs ({len(plan.settings)} settings × 1 seeds), {len(plan.settings)} to run" in out
    assert {"kind", "scale", "scope"} == set(plan.settings[0].axes)


def test_the_runner_records_results_skips_finished_jobs_and_survives_a_failure(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """launch() replaced by a fake that writes a summary (or fails for one job): what the runner does around it."""
    calls: list[tuple[str, ...]] = []

    def fake_launch(out: Path, _n: object, overrides: list[str], **_kw: object) -> Path:
        calls.append(tuple(overrides))
        if "partition.kind=pathological" in overrides and "run.seed=0" in overrides:
            raise RuntimeError("the run wrote no summary")
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"versions": {"flwr": "x"}, "strategies": {}}))
        (out / "rounds.jsonl").write_text("big\n")  # never copied
        return out / "summary.json"

    monkeypatch.setattr("experiments.launch.launch", fake_launch)
    monkeypatch.setattr("experiments.launch.snapshot", lambda: tmp_path / "snap")
    plan = _plan(tmp_path)
    results, work = tmp_path / "results", tmp_path / "work"
    ran, failed = regime.run_grid(plan, plan.jobs(), results, work, "cmd", max_jobs=4)
    assert [(j.setting.name, j.seed) for j in ran] == [("dir0.5-n25", 0), ("dir0.5-n100", 0), ("dir0.5-n25", 1)]
    assert len(failed) == 1 and failed[0].startswith("pat2-n25 seed 0")
    job = results / "dir0.5-n25" / "seed0"
    assert sorted(p.name for p in job.iterdir()) == ["launch.json", "setting.json", "summary.json"]
    meta = json.loads((job / "setting.json").read_text())
    assert meta["axes"] == {"kind": "dir0.5", "scale": "n25"} and meta["seed"] == 0 and meta["order"] == 0
    assert json.loads((job / "launch.json").read_text())["launcher_wall_s"] >= 0
    assert json.loads((results / "provenance.json").read_text())["jobs"] == 3
    calls.clear()
    ran, failed = regime.run_grid(plan, plan.jobs(), results, work, "cmd")  # resume: only the missing jobs run
    assert [(j.setting.name, j.seed) for j in ran] == [("dir0.5-n100", 1), ("pat2-n25", 1)]
    assert len(calls) == 3 and len(failed) == 1  # pat2-n25 seed 0 retried (and fails again)


def _job(root: Path, setting: str, seed: int, order: int, axes: dict[str, str], images: int,
         accs: dict[str, list[float]]) -> None:
    job = root / setting / f"seed{seed}"
    job.mkdir(parents=True)
    blocks = {n: {"accuracy": {"chosen_round": 1, "personalized": {
        "mean": sum(a) / len(a), "per_device": {str(i): v for i, v in enumerate(a)}}}, "rounds": []}
        for n, a in accs.items()}
    n = len(next(iter(accs.values())))
    (job / "summary.json").write_text(json.dumps({
        "seed": seed, "config": {}, "strategies": blocks,
        "data": {"device_splits": [{"train": images - 4, "val": 4, "test": 20}] * n}}))
    (job / report.SETTING_FILE).write_text(json.dumps({"setting": setting, "axes": axes, "order": order}))


def test_the_regime_map_renders_from_a_small_result_directory(tmp_path: Path) -> None:
    root = tmp_path / "regime_grid"
    for seed in (0, 1):
        for order, (kind, images) in enumerate([("dir0.1", 25), ("dir0.1", 100), ("pat2", 25), ("pat2", 100)]):
            base = [0.5, 0.6, 0.7]
            gain = 0.1 if images == 25 else 0.0
            _job(root, f"{kind}-n{images}", seed, order, {"kind": kind, "scale": f"n{images}"}, images,
                 {"fedrep": [a + gain for a in base], "acme": base, "local": base})
    (root / "provenance.json").write_text(json.dumps(
        {"command": "t", "date": "d", "commit": "c", "machine": "m", "versions": {}, "jobs": 8}))
    points = report.regime_points(root)
    assert len(points) == 8 and {p["panel"] for p in points} == {"dir0.1", "pat2"}
    few = next(p for p in points if p["method"] == "fedrep" and p["images"] == 25 and p["panel"] == "pat2")
    assert abs(few["mean"] - 10.0) < 1e-9 and abs(few["low"] - 10.0) < 1e-9
    png = regime_map(points, tmp_path)
    assert png == tmp_path / "regime_map.png" and png.stat().st_size > 10_000
    assert regime_map([], tmp_path / "none") is None
    grid = report.paired_grid(root)
    assert grid is not None and grid.settings == ["dir0.1-n25", "dir0.1-n100", "pat2-n25", "pat2-n100"]  # file order
    for i, job in enumerate(sorted(root.rglob("summary.json"))):
        job.with_name(report.LAUNCH_FILE).write_text(json.dumps({"launcher_wall_s": 100.0 + 100 * i}))
    tables = report.render(tmp_path)
    assert "| fedrep | 70.0 ± 0.0 | 60.0 ± 0.0 | 70.0 ± 0.0 | 60.0 ± 0.0 |" in tables["regime_grid"]
    assert "60 min over 8 jobs (100–800 s); after the cloud side 100–800 s per job, 2 over the 10-minute budget" in (
        tables["regime_grid"])
    assert "**+10.00 [+10.00, +10.00]**" in tables["regime_grid_vs_local"]
