"""What REPORT.md's figures share: the runs' numbers as the figures plot them, and drawing parts.

- Data: each method's reference (``references``), a run's accuracy matrix on a ``T x T`` grid,
  cell-wise means, per-seed values, paired differences against the reference, means with their
  Student-t intervals (``metrics``, at ``format.CONFIDENCE``).
- Drawing parts: deterministic jitter (``spread``), a column of per-seed dots with its mean and
  interval beside (``dots_and_mean``), panel grids, one legend for several panels, short task
  names.

Colours come from ``palette`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import metrics
from ..methods import METHODS
from ..outcomes import Run, method_labels, method_sort_key, selected
from .format import CONFIDENCE
from .palette import marker
from .references import compared, references

GOLDEN = (math.sqrt(5) - 1) / 2
DOT_SIZE = 14
DOT_ALPHA = 0.6


# -- data --------------------------------------------------------------------------------------


def plotted_labels(runs: Sequence[Run], sequence: str, bn: str) -> list[str]:
    """Methods of ``sequence`` / ``bn`` with at least one finished selected run, in table order."""
    return [
        lab
        for lab in method_labels(runs, sequence, bn)
        if any(r.ok for r in selected(runs, sequence, bn, lab))
    ]


def paired_labels(runs: Sequence[Run], sequence: str, bn: str) -> dict[str, str]:
    """``label -> its reference`` (``references``) of the plotted labels paired with another.

    Both the label and its reference have a finished selected run; in table order.
    """
    labels = plotted_labels(runs, sequence, bn)
    pairs = compared(references(runs, sequence, bn))
    return {lab: pairs[lab] for lab in labels if pairs.get(lab) in labels}


def is_joint(runs: Sequence[Run]) -> bool:
    """Whether the runs train every task at once (joint: one row per matrix, no sequence)."""
    spec = METHODS.get(str(runs[0].record.config.get("method"))) if runs else None
    return spec is not None and spec.joint


def finished(runs: Sequence[Run]) -> list[Run]:
    """The runs that finished (neither diverged nor failed)."""
    return [r for r in runs if r.ok]


def values_of(runs: Sequence[Run], attr: str = "test_avg") -> list[float]:
    """``attr`` of every finished run that has it, in the runs' (seed) order."""
    return [float(v) for r in runs if r.ok and (v := getattr(r, attr)) is not None]


def by_seed(runs: Sequence[Run], attr: str = "test_avg") -> dict[int, float]:
    """``seed -> attr`` of the finished runs that have it."""
    return {r.seed: float(v) for r in runs if r.ok and (v := getattr(r, attr)) is not None}


def paired_diffs(
    runs: Sequence[Run], reference: Sequence[Run], attr: str = "test_avg"
) -> tuple[list[float], dict[str, Any]]:
    """Per seed both finished: ``runs - reference`` of ``attr``, and ``metrics.paired_test``."""
    a, b = by_seed(runs, attr), by_seed(reference, attr)
    seeds = sorted(set(a) & set(b))
    test = metrics.paired_test([a[s] for s in seeds], [b[s] for s in seeds])
    return [a[s] - b[s] for s in seeds], test


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and half-width of its 95% Student-t interval (None: no value / one value)."""
    mean, half, _ = metrics.mean_ci(list(values), CONFIDENCE)
    return mean, half


def run_matrix(run: Run, split: str = "test") -> np.ndarray | None:
    """A finished run's accuracy matrix as floats (NaN for None) on a ``T x T`` grid.

    A one-row (joint) matrix is placed in the last row; None for an unfinished run.
    """
    if not run.ok:
        return None
    m = run.record.acc_test if split == "test" else run.record.acc_val
    if not m:
        return None
    arr = np.array([[np.nan if v is None else v for v in row] for row in m], dtype=float)
    T = arr.shape[1]
    if arr.shape[0] == 1 and T > 1:
        full = np.full((T, T), np.nan)
        full[-1] = arr[0]
        arr = full
    return arr


def mean_matrix(runs: Sequence[Run], split: str = "test") -> np.ndarray | None:
    """Cell-wise mean over the finished runs' matrices (NaN where no run has a value).

    A one-row (joint) matrix is placed in the last row of a ``T x T`` grid.
    """
    mats = [m for r in runs if (m := run_matrix(r, split)) is not None]
    if not mats or len({m.shape for m in mats}) != 1:
        return None
    stack = np.stack(mats)
    out = np.full(stack.shape[1:], np.nan)
    has = ~np.all(np.isnan(stack), axis=0)
    out[has] = np.nanmean(stack[:, has], axis=0)
    return out


def cell_values(runs: Sequence[Run], i: int, j: int) -> list[float]:
    """Accuracy on task ``j`` after task ``i`` of every finished run that has it (test split)."""
    out = []
    for r in runs:
        m = run_matrix(r)
        if m is not None and i < m.shape[0] and j < m.shape[1] and not np.isnan(m[i, j]):
            out.append(float(m[i, j]))
    return out


# -- drawing parts -----------------------------------------------------------------------------


def spread(n: int, width: float) -> np.ndarray:
    """``n`` offsets within ``±width / 2``, deterministic (golden-ratio steps), 0 for one."""
    if n <= 1:
        return np.zeros(n)
    return ((np.arange(n) * GOLDEN) % 1.0 - 0.5) * width


def dots_and_mean(
    ax: Any, x: float, values: Sequence[float], colour: str, label: str, gap: float = 0.2
) -> None:
    """Per-seed dots around ``x`` (jittered) and, ``gap`` to the right, the mean ± 95% CI."""
    if not values:
        return
    ax.scatter(
        x - gap / 2 + spread(len(values), gap * 0.9),
        values,
        s=DOT_SIZE,
        color=colour,
        alpha=DOT_ALPHA,
        linewidths=0,
        zorder=2,
    )
    mean, half = mean_ci(values)
    ax.errorbar(
        x + gap / 2,
        mean,
        yerr=half or 0.0,
        fmt=marker(label),
        ms=6,
        capsize=3,
        color=colour,
        zorder=3,
    )


def subplot_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def method_legend(fig: Any, axes: Sequence[Any], **kwargs: Any) -> None:
    """One legend for every panel's methods, in method order, right of the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        handles, names = ax.get_legend_handles_labels()
        for name, handle in zip(names, handles, strict=True):
            seen.setdefault(name, handle)
    if not seen:
        return
    order = sorted(seen, key=method_sort_key)
    fig.legend([seen[k] for k in order], order, loc="outside right center", fontsize=8, **kwargs)


def short_task(task: str, width: int = 8) -> str:
    """A tick label: ``permuted-3`` -> ``p3``, ``rotated-36`` -> ``r36``; else truncated."""
    for prefix in ("permuted-", "rotated-", "split-"):
        if task.startswith(prefix):
            return prefix[0] + task[len(prefix) :]
    return task if len(task) <= width else task[: width - 1] + "…"
