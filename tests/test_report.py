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
    src = report.RESULTS / "default"
    if not (src / "summary.json").exists():
        return
    root = tmp_path / "results"
    shutil.copytree(report.RESULTS, root)
    summary = json.loads((root / "default" / "summary.json").read_text())
    block = summary["strategies"][summary["strategy"]]
    block["accuracy"]["personalized"]["mean"] = 0.123456
    (root / "default" / "summary.json").write_text(json.dumps(summary))
    text = report.RESULTS_DOC.read_text()
    assert report.update_document(text, report.render(root)) != text
    assert "12.3 ±" in report.render(root)["default"]


def test_missing_inputs_render_as_a_note_not_numbers(tmp_path: Path) -> None:
    out = report.render(tmp_path)
    assert all(v.startswith("_No results yet") for v in out.values())


def _fake_grid(tmp_path: Path, personalized: dict[str, list[float]]) -> Path:
    """A results root whose fmnist_grid holds C2 jobs (one per seed) made from the committed default summary, with
    the given personalized accuracy per strategy and seed."""
    root = tmp_path / "results"
    summary = json.loads((report.RESULTS / "default" / "summary.json").read_text())
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
    if not (report.RESULTS / "default" / "summary.json").exists():
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
    if not (report.RESULTS / "default" / "summary.json").exists():
        return
    root = _fake_grid(tmp_path, {"acme": [0.8, 0.8], "fedper": [0.7, 0.7]})
    assert "start-up included" not in report.render(root)["fmnist_grid_costs"]
    for seed, wall in ((0, 90.0), (1, 150.0)):
        (root / "fmnist_grid" / "C2" / f"seed{seed}" / report.LAUNCH_FILE).write_text(
            json.dumps({"launcher_wall_s": wall}))
    note = report.render(root)["fmnist_grid_costs"]
    assert "whole `flwr run` per job, start-up included: 4 min over 2 jobs (90–150 s)" in note
