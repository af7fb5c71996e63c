"""The scaling figures, and the accessors of a scaling record that they share with the text.

Drawn with matplotlib's Agg canvas, estimators in the shared palette's colours
(``palette.colour``); ``scaling`` renders scaling.md and calls ``write_figures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .format import fmt_bytes, new_figure, save_figure
from .palette import ALERT, GRID_ALPHA, GUIDE, PART_COLOURS, REFERENCE, colour, line_style

FIGURES = {
    "n": "scaling_n.png",
    "size": "scaling_size.png",
    "classes": "scaling_classes.png",
    "penalty": "scaling_penalty_tasks.png",
    "dense": "scaling_dense_limit.png",
    "split": "scaling_time_split.png",
}
SPLIT_PARTS = ("training", "penalty", "estimation", "evaluation")


# -- the record's sweeps -----------------------------------------------------------------------


def row_label(row: dict[str, Any]) -> str:
    """A row's label: its ``name`` (``lowrank-exact rank=200``), else its ``estimator``.

    Rows of schema 1 records and the floor have no ``name``.
    """
    return str(row.get("name") or row["estimator"])


def estimator_names(points: Sequence[dict[str, Any]]) -> list[str]:
    """Row labels of a sweep in first-seen order, the floor first."""
    names: list[str] = []
    for point in points:
        for row in point["rows"]:
            if row_label(row) not in names:
                names.append(row_label(row))
    return sorted(names, key=lambda n: (n != "floor", names.index(n)))


def row_of(point: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The row labelled ``name`` at ``point``."""
    return next((r for r in point["rows"] if row_label(r) == name), None)


# -- figures -----------------------------------------------------------------------------------


def _plot_sweep(ax: Any, points: Sequence[dict[str, Any]], x_key: str, what: str) -> None:
    """Median time (s) or held bytes of each estimator against ``x_key``, log-log."""
    for name in estimator_names(points):
        xs, ys = [], []
        for point in points:
            row = row_of(point, name)
            if row is None or row.get("status") != "ok":
                continue
            value = row.get("median_s") if what == "time" else row.get("nbytes")
            if value:
                xs.append(point[x_key])
                ys.append(value)
        if xs:
            ax.plot(xs, ys, marker="o", label=name, ls=line_style(name), c=colour(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=GRID_ALPHA)


def n_figure(record: dict[str, Any]) -> Any:
    """Fit time and bytes held against N (tutorial network)."""
    fig = new_figure(11, 4, layout="tight")
    axes = fig.subplots(1, 2)
    _plot_sweep(axes[0], record["n"], "n", "time")
    axes[0].set(xlabel="N (inputs)", ylabel="fit time (s)", title="Fit time vs N")
    _plot_sweep(axes[1], record["n"], "n", "bytes")
    axes[1].set(xlabel="N (inputs)", ylabel="curvature bytes", title="Bytes held vs N")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    return fig


def size_figure(record: dict[str, Any]) -> Any:
    """Fit time against P for the width and the depth sweeps."""
    fig = new_figure(11, 4, layout="tight")
    axes = fig.subplots(1, 2)
    _plot_sweep(axes[0], record["width"], "parameters", "time")
    axes[0].set(xlabel="P (parameters)", ylabel="fit time (s)", title="Width: 784-h-h-10")
    _plot_sweep(axes[1], record["depth"], "parameters", "time")
    axes[1].set(xlabel="P (parameters)", ylabel="fit time (s)", title="Depth: 784-h-...-10")
    axes[0].legend(fontsize=8)
    return fig


def classes_figure(record: dict[str, Any]) -> Any:
    """Fit time against the number of classes."""
    fig = new_figure(6, 4, layout="tight")
    ax = fig.subplots()
    _plot_sweep(ax, record["classes"], "classes", "time")
    ax.set(xlabel="C (classes)", ylabel="fit time (s)", title="Fit time vs classes")
    ax.legend(fontsize=8)
    return fig


def penalty_figure(record: dict[str, Any]) -> Any:
    """Extra ms per training step against past tasks, separate (solid) and online (dashed)."""
    fig = new_figure(6, 4, layout="tight")
    ax = fig.subplots()
    pen = record["penalty"]
    for key in dict.fromkeys((row_label(r), r["mode"]) for r in pen["rows"]):
        rows = sorted(
            (r for r in pen["rows"] if (row_label(r), r["mode"]) == key),
            key=lambda r: r["tasks"],
        )
        ax.plot(
            [r["tasks"] for r in rows],
            [1e3 * r["extra_s"] for r in rows],
            marker="o",
            ls="-" if key[1] == "separate" else "--",
            c=colour(key[0]),
            label=f"{key[0]} {key[1]}",
        )
    ax.set(
        xlabel="past tasks T",
        ylabel="extra ms per training step",
        title="Penalty cost vs past tasks: separate solid, online dashed",
    )
    ax.grid(True, alpha=GRID_ALPHA)
    ax.legend(fontsize=8)
    return fig


def dense_figure(record: dict[str, Any]) -> Any:
    """Bytes of the dense Fisher and of factors of several ranks vs P, with the budget line."""
    s = record["settings"]
    budget = s["memory_budget"]
    ps = np.logspace(3, 7, 200)
    fig = new_figure(7, 4.5, layout="tight")
    ax = fig.subplots()
    ax.plot(ps, 4 * ps**2, color=REFERENCE, label="dense 4·P²")
    for rows, dashes in zip((200, 1000, 10000), ("--", "-.", ":"), strict=True):
        ax.plot(ps, 4 * rows * ps, ls=dashes, color=GUIDE, label=f"factor, {rows:,} rows (4·R·P)")
    ax.axhline(budget, color=ALERT, lw=1, label=f"budget {fmt_bytes(budget)}")
    ax.axvline(s["dense_limit_parameters"], color=ALERT, lw=0.8, ls=":")
    full = colour("full-mc")
    for point in record["width"] + record["depth"]:
        row = next((r for r in point["rows"] if r["estimator"].startswith("full-")), None)
        if row and row.get("status") == "ok":
            shape = "s" if row.get("structure") == "full-dense" else "o"
            ax.scatter(point["parameters"], row["nbytes"], marker=shape, color=full)
        elif row and row.get("needed_bytes"):
            ax.scatter(point["parameters"], row["needed_bytes"], marker="x", color=ALERT)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="P (parameters)",
        ylabel="bytes",
        title="Dense vs factor: measured fits (squares dense, circles factor, x refused)",
    )
    ax.grid(True, which="both", alpha=GRID_ALPHA)
    ax.legend(fontsize=8)
    return fig


def split_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Stacked horizontal bars of the mean time split per (sequence, bn, method)."""
    fig = new_figure(9, 0.28 * len(rows) + 1.5, layout="tight")
    ax = fig.subplots()
    labels = [f"{r['sequence']} {r['bn']} {r['method']}" for r in rows]
    left = [0.0] * len(rows)
    for part, shade in zip(SPLIT_PARTS, PART_COLOURS, strict=True):
        values = [r[part] for r in rows]
        ax.barh(labels, values, left=left, label=part, color=shade, edgecolor=REFERENCE, lw=0.3)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set(xlabel="seconds per run (mean)", title="Where a whole run's time goes")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)
    return fig


def write_figures(record: dict[str, Any], folder: Path) -> list[str]:
    """Draw the figures into ``folder``; return the file names drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "n": n_figure,
        "size": size_figure,
        "classes": classes_figure,
        "penalty": penalty_figure,
        "dense": dense_figure,
    }
    split = record.get("time_split")
    if split and split["rows"]:
        figures["split"] = lambda record: split_figure(split["rows"])
    drawn = []
    for key, draw in figures.items():
        save_figure(draw(record), folder / FIGURES[key])
        drawn.append(FIGURES[key])
    return drawn
