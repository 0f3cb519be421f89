"""The results report: every published results table, generated from the files under experiments/results/.

Two steps, both commands:

1. ``python -m experiments.report collect <run-or-sweep dir> --as <name> --command "<what produced it>"`` copies the
   small inputs of a finished run or sweep (``summary.json`` / ``summary.csv`` of each job; never checkpoints or
   ``rounds.jsonl``) into ``experiments/results/<name>/`` together with ``provenance.json`` (command, date, commit,
   package versions, machine).
2. ``python -m experiments.report --check-run outputs/default`` compares your own ``make run`` with the published
   default run (exact equality with the same seed, else the range over seeds; exit 1 outside it).
3. ``python -m experiments.report`` renders each table from those files, writes it as CSV under
   ``experiments/results/tables/`` and as Markdown between ``<!-- report:<table> -->`` / ``<!-- /report:<table> -->``
   markers in docs/results.md (every table) and README.md (the few it shows), and draws the plots beside the CSVs.
   ``--check`` writes nothing and exits 1 if a document's tables differ from what the report makes
   (``tests/test_report.py`` keeps them equal).

A table whose inputs are missing is rendered as a one-line note saying which command produces them, never as numbers.
"""

# The package, one concern per module (each module's docstring says what it holds):
#   files        result paths, ``collect``, the provenance line under each table
#   formats      cell formats and the summary fields every kind of table reads
#   registry     TABLES (an ordered acme_flwr Registry) and the ``@table(name)`` decorator
#   default_run  the default run over seeds: tables, paired reading, ``--check-run``
#   fmnist_run   the single Fashion-MNIST job
#   costs        packages, bytes, transport, overhead, paper_dry, scale
#   derived      derived methods (acme_valT: the temperature chosen on validation)
#   paired       paired comparisons (PairedGrid, vs local, vs the best baseline, the reading)
#   grids        the accuracy, Fashion-MNIST and regime grids' tables
#   claims       the paper's claims checked against the Fashion-MNIST grid
#   plots        the plots beside the CSVs
#   documents    Markdown, ``render``, the documents' markers, the CSV/plot outputs
#   cli          ``main`` (``python -m experiments.report``)
#
# The tables register when their module is imported, and the report lists them in that order: the imports below
# are in the report's table order (default run, the Fashion-MNIST job, costs, grids, claims), not alphabetical.
# isort: off
from .files import CODE, DOCUMENTS, KEEP, LAUNCH_FILE, README, REPO, RESULTS, RESULTS_DOC, SETTING_FILE, collect
from .registry import TABLES, Table, table
from .default_run import (DEFAULT_COMMAND, WORDS_PAIR, Spread, check_run, consistent_across_seeds, default_jobs,
                          default_paired, default_pairs, default_reading, default_spreads, default_summary_file,
                          default_table, prediction_interval)
from .fmnist_run import fmnist_table
from .costs import (bytes_transport, default_bytes, default_packages, overhead_default_run, overhead_fmnist, paper_dry,
                    scale, vitb16_bytes)
from .engine_poll import engine_poll
from .derived import (DERIVED, TEMPERATURE_RUNS, VAL_T, select_temperature, temperature_candidates, val_accuracy,
                      with_derived)
from .paired import (ABLATION_STEPS, WORDS, PairCells, PairedGrid, best_baseline, compare, paired_grid,
                     paired_reading, paired_vs_best, paired_vs_local)
from .grids import (FMNIST_GRID_COMMAND, JOB_BUDGET_S, REGIME_GRID_COMMAND, accuracy_grid, fmnist_grid,
                    fmnist_grid_costs, fmnist_grid_generic, fmnist_grid_reading, fmnist_grid_vs_best,
                    fmnist_grid_vs_local, fmnist_grid_worst, regime_grid, regime_grid_reading, regime_grid_vs_best,
                    regime_grid_vs_local, regime_points)
from .claims import ABLATION, PAPER_ABLATION, fmnist_claims
from .documents import markdown, render, update_document, update_readme, write_outputs
from .cli import main
# isort: on

__all__ = [
    "ABLATION", "ABLATION_STEPS", "CODE", "DEFAULT_COMMAND", "DERIVED", "DOCUMENTS", "FMNIST_GRID_COMMAND",
    "JOB_BUDGET_S", "KEEP", "LAUNCH_FILE", "PAPER_ABLATION", "README", "REGIME_GRID_COMMAND", "REPO", "RESULTS",
    "RESULTS_DOC", "SETTING_FILE", "TABLES", "TEMPERATURE_RUNS", "VAL_T", "WORDS", "WORDS_PAIR", "PairCells",
    "PairedGrid", "Spread", "Table", "accuracy_grid", "best_baseline", "bytes_transport", "check_run", "collect",
    "compare", "consistent_across_seeds", "default_bytes", "default_jobs", "default_packages", "default_paired",
    "default_pairs", "default_reading", "default_spreads", "default_summary_file", "default_table", "engine_poll",
    "fmnist_claims",
    "fmnist_grid", "fmnist_grid_costs", "fmnist_grid_generic", "fmnist_grid_reading", "fmnist_grid_vs_best",
    "fmnist_grid_vs_local", "fmnist_grid_worst", "fmnist_table", "main", "markdown", "overhead_default_run",
    "overhead_fmnist", "paired_grid", "paired_reading", "paired_vs_best", "paired_vs_local", "paper_dry",
    "prediction_interval", "regime_grid", "regime_grid_reading", "regime_grid_vs_best", "regime_grid_vs_local",
    "regime_points", "render", "scale", "select_temperature", "table", "temperature_candidates", "update_document",
    "update_readme", "val_accuracy", "vitb16_bytes", "with_derived", "write_outputs",
]
