"""REPORT.md's figures that compare the methods at their chosen lambda, seed by seed.

- ``plot_forest`` (the headline): each method's paired difference in test average accuracy
  against ``ewc diag-exact`` (against the variant at its own settings where the reference ran in
  variants, ``references``), mean with its 95% Student-t interval and every seed's difference;
- ``plot_seeds``: every test seed's test average accuracy per method, mean ± CI beside (this is
  where bimodal outcomes show);
- ``plot_cost``: estimation + penalty seconds against test average accuracy, per seed and mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PENALISED
from ..outcomes import Run, bn_modes, method_labels, run_cost_seconds, selected
from .figures_common import (
    DOT_ALPHA,
    DOT_SIZE,
    dots_and_mean,
    finished,
    mean_ci,
    method_legend,
    paired_diffs,
    paired_labels,
    plotted_labels,
    spread,
    values_of,
)
from .format import new_figure, save_figure
from .palette import GRID_ALPHA, REFERENCE, colour, marker
from .references import reference_text

ROW_HEIGHT = 0.42
"""Inches per forest-plot row."""
XLABEL_WIDTH = 75
"""Characters of the forest plot's x label that fit on one line (longer: two lines)."""
COST_FLOOR_S = 1e-4
"""Costs below this many seconds are drawn at it (log axis)."""


def _is_penalised(runs: Sequence[Run]) -> bool:
    """Whether the runs' method carries a penalty (l2, ewc, mas)."""
    return bool(runs) and runs[0].record.config.get("method") in PENALISED


# -- forest plot -------------------------------------------------------------------------------


def forest_rows(runs: Sequence[Run], sequence: str, bn: str) -> list[tuple[str, bool]]:
    """``(label, penalised)`` of every method paired with a reference, in table order."""
    pairs = paired_labels(runs, sequence, bn)
    return [(lab, _is_penalised(selected(runs, sequence, bn, lab))) for lab in pairs]


def _forest_row(
    ax: Any, y: float, diffs: Sequence[float], test: dict[str, Any], label: str
) -> None:
    """One method's row: the seeds' differences as dots, the mean and its interval on top."""
    c = colour(label)
    if diffs:
        ax.scatter(
            diffs,
            y + spread(len(diffs), 0.36),
            s=DOT_SIZE,
            color=c,
            alpha=DOT_ALPHA,
            linewidths=0,
            zorder=2,
        )
    if test["mean_diff"] is None:
        return
    if test.get("ci_low") is not None:
        ax.hlines(y, test["ci_low"], test["ci_high"], color=c, lw=2.4, zorder=3)
    ax.plot(test["mean_diff"], y, marker=marker(label), ms=8, color=c, mec=REFERENCE, zorder=4)


def _forest_panel(
    ax: Any, runs: Sequence[Run], sequence: str, bn: str, labels: Sequence[str]
) -> None:
    """One forest panel: a row per label (first at the top), each against its own reference."""
    pairs = paired_labels(runs, sequence, bn)
    names = []
    for row, label in enumerate(labels):
        reference = selected(runs, sequence, bn, pairs[label])
        diffs, test = paired_diffs(selected(runs, sequence, bn, label), reference)
        _forest_row(ax, len(labels) - 1 - row, diffs, test, label)
        names.append(f"{label} (n={test['n']})")
    ax.axvline(0.0, color=REFERENCE, lw=0.9, zorder=1)
    ax.set_yticks(range(len(labels)), names[::-1], fontsize=8)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.grid(alpha=GRID_ALPHA, axis="x")


def plot_forest(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Paired differences against the reference, one row per method.

    Penalised methods on top, baseline and joint below on their own scale (they differ from the
    reference by far more than the curvatures do).
    """
    rows = forest_rows(runs, sequence, bn)
    ref = reference_text(paired_labels(runs, sequence, bn).values())
    groups = [g for g in ([lab for lab, p in rows if p], [lab for lab, p in rows if not p]) if g]
    fig = new_figure(7.6, ROW_HEIGHT * len(rows) + 0.9 * len(groups) + 0.9)
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[len(g) + 1 for g in groups])
    for ax, labels in zip(axes[:, 0], groups, strict=True):
        _forest_panel(ax, runs, sequence, bn, labels)
    xlabel = f"test average accuracy − {ref}'s, same test seed (> 0: better)"
    axes[-1, 0].set_xlabel(xlabel if len(xlabel) <= XLABEL_WIDTH else xlabel.replace(", ", ",\n"))
    fig.suptitle(
        f"Paired differences against {ref}: {sequence}, bn = {bn}\n"
        f"(mean with 95% Student-t CI; dots: the seeds)",
        fontsize=10,
    )
    save_figure(fig, path)


# -- per-seed strip plot -----------------------------------------------------------------------


def plot_seeds(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Every test seed's test average accuracy at the chosen lambda, one column per method."""
    labels = plotted_labels(runs, sequence, bn)
    fig = new_figure(max(5.0, 0.62 * len(labels) + 2.2), 4.6)
    ax = fig.subplots()
    names = []
    for i, label in enumerate(labels):
        values = values_of(selected(runs, sequence, bn, label))
        dots_and_mean(ax, i, values, colour(label), label, gap=0.3)
        names.append(f"{label} (n={len(values)})")
    ax.set_xticks(range(len(labels)), names, rotation=35, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("test average accuracy")
    ax.grid(alpha=GRID_ALPHA, axis="y")
    ax.set_title(
        f"Every test seed at the chosen λ: {sequence}, bn = {bn}\n"
        f"(dots: seeds; marker and bar: mean with 95% Student-t CI)",
        fontsize=10,
    )
    save_figure(fig, path)


# -- cost against accuracy ---------------------------------------------------------------------


def _cost_reference(ax: Any, chosen: Sequence[Run], label: str) -> None:
    """An unpenalised method: its mean as a horizontal line, its interval as a band."""
    mean, half = mean_ci(values_of(chosen))
    if mean is None:
        return
    c = colour(label)
    ax.axhline(mean, ls="--", lw=1.2, color=c, label=label)
    if half:
        ax.axhspan(mean - half, mean + half, color=c, alpha=0.12, lw=0)


def _cost_method(ax: Any, chosen: Sequence[Run], label: str) -> None:
    """One penalised method: each seed's (cost, accuracy), the means with the accuracy's CI."""
    done = [r for r in finished(chosen) if r.test_avg is not None]
    if not done:
        return
    c = colour(label)
    costs = np.array([max(run_cost_seconds(r), COST_FLOOR_S) for r in done])
    accs = np.array([float(r.test_avg) for r in done])  # type: ignore[arg-type]
    ax.scatter(costs, accs, s=DOT_SIZE, color=c, alpha=DOT_ALPHA, linewidths=0)
    mean, half = mean_ci(accs.tolist())
    ax.errorbar(
        float(np.mean(costs)),
        mean,
        yerr=half or 0.0,
        fmt=marker(label),
        ms=7,
        mec=REFERENCE,
        capsize=3,
        color=c,
        label=label,
    )


def plot_cost(runs: Sequence[Run], sequence: str, path: Path) -> None:
    """Cost (estimation + penalty seconds, log scale) against test average accuracy."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    modes = bn_modes(runs, sequence)
    fig = new_figure(4.8 * len(modes) + 2.2, 4.2)
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for ax, bn in zip(axes, modes, strict=True):
        for label in method_labels(runs, sequence, bn):
            chosen = selected(runs, sequence, bn, label)
            if not finished(chosen):
                continue
            draw = _cost_method if _is_penalised(chosen) else _cost_reference
            draw(ax, chosen, label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(f"bn = {bn}", fontsize=10)
        ax.set_xlabel("estimation + penalty seconds per run (log)")
        ax.grid(alpha=GRID_ALPHA)
    axes[0].set_ylabel("test average accuracy")
    method_legend(fig, axes)
    fig.suptitle(
        f"Cost against accuracy: {sequence}\n(chosen λ; dots: seeds; marker: mean, "
        f"95% Student-t CI)",
        fontsize=10,
    )
    save_figure(fig, path)
