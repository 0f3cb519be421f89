"""The layout's import rules (docs/layout.md), read from the source: tiers in folders, no import circles anywhere.

Every ``import``/``from ... import`` statement counts, including ones inside functions and ``TYPE_CHECKING`` blocks:
a late import hides a dependency from the reader, it does not remove it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the module name it installs as
PACKAGES = {"acme_flwr": "acme_flwr", "strategies": "acme_flwr.strategies", "clients": "acme_flwr.clients"}
TIERS = ("cloud", "edge", "device")
# the one model class the lower tiers may use from the cloud tier
CLOUD_MODEL = "acme_flwr.cloud.elastic_vit"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _canonical(name: str) -> str:
    """Top-level ``strategies``/``clients`` (the ``flwr run`` path) are the installed sub-packages."""
    head, _, rest = name.partition(".")
    if head in ("strategies", "clients"):
        return f"acme_flwr.{head}" + (f".{rest}" if rest else "")
    return name


def _resolve(base: str, is_package: bool, level: int, module: str | None) -> str:
    parts = base.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def imports_of(name: str) -> set[str]:
    """Project modules ``name`` imports (a ``from pkg import sub`` of a submodule counts as importing ``pkg.sub``)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [_canonical(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve(name, path.name == "__init__.py", node.level, node.module) if node.level
                    else _canonical(node.module or ""))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import acme_flwr.cloud.models.x` -> the module part
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def _tier(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "acme_flwr" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in TIERS else None


def _is_core(name: str) -> bool:
    return name.startswith("acme_flwr") and not name.startswith(("acme_flwr.strategies", "acme_flwr.clients"))


def _plumbing(name: str) -> bool:
    return _is_core(name) and name.count(".") == 1 and _tier(name) is None and name != "acme_flwr.packages"


def _violations(rule) -> list[str]:  # noqa: ANN001 - rule(src, dst) -> bool (True = forbidden)
    return sorted(f"{src} imports {dst}" for src, dsts in GRAPH.items() for dst in dsts if rule(src, dst))


def test_the_graph_sees_the_known_edges() -> None:
    """Guard against a parser that finds nothing (and so lets every rule pass)."""
    assert "acme_flwr.cloud.elastic_vit" in GRAPH["acme_flwr.cloud.models"]
    assert "acme_flwr.device.gates" in GRAPH["acme_flwr.device.headers"]
    assert "acme_flwr.strategies.base" in GRAPH["acme_flwr.strategies.harness"]
    assert "acme_flwr.protocol" in GRAPH["acme_flwr.clients.handlers"]
    assert len(MODULES) > 40


def test_core_never_imports_strategies_or_clients() -> None:
    assert _violations(lambda s, d: _is_core(s) and not _is_core(d)) == []


def test_strategies_and_clients_never_import_each_other() -> None:
    def crosses(s: str, d: str) -> bool:
        pair = {s.split(".")[1] if s.count(".") else "", d.split(".")[1] if d.count(".") else ""}
        return not _is_core(s) and not _is_core(d) and pair == {"strategies", "clients"}

    assert _violations(crosses) == []


def test_plumbing_imports_no_tier() -> None:
    assert _violations(lambda s, d: _plumbing(s) and _tier(d) is not None) == []


@pytest.mark.parametrize(("tier", "allowed"), [
    ("cloud", set()),
    ("edge", {"device", "cloud-model"}),
    ("device", {"cloud-model"}),
])
def test_tier_rules(tier: str, allowed: set[str]) -> None:
    def forbidden(s: str, d: str) -> bool:
        if _tier(s) != tier or _tier(d) in (None, tier):
            return False
        if d == CLOUD_MODEL:
            return "cloud-model" not in allowed
        return _tier(d) not in allowed

    assert _violations(forbidden) == []


def test_only_packages_ties_the_tiers_together() -> None:
    """Outside the tiers, the one core module that imports more than one tier is ``acme_flwr.packages``."""
    mixed = [s for s in GRAPH if _is_core(s) and _tier(s) is None and s != "acme_flwr.packages"
             and len({_tier(d) for d in GRAPH[s]} - {None}) > 1]
    assert mixed == []


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert _cycles() == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module loop injected into the graph is reported."""
    a, b = "acme_flwr.config", "acme_flwr.registry"
    saved = {a: set(GRAPH[a]), b: set(GRAPH[b])}
    try:
        GRAPH[a].add(b)
        GRAPH[b].add(a)
        assert [a, b] in _cycles()
    finally:
        GRAPH.update(saved)


def test_every_module_says_what_it_is_for() -> None:
    missing = [name for name, path in MODULES.items()
               if not ast.get_docstring(ast.parse(path.read_text())) and path.stat().st_size > 0]
    assert missing == []


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter in the repo root (where a FAB's top-level packages live) has after ``code``."""
    out = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_flwr_runs_check_of_the_app_imports_nothing_heavy() -> None:
    """``flwr run`` checks the components with ``find_spec``, which executes the packages' ``__init__``: importing
    torch and the models there cost ~10 s per run before it started."""
    found = _modules_after("import importlib.util as u\nu.find_spec('strategies.server_app')\n"
                           "u.find_spec('clients.client_app')")
    assert {"strategies", "clients"} <= found
    assert not {"torch", "transformers", "scipy", "flwr"} & found


def test_the_apps_import_neither_transformers_nor_scipy_stats() -> None:
    """The ServerApp and every Ray worker import their app: transformers (~5 s) is only for tests and checkpoint
    parity, scipy.stats (~1.2 s) only for the edge's EMD, imported when used."""
    found = _modules_after("import strategies.server_app, clients.client_app\n"
                           "from acme_flwr.strategies import AcmeStrategy, build_strategy")
    assert {"torch", "strategies.server_app", "clients.client_app", "acme_flwr.strategies.acme"} <= found
    assert not {"transformers", "scipy.stats"} & found


# ------------------------------------------------------------------------------------------------ section references
DOCS = ROOT / "docs"
SHORT_DOC = {"ACME": "docs/algorithm.md"}  # "ACME §4.5" is docs/algorithm.md §4.5
_SECTION_ID = r"\d+(?:\.\d+)*"
_SECTION_REF = re.compile(rf"(?:(?P<doc>docs/[\w-]+\.md|ACME) )?§(?P<id>{_SECTION_ID})"
                          rf"(?:\s*[-–]\s*§?(?P<end>\d+\.\d+(?:\.\d+)*))?")
_HEADING = re.compile(rf"^#+\s+(?P<id>{_SECTION_ID})\.?\s", re.M)
# the one file whose job is to mention the old references (it rewrites them); this file names them to forbid them
_REF_EXEMPT = {ROOT / "experiments" / "rewrite_doc_refs.py", Path(__file__).resolve()}
_OUTSIDE = re.compile(r"acme-spec|pfl-baselines|flower-notes|original-README|anchors\.md|DESIGN(?:\.md| §)|"
                      r"reference/[\w-]+\.md|\bspec §|\bthe spec\b|anchors §")


def _python_sources() -> list[Path]:
    return [p for folder in ("acme_flwr", "strategies", "clients", "experiments", "tests")
            for p in sorted((ROOT / folder).rglob("*.py")) if p.resolve() not in _REF_EXEMPT]


def _headings(doc: str) -> set[str]:
    path = ROOT / doc
    return set(_HEADING.findall(path.read_text())) if path.is_file() else set()


def unresolved_section_references(paths: list[Path]) -> list[str]:
    """``file:line: reference (why)`` for every "§" that does not name a heading of a document in docs/.

    A reference names its document (``docs/<name>.md §N`` or ``ACME §N``); a bare ``§N`` continues the document named
    before it on the same line; ``§A–B`` needs both ends.
    """
    headings: dict[str, set[str]] = {}
    bad = []
    for path in paths:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "§" not in line:
                continue
            where = f"{path.relative_to(ROOT)}:{lineno}"
            doc = None
            found = list(_SECTION_REF.finditer(line))
            if line.count("§") != sum(1 + (m.group(0).count("§") - 1) for m in found):
                bad.append(f"{where}: {line.strip()!r} (a '§' not followed by a section number)")
            for m in found:
                doc = SHORT_DOC.get(m.group("doc"), m.group("doc")) if m.group("doc") else doc
                if doc is None:
                    bad.append(f"{where}: {m.group(0)!r} names no document (write 'ACME §N' or 'docs/<name>.md §N')")
                    continue
                known = headings.setdefault(doc, _headings(doc))
                for sid in filter(None, (m.group("id"), m.group("end"))):
                    if sid not in known:
                        bad.append(f"{where}: {m.group(0)!r} -> {doc} has no heading '{sid}' "
                                   f"(run `python -m experiments.rewrite_doc_refs {path.relative_to(ROOT)}`)")
    return bad


def test_every_section_reference_in_the_code_names_a_heading_in_docs() -> None:
    """Every "§" in the code resolves to a numbered heading of a document in docs/ (``ACME §N``: docs/algorithm.md).

    Until the lead runs ``python -m experiments.rewrite_doc_refs strategies clients acme_flwr/device`` after the
    merge, the old ``spec §`` references in those three folders are reported here, each with its file and line.
    """
    bad = unresolved_section_references(_python_sources())
    assert bad == [], ("unresolved section references (old 'spec §' ones: `python -m experiments.rewrite_doc_refs "
                       "<file or folder>` rewrites them):\n" + "\n".join(bad))


def test_the_reference_check_can_fail(tmp_path: Path) -> None:
    """A stale reference, a missing heading and a reference without a document are each reported with file and line."""
    probe = ROOT / "tests" / f"_probe_{tmp_path.name}.py"
    probe.write_text('"""x (spec §4.5), y (ACME §4.5, §99.1), z (docs/algorithm.md §2.8–2.9)."""\n# §3.6 rule\n')
    try:
        bad = unresolved_section_references([probe])
    finally:
        probe.unlink()
    name = probe.relative_to(ROOT)
    assert any(f"{name}:1: 'spec §4.5'" in b or f"{name}:1: '§4.5'" in b for b in bad), bad
    assert any(f"{name}:1: '§99.1'" in b and "no heading '99.1'" in b for b in bad), bad
    assert any("no heading '2.9'" in b for b in bad), bad
    assert any(f"{name}:2: '§3.6' names no document" in b for b in bad), bad
    assert not any("'ACME §4.5'" in b for b in bad), bad


def test_no_code_mentions_a_document_outside_the_repo() -> None:
    """The code cites only documents in this repository (the background it was written from is not shipped)."""
    bad = []
    for path in _python_sources():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for m in _OUTSIDE.finditer(line):
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: {m.group(0)!r}")
            for m in re.finditer(r"docs/[\w-]+\.md", line):
                if not (ROOT / m.group(0)).is_file():
                    bad.append(f"{path.relative_to(ROOT)}:{lineno}: {m.group(0)} does not exist")
    assert bad == [], "documents outside the repo:\n" + "\n".join(bad)
