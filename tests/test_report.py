"""The README's results tables are exactly what ``experiments.report`` makes of the committed result files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from experiments import report


def test_readme_tables_equal_the_report() -> None:
    text = report.README.read_text()
    assert report.update_readme(text, report.render()) == text, (
        "README.md's generated tables are stale: run `python -m experiments.report` and commit the result")


def test_every_table_has_a_readme_marker() -> None:
    text = report.README.read_text()
    for name in report.TABLES:
        assert f"<!-- report:{name} -->" in text and f"<!-- /report:{name} -->" in text


def test_a_changed_result_file_changes_the_readme(tmp_path: Path) -> None:
    """The check above can fail: editing one number in a result file makes the README stale."""
    src = report.RESULTS / "default"
    if not (src / "summary.json").exists():
        return
    root = tmp_path / "results"
    shutil.copytree(report.RESULTS, root)
    summary = json.loads((root / "default" / "summary.json").read_text())
    block = summary["strategies"][summary["strategy"]]
    block["accuracy"]["personalized"]["mean"] = 0.123456
    (root / "default" / "summary.json").write_text(json.dumps(summary))
    text = report.README.read_text()
    assert report.update_readme(text, report.render(root)) != text
    assert "12.3 ±" in report.render(root)["default"]


def test_missing_inputs_render_as_a_note_not_numbers(tmp_path: Path) -> None:
    out = report.render(tmp_path)
    assert all(v.startswith("_No results yet") for v in out.values())
