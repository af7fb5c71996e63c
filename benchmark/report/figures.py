"""REPORT.md's figures: which ones the records support (pure), and drawing them (matplotlib Agg).

``planned_figures`` decides names and captions from the runs alone, ``figures_section`` embeds
them in REPORT.md, and ``draw_figure`` draws one into ``figures/``. Per section (sequence and
network) and BatchNorm mode, in this order:

- ``forest``: the headline, each method's paired difference in test average accuracy against
  ``ewc diag-exact`` (mean, 95% Student-t interval, every seed's difference; against the variant
  at its own settings where the reference ran in variants, ``references``);
- ``budget``: where the EWC methods ran at more than one ``fisher_samples`` N, each structure's
  test average accuracy and forgetting against N, with sentences on the paired differences
  between structures at each N (``figures_budget``);
- ``seeds``: every test seed's test average accuracy per method, mean ± CI beside;
- ``lambda``: validation average accuracy against lambda on the selection seeds, one panel per
  curvature family;
- ``tasks``: a two-task sequence in one panel, longer ones as one panel per method;
- ``heatmap``: mean accuracy matrices, only for sequences of more than two tasks;

and per section ``cost``, seconds against accuracy. The drawing lives in ``figures_compare``
(forest, seeds, cost), ``figures_budget`` (budget) and ``figures_sequence`` (tasks, heatmaps,
lambda); every colour comes from ``palette``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import PENALISED
from ..outcomes import Run, bn_modes, selected, sequences, task_names
from .figures_budget import budget_caption, budget_sentences, plot_budget
from .figures_common import (
    mean_matrix,
    paired_diffs,
    paired_labels,
    plotted_labels,
    subplot_grid,
    values_of,
)
from .figures_compare import plot_cost, plot_forest, plot_seeds
from .figures_sequence import (
    lambda_families,
    plot_heatmaps,
    plot_lambda_curves,
    plot_task_curves,
    plot_two_tasks,
    selection_runs,
)
from .references import reference_text

__all__ = [
    "FIGURE_PREFIXES",
    "FigureSpec",
    "draw_figure",
    "figures_section",
    "mean_matrix",
    "planned_figures",
    "plotted_labels",
    "slug",
    "subplot_grid",
]

FIGURE_PREFIXES = ("forest_", "budget_", "seeds_", "lambda_", "tasks_", "heatmap_", "cost_")
"""File-name prefixes of the figures this module draws (older ones are removed on a rebuild)."""
BN_KINDS = ("forest", "budget", "seeds", "lambda", "tasks", "heatmap")
"""The per-BatchNorm-mode figures of a section, in report order."""
CI_TEXT = "95% Student-t interval"


# -- the Markdown side (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file name, sequence, bn mode (None: both), kind, caption and notes.

    ``notes``: sentences shown below the figure, generated from the same runs (the budget's).
    """

    name: str
    sequence: str
    bn: str | None
    kind: str
    caption: str
    notes: tuple[str, ...] = ()


def slug(section: str) -> str:
    """A report section as a file-name part.

    ``mnist-fmnist on mlp hidden=16`` -> ``mnist-fmnist_on_mlp_hidden16``.
    """
    return re.sub(r"[^A-Za-z0-9.-]+", "_", section.replace("=", ""))


def n_text(counts: Sequence[int], what: str) -> str:
    """``n = 10 test seeds`` when every method has as many, else ``n = 8–10 test seeds``."""
    low, high = min(counts, default=0), max(counts, default=0)
    return f"n = {low} {what}" if low == high else f"n = {low}–{high} {what}"


def _forest_caption(runs: Sequence[Run], seq: str, bn: str) -> str | None:
    """The forest plot's caption, None without the reference or another method."""
    pairs = paired_labels(runs, seq, bn)
    if not pairs:
        return None
    counts = [
        paired_diffs(selected(runs, seq, bn, lab), selected(runs, seq, bn, ref))[1]["n"]
        for lab, ref in pairs.items()
    ]
    ref = reference_text(pairs.values())
    return (
        f"Headline: each method against {ref}, {seq}, bn = {bn}. x = test average accuracy "
        f"minus {ref}'s on the same test seed, at each method's chosen λ; marker = the mean "
        f"paired difference with its {CI_TEXT} (bar), small dots = the seeds' own differences "
        f"({n_text(counts, 'seed pairs')}; each row's n in its label); 0 = no difference. "
        f"Penalised methods on top, baseline and joint below on their own scale."
    )


def _seeds_caption(runs: Sequence[Run], seq: str, bn: str) -> str:
    """The per-seed strip plot's caption."""
    labels = plotted_labels(runs, seq, bn)
    counts = [len(values_of(selected(runs, seq, bn, lab))) for lab in labels]
    return (
        f"Every test seed, {seq}, bn = {bn}: one column per method, a dot per test seed's test "
        f"average accuracy at the chosen λ ({n_text(counts, 'test seeds')}, each method's n "
        f"in its label; spread sideways so that none hides another), beside it the mean with "
        f"its {CI_TEXT}. Diverged or failed seeds are left out (counted in the results table)."
    )


def _lambda_caption(runs: Sequence[Run], seq: str, bn: str) -> str | None:
    """The lambda curves' caption, None without a penalised method's selection runs."""
    families = lambda_families(runs, seq, bn)
    if not families:
        return None
    labels = [lab for group in families.values() for lab in group]
    seeds = {r.seed for lab in labels for r in selection_runs(runs, seq, bn, lab)}
    band = (
        f"the {len(seeds)} selection seeds' mean with its {CI_TEXT} as a band"
        if len(seeds) > 1
        else "the one selection seed's value (no band)"
    )
    return (
        f"Choosing λ, {seq}, bn = {bn}: validation average accuracy against λ (log scale), one "
        f"panel per curvature family ({', '.join(families)}), one line per method: {band}; "
        f"the chosen λ circled; × at the bottom: a λ where a selection run diverged or failed "
        f"(never chosen); dashed grey: the baseline's validation accuracy."
    )


def _tasks_caption(seq: str, bn: str, tasks: Sequence[str]) -> str:
    """The per-task figure's caption: one panel for two tasks, one per method for more."""
    if len(tasks) == 2:
        return (
            f"The two tasks, {seq}, bn = {bn}: test accuracy on {tasks[0]} just after learning "
            f"it and after {tasks[1]} (the line between them is the forgetting), and on "
            f"{tasks[1]} after learning it; one line per method at its chosen λ, small dots = "
            f"the test seeds, marker and bar = mean with its {CI_TEXT}."
        )
    return (
        f"Test accuracy on each task as the sequence goes on, {seq}, bn = {bn}: one panel per "
        f"method, one line per task from the moment it is learnt (chosen λ, mean over the "
        f"finished test seeds, n in each title), faint dots = the seeds."
    )


def _heatmap_caption(seq: str, bn: str) -> str:
    """The heatmaps' caption (sequences of more than two tasks)."""
    return (
        f"Test accuracy matrices, {seq}, bn = {bn}: row i = after task i, column j = task j, "
        f"chosen λ, mean over the finished test seeds (n in each title); joint fills only the "
        f"last row; values written in the cells. Colour = the error (1 − accuracy) on a log "
        f"scale from the lowest to the highest error below the diagonal over the sequential "
        f"methods' panels (what each method remembers; halving an error is one step of colour "
        f"anywhere on it, so methods near the top still differ); cells beyond it take its end "
        f"colours; cells above the diagonal (tasks not learnt yet) are blank."
    )


def _bn_spec(runs: Sequence[Run], seq: str, bn: str, kind: str) -> FigureSpec | None:
    """One per-bn-mode figure of a section, None where the runs do not support it."""
    tasks = task_names(runs, seq)
    caption: str | None
    notes: tuple[str, ...] = ()
    if kind == "forest":
        caption = _forest_caption(runs, seq, bn)
    elif kind == "budget":
        caption = budget_caption(runs, seq, bn)
        notes = tuple(budget_sentences(runs, seq, bn)) if caption else ()
    elif kind == "seeds":
        caption = _seeds_caption(runs, seq, bn)
    elif kind == "lambda":
        caption = _lambda_caption(runs, seq, bn)
    elif kind == "tasks":
        caption = _tasks_caption(seq, bn, tasks) if len(tasks) >= 2 else None
    else:
        caption = _heatmap_caption(seq, bn) if len(tasks) > 2 else None
    if caption is None:
        return None
    return FigureSpec(f"{kind}_{slug(seq)}_{bn}.png", seq, bn, kind, caption, notes)


def _cost_spec(seq: str) -> FigureSpec:
    """The cost figure of a section with a penalised method."""
    return FigureSpec(
        f"cost_{slug(seq)}.png",
        seq,
        None,
        "cost",
        f"Cost against accuracy, {seq}: x = curvature estimation + penalty seconds per run "
        f"(log scale), y = test average accuracy at the chosen λ; small dots = the test "
        f"seeds' runs, large marker = the method's mean cost and mean accuracy with its "
        f"{CI_TEXT}; baseline and joint as horizontal lines (mean) with their interval as a "
        f"band.",
    )


def planned_figures(runs: Sequence[Run]) -> list[FigureSpec]:
    """Every figure the records support, in report order (pure: decides names and captions)."""
    specs = []
    for seq in sequences(runs):
        modes = [bn for bn in bn_modes(runs, seq) if plotted_labels(runs, seq, bn)]
        for kind in BN_KINDS:
            specs += [s for bn in modes if (s := _bn_spec(runs, seq, bn, kind)) is not None]
        penalised = any(
            r.sequence == seq and r.record.config.get("method") in PENALISED for r in runs
        )
        if modes and penalised:
            specs.append(_cost_spec(seq))
    return specs


def figures_section(specs: Sequence[FigureSpec]) -> str:
    """Each figure embedded with its one-line caption, grouped by sequence."""
    if not specs:
        return ""
    parts = ["## Figures"]
    current = None
    for spec in specs:
        if spec.sequence != current:
            current = spec.sequence
            parts += ["", f"### {current}"]
        alt = spec.name.removesuffix(".png").replace("_", " ")
        parts += ["", f"![{alt}](figures/{spec.name})", "", f"*{spec.caption}*"]
        parts += ["", *[f"- {s}" for s in spec.notes]] if spec.notes else []
    return "\n".join(parts)


# -- drawing -----------------------------------------------------------------------------------


def _draw_tasks(runs: Sequence[Run], seq: str, bn: str, path: Path) -> None:
    """Two tasks: one panel; more: one panel per method."""
    draw = plot_two_tasks if len(task_names(runs, seq)) == 2 else plot_task_curves
    draw(runs, seq, bn, path)


BN_DRAWERS: dict[str, Callable[[Sequence[Run], str, str, Path], None]] = {
    "forest": plot_forest,
    "budget": plot_budget,
    "seeds": plot_seeds,
    "lambda": plot_lambda_curves,
    "tasks": _draw_tasks,
    "heatmap": plot_heatmaps,
}


def draw_figure(spec: FigureSpec, runs: Sequence[Run], fig_dir: Path) -> Path:
    """Draw one planned figure into ``fig_dir``; its path."""
    path = fig_dir / spec.name
    if spec.kind == "cost":
        plot_cost(runs, spec.sequence, path)
    elif spec.kind in BN_DRAWERS:
        BN_DRAWERS[spec.kind](runs, spec.sequence, str(spec.bn), path)
    else:
        raise ValueError(f"unknown figure kind {spec.kind!r}")
    return path
