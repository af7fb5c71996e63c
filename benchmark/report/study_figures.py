r"""The study's figures, and the join of part E's metrics with the sweep's outcomes they draw.

Figures: Fisher blocks, spectra, convergence, the batched bias, the penalty along F's top
eigen-directions, and each metric against forgetting; drawn from the study's output
(``benchmark.study.run_study``) with matplotlib's Agg canvas; estimators take their colours from
the shared palette (``palette.colour``).

The link (``sweep_link``): part E measured each estimator once, on mnist-fmnist's first task at
seed 0. For each sequence that the sweep ran on the same network, one row per estimator joins those
metrics (only when the sweep's runs fitted the same object: ``approx.object_key``, network, data,
estimator, options and N) with the sweep's test outcomes at the lambda chosen on the selection
seeds (``outcomes.summarise``): mean forgetting and average test accuracy over the finished test
seeds, with their number n. Per sequence, Spearman's :math:`\rho` between each metric (its
absolute value for the signed ones) and forgetting over the joined estimators, none when n <
``MIN_CORRELATION_N``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..outcomes import (
    Run,
    bn_sort_key,
    load_meta,
    load_records,
    model_text,
    network_facts,
    sequence_sort_key,
    summarise,
)
from ..selection import selection_seeds_of
from ..study.approx import curvature_label, object_key
from ..tasks import heads_of
from .format import new_figure, save_figure
from .palette import DIVERGING_CMAP, GRID_ALPHA, GUIDE, REFERENCE, colour

LINK_METRICS = (
    ("rel_frobenius", "rel. Frobenius"),
    ("scale_free_error", "scale-free"),
    ("rel_trace", "rel. trace"),
    ("drift_penalty_error", "drift penalty"),
    ("top20_error", "top-20"),
    ("top200_error", "top-200"),
    ("top200_error_rescaled", "top-200 rescaled"),
    ("flat_share_200", "flat share"),
)
"""Part E's metrics, in table order: (row key, short header); correlations use |value|."""
MIN_CORRELATION_N = 4
"""No rank correlation over fewer estimators than this."""
LINK_FIGURE_METRIC = "top200_error_rescaled"
"""The metric on the x axis of the link figure."""


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


def plot_eigendirections(study: dict[str, Any], path: Path) -> bool:
    """Part E: the penalty along F's top eigen-directions, a_i = v_iᵀF̂v_i, against lambda_i."""
    rows = [r for r in part_rows(study["rows"], "sweep-network") if r.get("quadratics")]
    facts = study.get("sweep_network")
    if not rows or not facts:
        return False
    fig = new_figure(9, 5.5)
    ax = fig.subplots()
    values = np.asarray(facts["reference"]["eigenvalues"], dtype=float)
    ranks = np.arange(1, len(values) + 1)
    ax.plot(ranks, np.maximum(values, 1e-12), color=REFERENCE, linewidth=2.5, label="F: λ_i")
    for r in rows:
        noise = r["inputs"] != "same"
        label = e_label(r)
        ax.plot(
            ranks,
            np.maximum(np.asarray(r["quadratics"], dtype=float), 1e-12),
            color=GUIDE if noise else colour(r["estimator"]),
            linestyle="--" if noise else "-",
            linewidth=1.2,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("i (F's eigenpairs, largest first)")
    ax.set_ylabel("penalty along v_i: v_iᵀ F̂ v_i")
    ax.set_title(f"The penalty along F's top eigen-directions ({facts['network']})")
    ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=GRID_ALPHA, which="both")
    save_figure(fig, path)
    return True


def plot_link(link: dict[str, Any], path: Path) -> bool:
    """Per sequence: forgetting at the chosen lambda against a part-E metric, one dot per row."""
    panels = [c for c in link.get("correlations", []) if c["n"]]
    if not panels:
        return False
    fig = new_figure(4.2 * len(panels) + 0.6, 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    title = dict(LINK_METRICS)[LINK_FIGURE_METRIC]
    for ax, c in zip(axes, panels, strict=True):
        for r in link["rows"]:
            if (r["section"], r["bn"]) != (c["section"], c["bn"]) or r["metrics"] is None:
                continue
            x, y = r["metrics"][LINK_FIGURE_METRIC], r["forgetting"]
            if y is None:
                continue
            ax.errorbar(
                x, y, yerr=r["forgetting_sd"] or 0, fmt="o", capsize=3, color=colour(r["estimator"])
            )
            ax.annotate(
                "identity (l2)" if r["estimator"] == "identity" else r["estimator"],
                (x, y),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        rho = c["rho"].get(LINK_FIGURE_METRIC)
        text = "ρ not computed" if rho is None else f"ρ = {rho[0]:+.2f}"
        ax.set_title(f"{c['sequence']} ({text}, n = {c['n']})", fontsize=9)
        ax.set_xlabel(f"{title} error (mnist-fmnist, task A)")
        ax.grid(alpha=GRID_ALPHA)
    axes[0].set_ylabel("forgetting at the chosen lambda (mean ± sd over test seeds)")
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
EIGEN_CAPTION = (
    "Part E: the penalty each estimator puts along the top eigen-directions v_i of the exact "
    "Fisher F (the reference's noise dashed), against F's own eigenvalues (black)."
)
LINK_CAPTION = (
    "Part E: forgetting at the lambda chosen on the selection seeds (mean ± sd over test seeds) "
    "against each estimator's top-200 penalty error after rescaling, measured on mnist-fmnist's "
    "first task; one panel per sequence."
)


def write_figures(study: dict[str, Any], link: dict[str, Any], figs: Path) -> list[tuple[str, str]]:
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
    if plot_eigendirections(study, figs / "study_eigendirections.png"):
        figures.append(("figures/study_eigendirections.png", EIGEN_CAPTION))
    if plot_link(link, figs / "study_link.png"):
        figures.append(("figures/study_link.png", LINK_CAPTION))
    return figures


# -- part E's rows ------------------------------------------------------------------------------
E_METRICS = (
    ("rel_frobenius", "rel. Frobenius error", False),
    ("scale_free_error", "scale-free error", False),
    ("rel_trace", "rel. trace error", True),
    ("drift_penalty_error", "drift penalty error", True),
    ("top20_error", "top-20 penalty error", False),
    ("top200_error", "top-200 penalty error", False),
    ("top200_error_rescaled", "top-200 error, rescaled", False),
    ("flat_share_200", "flat share outside F's top 200", False),
)
"""Part E's metrics: (row key, column header, signed)."""


def e_label(row: dict[str, Any]) -> str:
    """Part E's name of a row: its estimator, ``identity (l2)``, or the reference noise."""
    if row["inputs"] != "same":
        return f"F on {row['n_inputs']:,} disjoint inputs (reference noise)"
    return "identity (l2)" if row["estimator"] == "identity" else row["estimator"]


def below_noise(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Per metric, the estimators whose |error| is at or below the reference noise row's."""
    noise = next((r for r in rows if r["inputs"] != "same"), None)
    if noise is None:
        return {}
    return {
        key: [e_label(r) for r in rows if r is not noise and abs(r[key]) <= abs(noise[key])]
        for key, _, _ in E_METRICS
    }


# -- the link: part E's metrics beside the sweep's outcomes ---------------------------------------
def sweep_link(study: dict[str, Any], results: str | None) -> dict[str, Any]:
    """Rows (sequence, estimator) and per-sequence correlations; ``note`` when there are none."""
    facts = study.get("sweep_network")
    if not facts:
        return {"note": "This study has no part E."}
    if not results:
        return {"note": "No results folder was given, so no outcomes are joined."}
    path = Path(results)
    if not (path / "runs").is_dir():
        return {"note": f"`{results}` holds no sweep records (no runs/ folder)."}
    meta = load_meta(path)
    try:
        records = load_records(path, meta)
    except FileNotFoundError as err:
        return {"note": f"`{results}`: {err}."}
    optimizer = facts.get("optimizer", "adam")  # studies made before it was recorded: Adam
    same_net = [
        r
        for r in records
        if model_text(r.config) == facts["network"]
        and r.config.get("data") == facts["data"]
        and r.config.get("optimizer", "adam") == optimizer  # not the optimizer control's runs
    ]
    if not same_net:
        return {
            "note": f"`{results}` holds no runs of {facts['network']} on {facts['data']} data "
            f"trained with {optimizer}, the network and training part E measured."
        }
    runs = summarise(same_net, selection_seeds_of(meta))
    rows = _link_rows(study, runs)
    if not rows:
        return {
            "note": f"`{results}` holds no test run of ewc or l2 on {facts['network']} at a "
            "chosen lambda (is the sweep still selecting?)."
        }
    used = [r for row in rows for r in row.pop("runs")]
    return {
        "results": str(results),
        "rows": rows,
        "correlations": _correlations(rows, runs),
        "trace_check": _trace_check(rows, used, facts),
        "shas": dict(Counter(str(r.record.provenance.get("git_sha")) for r in used)),
        "sweep": {k: meta.get(k) for k in ("experiment", "started", "finished", "command")},
        "note": "",
    }


def _link_rows(study: dict[str, Any], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (sequence, bn, curvature) of the selected test runs of ewc and l2."""
    measured = [r for r in part_rows(study["rows"], "sweep-network") if r.get("object")]
    by_key = {r["object"]: r for r in measured}
    order = {r["object"]: i for i, r in enumerate(measured)}
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        c = run.record.config
        if run.selected and c.get("method") in ("ewc", "l2") and c.get("mode") == "separate":
            groups[(run.sequence, run.bn, object_key(c))].append(run)
    rows = []
    for (section, bn, key), group in groups.items():
        config = group[0].record.config
        forgetting = [r.forgetting for r in group if r.forgetting is not None]
        accuracy = [r.test_avg for r in group if r.test_avg is not None]
        rows.append(
            {
                "section": section,
                "sequence": str(config.get("sequence")),
                "bn": bn,
                "estimator": curvature_label(config),
                "n_inputs": config.get("fisher_samples"),
                "lam": group[0].lam,
                "n": len(forgetting),
                "seeds": len(group),
                "forgetting": float(np.mean(forgetting)) if forgetting else None,
                "forgetting_sd": float(np.std(forgetting, ddof=1)) if len(forgetting) > 1 else None,
                "avg_acc": float(np.mean(accuracy)) if accuracy else None,
                "metrics": by_key.get(key),
                "runs": group,
                "order": order.get(key, len(order)),
            }
        )
    rows.sort(key=lambda r: (sequence_sort_key(r["section"]), bn_sort_key(r["bn"]), r["order"]))
    return rows


def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Spearman's rho and its p-value; None when n < ``MIN_CORRELATION_N`` or a side is constant."""
    from scipy.stats import spearmanr

    if len(xs) < MIN_CORRELATION_N or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho, p = spearmanr(xs, ys)
    return (float(rho), float(p)) if math.isfinite(rho) else None


def _correlations(rows: Sequence[dict[str, Any]], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per (sequence, bn): n joined estimators, rho of each metric with forgetting, baseline."""
    out = []
    for section, bn in dict.fromkeys((r["section"], r["bn"]) for r in rows):
        joined = [
            r
            for r in rows
            if (r["section"], r["bn"]) == (section, bn)
            and r["metrics"] is not None
            and r["forgetting"] is not None
        ]
        forgetting = [r["forgetting"] for r in joined]
        rho = {
            key: spearman([abs(r["metrics"][key]) for r in joined], forgetting)
            for key, _ in LINK_METRICS
        }
        base = [
            r.forgetting
            for r in runs
            if r.selected
            and (r.sequence, r.bn) == (section, bn)
            and r.forgetting is not None
            and r.record.config.get("method") == "baseline"
        ]
        config = next(r.record.config for r in runs if r.sequence == section)
        out.append(
            {
                "section": section,
                "sequence": str(config.get("sequence")),
                "bn": bn,
                "n": len(joined),
                "rho": rho,
                "baseline_forgetting": float(np.mean(base)) if base else None,
                "parameters": network_facts(config)[0],
                "heads": "{} x {}".format(
                    *heads_of(str(config["sequence"]), config.get("n_tasks"))
                ),
            }
        )
    return out


def _trace_check(
    rows: Sequence[dict[str, Any]], runs: Sequence[Run], facts: dict[str, Any]
) -> dict[str, Any]:
    """tr(F) of the sweep's runs on part E's sequence and seed after task A against the study's.

    The same network, seed, inputs and options fit the same curvature: the relative differences
    say how far the study's training reproduces the sweep's (thread counts change rounding).
    The identity (l2) does not depend on the weights and is left out.
    """
    traces = {
        r["metrics"]["object"]: r["metrics"]["trace"] for r in rows if r["metrics"] is not None
    }
    diffs = []
    for run in runs:
        c, trace = run.record.config, run.record.curvature_trace
        key, first = object_key(c), trace[0] if trace else None
        same_fit = c.get("sequence") == facts["experiment_sequence"] and run.seed == facts["seed"]
        if same_fit and c.get("estimator") and first is not None and traces.get(key):
            diffs.append(abs(first / traces[key] - 1.0))
    return {"n": len(diffs), "max_rel_diff": max(diffs) if diffs else None}
