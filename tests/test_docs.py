"""The README is a short front door whose links all lead somewhere; the documents behind it exist and are linked."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
REQUIRED = ("configuration.md", "results.md", "operations.md", "algorithm.md")
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file (or ``#anchor`` in it) does not exist."""
    bad = []
    for m in _LINK.finditer(path.read_text()):
        target = m.group("target")
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{path.name}: {target} (no heading with that anchor in {dest.name})")
    return bad


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/ (limit 250)"
    assert lines[2:6] == ["```bash", lines[3], lines[4], "```"] and lines[3].startswith("make run ") and (
        lines[4].startswith("make test ")), "the README starts with the two commands"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_leads_somewhere(path: Path) -> None:
    assert broken_links(path) == []


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Title\n\n## 2 Some section\n")
    doc.write_text("[ok](b.md#2-some-section) [gone](c.md) [bad anchor](b.md#3-other) [web](https://x.org/y)\n")
    assert broken_links(doc) == ["a.md: c.md (no such file)",
                                 "a.md: b.md#3-other (no heading with that anchor in b.md)"]


def test_the_readme_links_every_document_in_docs() -> None:
    linked = {Path(m.group("target").partition("#")[0]).name for m in _LINK.finditer(README.read_text())}
    names = {p.name for p in DOCS}
    assert set(REQUIRED) <= names
    assert names <= linked, f"documents the README does not lead to: {sorted(names - linked)}"


def test_the_package_docstring_names_every_public_export() -> None:
    import acme_flwr

    doc = ast.get_docstring(ast.parse((ROOT / "acme_flwr" / "__init__.py").read_text())) or ""
    missing = [name for name in acme_flwr.__all__ if f"``{name}``" not in doc]
    assert missing == []


@pytest.mark.parametrize(("old", "new"), [
    ("(spec §2.8, §6.8)", "(ACME §2.8, §6.2)"),
    ("(ACME spec §3.3)", "(ACME §3.3)"),
    ("stages (spec §2.1, §2.3-§2.6, §7 items 7-10)", "stages (ACME §2.1, §2.3–2.6, §7.2–7.3)"),
    ("kept (spec §7 item 25):", "kept (ACME §7.12):"),
    ("dropout (§7.16); the arc on validation (§7.18).", "dropout (ACME §7.6); the arc on validation (§7.8)."),
    ("final LN (anchors §5.6; 85.80 M)", "final LN (ACME §2.2; 85.80 M)"),
    ("rules (DESIGN §3), read", "rules (docs/layout.md), read"),
    ("values; reference/pfl-baselines.md", "values; ACME §5"),
    ("the spec's published pick", "the original's published pick"),
])
def test_the_reference_rewrite_maps_old_references_once(old: str, new: str) -> None:
    from experiments.rewrite_doc_refs import rewrite_line

    assert rewrite_line(old) == new
    assert rewrite_line(new) == new  # idempotent: the lead may run it on everything again


def test_the_reference_rewrite_refuses_what_it_cannot_map() -> None:
    from experiments.rewrite_doc_refs import Unmapped, rewrite_text

    with pytest.raises(Unmapped, match=r"x.py:2: no section in docs/ for spec §5.1"):
        rewrite_text("ok\nsee spec §5.1\n", "x.py")
