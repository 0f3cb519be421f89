"""Point the code's section references at docs/ (one mechanical, idempotent rewrite of ``*.py`` files).

The code used to cite documents that are not in this repository: ``spec §4.5`` / ``ACME spec §3.3`` /
``acme-spec §6.9`` (the recovered specification of the original), ``spec §7 item 25`` (its list of defects),
``anchors §5.6``, ``DESIGN §3``, ``reference/pfl-baselines.md`` and "the spec". Each becomes the section of
``docs/`` that now holds that text, written ``ACME §N`` for ``docs/algorithm.md`` (short, so that no line grows past
ruff's 120 characters) and ``docs/<name>.md §N`` for any other document: ``spec §7 item 25`` → ``ACME §7.12``. A bare
``§N`` continues the document named before it on the same line (``spec §2.8 / §6.8`` → ``ACME §2.8 / §6.2``); one
with no document before it on its line was a spec reference. References that already name ``ACME`` or a ``docs/``
file are left alone, so running it twice changes nothing. A reference it cannot map stops it with the file and line,
before any file is written. ``tests/test_layout.py`` checks the result: every "§" resolves to a heading in docs/.

    python -m experiments.rewrite_doc_refs                         # every *.py of the repo
    python -m experiments.rewrite_doc_refs strategies clients      # only these files or folders
    python -m experiments.rewrite_doc_refs --exclude strategies --exclude clients --exclude acme_flwr/device
    python -m experiments.rewrite_doc_refs --check                 # exit 1 if anything would change
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHM = "docs/algorithm.md"
SHORT = "ACME"  # how the code names docs/algorithm.md in a reference ("ACME §4.5"): short enough to keep lines < 120
LAYOUT = "docs/layout.md"
MAX_LINE = 120  # ruff's line length in this project
SKIP_DIRS = {".venv", ".git", "outputs", "multirun", "build", "dist", "__pycache__"}
SELF = Path(__file__).resolve()

# the recovered specification's sections 2-4 keep their numbers in docs/algorithm.md
_SAME = {f"{part}.{sub}" for part, subs in ((2, 8), (3, 9), (4, 7)) for sub in range(1, subs + 1)} | {"2", "3", "4"}
SECTIONS: dict[str, str] = {
    **{s: s for s in _SAME},
    "6.1": "6.1", "6.8": "6.2", "6.9": "6.3", "6.10": "6.4",  # the paper's numbers used as checks
    "7": "7",
}
# the specification's numbered defects (§7 item N, also written §7.N) -> the difference that answers it
ITEMS: dict[int, str] = {
    4: "7.1", 7: "7.2", 8: "7.2", 9: "7.3", 10: "7.3", 14: "7.5", 15: "7.4", 16: "7.6", 17: "7.7", 18: "7.8",
    21: "7.9", 22: "7.10", 24: "7.11", 25: "7.12", 27: "7.13", 28: "7.15", 29: "7.4", 31: "7.15", 34: "7.16",
}
ANCHORS = {"5.6": "2.2"}  # the parameter-count formula

_ID = r"\d+(?:\.\d+)*"
REF = re.compile(
    r"(?P<prefix>(?:ACME |acme-)?spec |anchors |DESIGN |(?P<doc>docs/[\w-]+\.md|ACME) )?"
    rf"§(?P<id>{_ID})(?P<items> items? \d+(?:\s*[-–]\s*\d+)?)?(?P<range>\s*[-–]\s*§?\d+\.\d+(?:\.\d+)*)?")
PRE = [  # phrasings that would otherwise outgrow their line
    (re.compile(r"header size from the §3\.6 rule"), "header size by ACME §3.6"),
]
PLAIN = [  # other mentions of documents outside the repo
    (re.compile(r"reference/pfl-baselines\.md"), f"{SHORT} §5"),
    (re.compile(r"\bacme-spec\.md\b"), ALGORITHM),
    (re.compile(r"\banchors round to\b"), "published figures round to"),
    (re.compile(r"\bthe spec\b"), "the original"),
]


class Unmapped(ValueError):
    """A reference with no section in docs/ to point to."""


def _new_id(source: str, old: str) -> str:
    if source == "anchors":
        table = ANCHORS
    elif source == "spec":
        if old.startswith("7.") and old.count(".") == 1:  # "§7.17": defect item 17
            item = int(old.split(".")[1])
            if item not in ITEMS:
                raise Unmapped(f"§{old} (defect item {item})")
            return ITEMS[item]
        table = SECTIONS
    else:
        raise Unmapped(f"{source} §{old}")
    if old not in table:
        raise Unmapped(f"{source} §{old}")
    return table[old]


def rewrite_line(line: str) -> str:
    """``line`` with its references pointed at docs/ (unchanged when they already are)."""
    for pattern, repl in PRE:
        line = pattern.sub(repl, line)
    out: list[str] = []
    pos = 0
    source = "spec"  # what a bare "§" on this line continues
    emitted: str | None = None  # the document the last rewritten reference on this line named
    for m in REF.finditer(line):
        prefix = m.group("prefix") or ""
        if m.group("doc"):
            source = "docs"
            emitted = ALGORITHM if m.group("doc") == SHORT else m.group("doc")
        elif prefix.strip() in ("spec", "ACME spec", "acme-spec"):
            source = "spec"
        elif prefix == "anchors ":
            source = "anchors"
        elif prefix == "DESIGN ":
            source = "design"
        if source == "docs":
            continue
        out.append(line[pos:m.start()])
        pos = m.end()
        if source == "design":  # the layout document has no numbered sections
            out.append(LAYOUT)
            emitted = LAYOUT
            continue
        if m.group("items"):
            numbers = [int(n) for n in re.findall(r"\d+", m.group("items"))]
            if m.group("id") != "7" or any(n not in ITEMS for n in numbers):
                raise Unmapped(m.group(0))
            first, last = ITEMS[numbers[0]], ITEMS[numbers[-1]]
            ids = [first] if first == last else [first, last]
        else:
            ids = [_new_id(source, m.group("id"))]
            if m.group("range"):
                ids.append(_new_id(source, re.search(_ID, m.group("range")).group(0)))
        text = "§" + "–".join(ids)
        out.append(text if emitted == ALGORITHM else f"{SHORT} {text}")
        emitted = ALGORITHM
    out.append(line[pos:])
    new = "".join(out)
    for pattern, repl in PLAIN:
        new = pattern.sub(repl, new)
    return new


def rewrite_text(text: str, where: str = "") -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        try:
            lines[i] = rewrite_line(line)
        except Unmapped as exc:
            raise Unmapped(f"{where}:{i + 1}: no section in docs/ for {exc}: {line.strip()}") from None
    return "\n".join(lines)


def python_files(paths: list[Path], exclude: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        candidates = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in candidates:
            rel = f.resolve().relative_to(REPO)
            if f.resolve() == SELF or SKIP_DIRS & set(rel.parts):
                continue
            if any(rel.is_relative_to(e) for e in exclude):
                continue
            found.append(f)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: the whole repo)")
    parser.add_argument("--exclude", action="append", type=Path, default=[], help="a folder to leave alone")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    paths = [p if p.is_absolute() else REPO / p for p in (args.paths or [REPO])]
    exclude = [(e if e.is_absolute() else REPO / e).resolve().relative_to(REPO) for e in args.exclude]
    changes: dict[Path, str] = {}
    try:
        for f in python_files(paths, exclude):
            text = f.read_text()
            new = rewrite_text(text, str(f.relative_to(REPO)))
            if new != text:
                changes[f] = new
    except Unmapped as exc:
        print(f"rewrite_doc_refs: {exc}; add it to SECTIONS/ITEMS in {SELF.relative_to(REPO)}", file=sys.stderr)
        return 2
    for f, new in changes.items():
        old_lines = f.read_text().split("\n")
        if not args.check:
            f.write_text(new)
        print(f"{'would rewrite' if args.check else 'rewrote'} {f.relative_to(REPO)}")
        for i, line in enumerate(new.split("\n"), 1):
            if len(line) > MAX_LINE and line != old_lines[i - 1]:
                print(f"  {f.relative_to(REPO)}:{i}: {len(line)} characters (> {MAX_LINE}): rewrap it by hand",
                      file=sys.stderr)
    return 1 if args.check and changes else 0


if __name__ == "__main__":
    raise SystemExit(main())
