"""``python -m experiments.report``: the command line of :mod:`experiments.report.cli`."""

from .cli import main

# named as it is typed (argparse would call a package's entry point "__main__.py" in --help)
raise SystemExit(main(prog="python -m experiments.report"))
