"""The study's figures: Fisher blocks, spectra, convergence, the batched bias, and outcomes.

Drawn from the study's output (``benchmark.study.run_study``) with matplotlib's Agg canvas;
estimators take their colours from the shared palette (``palette.colour``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .format import new_figure, save_figure
from .palette import DIVERGING_CMAP, GRID_ALPHA, GUIDE, REFERENCE, colour


def part_rows(rows: Sequence[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    """The study's rows of one part (``ground-truth``, ``convergence-n``, ...)."""
    return [r for r in rows if r["part"] == part]


def plot_blocks(study: dict[str, Any], model: str, path: Path) -> None:
    """The last layer's Fisher block: exact full, KFAC, diagonal, on one colour scale."""
    from matplotlib.colors import SymLogNorm

    images = study["ground_truth"][model]["block_images"]
    order = [n for n in ("full-exact", "kfac-exact", "diag-exact") if n in images]
    arrays = [np.asarray(images[n]) for n in order]
    vmax = max(float(np.abs(a).max()) for a in arrays)
    norm = SymLogNorm(linthresh=vmax * 1e-3, vmin=-vmax, vmax=vmax)
    fig = new_figure(4 * len(arrays) + 1, 4.2)
    axes = fig.subplots(1, len(arrays))
    for ax, name, a in zip(np.atleast_1d(axes), order, arrays, strict=True):
        im = ax.imshow(a, cmap=DIVERGING_CMAP, norm=norm, interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(
        im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="Fisher entry (symmetric log scale)"
    )
    fig.suptitle(f"Last layer's block of F ({arrays[0].shape[0]} parameters), {model}")
    save_figure(fig, path)


def plot_spectra(study: dict[str, Any], model: str, path: Path) -> None:
    """Top-k eigenvalues of F and of each approximation, log scale."""
    fig = new_figure(8, 5)
    ax = fig.subplots()
    for name, vals in study["ground_truth"][model]["spectra"].items():
        v = np.asarray(vals, dtype=float)
        reference = "reference" in name
        style = {
            "color": REFERENCE if reference else colour(name),
            "linewidth": 2.5 if reference else 1.2,
        }
        ax.plot(np.arange(1, len(v) + 1), np.maximum(v, 1e-12), marker=".", label=name, **style)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"Top eigenvalues of F and its approximations ({model})")
    ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=GRID_ALPHA)
    save_figure(fig, path)


def plot_convergence(study: dict[str, Any], path: Path) -> None:
    """Error vs N (left) and error vs mc samples (right), mean ± sd over seeds."""
    fig = new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    for ax, part, key, xlabel in (
        (left, "convergence-n", "n_inputs", "inputs N"),
        (right, "convergence-mc", "mc_samples", "mc samples per input"),
    ):
        rows = part_rows(study["rows"], part)
        for name in dict.fromkeys(r["estimator"] for r in rows):
            xs = sorted({r[key] for r in rows if r["estimator"] == name})
            errs = [
                [r["rel_frobenius"] for r in rows if r["estimator"] == name and r[key] == x]
                for x in xs
            ]
            ax.errorbar(
                xs,
                [np.mean(e) for e in errs],
                yerr=[np.std(e) for e in errs],
                marker="o",
                capsize=3,
                color=colour(name),
                label=name,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative Frobenius error")
        ax.grid(alpha=GRID_ALPHA, which="both")
        ax.legend(fontsize=7)
    left.set_title("against the reference F")
    right.set_title("mc against its exact counterpart")
    save_figure(fig, path)


def plot_batched(study: dict[str, Any], path: Path) -> None:
    """diag-batched / diag-empirical trace ratio vs batch size, with 1/b."""
    rows = part_rows(study["rows"], "batched-bias")
    b = np.array([r["batch_size"] for r in rows], dtype=float)
    ratio = np.array([r["ratio_to_empirical"] for r in rows])
    fig = new_figure(6, 4.5)
    ax = fig.subplots()
    ax.plot(
        b,
        ratio,
        marker="o",
        color=colour("diag-batched"),
        label="diag-batched / diag-empirical (trace)",
    )
    ax.plot(b, 1 / b, linestyle="--", color=GUIDE, label="1 / batch size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ratio")
    ax.set_title("Bias of the batched estimator (tutorial network)")
    ax.legend()
    ax.grid(alpha=GRID_ALPHA, which="both")
    save_figure(fig, path)


def plot_outcomes(study: dict[str, Any], outcome: dict[str, dict[str, float]], path: Path) -> bool:
    """Scale-free approximation error vs forgetting, one point per estimator; False if no data."""
    rows = [r for r in part_rows(study["rows"], "tutorial") if r["estimator"] in outcome]
    if not rows:
        return False
    fig = new_figure(7, 5)
    ax = fig.subplots()
    for r in rows:
        o = outcome[r["estimator"]]
        ax.scatter(r["scale_free_error"], o["forgetting"], s=40, color=colour(r["estimator"]))
        ax.annotate(
            r["estimator"],
            (r["scale_free_error"], o["forgetting"]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("scale-free approximation error of F (tutorial network)")
    ax.set_ylabel("forgetting at the chosen lambda (mnist-fmnist, bn = freeze)")
    ax.set_title("Does better curvature buy less forgetting?")
    ax.grid(alpha=GRID_ALPHA)
    save_figure(fig, path)
    return True


MODEL_FIGURES: tuple[tuple[str, Callable[[dict[str, Any], str, Path], None], str], ...] = (
    (
        "blocks",
        plot_blocks,
        "the last layer's block of the Fisher: exact full, KFAC and diagonal on one colour scale",
    ),
    (
        "spectra",
        plot_spectra,
        "top eigenvalues of the exact Fisher (black) and of each approximation",
    ),
)
"""Per model: (kind, drawing function, caption)."""
STUDY_FIGURES: tuple[tuple[str, Callable[[dict[str, Any], Path], None], str], ...] = (
    (
        "study_convergence.png",
        plot_convergence,
        "Approximation error as the inputs (left) and the mc samples (right) grow.",
    ),
    (
        "study_batched.png",
        plot_batched,
        "The batched estimator's trace relative to the per-input empirical Fisher, by batch size.",
    ),
)
"""Whole-study figures: (file name, drawing function, caption)."""
OUTCOMES_CAPTION = (
    "Approximation error against forgetting at the validation-chosen lambda, one point per "
    "estimator."
)


def write_figures(
    study: dict[str, Any], outcome: dict[str, dict[str, float]], figs: Path
) -> list[tuple[str, str]]:
    """Draw every figure into ``figs``; (relative path, caption) of each, in STUDY.md order."""
    figs.mkdir(parents=True, exist_ok=True)
    figures = []
    for model in study["ground_truth"]:
        for kind, draw_model, caption in MODEL_FIGURES:
            name = f"study_{kind}_{model}.png"
            draw_model(study, model, figs / name)
            figures.append((f"figures/{name}", f"{model}: {caption}."))
    for name, draw, caption in STUDY_FIGURES:
        draw(study, figs / name)
        figures.append((f"figures/{name}", caption))
    if plot_outcomes(study, outcome, figs / "study_outcomes.png"):
        figures.append(("figures/study_outcomes.png", OUTCOMES_CAPTION))
    return figures
