"""``python -m experiments.report``: the command line of :mod:`experiments.report.cli`."""

from .cli import main

raise SystemExit(main())
