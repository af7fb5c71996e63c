"""REPORT.md's figures of what happens along a sequence and along the lambda grid.

- ``plot_two_tasks``: a two-task sequence in one panel (accuracy on task 1 after task 1 and
  after task 2, on task 2 after task 2), one line per method, per-seed dots and mean ± CI;
- ``plot_task_curves``: longer sequences, one panel per method, one line per task, seeds' dots;
- ``plot_heatmaps``: mean accuracy matrices of longer sequences on a colour scale spanning the
  cells below the diagonal (what is remembered), so that methods differ in colour;
- ``plot_lambda_curves``: validation average accuracy against lambda over the selection seeds,
  one panel per curvature family, mean with its 95% t band, chosen lambda and diverged ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PENALISED
from ..outcomes import Run, method_labels, selected, task_names
from ..selection import SELECTION
from .figures_common import (
    DOT_ALPHA,
    cell_values,
    is_joint,
    mean_ci,
    mean_matrix,
    method_legend,
    plotted_labels,
    short_task,
    spread,
    subplot_grid,
    values_of,
)
from .format import fmt_fixed, new_figure, save_figure
from .palette import (
    GRID_ALPHA,
    GUIDE,
    MISSING_CELL,
    SEQUENTIAL_CMAP,
    TASK_CMAP,
    TASK_CMAP_TOP,
    colour,
    family,
    family_sort_key,
    line_style,
    marker,
    text_colour,
)

ANNOTATE_MAX_TASKS = 6
"""Heatmap cells carry their value up to this many tasks."""
CELL_TEXT = {"ha": "center", "va": "center", "fontsize": 7}
ERROR_FLOOR = 1e-3
"""Heatmap errors (1 - accuracy) below this are drawn at it (log scale)."""
ERROR_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""Where the heatmaps' colour bar is ticked (errors; labelled as accuracies)."""
MIN_RATIO = 2.0
"""A heatmap's error scale spans at least this factor."""


# -- the two-task sequences --------------------------------------------------------------------


def two_task_cells(tasks: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(row, column, tick)`` of the three cells a two-task figure shows."""
    first, second = tasks[0], tasks[1]
    return [
        (0, 0, f"on {first}\nafter {first}"),
        (1, 0, f"on {first}\nafter {second}"),
        (1, 1, f"on {second}\nafter {second}"),
    ]


def _two_task_method(ax: Any, chosen: Sequence[Run], label: str, dx: float, width: float) -> None:
    """One method: seeds' dots and mean ± CI at the three cells, the first two joined."""
    c = colour(label)
    points = []
    for x, (i, j, _) in enumerate(two_task_cells(["1", "2"])):
        values = cell_values(chosen, i, j)
        if not values:
            continue
        xs = x + dx + spread(len(values), width)
        ax.scatter(xs, values, s=8, color=c, alpha=DOT_ALPHA * 0.7, linewidths=0, zorder=2)
        mean, half = mean_ci(values)
        points.append((x, mean, half))
    if not points:
        return
    joined = [(x, m) for x, m, _ in points if x < 2]
    ax.plot([x + dx for x, _ in joined], [m for _, m in joined], ls=line_style(label), color=c)
    ax.errorbar(
        [x + dx for x, _, _ in points],
        [m for _, m, _ in points],
        yerr=[h or 0.0 for _, _, h in points],
        fmt=marker(label),
        ms=5,
        capsize=2,
        color=c,
        label=label,
        zorder=3,
    )


def plot_two_tasks(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """A two-task sequence on one axis: what each method keeps of task 1 and learns of task 2."""
    labels = plotted_labels(runs, sequence, bn)
    cells = two_task_cells(task_names(runs, sequence))
    fig = new_figure(8.6, 4.6)
    ax = fig.subplots()
    step = 0.72 / max(len(labels), 1)
    for k, label in enumerate(labels):
        dx = (k - (len(labels) - 1) / 2) * step
        _two_task_method(ax, selected(runs, sequence, bn, label), label, dx, step * 0.6)
    ax.axvline(1.5, color=GUIDE, lw=0.8, ls=":")
    ax.set_xticks(range(3), [tick for _, _, tick in cells], fontsize=8)
    ax.set_xlim(-0.5, 2.5)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=GRID_ALPHA, axis="y")
    method_legend(fig, [ax])
    fig.suptitle(
        f"The two tasks, {sequence}, bn = {bn}\n(chosen λ; dots: seeds; "
        f"marker and bar: mean, 95% Student-t CI)",
        fontsize=10,
    )
    save_figure(fig, path)


# -- longer sequences: task curves and heatmaps ------------------------------------------------


def task_colours(T: int) -> list[Any]:
    """One colour per task, dark to light in training order (``palette.TASK_CMAP``)."""
    from matplotlib import colormaps

    cmap = colormaps[TASK_CMAP]
    return [cmap(x) for x in np.linspace(0.0, TASK_CMAP_TOP, T)]


def _task_panel(ax: Any, chosen: Sequence[Run], T: int) -> None:
    """One method: a line per task from the moment it is learnt, the seeds as faint dots."""
    x = np.arange(1, T + 1)
    mat = mean_matrix(chosen)
    if mat is None:
        return
    for j, c in enumerate(task_colours(T)):
        ax.plot(x[j:], mat[j:, j], marker="o", ms=3, color=c, label=f"task {j + 1}", zorder=3)
        for i in range(j, T):
            values = cell_values(chosen, i, j)
            xs = x[i] + spread(len(values), 0.3)
            ax.scatter(xs, values, s=5, color=c, alpha=0.35, linewidths=0, zorder=2)


def plot_task_curves(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Accuracy on each task after each task, one panel per method (mean and seeds)."""
    labels = plotted_labels(runs, sequence, bn)
    tasks = task_names(runs, sequence)
    T = len(tasks)
    rows, cols = subplot_grid(len(labels))
    fig = new_figure(3.0 * cols + 1.4, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, label in zip(axes.flat, labels, strict=False):
        chosen = selected(runs, sequence, bn, label)
        ax.set_title(f"{label} (n={len(values_of(chosen))})", fontsize=9)
        ax.set_xlim(0.6, T + 0.4)
        ax.set_xticks(np.arange(1, T + 1))
        ax.set_xlabel("after task")
        ax.grid(alpha=GRID_ALPHA)
        _task_panel(ax, chosen, T)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if T <= 10:
        handles, _ = axes.flat[0].get_legend_handles_labels()
        names = [f"{j + 1}: {short_task(t)}" for j, t in enumerate(tasks)][: len(handles)]
        fig.legend(handles, names, loc="outside right center", title="task", fontsize=8)
    fig.suptitle(
        f"Accuracy on each task across the sequence: {sequence}, bn = {bn}\n"
        f"(line: mean over seeds; dots: seeds)",
        fontsize=10,
    )
    save_figure(fig, path)


def heatmap_scale(mats: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(lowest, highest)`` test error (1 - accuracy) below the diagonal over ``mats``.

    The matrices are the sequential methods' (joint's last row is not something remembered).

    Errors under ``ERROR_FLOOR`` count as it; a range narrower than ``MIN_RATIO`` is widened
    around its geometric middle; (``ERROR_FLOOR``, 1) without a cell.
    """
    below = [1.0 - m[np.tril_indices(m.shape[0], -1)] for m in mats]
    errors = np.concatenate(below) if below else np.array([])
    errors = np.maximum(errors[np.isfinite(errors)], ERROR_FLOOR)
    if errors.size == 0:
        return ERROR_FLOOR, 1.0
    low, high = float(errors.min()), float(errors.max())
    if high / low < MIN_RATIO:
        middle = math.sqrt(high * low)
        low, high = middle / math.sqrt(MIN_RATIO), middle * math.sqrt(MIN_RATIO)
    return low, high


def _heatmap_panel(ax: Any, mat: np.ndarray, tasks: Sequence[str], cmap: Any, norm: Any) -> Any:
    """One method's mean accuracy matrix coloured by its error, cells above the diagonal blank."""
    T = len(tasks)
    shown = np.where(np.triu(np.ones((T, T), dtype=bool), 1), np.nan, mat)
    errors = np.maximum(1.0 - shown, ERROR_FLOOR)
    image = ax.imshow(np.ma.masked_invalid(errors), cmap=cmap, norm=norm)
    ticks = list(range(T))
    ax.set_xticks(ticks, [short_task(t) for t in tasks], fontsize=7, rotation=30)
    ax.set_yticks(ticks, [f"after {i + 1}" for i in ticks], fontsize=7)
    if T <= ANNOTATE_MAX_TASKS:
        for i, j in zip(*np.nonzero(np.isfinite(shown)), strict=True):
            lightness = 1.0 - float(np.clip(norm(errors[i, j]), 0.0, 1.0))
            ax.text(j, i, fmt_fixed(shown[i, j], 2), **CELL_TEXT, color=text_colour(lightness))
    return image


def _heatmap_colorbar(fig: Any, image: Any, axes: Any) -> None:
    """The colour bar, ticked in accuracy (1 - error) on the error's log scale."""
    from matplotlib.ticker import FuncFormatter

    bar = fig.colorbar(image, ax=axes, shrink=0.8, extend="both")
    bar.set_label("test accuracy\n(colour: error 1 − accuracy, log scale)")
    low, high = image.norm.vmin, image.norm.vmax
    bar.set_ticks([e for e in ERROR_TICKS if low <= e <= high] or [low, high])
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda e, _: f"{1 - e:.3g}"))
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda e, _: ""))
    bar.ax.invert_yaxis()


def plot_heatmaps(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Mean test accuracy matrices, one per method, coloured by the log of their error."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    labels = plotted_labels(runs, sequence, bn)
    tasks = task_names(runs, sequence)
    mats = {lab: mean_matrix(selected(runs, sequence, bn, lab)) for lab in labels}
    sequential = [lab for lab in labels if not is_joint(selected(runs, sequence, bn, lab))]
    norm = LogNorm(*heatmap_scale([m for lab in sequential if (m := mats[lab]) is not None]))
    cmap = colormaps[SEQUENTIAL_CMAP].reversed().with_extremes(bad=MISSING_CELL)
    rows, cols = subplot_grid(len(labels))
    fig = new_figure(max(2.7 * cols + 1.4, 6.4), 2.6 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax, label in zip(axes.flat, labels, strict=False):
        n = len(values_of(selected(runs, sequence, bn, label)))
        ax.set_title(f"{label}\n(n={n})", fontsize=9)
        if mats[label] is None or mats[label].shape[0] != len(tasks):
            ax.set_axis_off()
            continue
        image = _heatmap_panel(ax, mats[label], tasks, cmap, norm)
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if image is not None:
        _heatmap_colorbar(fig, image, axes)
    fig.suptitle(
        f"Accuracy matrices: {sequence}, bn = {bn}\n(row = after task, column = task)",
        fontsize=10,
    )
    save_figure(fig, path)


# -- lambda curves -----------------------------------------------------------------------------


def selection_runs(runs: Sequence[Run], sequence: str, bn: str, label: str) -> list[Run]:
    """The selection-seed runs of one method (every lambda tried) at its chosen lr.

    Where the method's family tried several learning rates (``selection.choose``), the curve
    along lambda is the chosen lr's (none while no lr is chosen: runs of different lrs are not
    seeds of one curve); the lambda table lists the others.
    """
    mine = [
        r
        for r in runs
        if r.role == SELECTION and r.sequence == sequence and r.bn == bn and r.label == label
    ]
    tried = {float(r.record.config.get("lr", 0.0)) for r in mine}
    if len(tried) < 2:
        return mine
    lrs = {float(r.record.config.get("lr", 0.0)) for r in selected(runs, sequence, bn, label)}
    return [r for r in mine if float(r.record.config.get("lr", 0.0)) in lrs]  # none: no curve


def lambda_families(runs: Sequence[Run], sequence: str, bn: str) -> dict[str, list[str]]:
    """``family -> labels``: the penalised methods with selection runs, by palette family."""
    out: dict[str, list[str]] = {}
    for label in method_labels(runs, sequence, bn):
        mine = selection_runs(runs, sequence, bn, label)
        if mine and mine[0].record.config.get("method") in PENALISED:
            out.setdefault(family(label), []).append(label)
    return {name: out[name] for name in sorted(out, key=family_sort_key)}


def lambda_curve(
    mine: Sequence[Run],
) -> tuple[list[tuple[float, float, float | None]], list[float]]:
    """One method's selection runs along lambda.

    Returns ``[(lambda, mean, half-width)]`` where every selection run finished, and the
    lambdas where one did not (diverged or failed: not eligible for the choice).
    """
    lams = sorted({r.lam for r in mine})
    points, failed = [], []
    for lam in lams:
        at = [r for r in mine if r.lam == lam]
        values = values_of(at, "val_avg")
        if len(values) < len(at) or not values:
            failed.append(lam)
            continue
        mean, half = mean_ci(values)
        points.append((lam, float(mean), half))  # type: ignore[arg-type]
    return points, failed


def _lambda_method(ax: Any, mine: Sequence[Run], label: str, chosen: float | None) -> None:
    """One method's curve with its band, the chosen lambda circled, failed lambdas as x."""
    points, failed = lambda_curve(mine)
    c = colour(label)
    if points:
        lams = [p[0] for p in points]
        means = np.array([p[1] for p in points])
        half = np.array([np.nan if p[2] is None else p[2] for p in points])
        ax.plot(lams, means, marker=marker(label), ms=4, ls=line_style(label), color=c, label=label)
        if np.isfinite(half).any():
            ax.fill_between(lams, means - half, means + half, color=c, alpha=0.15, lw=0)
        if chosen in lams:
            y = means[lams.index(chosen)]
            ax.plot(chosen, y, marker="o", ms=12, mfc="none", mec=c, mew=1.6)
    if failed:
        ax.plot(
            failed,
            [0.04] * len(failed),
            transform=ax.get_xaxis_transform(),
            ls="none",
            marker="x",
            ms=7,
            mew=1.8,
            color=c,
            label=None if points else f"{label} (every λ diverged)",
        )


def _baseline_line(ax: Any, runs: Sequence[Run], sequence: str, bn: str) -> None:
    """The baseline's validation average accuracy (selection seeds, else its test seeds)."""
    mine = selection_runs(runs, sequence, bn, "baseline") or selected(
        runs, sequence, bn, "baseline"
    )
    mean, _ = mean_ci(values_of(mine, "val_avg"))
    if mean is not None:
        ax.axhline(mean, color=colour("baseline"), ls="--", lw=1.0, label="baseline (no penalty)")


def plot_lambda_curves(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Validation average accuracy against lambda, one panel per family, over selection seeds."""
    families = lambda_families(runs, sequence, bn)
    rows, cols = subplot_grid(len(families), max_cols=3)
    fig = new_figure(3.9 * cols + 0.6, 3.3 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, (name, labels) in zip(axes.flat, families.items(), strict=False):
        for label in labels:
            chosen = next((r.lam for r in selected(runs, sequence, bn, label)), None)
            _lambda_method(ax, selection_runs(runs, sequence, bn, label), label, chosen)
        _baseline_line(ax, runs, sequence, bn)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("λ (log)")
        ax.grid(alpha=GRID_ALPHA)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation average accuracy")
    for ax in list(axes.flat)[len(families) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"λ on the selection seeds: {sequence}, bn = {bn}\n(mean, 95% Student-t band; "
        f"chosen λ circled; x: diverged)",
        fontsize=10,
    )
    save_figure(fig, path)
