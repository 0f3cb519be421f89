"""Paired comparisons over a grid: per (seed, device) pair, a method's accuracy minus a reference's (local, or
the best baseline) with its bootstrap interval; the tables that show them and the generated reading (ACME's
record and the paper's ablation order included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acme_flwr import stats

from .derived import VAL_T, with_derived
from .files import SETTING_FILE, _provenance
from .formats import _cell
from .registry import Table

PairCells = dict[str, dict[str, dict[tuple[int, str], float]]]  # setting -> method -> (seed, device) -> accuracy (pts)


@dataclass(frozen=True)
class PairedGrid:
    """A grid's per-device personalized test accuracies (points), keyed for pairing, with what the reading needs."""

    path: Path
    settings: list[str]
    names: list[str]
    acc: PairCells
    seeds: dict[str, list[int]]
    min_test: dict[str, int]  # the smallest device test set of each setting
    selected: dict[str, list[float]]  # acme_valT's chosen temperature per job of each setting
    paper_regime: dict[str, str]  # settings run in the paper's regime -> what it was (class lists, images per device)


def _setting_order(path: Path, summary: Path) -> tuple[float, str]:
    """Where a job's setting sits in its grid: the runner's ``order`` (regime grid), else the fmnist grid's order."""
    setting = "/".join(summary.parent.relative_to(path).parts[:-1]) or summary.parent.name
    meta = summary.with_name(SETTING_FILE)
    if meta.exists():
        return float(json.loads(meta.read_text()).get("order", 0)), setting
    known = ("dir0.05", "dir0.1", "dir0.5", "dir1.0", "C2", "C3", "C4")
    return (float(known.index(setting)) if setting in known else float(len(known))), setting


def paired_grid(path: Path) -> PairedGrid | None:
    """Load a grid directory (``<setting>/seed<k>/summary.json``) for paired comparisons; None until it exists."""
    if not (path / "provenance.json").exists():
        return None
    summaries = sorted(path.rglob("summary.json"), key=lambda p: (_setting_order(path, p), str(p)))
    acc: PairCells = {}
    settings: list[str] = []
    names: list[str] = []
    seeds: dict[str, list[int]] = {}
    min_test: dict[str, int] = {}
    selected: dict[str, list[float]] = {}
    paper: dict[str, str] = {}
    for summary_path in summaries:
        setting = _setting_order(path, summary_path)[1]
        summary = json.loads(summary_path.read_text())
        seed = int(summary.get("seed", summary.get("config", {}).get("run", {}).get("seed", 0)))
        settings += [setting] if setting not in settings else []
        seeds.setdefault(setting, []).append(seed)
        tests = [int(d["test"]) for d in summary.get("data", {}).get("device_splits", []) if "test" in d]
        if tests:
            min_test[setting] = min(min_test.get(setting, tests[0]), *tests)
        if (regime := _paper_regime(summary.get("config", {}))) is not None:
            paper[setting] = regime
        for name, block in with_derived(summary).items():
            names += [name] if name not in names else []
            per_device = ((block.get("accuracy") or {}).get("personalized") or {}).get("per_device") or {}
            cell = acc.setdefault(setting, {}).setdefault(name, {})
            cell.update({(seed, str(pid)): 100.0 * float(v) for pid, v in per_device.items() if v is not None})
            if "selected" in block:
                selected.setdefault(setting, []).append(block["selected"]["temperature"])
    return PairedGrid(path, settings, names, acc, seeds, min_test, selected, paper)


def _paper_regime(config: dict[str, Any]) -> str | None:
    """The paper's device regime: backbone + header trained on the device, on ACME's class lists (C2-C4); its
    description, or None for any other setting."""
    part = config.get("partition", {})
    if config.get("strategy", {}).get("device_scope") != "backbone+header" or part.get("kind") != "acme":
        return None
    return f"backbone + header on the device, {part.get('category')}, {part.get('max_samples') or 'all'} images"


def _is_acme(name: str) -> bool:
    return name.startswith("acme")


def best_baseline(grid: PairedGrid, setting: str, name: str) -> str | None:
    """The reference a method is held against beside ``local``: the baseline (any non-ACME method, ``local``
    included) other than ``name`` with the highest mean test accuracy over the setting's (seed, device) pairs."""
    means = {n: float(np.mean(list(v.values()))) for n, v in grid.acc.get(setting, {}).items()
             if v and n != name and not _is_acme(n)}
    return max(means, key=lambda n: (means[n], n)) if means else None


def compare(grid: PairedGrid, setting: str, name: str, other: str) -> stats.Paired | None:
    """``name − other`` in points over the setting's (seed, device) pairs, with the bootstrap interval."""
    cells = grid.acc.get(setting, {})
    if name not in cells or other not in cells:
        return None
    return stats.paired_comparison(cells[name], cells[other])


def _paired_note(grid: PairedGrid) -> str:
    return (_provenance(grid.path) + f" Mean per-device difference in points (method − reference) over every (seed, "
            f"device) pair of the setting, with its {100 * stats.LEVEL:.0f} % percentile bootstrap interval "
            f"({stats.RESAMPLES} resamples of the pairs, seed {stats.SEED}); **bold**: the interval excludes 0.")


def paired_vs_local(grid: PairedGrid | None, missing: str) -> Table | str:
    """Per setting and method: the paired difference to ``local`` (same seed, same device)."""
    if grid is None:
        return missing
    rows = [[name, *(_cell(compare(grid, s, name, "local")) for s in grid.settings)]
            for name in grid.names if name != "local"]
    pairs = {s: len(next(iter(grid.acc[s].values()))) for s in grid.settings}
    header = ["method − local", *(f"{s} ({pairs[s]} pairs)" for s in grid.settings)]
    return header, rows, _paired_note(grid)


def paired_vs_best(grid: PairedGrid | None, missing: str) -> Table | str:
    """Per setting and method: the paired difference to the best baseline other than the method itself."""
    if grid is None:
        return missing
    rows = []
    for name in grid.names:
        row = [name]
        for s in grid.settings:
            ref = best_baseline(grid, s, name)
            row.append(_cell(compare(grid, s, name, ref), f" vs {ref}") if ref else "–")
        rows.append(row)
    note = _paired_note(grid) + (" Reference: the baseline (FedAvg-header, FedPer, FedRep, FedBABU, Ditto or local; "
                                 "never an ACME variant) with the highest mean test accuracy in the setting, other "
                                 "than the method itself; picking it on test favours the reference, not the method.")
    return ["method − best baseline", *grid.settings], rows, note


def _listing(items: list[tuple[str, stats.Paired]]) -> str:
    return ", ".join(f"{n} {p.format()}" for n, p in items) if items else "none"


WORDS = {stats.BETTER: "helps", stats.WORSE: "hurts", stats.CANNOT_TELL: "the data cannot tell"}


def paired_reading(grid: PairedGrid | None, missing: str) -> str:
    """The generated reading: per setting, which methods beat local and the best baseline (interval excludes 0),
    which lose, and where the data cannot tell; then ACME's record over the whole grid, plainly."""
    if grid is None:
        return missing
    out = []
    acme_vs_local: dict[str, stats.Paired] = {}
    acme_vs_best: dict[str, tuple[str, stats.Paired]] = {}
    for s in grid.settings:
        seeds = sorted(set(grid.seeds[s]))
        pairs = len(next(iter(grid.acc[s].values())))
        by: dict[str, list[tuple[str, stats.Paired]]] = {k: [] for k in WORDS}
        for name in grid.names:
            p = compare(grid, s, name, "local") if name != "local" else None
            if p is not None:
                by[p.verdict].append((name, p))
        step = f"; one test image moves a device's accuracy by {100 / grid.min_test[s]:.1f} points" \
            if s in grid.min_test else ""
        line = (f"- **{s}** ({pairs} pairs, seeds {', '.join(map(str, seeds))}{step}). Against local: "
                f"helps: {_listing(by[stats.BETTER])}; hurts: {_listing(by[stats.WORSE])}; "
                f"the data cannot tell: {_listing(by[stats.CANNOT_TELL])}.")
        if (acme := compare(grid, s, "acme", "local")) is not None:
            acme_vs_local[s] = acme
        ref = best_baseline(grid, s, "acme")
        if ref and (vs := compare(grid, s, "acme", ref)) is not None:
            acme_vs_best[s] = (ref, vs)
            line += f" ACME − the best baseline ({ref}): {vs.format()}, {WORDS[vs.verdict]}."
        if grid.selected.get(s):
            temps = ", ".join(f"{t:g}" for t in grid.selected[s])
            line += f" {VAL_T} chose the temperature {temps} (per seed, on validation)"
            vt = compare(grid, s, VAL_T, "acme")
            line += f"; {VAL_T} − acme (T = 1): {vt.format()}, {WORDS[vt.verdict]}." if vt else "."
        ablation = _ablation_steps(grid, s)
        if ablation:
            line += " Ablation, paired: " + "; ".join(ablation) + "."
        out.append(line)
    if acme_vs_local:
        out.append(_acme_record(acme_vs_local, acme_vs_best))
    out += [_paper_claims(grid, s, acme_vs_best.get(s)) for s in grid.settings if s in grid.paper_regime]
    return "\n".join(out) + "\n\n" + _paired_note(grid)


# the paper's ablation order EMD ≥ JS ≥ Avg ≈ Alone > wo_pruning, as paired steps (name, next name, the claim)
ABLATION_STEPS = (("acme", "acme_pruning_per_js", "EMD ≥ JS"), ("acme_pruning_per_js", "acme_pruning_avg", "JS ≥ Avg"),
                  ("acme_pruning_avg", "acme_pruning_alone", "Avg ≈ Alone"),
                  ("acme_pruning_alone", "acme_wo_pruning", "Alone > wo_pruning"))


HOLDS, CONTRADICTED = "holds", "contradicted"


def _ablation_verdicts(grid: PairedGrid, setting: str) -> list[tuple[str, stats.Paired, str]]:
    """Each step of the paper's ablation order as (claim, paired difference, what it says): a "≥" claim is
    contradicted only by an interval below 0, a ">" claim holds only with an interval above 0, and "≈" is
    contradicted by an interval that excludes 0."""
    out = []
    for a, b, claim in ABLATION_STEPS:
        p = compare(grid, setting, a, b)
        if p is None:
            continue
        if "≈" in claim:
            said = CONTRADICTED if p.verdict != stats.CANNOT_TELL else "consistent (the interval contains 0)"
        elif "≥" in claim:
            said = CONTRADICTED if p.verdict == stats.WORSE else (
                HOLDS if p.verdict == stats.BETTER else "consistent (the interval contains 0)")
        else:
            said = HOLDS if p.verdict == stats.BETTER else (
                CONTRADICTED if p.verdict == stats.WORSE else "not shown (the interval contains 0)")
        out.append((claim, p, said))
    return out


def _ablation_steps(grid: PairedGrid, setting: str) -> list[str]:
    """The ablation steps as the reading writes them: ``claim: difference [interval], verdict``."""
    return [f"{claim}: {p.format()}, {said}" for claim, p, said in _ablation_verdicts(grid, setting)]


def _paper_claims(grid: PairedGrid, setting: str, vs_best: tuple[str, stats.Paired] | None) -> str:
    """The paper's claims re-checked in its own regime: how many ablation steps hold, are contradicted or cannot be
    told apart, and ACME against the best baseline, in words."""
    said = [verdict for _, _, verdict in _ablation_verdicts(grid, setting)]
    holds, contradicted = said.count(HOLDS), said.count(CONTRADICTED)
    text = (f"- **The paper's claims in its regime** ({setting}: {grid.paper_regime[setting]}): of the "
            f"{len(said)} steps of EMD ≥ JS ≥ Avg ≈ Alone > wo_pruning, {holds} hold, "
            f"{contradicted} are contradicted and {len(said) - holds - contradicted} the data cannot resolve")
    if vs_best is not None:
        ref, p = vs_best
        text += f"; ACME − the best baseline ({ref}): {p.format()}, {WORDS[p.verdict]}"
    return text + "."


def _acme_record(vs_local: dict[str, stats.Paired], vs_best: dict[str, tuple[str, stats.Paired]]) -> str:
    """One sentence on ACME over every setting: where it helps, where it hurts, and if it helps nowhere, that."""
    n = len(vs_local)
    wins = [s for s, p in vs_local.items() if p.verdict == stats.BETTER]
    losses = [s for s, p in vs_local.items() if p.verdict == stats.WORSE]
    beats = [s for s, (_, p) in vs_best.items() if p.verdict == stats.BETTER]
    behind = [s for s, (_, p) in vs_best.items() if p.verdict == stats.WORSE]

    def where(settings: list[str]) -> str:
        return f"{len(settings)} of {n} settings" + (f" ({', '.join(settings)})" if settings else "")

    text = (f"- **ACME over the grid**: it beats local in {where(wins)} and loses to it in {where(losses)}; "
            f"it beats the best baseline in {where(beats)} and loses to it in {where(behind)}.")
    if not wins and not beats:
        text += (" ACME helps nowhere in this grid: in no setting does its interval against local or against the "
                 "best baseline lie above 0.")
    return text
