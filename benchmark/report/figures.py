"""REPORT.md's figures: which ones the records support (pure), and drawing them (matplotlib Agg).

``planned_figures`` decides names and captions from the runs alone, ``figures_section`` embeds
them in REPORT.md, and ``draw_figure`` draws one into ``figures/``: accuracy-matrix heatmaps,
per-task accuracy curves, the lambda sweep as a stability-plasticity curve, and cost against
accuracy. Methods take their colours from the shared palette (``format.colour``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..config import PENALISED
from ..outcomes import (
    Run,
    bn_modes,
    method_labels,
    method_sort_key,
    run_cost_seconds,
    selected,
    sequences,
    task_names,
)
from ..selection import SELECTION
from .format import (
    CONFIDENCE,
    colour,
    fmt_lambda,
    line_style,
    marker,
    new_figure,
    save_figure,
)

ANNOTATE_MAX_TASKS = 5
"""Heatmap cells carry their value up to this many tasks."""
CELL_TEXT = {"ha": "center", "va": "center", "fontsize": 8}
FIGURE_PREFIXES = ("heatmap_", "tasks_", "lambda_", "cost_")
"""File-name prefixes of the figures this module draws (older ones are removed on a rebuild)."""


# -- the Markdown side (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file name, sequence, bn mode (None: both), kind and caption."""

    name: str
    sequence: str
    bn: str | None
    kind: str
    caption: str


def slug(section: str) -> str:
    """A report section as a file-name part.

    ``mnist-fmnist on mlp hidden=16`` -> ``mnist-fmnist_on_mlp_hidden16``.
    """
    return re.sub(r"[^A-Za-z0-9.-]+", "_", section.replace("=", ""))


def _bn_figures(runs: Sequence[Run], seq: str, bn: str, tasks: int) -> list[FigureSpec]:
    """The heatmap (and, from two tasks on, the task curves) of one sequence and bn mode."""
    if not any(r.selected and r.ok and r.sequence == seq and r.bn == bn for r in runs):
        return []
    specs = [
        FigureSpec(
            f"heatmap_{slug(seq)}_{bn}.png",
            seq,
            bn,
            "heatmap",
            f"Test accuracy matrices, {seq}, bn = {bn}: row i = after task i, column "
            f"j = task j, chosen λ, mean over finished seeds (n in each title); joint "
            f"fills only the last row.",
        )
    ]
    if tasks >= 2:
        specs.append(
            FigureSpec(
                f"tasks_{slug(seq)}_{bn}.png",
                seq,
                bn,
                "tasks",
                f"Test accuracy on each task as the sequence goes on, {seq}, bn = {bn}: "
                f"one panel per method, one line per task from the moment it is learnt "
                f"(chosen λ, mean over finished seeds).",
            )
        )
    return specs


def _sequence_figures(seq: str, tasks: int) -> list[FigureSpec]:
    """The lambda sweep (from two tasks on) and the cost figure of a sequence with a penalty."""
    specs = []
    if tasks >= 2:
        specs.append(
            FigureSpec(
                f"lambda_{slug(seq)}.png",
                seq,
                None,
                "lambda",
                f"Lambda sweep as a stability-plasticity curve, {seq} (validation split, "
                f"selection seed): x = accuracy on the last task, y = mean accuracy on the "
                f"earlier ones; one line per method through its λ (labelled), the chosen λ "
                f"circled; diverged runs left out.",
            )
        )
    specs.append(
        FigureSpec(
            f"cost_{slug(seq)}.png",
            seq,
            None,
            "cost",
            f"Cost against accuracy, {seq}: x = curvature estimation + penalty seconds "
            f"per run (log scale), y = test average accuracy, mean ± 95% CI over seeds "
            f"at the chosen λ; baseline and joint as horizontal lines.",
        )
    )
    return specs


def planned_figures(runs: Sequence[Run]) -> list[FigureSpec]:
    """Every figure the records support, in report order (pure: decides names and captions)."""
    specs = []
    for seq in sequences(runs):
        tasks = len(task_names(runs, seq))
        for bn in bn_modes(runs, seq):
            specs += _bn_figures(runs, seq, bn, tasks)
        if any(r.sequence == seq and r.record.config.get("method") in PENALISED for r in runs):
            specs += _sequence_figures(seq, tasks)
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
    return "\n".join(parts)


# -- data for the figures ----------------------------------------------------------------------


def mean_matrix(runs: Sequence[Run], split: str = "test") -> np.ndarray | None:
    """Cell-wise mean over the finished runs' matrices (NaN where no run has a value).

    A one-row (joint) matrix is placed in the last row of a ``T x T`` grid.
    """
    mats = []
    for r in runs:
        if not r.ok:
            continue
        m = r.record.acc_test if split == "test" else r.record.acc_val
        arr = np.array([[np.nan if v is None else v for v in row] for row in m], dtype=float)
        T = arr.shape[1]
        if arr.shape[0] == 1 and T > 1:
            full = np.full((T, T), np.nan)
            full[-1] = arr[0]
            arr = full
        mats.append(arr)
    if not mats or len({m.shape for m in mats}) != 1:
        return None
    stack = np.stack(mats)
    out = np.full(stack.shape[1:], np.nan)
    has = ~np.all(np.isnan(stack), axis=0)
    out[has] = np.nanmean(stack[:, has], axis=0)
    return out


def plotted_labels(runs: Sequence[Run], sequence: str, bn: str) -> list[str]:
    """Methods of ``sequence`` / ``bn`` with at least one finished selected run (one panel each)."""
    return [
        lab
        for lab in method_labels(runs, sequence, bn)
        if any(r.ok for r in selected(runs, sequence, bn, lab))
    ]


def _sweep_point(run: Run) -> tuple[float, float] | None:
    """(accuracy on the last task, mean accuracy on the earlier ones), validation split."""
    if not run.ok or not run.record.acc_val:
        return None
    last = run.record.acc_val[-1]
    if any(v is None for v in last) or len(last) < 2:
        return None
    return float(last[-1]), float(np.mean(last[:-1]))


# -- layout helpers ----------------------------------------------------------------------------


def subplot_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels, at most ``max_cols`` wide."""
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _method_legend(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for every panel's methods, in method order, right of the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        handles, names = ax.get_legend_handles_labels()
        for name, handle in zip(names, handles, strict=True):
            seen.setdefault(name, handle)
    order = sorted(seen, key=method_sort_key)
    fig.legend([seen[k] for k in order], order, loc="outside right center", fontsize=8)


def _short(task: str, width: int = 8) -> str:
    """A tick label: ``permuted-3`` -> ``p3``, ``rotated-36`` -> ``r36``; else truncated."""
    for prefix in ("permuted-", "rotated-", "split-"):
        if task.startswith(prefix):
            return prefix[0] + task[len(prefix) :]
    return task if len(task) <= width else task[: width - 1] + "…"


# -- the figures -------------------------------------------------------------------------------


def _heatmap_panel(ax: Any, mat: np.ndarray, tasks: Sequence[str], cmap: Any) -> Any:
    """One method's mean accuracy matrix, with values in the cells for short sequences."""
    T = len(tasks)
    image = ax.imshow(np.ma.masked_invalid(mat), vmin=0.0, vmax=1.0, cmap=cmap)
    ticks = list(range(T))
    names = [_short(t) for t in tasks] if T <= ANNOTATE_MAX_TASKS else [str(t) for t in ticks]
    ax.set_xticks(ticks, names, fontsize=7, rotation=30 if T > 2 else 0)
    ax.set_yticks(ticks, [f"after {i + 1}" for i in ticks], fontsize=7)
    if T <= ANNOTATE_MAX_TASKS:
        for i in range(T):
            for j in range(T):
                if not np.isnan(mat[i, j]):
                    text_colour = "black" if mat[i, j] > 0.6 else "white"
                    ax.text(j, i, f"{mat[i, j]:.2f}", **CELL_TEXT, color=text_colour)
    return image


def plot_heatmaps(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Small heatmaps of the mean test accuracy matrix, one per method, shared 0-1 scale."""
    from matplotlib import colormaps

    labels = plotted_labels(runs, sequence, bn)
    tasks = task_names(runs, sequence)
    rows, cols = subplot_grid(len(labels))
    fig = new_figure(2.7 * cols + 0.8, 2.6 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    image = None
    for ax, label in zip(axes.flat, labels, strict=False):
        chosen = selected(runs, sequence, bn, label)
        mat = mean_matrix(chosen)
        ax.set_title(f"{label}\n(n={sum(r.ok for r in chosen)})", fontsize=9)
        if mat is None:
            ax.set_axis_off()
            continue
        image = _heatmap_panel(ax, mat, tasks, cmap)
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="test accuracy")
    fig.suptitle(f"Accuracy matrices: {sequence}, bn = {bn} (row = after task, column = task)")
    save_figure(fig, path)


def plot_task_curves(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Accuracy on each task after each task, one panel per method (mean over seeds)."""
    from matplotlib import colormaps

    labels = plotted_labels(runs, sequence, bn)
    tasks = task_names(runs, sequence)
    T = len(tasks)
    task_colours = colormaps["tab10" if T <= 10 else "tab20"]
    rows, cols = subplot_grid(len(labels))
    fig = new_figure(3.0 * cols + 1.4, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    x = np.arange(1, T + 1)
    for ax, label in zip(axes.flat, labels, strict=False):
        chosen = selected(runs, sequence, bn, label)
        mat = mean_matrix(chosen)
        ax.set_title(f"{label} (n={sum(r.ok for r in chosen)})", fontsize=9)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(0.7, T + 0.3)
        ax.set_xticks(x)
        ax.set_xlabel("after task")
        ax.grid(alpha=0.3)
        if mat is None:
            continue
        for j in range(T):
            name = tasks[j] if T <= 10 else None
            ax.plot(
                x[j:],
                mat[j:, j],
                marker="o",
                ms=4,
                color=task_colours(j % task_colours.N),
                label=name,
            )
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if T <= 10:
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside right center", title="task", fontsize=8)
    fig.suptitle(f"Accuracy on each task across the sequence: {sequence}, bn = {bn}")
    save_figure(fig, path)


SWEEP_LABEL_OFFSETS = ((4, 3), (4, -10), (-22, 3), (-22, -10))
"""Where the lambda labels of the k-th method's points go (offset points), cycled."""


def _mean_sweep_points(group: Sequence[Run]) -> list[tuple[float, tuple[float, float]]]:
    """``(lambda, mean sweep point over the seeds that finished)``, by increasing lambda."""
    by_lam: dict[float, list[tuple[float, float]]] = {}
    for r in group:
        point = _sweep_point(r)
        if point is not None:
            by_lam.setdefault(r.lam, []).append(point)
    return [
        (lam, (float(np.mean([p[0] for p in ps])), float(np.mean([p[1] for p in ps]))))
        for lam, ps in sorted(by_lam.items())
    ]


def _sweep_method(ax: Any, group: Sequence[Run], label: str, k: int, chosen: float | None) -> None:
    """One method's points of the lambda sweep: a labelled line (penalised) or a marker."""
    points = _mean_sweep_points(group)
    if not points:
        return
    method = group[0].record.config.get("method")
    xs, ys = [p[0] for _, p in points], [p[1] for _, p in points]
    c = colour(label)
    if method not in PENALISED:
        shape = {"baseline": "X", "joint": "*"}.get(str(method), "s")
        ax.plot(xs, ys, marker=shape, ms=9, ls="none", color=c, label=label)
        return
    ax.plot(xs, ys, marker=marker(label), ms=4, ls=line_style(label), color=c, label=label)
    offset = SWEEP_LABEL_OFFSETS[k % len(SWEEP_LABEL_OFFSETS)]
    for lam, (px, py) in points:
        ax.annotate(
            fmt_lambda(lam),
            (px, py),
            textcoords="offset points",
            xytext=offset,
            fontsize=7,
            color=c,
        )
        if lam == chosen:
            ax.plot(px, py, marker="o", ms=11, mfc="none", mec=c, mew=1.6)


def plot_lambda_sweep(runs: Sequence[Run], sequence: str, path: Path) -> None:
    """Stability-plasticity curve: one line per penalised method through its lambdas.

    Each point is the mean over the selection seeds (validation split); unpenalised methods
    show their test runs' mean as one marker.
    """
    modes = bn_modes(runs, sequence)
    fig = new_figure(5.2 * len(modes) + 1.8, 4.4)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, bn in zip(axes, modes, strict=True):
        for k, label in enumerate(method_labels(runs, sequence, bn)):
            mine = [r for r in runs if r.sequence == sequence and r.bn == bn and r.label == label]
            chosen = next((r.lam for r in mine if r.selected), None)
            group = [r for r in mine if r.role == SELECTION] or [r for r in mine if r.selected]
            if group:
                _sweep_method(ax, group, label, k, chosen)
        ax.set_title(f"bn = {bn}", fontsize=10)
        ax.set_xlabel("accuracy on the last task (plasticity)")
        ax.set_ylabel("mean accuracy on earlier tasks (stability)")
        ax.grid(alpha=0.3)
    _method_legend(fig, axes)
    fig.suptitle(
        f"Lambda sweep: {sequence} (validation split, mean over selection seeds; chosen λ circled)"
    )
    save_figure(fig, path)


def _cost_method(ax: Any, chosen: Sequence[Run], label: str) -> None:
    """One method on the cost figure: a point with its CI, or a line without a penalty."""
    mean, half, _ = metrics.mean_ci([r.test_avg for r in chosen], CONFIDENCE)
    if mean is None:
        return
    if chosen[0].record.config.get("method") not in PENALISED:
        ax.axhline(mean, ls="--", lw=1.2, color=colour(label), label=label)
        return
    cost = max(float(np.mean([run_cost_seconds(r) for r in chosen])), 1e-4)
    ax.errorbar(
        cost,
        mean,
        yerr=half or 0.0,
        fmt=marker(label),
        ms=6,
        capsize=3,
        color=colour(label),
        label=label,
    )


def plot_cost(runs: Sequence[Run], sequence: str, path: Path) -> None:
    """Cost (estimation + penalty seconds, log scale) against test average accuracy."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    modes = bn_modes(runs, sequence)
    fig = new_figure(4.8 * len(modes) + 1.8, 4.0)
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for ax, bn in zip(axes, modes, strict=True):
        for label in method_labels(runs, sequence, bn):
            chosen = [r for r in selected(runs, sequence, bn, label) if r.ok]
            if chosen:
                _cost_method(ax, chosen, label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(f"bn = {bn}", fontsize=10)
        ax.set_xlabel("estimation + penalty seconds per run (log)")
        ax.set_ylabel("test average accuracy")
        ax.grid(alpha=0.3, which="both")
    _method_legend(fig, axes)
    fig.suptitle(f"Cost against accuracy: {sequence} (chosen λ, mean ± 95% CI)")
    save_figure(fig, path)


def draw_figure(spec: FigureSpec, runs: Sequence[Run], fig_dir: Path) -> Path:
    """Draw one planned figure into ``fig_dir``."""
    path = fig_dir / spec.name
    if spec.kind == "heatmap":
        plot_heatmaps(runs, spec.sequence, str(spec.bn), path)
    elif spec.kind == "tasks":
        plot_task_curves(runs, spec.sequence, str(spec.bn), path)
    elif spec.kind == "lambda":
        plot_lambda_sweep(runs, spec.sequence, path)
    elif spec.kind == "cost":
        plot_cost(runs, spec.sequence, path)
    else:
        raise ValueError(f"unknown figure kind {spec.kind!r}")
    return path
