"""The published results tables (docs/results.md, and the few the README shows) are exactly what ``experiments.report``
makes of the committed result files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments import report


@pytest.mark.parametrize("doc", report.DOCUMENTS, ids=lambda p: p.name)
def test_document_tables_equal_the_report(doc: Path) -> None:
    text = doc.read_text()
    assert report.update_document(text, report.render()) == text, (
        f"{doc.name}'s generated tables are stale: run `python -m experiments.report` and commit the result")


def test_every_table_has_a_marker_in_the_results_document() -> None:
    text = report.RESULTS_DOC.read_text()
    for name in report.TABLES:
        assert f"<!-- report:{name} -->" in text and f"<!-- /report:{name} -->" in text


def test_the_readme_shows_the_message_sizes_of_one_round_from_the_report() -> None:
    """The front door's message sizes are a generated table, not typed numbers."""
    text = report.README.read_text()
    assert "<!-- report:vitb16_bytes -->" in text and "<!-- /report:vitb16_bytes -->" in text


def test_check_mode_fails_on_a_stale_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--check`` exits 1 when a document's table differs from the report, and writes nothing."""
    doc = tmp_path / "results.md"
    end = "<!-- /report:default -->"
    doc.write_text(report.RESULTS_DOC.read_text().replace(end, f"stale\n{end}"))
    monkeypatch.setattr(report, "REPO", tmp_path)
    monkeypatch.setattr(report, "DOCUMENTS", (doc,))
    before = doc.read_text()
    assert report.main(["--check"]) == 1 and doc.read_text() == before


def test_a_changed_result_file_changes_the_results_document(tmp_path: Path) -> None:
    """The check above can fail: editing one number in a result file makes the document stale."""
    if report.default_summary_file(report.RESULTS) is None:
        return
    root = tmp_path / "results"
    shutil.copytree(report.RESULTS, root)
    reference = report.default_summary_file(root)
    assert reference is not None
    summary = json.loads(reference.read_text())
    block = summary["strategies"][summary["strategy"]]
    block["accuracy"]["personalized"]["mean"] = 0.123456
    reference.write_text(json.dumps(summary))
    text = report.RESULTS_DOC.read_text()
    assert report.update_document(text, report.render(root)) != text
    assert "| 12.3 |" in report.render(root)["default"]  # the reference seed's own column


def test_a_result_superseded_by_later_code_says_so_under_its_table(tmp_path: Path) -> None:
    """A ``superseded`` note in provenance.json (code changed since the results) is printed with the provenance."""
    root = tmp_path / "results"
    shutil.copytree(report.RESULTS, root)
    prov = json.loads((root / "fmnist_grid" / "provenance.json").read_text())
    prov["superseded"] = ["the partitioner changed at commit abc1234."]
    (root / "fmnist_grid" / "provenance.json").write_text(json.dumps(prov))
    assert "**Since then:** the partitioner changed at commit abc1234." in report.render(root)["fmnist_grid"]
    prov.pop("superseded")
    (root / "fmnist_grid" / "provenance.json").write_text(json.dumps(prov))
    assert "Since then" not in report.render(root)["fmnist_grid"]


def test_missing_inputs_render_as_a_note_not_numbers(tmp_path: Path) -> None:
    out = report.render(tmp_path)
    assert all(v.startswith("_No results yet") for v in out.values())


def _fake_grid(tmp_path: Path, personalized: dict[str, list[float]]) -> Path:
    """A results root whose fmnist_grid holds C2 jobs (one per seed) made from the committed default summary, with
    the given personalized accuracy per strategy and seed."""
    root = tmp_path / "results"
    reference = report.default_summary_file(report.RESULTS)
    assert reference is not None
    summary = json.loads(reference.read_text())
    template = summary["strategies"]["acme"]
    seeds = len(next(iter(personalized.values())))
    for seed in range(seeds):
        blocks = {}
        for name, accs in personalized.items():
            block = json.loads(json.dumps(template))
            block["accuracy"]["personalized"]["mean"] = accs[seed]
            block["wall_time_s"] = 10.0 + seed
            blocks[name] = block
        job = root / "fmnist_grid" / "C2" / f"seed{seed}"
        job.mkdir(parents=True)
        (job / "summary.json").write_text(json.dumps({**summary, "strategies": blocks}))
    (root / "fmnist_grid" / "provenance.json").write_text(json.dumps(
        {"command": "test", "date": "today", "commit": "x", "machine": "m", "versions": {}, "jobs": seeds}))
    return root


def test_fmnist_claims_are_computed_from_the_grid(tmp_path: Path) -> None:
    if report.default_summary_file(report.RESULTS) is None:
        return
    accs = {"acme": [0.80, 0.82], "acme_pruning_per_js": [0.79, 0.81], "acme_pruning_avg": [0.78, 0.80],
            "acme_pruning_alone": [0.78, 0.79], "acme_wo_pruning": [0.70, 0.71], "fedper": [0.75, 0.77]}
    text = report.render(_fake_grid(tmp_path / "a", accs))["fmnist_claims"]
    assert "EMD ≥ JS holds" in text and "JS ≥ Avg holds" in text and "Alone > wo_pruning holds" in text
    assert "best baseline fedper 76.0 ± 1.0 %" in text and "ACME is above it" in text
    assert "PFG's trade-off" in text
    flipped = report.render(_fake_grid(tmp_path / "b", {**accs, "acme_wo_pruning": [0.9, 0.9]}))["fmnist_claims"]
    assert "Alone > wo_pruning does not hold" in flipped
    grid = report.render(_fake_grid(tmp_path / "c", accs))["fmnist_grid"]
    assert "| acme | 81.0 ± 1.0 |" in grid and "C2 (2 seeds)" in grid


def test_the_grid_costs_note_totals_each_jobs_whole_flwr_run(tmp_path: Path) -> None:
    """bench_accuracy writes each job's launcher wall time (start-up included) beside its summary: the grid budget's
    measure, which the ServerApp's own wall time leaves out."""
    if report.default_summary_file(report.RESULTS) is None:
        return
    root = _fake_grid(tmp_path, {"acme": [0.8, 0.8], "fedper": [0.7, 0.7]})
    assert "start-up included" not in report.render(root)["fmnist_grid_costs"]
    for seed, wall in ((0, 90.0), (1, 150.0)):
        (root / "fmnist_grid" / "C2" / f"seed{seed}" / report.LAUNCH_FILE).write_text(
            json.dumps({"launcher_wall_s": wall}))
    note = report.render(root)["fmnist_grid_costs"]
    assert "whole `flwr run` per job, start-up included: 4 min over 2 jobs (90–150 s)" in note


def _block(test: list[float], val: float = 0.5) -> dict:
    """A strategy block with per-device test accuracy and one evaluated round whose mean val-acc is ``val``."""
    per_device = {str(i): a for i, a in enumerate(test)}
    return {"accuracy": {"chosen_round": 1, "personalized": {"mean": sum(test) / len(test), "per_device": per_device}},
            "rounds": [{"round": 1, "evaluate": {"device": {str(i): {"val-acc": val, "test-acc": a}
                                                            for i, a in enumerate(test)}}}]}


def _paired_root(tmp_path: Path, jobs: dict[tuple[str, int], dict[str, dict]], temperature: float = 1.0) -> Path:
    """A results root whose ``grid`` directory holds one summary per (setting, seed) with the given blocks."""
    path = tmp_path / "grid"
    for (setting, seed), blocks in jobs.items():
        job = path / setting / f"seed{seed}"
        job.mkdir(parents=True)
        n = len(next(iter(blocks.values()))["accuracy"]["personalized"]["per_device"])
        summary = {"seed": seed, "config": {"strategy": {"variant": "pruning_per", "temperature": temperature}},
                   "data": {"device_splits": [{"train": 80, "val": 20, "test": 50}] * n}, "strategies": blocks}
        (job / "summary.json").write_text(json.dumps(summary))
    (path / "provenance.json").write_text(json.dumps(
        {"command": "test", "date": "today", "commit": "x", "machine": "m", "versions": {}, "jobs": len(jobs)}))
    return path


def test_the_paired_reading_says_who_helps_who_hurts_and_where_the_data_cannot_tell(tmp_path: Path) -> None:
    base = [0.50, 0.60, 0.70, 0.80]
    jobs = {}
    for seed in (0, 1):
        jobs[("few", seed)] = {"acme": _block(base), "fedrep": _block([a + 0.1 for a in base]),
                               "fedavg_header": _block([a - 0.2 + 0.01 * i for i, a in enumerate(base)]),
                               "local": _block(base)}
    grid = report.paired_grid(_paired_root(tmp_path, jobs))
    assert grid is not None and grid.settings == ["few"] and len(grid.acc["few"]["local"]) == 8
    p = report.compare(grid, "few", "fedrep", "local")
    assert p is not None and p.n == 8 and abs(p.mean - 10.0) < 1e-9 and p.verdict == "better"
    reading = report.paired_reading(grid, "missing")
    assert "helps: fedrep +10.00 [+10.00, +10.00]" in reading
    assert "hurts: fedavg_header" in reading and "the data cannot tell: acme 0.00 [0.00, 0.00]" in reading
    assert "one test image moves a device's accuracy by 2.0 points" in reading
    assert "ACME − the best baseline (fedrep): −10.00" in reading
    assert "ACME helps nowhere in this grid" in reading
    assert report.best_baseline(grid, "few", "fedrep") == "local"  # never itself, never an ACME variant
    table_ = report.markdown(report.paired_vs_local(grid, "missing"))
    assert "| fedrep | **+10.00 [+10.00, +10.00]** |" in table_ and "few (8 pairs)" in table_
    # a better ACME flips the sentence
    for seed in (0, 1):
        jobs[("few", seed)]["acme"] = _block([a + 0.2 for a in base])
    better = report.paired_reading(report.paired_grid(_paired_root(tmp_path / "b", jobs)), "missing")
    assert "it beats local in 1 of 1 settings (few)" in better and "helps nowhere" not in better


def test_acme_valT_picks_the_temperature_by_validation_never_test(tmp_path: Path) -> None:
    """acme (T = 1 in the config), acme_t0.1 and acme_t0.01: acme_t0.1 has the best validation accuracy but the worst
    test accuracy; acme_valT must report acme_t0.1's test accuracy."""
    blocks = {"acme": _block([0.9, 0.9], val=0.70), "acme_t0.1": _block([0.6, 0.6], val=0.80),
              "acme_t0.01": _block([0.95, 0.95], val=0.75), "local": _block([0.8, 0.8])}
    summary = {"config": {"strategy": {"variant": "pruning_per", "temperature": 1.0}}, "strategies": blocks}
    chosen = report.select_temperature(summary)
    assert chosen is not None and chosen["selected"]["from"] == "acme_t0.1" and chosen["selected"]["temperature"] == 0.1
    assert chosen["accuracy"]["personalized"]["per_device"] == {"0": 0.6, "1": 0.6}
    assert list(chosen["selected"]["val"]) == ["acme", "acme_t0.1", "acme_t0.01"]
    # ties go to the higher temperature (the original's); an explicit acme_t1 replaces acme as the T = 1 run
    tie = {**blocks, "acme_t0.1": _block([0.6, 0.6], val=0.70), "acme_t0.01": _block([0.6, 0.6], val=0.70)}
    assert report.select_temperature({**summary, "strategies": tie})["selected"]["from"] == "acme"
    with_t1 = {**blocks, "acme_t1": _block([0.1, 0.1], val=0.99)}
    assert report.temperature_candidates({**summary, "strategies": with_t1}) == {
        "acme_t1": 1.0, "acme_t0.1": 0.1, "acme_t0.01": 0.01}
    assert report.select_temperature({**summary, "strategies": with_t1})["selected"]["from"] == "acme_t1"
    # ACME at another variant is no temperature run; one temperature alone selects nothing
    other = {"config": {"strategy": {"variant": "pruning_avg", "temperature": 1.0}},
             "strategies": {"acme": blocks["acme"], "acme_t0.1": blocks["acme_t0.1"]}}
    assert report.select_temperature(other) is None
    # in a grid, acme_valT is a method of its own, paired like any other
    grid = report.paired_grid(_paired_root(tmp_path, {("s", 0): blocks}))
    assert grid is not None and report.VAL_T in grid.names and grid.selected == {"s": [0.1]}
    assert "acme_valT chose the temperature 0.1" in report.paired_reading(grid, "missing")


def test_the_reading_checks_the_ablation_order_step_by_step_with_intervals(tmp_path: Path) -> None:
    base = [0.5, 0.6, 0.7]
    blocks = {"acme": _block([a + 0.1 for a in base]), "acme_pruning_per_js": _block(base),
              "acme_pruning_avg": _block([a + 0.05 for a in base]), "acme_pruning_alone": _block(base),
              "acme_wo_pruning": _block(base), "local": _block(base)}
    grid = report.paired_grid(_paired_root(tmp_path, {("C2", 0): blocks}))
    reading = report.paired_reading(grid, "missing")
    assert "EMD ≥ JS: +10.00 [+10.00, +10.00], holds" in reading
    assert "JS ≥ Avg: −5.00 [−5.00, −5.00], contradicted" in reading
    assert "Avg ≈ Alone: +5.00 [+5.00, +5.00], contradicted" in reading
    assert "Alone > wo_pruning: 0.00 [0.00, 0.00], not shown (the interval contains 0)" in reading
    assert "The paper's claims in its regime" not in reading  # the header scope is not the paper's regime
    # the same results in the paper's regime (backbone + header on the device, ACME's class lists): one more bullet
    weaker = _block([a - 0.05 for a in base])  # a baseline below local: the best baseline is local
    root = _paired_root(tmp_path / "paper", {("C2-n25-backbone", 0): {**blocks, "fedrep": weaker}})
    summary_path = root / "C2-n25-backbone" / "seed0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["config"].update({"strategy": {**summary["config"]["strategy"], "device_scope": "backbone+header"},
                              "partition": {"kind": "acme", "category": "C2", "max_samples": 25}})
    summary_path.write_text(json.dumps(summary))
    grid = report.paired_grid(root)
    assert grid is not None and grid.paper_regime == {
        "C2-n25-backbone": "backbone + header on the device, C2, 25 images"}
    assert ("- **The paper's claims in its regime** (C2-n25-backbone: backbone + header on the device, C2, 25 images):"
            " of the 4 steps of EMD ≥ JS ≥ Avg ≈ Alone > wo_pruning, 1 hold, 2 are contradicted and 1 the data cannot "
            "resolve; ACME − the best baseline (local): +10.00 [+10.00, +10.00], helps.") in (
        report.paired_reading(grid, "missing"))


# ------------------------------------------------------------------------------------ the default run over seeds
def _default_block(per_device: list[float]) -> dict:
    """A default-run strategy block: per-device personalized accuracy and the fields the default table reads."""
    stats_ = {"mean": sum(per_device) / len(per_device), "std": 0.0, "worst10": min(per_device),
              "per_device": {str(i): a for i, a in enumerate(per_device)}}
    return {"accuracy": {"chosen_round": 1, "personalized": stats_, "generic": {"mean": 0.5}},
            "bytes": {"total": 1000, "references": {"fedavg_full": {"bytes": 4000}}}, "failures": {"count": 0}}


CONFIG = {"run": {"seed": 0, "out_dir": "x", "threads": 2}, "data": {"name": "digits"}, "cloud": {"cache_dir": ""}}


def _default_summary(seed: int, accs: dict[str, list[float]], capability: str = "AVX2") -> dict:
    return {"seed": seed, "strategy": "acme", "config": {**CONFIG, "run": {**CONFIG["run"], "seed": seed}},
            "provenance": {"cpu": "Test CPU", "cpu_capability": capability, "threads": {"cloud_stages": 2}},
            "strategies": {name: _default_block(v) for name, v in accs.items()}}


def _default_root(tmp_path: Path, seeds: dict[int, dict[str, list[float]]]) -> Path:
    """A results root whose ``default`` holds one job per seed (as a collected sweep: directories 0, 1, ...)."""
    root = tmp_path / "results"
    for num, (seed, accs) in enumerate(seeds.items()):
        job = root / "default" / str(num)
        job.mkdir(parents=True)
        (job / "summary.json").write_text(json.dumps(_default_summary(seed, accs)))
    (root / "default" / "provenance.json").write_text(json.dumps(
        {"command": "test", "date": "today", "commit": "x", "machine": "m", "versions": {}, "jobs": len(seeds)}))
    return root


# acme beats local on every device of every seed; fedavg_header is local + 2 points in seeds 0 and 2 but − 0.5 in
# seed 1: the pooled interval excludes 0, the seeds disagree in sign
SEEDS = {0: {"acme": [0.8, 0.9, 0.7], "fedavg_header": [0.72, 0.82, 0.62], "local": [0.7, 0.8, 0.6]},
         1: {"acme": [0.85, 0.95, 0.75], "fedavg_header": [0.745, 0.845, 0.645], "local": [0.75, 0.85, 0.65]},
         2: {"acme": [0.9, 0.8, 0.8], "fedavg_header": [0.72, 0.62, 0.62], "local": [0.7, 0.6, 0.6]}}


def test_the_default_table_publishes_the_spread_over_seeds_and_the_paired_reading(tmp_path: Path) -> None:
    root = _default_root(tmp_path, SEEDS)
    header, rows, note = report.default_table(root)
    acme = dict(zip(header, next(r for r in rows if r[0] == "acme"), strict=True))
    # per-seed means 80.0, 85.0, 83.3: mean 82.8, population std 2.1; seed 0's own value beside them
    assert acme["personalized acc % (mean ± std over seeds)"] == "82.8 ± 2.1"
    assert acme["min–max over seeds"] == "80.0–85.0" and acme["seed 0 (exact)"] == "80.0"
    lo, hi = report.prediction_interval([0.8, 0.85, 0.25 / 3 * 10])
    assert lo < 0.8 and hi > 0.85 and acme["95 % range for one more run"] == f"{100 * lo:.1f}–{100 * hi:.1f}"
    assert report.prediction_interval([0.1, 0.9]) == (0.0, 1.0)  # an accuracy's range stays within 0–100 %
    assert report.prediction_interval([0.5]) is None
    assert "3 runs of `make run`'s config (seeds 0, 1, 2" in note and "Test CPU (AVX2), 2 cloud-stage threads" in note
    assert "Paired over the 9 (seed, device) pairs" in note
    assert "The data resolve acme beats local, acme beats fedavg_header" in note
    assert "they cannot tell apart fedavg_header vs local; the pooled interval excludes 0 but the seeds disagree in " \
           "sign for fedavg_header vs local" in note
    pooled = {(a, b): p for a, b, p in report.default_pairs(report.default_jobs(root))}
    assert pooled["fedavg_header", "local"].verdict == "better"  # what the pooled interval alone would say
    paired = report.markdown(report.default_paired(root))
    assert "| acme − local | 9 | **+13.33 [" in paired and "0: +10.00 [+10.00, +10.00]" in paired
    # one seed only: no spread, no prediction range
    single = report.default_table(_default_root(tmp_path / "one", {0: SEEDS[0]}))
    assert "| acme | 80.0 | 80.0–80.0 | – | 80.0 |" in report.markdown(single)


def _write_run(tmp_path: Path, summary: dict) -> Path:
    run = tmp_path / "outputs" / "default"
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_check_run_says_exact_inside_or_outside_and_exits_accordingly(tmp_path: Path) -> None:
    root = _default_root(tmp_path, SEEDS)
    # seed 0 reproduced to the bit
    lines, rc = report.check_run(_write_run(tmp_path / "a", _default_summary(0, SEEDS[0])), root)
    assert rc == 0 and "acme: 80.0000 % personalized: equals the published seed-0 value exactly" in lines
    assert lines[-1] == "result: inside what is published"
    # another CPU: every value a different draw, inside the seeds' range, inside the 95 % range, or outside
    other = _default_summary(0, {"acme": [0.83, 0.83, 0.83], "fedavg_header": [0.3, 0.3, 0.3],
                                 "local": [0.78, 0.78, 0.78]}, capability="AVX512")
    lines, rc = report.check_run(_write_run(tmp_path / "b", other), root)
    text = "\n".join(lines)
    assert "exact equality is not expected" in text
    assert "acme: 83.0000 % personalized: inside the published range over seeds 80.0–85.0" in text
    assert "local: 78.0000 % personalized: inside the 95 % range for one more run" in text  # seeds: 63.3–75.0
    assert "fedavg_header: 30.0000 % personalized: OUTSIDE" in text
    assert rc == 1 and lines[-1].startswith("result: OUTSIDE")
    # a strategy the run lacks is a failure, not a pass
    lines, rc = report.check_run(_write_run(tmp_path / "c", _default_summary(1, {"acme": SEEDS[1]["acme"]})), root)
    assert rc == 1 and "local: MISSING from your run" in lines
    # a run of another config is not comparable; a missing run names what to do
    changed = _default_summary(0, SEEDS[0])
    changed["config"]["data"]["name"] = "fmnist"
    lines, rc = report.check_run(_write_run(tmp_path / "d", changed), root)
    assert rc == 2 and "data.name (yours 'fmnist', published 'digits')" in lines[0]
    lines, rc = report.check_run(tmp_path / "nowhere", root)
    assert rc == 2 and "no summary.json" in lines[0]
    # the command line: exit status as above
    assert report.main(["--results", str(root), "--check-run", str(tmp_path / "a" / "outputs" / "default")]) == 0
    assert report.main(["--results", str(root), "--check-run", str(tmp_path / "b" / "outputs" / "default")]) == 1
