"""The default run (``make run``'s config over seeds): its jobs, the spread and the paired comparisons over
seeds, the two tables that publish them, and ``--check-run``, which holds a user's own run against them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acme_flwr import stats

from .files import RESULTS, _missing, _provenance
from .formats import _cell, _int, _job_seed, _mean_std, _pct, _ratio, _span
from .registry import Table, table


def default_jobs(root: Path) -> list[dict[str, Any]]:
    """Every collected job of the default run (one per seed, by seed; a single run's ``summary.json`` alone too)."""
    path = root / "default"
    if not (path / "provenance.json").exists() and not (path / "summary.json").exists():
        return []
    jobs = [json.loads(p.read_text()) for p in path.rglob("summary.json")]
    return sorted(jobs, key=_job_seed)


def _default(root: Path) -> tuple[Path, dict[str, Any] | None]:
    """The default run's directory and its reference job: seed 0 (else the lowest seed); None until collected."""
    jobs = default_jobs(root)
    return root / "default", (jobs[0] if jobs else None)


def default_summary_file(root: Path) -> Path | None:
    """The reference job's ``summary.json`` (what :func:`_default` reads), for tools and tests that edit it."""
    _, s = _default(root)
    if s is None:
        return None
    return next(p for p in (root / "default").rglob("summary.json")
                if _job_seed(json.loads(p.read_text())) == _job_seed(s))


def _personalized(block: dict[str, Any]) -> float | None:
    return ((block.get("accuracy") or {}).get("personalized") or {}).get("mean")


def prediction_interval(values: list[float], level: float = stats.LEVEL) -> tuple[float, float] | None:
    """Where one more draw falls with probability ``level`` if the draws are normal: mean ± t·s·√(1 + 1/n) (Student
    t, n − 1 degrees of freedom), clipped to [0, 1] (accuracies). With 3 seeds the min–max range holds a new draw
    only half the time; this holds it 95 % of the time. None below 2 values."""
    if len(values) < 2:
        return None
    from scipy.stats import t  # lazily: report-time only

    arr = np.asarray(values, dtype=float)
    half = float(t.ppf(0.5 + level / 2, len(arr) - 1)) * float(arr.std(ddof=1)) * float(np.sqrt(1 + 1 / len(arr)))
    return max(0.0, float(arr.mean()) - half), min(1.0, float(arr.mean()) + half)


@dataclass(frozen=True)
class Spread:
    """One strategy's personalized accuracy over the default run's seeds (fractions, as summary.json has them)."""

    by_seed: dict[int, float]

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def range(self) -> tuple[float, float]:
        return min(self.values), max(self.values)

    @property
    def interval(self) -> tuple[float, float] | None:
        return prediction_interval(self.values)


def default_spreads(jobs: list[dict[str, Any]]) -> dict[str, Spread]:
    """Per strategy (in the runs' order): the personalized accuracy of every seed that has one."""
    out: dict[str, dict[int, float]] = {}
    for s in jobs:
        for name, block in s["strategies"].items():
            if (v := _personalized(block)) is not None:
                out.setdefault(name, {})[_job_seed(s)] = float(v)
    return {name: Spread(v) for name, v in out.items()}


def default_pairs(jobs: list[dict[str, Any]]) -> list[tuple[str, str, stats.Paired]]:
    """The paired comparisons of the default run over its (seed, device) pairs: each method − local, and the primary
    strategy − each other baseline."""
    acc: dict[str, dict[tuple[int, str], float]] = {}
    for s in jobs:
        for name, block in s["strategies"].items():
            per_device = ((block.get("accuracy") or {}).get("personalized") or {}).get("per_device") or {}
            acc.setdefault(name, {}).update({(_job_seed(s), str(k)): 100.0 * float(v)
                                             for k, v in per_device.items() if v is not None})
    primary = jobs[0].get("strategy") if jobs else None
    wanted = [(n, "local") for n in acc if n != "local" and "local" in acc]
    wanted += [(primary, n) for n in acc if primary in acc and n not in ("local", primary)]
    out = []
    for a, b in wanted:
        if a is not None and (p := stats.paired_comparison(acc[a], acc[b])) is not None:
            out.append((a, b, p))
    return out


def _seeds_text(jobs: list[dict[str, Any]]) -> str:
    seeds = [_job_seed(s) for s in jobs]
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}"


def _machine(s: dict[str, Any]) -> str:
    p = s.get("provenance") or {}
    if not p:
        return "a CPU the run did not record"
    threads = (p.get("threads") or {}).get("cloud_stages")
    return f"{p.get('cpu', '?')} ({p.get('cpu_capability', '?')}), {threads} cloud-stage threads"


def default_reading(jobs: list[dict[str, Any]]) -> str:
    """The generated sentence: which of the default run's differences the (seed, device) pairs resolve."""
    pairs = default_pairs(jobs)
    if not pairs:
        return ""
    n = pairs[0][2].n
    text = "; ".join(f"{a} − {b} {p.format()}" for a, b, p in pairs)
    resolved, split, open_ = [], [], []
    for a, b, p in pairs:
        if p.verdict == stats.CANNOT_TELL:
            open_.append(f"{a} vs {b}")
        elif not consistent_across_seeds(jobs, a, b, p.verdict):
            split.append(f"{a} vs {b}")
        else:
            resolved.append(f"{a} {'beats' if p.verdict == stats.BETTER else 'trails'} {b}")
    seeds = (f"; the pooled interval excludes 0 but the seeds disagree in sign for {', '.join(split)}" if split
             else "")
    return (f" Paired over the {n} (seed, device) pairs (mean per-device difference in points, "
            f"{100 * stats.LEVEL:.0f} % bootstrap interval): {text}. The data resolve "
            f"{', '.join(resolved) if resolved else 'none of these differences'}; they cannot tell apart "
            f"{', '.join(open_ + split) if open_ or split else 'none'}{seeds}.")


def consistent_across_seeds(jobs: list[dict[str, Any]], a: str, b: str, verdict: str) -> bool:
    """Whether ``a − b``'s mean per-device difference has the pooled verdict's sign in every seed."""
    sign = 1.0 if verdict == stats.BETTER else -1.0
    for s in jobs:
        hit = next((p for x, y, p in default_pairs([s]) if (x, y) == (a, b)), None)
        if hit is not None and sign * hit.mean <= 0:
            return False
    return True


DEFAULT_COMMAND = "python -m experiments.sweep -m run.seed=0,1,2,3,4 cloud.cache_dir=<an empty dir>"


@table("default")
def default_table(root: Path) -> Table | str:
    """The default run (``make run``) over seeds: per strategy the spread of the personalized accuracy, seed 0's
    value (what ``make run`` reproduces exactly on the same CPU and threads), and the paired reading."""
    path, ref = _default(root)
    jobs = default_jobs(root)
    if ref is None:
        return _missing("default", DEFAULT_COMMAND)
    spreads = default_spreads(jobs)
    ref_seed = _job_seed(ref)
    rows = []
    for name in ref["strategies"]:
        blocks = [s["strategies"][name] for s in jobs if name in s["strategies"]]
        sp = spreads.get(name)
        accs = [b["accuracy"] for b in blocks]
        fed = [b["bytes"]["references"].get("fedavg_full", {}).get("bytes") for b in blocks]
        totals = [b["bytes"]["total"] for b in blocks]
        rows.append([name, _mean_std(sp.values if sp else []), _span(sp.range if sp else None),
                     _span(sp.interval if sp else None), _pct(sp.by_seed.get(ref_seed) if sp else None),
                     _mean_std([(a.get("personalized") or {}).get("worst10") for a in accs]),
                     _mean_std([(a.get("generic") or {}).get("mean") for a in accs]),
                     _int(float(np.mean(totals))), _ratio(float(np.mean(totals)), float(np.mean(fed)) if all(fed)
                                                          else None),
                     str(sum(b["failures"]["count"] for b in blocks))])
    header = ["strategy", "personalized acc % (mean ± std over seeds)", "min–max over seeds",
              "95 % range for one more run", f"seed {ref_seed} (exact)", "worst 10 %", "generic acc %",
              "bytes total (mean)", "/ FedAvg-full", "failures (all seeds)"]
    n = len(jobs)
    note = (_provenance(path) + f" {n} run{'s' if n != 1 else ''} of `make run`'s config ({_seeds_text(jobs)}; each "
            f"trains its own cloud stage), on {_machine(ref)}. Personalized accuracy is each run's mean over its "
            f"devices; mean ± std is over the runs. The seed-{ref_seed} column is what `make run` gives exactly on "
            f"that CPU instruction set and thread count; on another CPU the floats differ from the cloud stage's "
            f"first steps on, so a run is one more draw and should fall in the 95 % range (mean ± t·s·√(1 + 1/n), "
            f"Student t over the seeds, clipped to 0–100). Check yours: "
            f"`python -m experiments.report --check-run outputs/default`."
            + default_reading(jobs))
    return header, rows, note


@table("default_paired")
def default_paired(root: Path) -> Table | str:
    """The default run's paired comparisons: each method − local and ACME − each other baseline, over (seed,
    device) pairs, with the per-seed means beside the pooled one."""
    path, ref = _default(root)
    jobs = default_jobs(root)
    if ref is None:
        return _missing("default", DEFAULT_COMMAND)
    rows = []
    for a, b, p in default_pairs(jobs):
        per_seed = []
        for s in jobs:
            one = default_pairs([s])
            hit = next((q for x, y, q in one if (x, y) == (a, b)), None)
            per_seed.append(f"{_job_seed(s)}: {hit.format()}" if hit else f"{_job_seed(s)}: –")
        rows.append([f"{a} − {b}", str(p.n), _cell(p), WORDS_PAIR[p.verdict].format(a=a, b=b), "; ".join(per_seed)])
    note = (_provenance(path) + f" Mean per-device difference in points over every (seed, device) pair, with its "
            f"{100 * stats.LEVEL:.0f} % percentile bootstrap interval ({stats.RESAMPLES} resamples of the pairs, seed "
            f"{stats.SEED}); **bold**: the interval excludes 0. Per seed: the same over that run's devices alone. "
            "The pooled interval treats the pairs as exchangeable; the reading counts a difference as resolved only "
            "when it also has the same sign in every seed (each seed has its own cloud stage and partition).")
    return ["comparison", "pairs", "mean difference [95 % interval]", "the data say", "per seed"], rows, note


WORDS_PAIR = {stats.BETTER: "{a} is better", stats.WORSE: "{b} is better", stats.CANNOT_TELL: "cannot tell"}


def check_run(run: Path, root: Path = RESULTS) -> tuple[list[str], int]:
    """Compare a user's default run (its ``summary.json``) with the published one: per strategy, whether the
    personalized accuracy equals the published run of the same seed exactly, lies in the range over seeds, or in the
    95 % range for one more run. Returns the lines to print and the exit status (0 inside, 1 outside or missing,
    2 when the run is not comparable)."""
    file = run / "summary.json" if run.is_dir() else run
    if not file.exists():
        return [f"no summary.json at {file}; run `make run` (or pass the run's output directory)"], 2
    mine = json.loads(file.read_text())
    jobs = default_jobs(root)
    if not jobs:
        return [f"no published default run under {root / 'default'}; nothing to compare with"], 2
    ignore = {"run.seed", "run.out_dir", "run.resume", "run.name", "cloud.cache_dir", "run.device"}
    ours, theirs = _flat(mine.get("config", {})), _flat(jobs[0].get("config", {}))
    differ = sorted(k for k in set(ours) | set(theirs) if k not in ignore and ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k} (yours {ours.get(k)!r}, published {theirs.get(k)!r})" for k in differ[:5])
        return [f"your run's config differs from the published default in {shown}: the comparison does not apply; "
                "run `make run` with no overrides"], 2
    seed = _job_seed(mine)
    same = next((s for s in jobs if _job_seed(s) == seed), None)
    lines = [f"your run: seed {seed}, {_machine(mine)}",
             f"published: {len(jobs)} runs ({_seeds_text(jobs)})"
             + (f"; seed {seed} on {_machine(same)}" if same else f"; none with seed {seed}")]
    if same and (mine.get("provenance") or {}).get("cpu_capability") != (same.get("provenance") or {}).get(
            "cpu_capability"):
        lines.append("  (another CPU instruction set than the published run: exact equality is not expected)")
    spreads = default_spreads(jobs)
    status = 0
    for name, sp in spreads.items():
        v = _personalized((mine.get("strategies") or {}).get(name) or {})
        if v is None:
            lines.append(f"{name}: MISSING from your run")
            status = 1
            continue
        lo, hi = sp.range
        pi = sp.interval
        exact = same is not None and sp.by_seed.get(seed) == v
        if exact:
            verdict = f"equals the published seed-{seed} value exactly"
        elif lo <= v <= hi:
            verdict = f"inside the published range over seeds {_span((lo, hi))}"
        elif pi is not None and pi[0] <= v <= pi[1]:
            verdict = f"inside the 95 % range for one more run {_span(pi)} (outside the seeds' {_span((lo, hi))})"
        else:
            verdict = f"OUTSIDE the published range {_span((lo, hi))} and the 95 % range {_span(pi)}"
            status = 1
        lines.append(f"{name}: {100 * v:.4f} % personalized: {verdict}")
    lines.append("result: inside what is published" if status == 0 else
                 "result: OUTSIDE what is published (see the lines above)")
    return lines, status


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
