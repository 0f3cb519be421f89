"""The command line, ``python -m experiments.report``: collect a finished run, check a user's default run against
the published one, or render every table and refresh the documents (``--check``: write nothing, exit 1 if stale)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from .default_run import check_run
from .documents import _MARKER, render, update_document, write_outputs
from .files import collect


def _package() -> ModuleType:
    """The package ``experiments.report``: ``main`` reads its paths (``REPO``, ``RESULTS``, ``DOCUMENTS``) and its
    help text (the package docstring) there, so a caller, a test, can point them elsewhere on the package."""
    return sys.modules[__package__]


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line on ``argv``; ``prog`` names the command in ``--help`` (argparse's default otherwise)."""
    package = _package()
    parser = argparse.ArgumentParser(prog=prog, description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("collect", help="copy a finished run's summaries into experiments/results/<name>")
    c.add_argument("src", type=Path)
    c.add_argument("--as", dest="name", required=True)
    c.add_argument("--command", required=True, help="the command that produced src (printed under the table)")
    c.add_argument("--commit", default=None,
                   help="the commit whose code produced src, when it is not HEAD (e.g. a sweep's snapshot)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the tables in docs/results.md or README.md are not the report's")
    parser.add_argument("--results", type=Path, default=package.RESULTS)
    parser.add_argument("--check-run", type=Path, default=None, metavar="RUN_DIR",
                        help="compare your `make run` output (e.g. outputs/default) with the published default run; "
                             "exit 1 if a strategy's personalized accuracy lies outside what is published")
    args = parser.parse_args(argv)
    if args.check_run is not None:
        lines, status = check_run(args.check_run, args.results)
        print("\n".join(lines), file=sys.stderr if status == 2 else sys.stdout)
        return status
    if args.cmd == "collect":
        print(collect(args.src, args.name, args.command, args.commit))
        return 0
    documents, repo = package.DOCUMENTS, package.REPO
    tables = render(args.results)
    texts = {doc: doc.read_text() for doc in documents}
    updated = {doc: update_document(text, tables) for doc, text in texts.items()}
    stale = [doc.relative_to(repo).as_posix() for doc in documents if updated[doc] != texts[doc]]
    if args.check:
        if stale:
            print(f"{', '.join(stale)}: results tables differ from `python -m experiments.report`; run it and commit",
                  file=sys.stderr)
            return 1
        return 0
    for doc in stale:
        (repo / doc).write_text(updated[repo / doc])
    write_outputs(args.results, tables)
    shown = {m.group("name") for text in texts.values() for m in _MARKER.finditer(text)}
    for name in sorted(set(tables) - shown):
        print(f"note: no document has a <!-- report:{name} --> marker; table {name} is only in CSV", file=sys.stderr)
    print(f"updated {', '.join(stale) or 'nothing (documents already current)'} ({len(tables)} tables) and "
          f"{args.results / 'tables'}")
    return 0
