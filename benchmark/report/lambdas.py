"""REPORT.md's "Chosen lambdas": per group, the lambda the selection seeds chose and its grid.

Scores are means over the selection seeds of the validation average accuracy
(``selection``); a lambda that did not finish on every selection seed shows why. Next to each
chosen lambda, ``λ·tr(F)`` (lambda times the mean trace of the curvatures the selected runs
fitted) puts the penalty strengths of different structures on one axis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..config import PENALISED
from ..outcomes import Run, bn_modes, method_labels, sequences, setting_text
from ..selection import SELECTION
from .cells import EDGE_MARK, EDGE_NOTE, lambda_text
from .format import fmt_fixed, fmt_lambda, md_table


def selection_scores(group: Sequence[Run]) -> dict[float, tuple[float | None, str]]:
    """``lambda -> (mean validation score over its selection runs, note)`` of one group.

    The score is None unless every selection run of that lambda finished; the note then says
    how many diverged or failed (``2 of 3 diverged``).
    """
    by_lam: dict[float, list[Run]] = {}
    for r in group:
        if r.role == SELECTION:
            by_lam.setdefault(r.lam, []).append(r)
    out: dict[float, tuple[float | None, str]] = {}
    for lam, rs in sorted(by_lam.items()):
        bad = Counter(r.record.status for r in rs if not r.ok)
        if bad or any(r.val_avg is None for r in rs):
            note = ", ".join(f"{n} of {len(rs)} {status}" for status, n in sorted(bad.items()))
            out[lam] = (None, note or "incomplete")
        else:
            out[lam] = (sum(r.val_avg for r in rs) / len(rs), "")  # type: ignore[misc]
    return out


def lambda_grid_cell(group: Sequence[Run], chosen: float) -> str:
    """``100: 0.8712, **316.2: 0.8930**, 1000: 1 of 3 diverged``: mean over selection seeds."""
    items = []
    for lam, (score, note) in selection_scores(group).items():
        text = f"{fmt_lambda(lam)}: {fmt_fixed(score) if score is not None else note}"
        items.append(f"**{text}**" if lam == chosen and score is not None else text)
    return ", ".join(items) if items else "—"


def strength(run: Run) -> float | None:
    """``lambda * mean_t tr(F_t)`` over the curvatures a run fitted (None: none recorded)."""
    traces = [t for t in run.record.curvature_trace if t is not None]
    return run.lam * sum(traces) / len(traces) if traces else None


def strength_cell(chosen: Sequence[Run]) -> str:
    """Mean of ``strength`` over the finished selected runs, 3 significant digits."""
    values = [v for r in chosen if r.ok and (v := strength(r)) is not None]
    return f"{sum(values) / len(values):.3g}" if values else "—"


def declared_grid(meta: dict[str, Any]) -> str:
    """The experiment's lambda grids (``lambdas`` in sweep.json or its ``source``), as text."""
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    grid = meta.get("lambda_grid") or meta.get("lambdas") or source.get("lambdas")
    if not grid:
        return ""

    def values(v: Any) -> str:
        if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            return ", ".join(fmt_lambda(float(x)) for x in v)
        return setting_text(v)

    if isinstance(grid, dict):
        return "; ".join(f"{k}: {values(v)}" for k, v in grid.items())
    return values(grid)


def lr_of(run: Run) -> float:
    """The run's learning rate."""
    return float(run.record.config.get("lr", 0.0))


def tried_lrs(group: Sequence[Run]) -> list[float]:
    """The learning rates a group's selection runs tried (several: lr chosen with lambda)."""
    return sorted({lr_of(r) for r in group if r.role == SELECTION})


def own_best(group: Sequence[Run]) -> tuple[float | None, bool]:
    """One lr's own best lambda (highest score, ties to the smaller) and whether it is an edge."""
    scores = selection_scores(group)
    scored = [(score, -lam, lam) for lam, (score, _) in scores.items() if score is not None]
    if not scored:
        return None, False
    best = max(scored)[2]
    return best, best in (min(scores), max(scores))


def lr_grid_cell(group: Sequence[Run], chosen: Run | None) -> str:
    """``lr 0.01 (own best 10, edge): <grid>; **lr 0.03162**: <grid>``: every lr a family tried.

    The tested lr is in bold with its chosen lambda; every other lr names its own best lambda
    (in bold in its grid) and whether that best sat at its grid's edge, so that a losing lr whose
    grid stopped short is visible.
    """
    parts = []
    for lr in tried_lrs(group):
        at = [r for r in group if lr_of(r) == lr]
        won = chosen is not None and lr_of(chosen) == lr
        best, edge = own_best(at)
        lam = chosen.lam if won and chosen is not None else best
        penalised = at[0].record.config.get("method") in PENALISED
        if won or not penalised:
            name = f"**lr {fmt_lambda(lr)}**" if won else f"lr {fmt_lambda(lr)}"
        elif best is None:
            name = f"lr {fmt_lambda(lr)} (no lambda finished on every selection seed)"
        else:
            name = f"lr {fmt_lambda(lr)} (own best {fmt_lambda(best)}{', edge' if edge else ''})"
        parts.append(f"{name}: {lambda_grid_cell(at, -1.0 if lam is None else lam)}")
    return "; ".join(parts)


def chosen_cell(chosen: Run, lr_tuned: bool) -> str:
    """The chosen lambda (``lambda_text``), with the chosen lr where lr was chosen too."""
    text = lambda_text(chosen)
    if not lr_tuned:
        return text
    edge = EDGE_MARK if chosen.lr_at_edge else ""
    return f"{text} at lr {fmt_lambda(lr_of(chosen))}{edge}"


def lambda_rows(runs: Sequence[Run]) -> list[list[str]]:
    """One row per sequence, bn and method that chose something: lambda, strength, score, grid.

    Penalised methods always; unpenalised ones where they chose a learning rate.
    """
    rows = []
    for seq in sequences(runs):
        for bn in bn_modes(runs, seq):
            for label in method_labels(runs, seq, bn):
                group = [r for r in runs if r.sequence == seq and r.bn == bn and r.label == label]
                lr_tuned = len(tried_lrs(group)) > 1
                if group[0].record.config.get("method") not in PENALISED and not lr_tuned:
                    continue
                chosen = [r for r in group if r.selected]
                first = chosen[0] if chosen else None
                at = [r for r in group if first is None or lr_of(r) == lr_of(first)]
                lam = first.lam if first is not None else None
                best = selection_scores(at).get(lam, (None, ""))[0] if chosen else None
                grid = (
                    lr_grid_cell(group, first)
                    if lr_tuned
                    else lambda_grid_cell(group, -1.0 if lam is None else lam)
                )
                cell = chosen_cell(first, lr_tuned) if first is not None else "none"
                rows.append([seq, bn, label, cell, strength_cell(chosen), fmt_fixed(best), grid])
    return rows


LR_NOTE = (
    "Where a study gives several learning rates (`lrs`), lr is chosen with lambda: each lr "
    "chooses its lambda as above, then the lr whose chosen lambda scores highest is tested "
    "(ties to the smaller lr; the others are never tested); the chosen lr is in bold in the "
    "grid column, and one at the smallest or largest lr tried is marked (edge)."
)


def _lr_tuned(runs: Sequence[Run]) -> bool:
    """Whether any method in ``runs`` chose its lr among several (its selection runs differ)."""
    tried: dict[tuple[str, str, str], set[float]] = {}
    for r in runs:
        if r.role == SELECTION:
            tried.setdefault((r.sequence, r.bn, r.label), set()).add(lr_of(r))
    return any(len(lrs) > 1 for lrs in tried.values())


def lambda_section(
    runs: Sequence[Run], meta: dict[str, Any], selection_seeds: Sequence[int]
) -> str:
    """Chosen lambda per sequence, bn and penalised method, with the validation scores."""
    rows = lambda_rows(runs)
    seeds = ", ".join(map(str, selection_seeds))
    parts = [
        "## Chosen lambdas",
        "",
        f"Chosen per sequence, bn and penalised method on the validation split of the selection "
        f"seeds ({seeds}), which are never test seeds: the highest mean validation average "
        "accuracy over those seeds, ties to the smaller lambda, a lambda that diverged or "
        "failed on any of them never chosen (the chosen one in bold). The last column lists "
        "every lambda the group ran. λ·tr(F) is lambda times the mean trace of the curvatures "
        "the selected runs fitted: the penalty's strength on one axis for every structure (two "
        "structures with the same λ·tr(F) penalise a random direction equally on average). "
        "Baseline and joint have no lambda.",
    ]
    if _lr_tuned(runs):
        parts += ["", LR_NOTE]
    grid = declared_grid(meta)
    if grid:
        parts += ["", f"Lambda grids declared by the experiment: {grid}."]
    if any(r.selected and r.at_edge for r in runs):
        parts += ["", EDGE_NOTE]
    if rows:
        header = [
            "sequence",
            "bn",
            "method",
            "chosen λ",
            "λ·tr(F)",
            "val avg acc",
            "λ grid: mean val avg acc per λ",
        ]
        parts += ["", md_table(header, rows, "lllrrrl")]
    else:
        parts += ["", "No penalised runs."]
    return "\n".join(parts)
