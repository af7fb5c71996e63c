"""STUDY.md, study.csv and the study's figures.

Built from the study's output (``study.run_study``) and, for the link to outcomes, the harness's
run records.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import read_records
from .selection import choose_lambdas, is_selected

COLUMNS = (
    "part", "model", "estimator", "n_inputs", "seed", "mc_samples", "against", "batch_size",
    "rel_frobenius", "scale_free_error", "rel_trace", "top_eigenvalue_ratio", "overlap_topk",
    "drift_penalty_error", "random_penalty_error", "ratio_to_empirical", "fit_seconds", "nbytes",
)  # fmt: skip
TUTORIAL_LAMBDA = 100_000.0
"""The source tutorial's lambda for its batched estimator."""


def study_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One line per measurement; empty cells where a column does not apply."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    return out.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _part(rows: Sequence[dict[str, Any]], part: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["part"] == part]


# -- outcomes from the harness ------------------------------------------------------------------
def outcomes(
    results: str | None, sequence: str = "mnist-fmnist", bn: str = "freeze"
) -> dict[str, dict[str, float]]:
    """Per estimator: mean test forgetting and average accuracy of the selected runs, and lambda.

    Selected runs of ``sequence`` with BatchNorm mode ``bn``, separate mode; ``l2`` stands in for
    ``identity``.
    """
    from . import metrics

    if not results or not (Path(results) / "runs").is_dir():
        return {}
    records = [
        r
        for r in read_records(Path(results))
        if r.config["sequence"] == sequence
        and r.config["bn"] == bn
        and r.config["mode"] == "separate"
    ]
    meta = Path(results) / "sweep.json"
    seed = json.loads(meta.read_text()).get("selection_seed", 0) if meta.exists() else 0
    chosen = choose_lambdas(records, seed)
    by_name: dict[str, list] = defaultdict(list)
    for r in records:
        if r.status != "ok" or not is_selected(r, chosen):
            continue
        name = {"l2": "identity"}.get(r.config["method"], r.config["estimator"])
        if name is not None:
            by_name[name].append(r)
    out = {}
    for name, rs in by_name.items():
        out[name] = {
            "forgetting": float(np.mean([metrics.forgetting(r.acc_test) for r in rs])),
            "avg_acc": float(np.mean([metrics.average_accuracy(r.acc_test) for r in rs])),
            "lam": float(rs[0].config["lam"]),
            "seeds": len(rs),
        }
    return out


# -- markdown ------------------------------------------------------------------------------------
def ground_truth_section(study: dict[str, Any], model: str) -> str:
    """Part A for one model: every estimator against the exact Fisher."""
    rows = [r for r in _part(study["rows"], "ground-truth") if r["model"] == model]
    cfg = study["config"]
    truth = study["ground_truth"][model]
    body = [
        [
            r["estimator"],
            _f(r["rel_frobenius"]),
            _f(r["scale_free_error"]),
            _signed(r["rel_trace"]),
            _f(r["top_eigenvalue_ratio"]),
            _f(r.get("overlap_topk")),
            _signed(r["drift_penalty_error"]),
            _f(r["random_penalty_error"]),
            f"{1e3 * r['fit_seconds']:.0f}",
            _bytes(r["nbytes"]),
        ]
        for r in rows
    ]
    header = [
        "estimator",
        "rel. Frobenius error",
        "scale-free error",
        "rel. trace error",
        "top eigenvalue ratio",
        f"top-{cfg['top_k']} overlap",
        "drift penalty error",
        "random-direction penalty error",
        "fit (ms)",
        "bytes",
    ]
    n = rows[0]["n_inputs"] if rows else 0
    spec = truth["spectrum_seconds"]
    return "\n\n".join(
        [
            f"### `{model}` ({truth['parameters']:,} parameters), {n:,} inputs",
            _table(header, body),
            f"The exact Fisher here is stored as its factor U ({truth['reference_rows']:,} rows: "
            f"{n:,} inputs x 10 classes), F = UᵀU. Its off-diagonal layer blocks (what any "
            f"block-diagonal approximation, KFAC included, drops) hold "
            f"{100 * truth['off_block_share']:.1f}% of ‖F‖²_F: a relative Frobenius error of "
            f"{np.sqrt(truth['off_block_share']):.3f} on their own. The top {cfg['top_k']} "
            f"eigenvalues took {spec['gram']:.2f} s through the Gram matrix UUᵀ and "
            f"{spec['operator']:.2f} s with eigsh on F as a {truth['parameters']:,}-dimensional "
            "operator (same values).",
        ]
    )


def ground_truth_intro(study: dict[str, Any]) -> str:
    """What part A measures."""
    cfg = study["config"]
    return "\n\n".join(
        [
            "## A. Ground truth: every estimator against the exact Fisher",
            "Small models trained through the harness on MNIST (task A, "
            f"{cfg['epochs']} epoch(s), seed 0); the reference F is `full-exact` on MNIST training "
            "inputs at the end of task A; every estimator is fitted on the same inputs. *Relative "
            "Frobenius error* is ‖F̂ − F‖/‖F‖; the *scale-free error* is the same after the best "
            "rescaling of F̂ (min over s of ‖sF̂ − F‖/‖F‖ = √(1 − cos²)), which is what matters "
            "once lambda is tuned; *drift penalty error* is (δᵀF̂δ − δᵀFδ)/δᵀFδ on the real "
            "drift δ = θ_B − θ_A of the same network trained on FashionMNIST next without a "
            f"penalty; the random-direction error is the mean absolute error over "
            f"{cfg['directions']} Gaussian directions. The identity's errors compare I with F "
            "(its scale-free error is what l2 can hope for).",
        ]
    )


def convergence_section(study: dict[str, Any]) -> str:
    """Parts B and C: error against N and against mc samples."""
    rows = _part(study["rows"], "convergence-n")
    cfg = study["config"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    ns = sorted({r["n_inputs"] for r in rows})
    body = []
    for name in names:
        cells = [name]
        for n in ns:
            errs = [
                r["rel_frobenius"] for r in rows if r["estimator"] == name and r["n_inputs"] == n
            ]
            cells.append(f"{np.mean(errs):.3f} ± {np.std(errs):.3f}")
        body.append(cells)
    mc = _part(study["rows"], "convergence-mc")
    ks = sorted({r["mc_samples"] for r in mc})
    mc_body = []
    for name in dict.fromkeys(r["estimator"] for r in mc):
        cells = [f"{name} vs {next(r['against'] for r in mc if r['estimator'] == name)}"]
        for k in ks:
            errs = [
                r["rel_frobenius"] for r in mc if r["estimator"] == name and r["mc_samples"] == k
            ]
            cells.append(f"{np.mean(errs):.3f} ± {np.std(errs):.3f}")
        mc_body.append(cells)
    return "\n\n".join(
        [
            "## B. Convergence with the number of inputs N, and with mc samples",
            "Relative Frobenius error against the reference of part A, for N inputs drawn with "
            "seeds "
            f"{', '.join(map(str, cfg['seeds']))} (disjoint from the reference's draw; mean ± "
            "sd). The "
            "error of a structured approximation stops falling at its structural floor; the full "
            "estimators keep converging to F.",
            _table(["estimator", *[f"N = {n:,}" for n in ns]], body),
            "Sampled estimators against their exact counterparts on the reference's "
            f"{cfg['n_ref']:,} "
            "inputs, as the labels sampled per input grow (mean ± sd over seeds):",
            _table(["estimator", *[f"mc_samples = {k}" for k in ks]], mc_body),
        ]
    )


def batched_section(study: dict[str, Any]) -> str:
    """Part D: the batched estimator's bias by batch size."""
    rows = _part(study["rows"], "batched-bias")
    cfg = study["config"]
    body = [
        [
            str(r["batch_size"]),
            f"{r['ratio_to_empirical']:.4f}",
            f"{1 / r['ratio_to_empirical']:.1f}",
            f"{TUTORIAL_LAMBDA * r['ratio_to_empirical']:,.0f}",
        ]
        for r in rows
    ]
    return "\n\n".join(
        [
            "## D. The bias of `diag-batched` (the tutorial's estimator)",
            f"On the tutorial network at the end of task A, {cfg['batched_n']:,} inputs: trace of "
            "`diag-batched` (squared gradients of mini-batch *mean* losses) over the trace of "
            "`diag-empirical` (the same labels, per input). With roughly uncorrelated per-input "
            "gradients the ratio is about 1/batch size: squaring a mean divides the Fisher by the "
            "batch size. The last column converts the tutorial's lambda = 100,000 to the per-input "
            "scale every other estimator here uses.",
            _table(
                [
                    "batch size",
                    "trace ratio to diag-empirical",
                    "lambda multiplier (1/ratio)",
                    "tutorial's lambda on the per-input scale",
                ],
                body,
            ),
        ]
    )


def tutorial_section(study: dict[str, Any], outcome: dict[str, dict[str, float]]) -> str:
    """Part E: the tutorial network's errors beside the harness's outcomes."""
    rows = _part(study["rows"], "tutorial")
    cfg = study["config"]
    body = []
    for r in rows:
        o = outcome.get(r["estimator"], {})
        body.append(
            [
                r["estimator"],
                _f(r["rel_frobenius"]),
                _f(r["scale_free_error"]),
                _signed(r["drift_penalty_error"]),
                f"{1e3 * r['fit_seconds']:.0f}",
                _bytes(r["nbytes"]),
                _f(o.get("forgetting")),
                _f(o.get("avg_acc")),
                "—" if "lam" not in o else f"{o['lam']:g}",
            ]
        )
    note = (
        "Outcomes come from the harness's selected runs of mnist-fmnist with frozen BatchNorm "
        "(`l2` stands in for `identity`); — where the harness did not run an estimator."
        if outcome
        else "No harness records were given, so no outcomes are shown."
    )
    return "\n\n".join(
        [
            "## E. The tutorial network (90,010 parameters): approximation error and forgetting",
            f"Reference: the exact low-rank `full-exact` factor on {cfg['tutorial_n']:,} inputs "
            f"({10 * cfg['tutorial_n']:,} rows), at the end of task A of the harness's seed-0 run "
            f"({cfg['tutorial_epochs']} epochs); the drift is that run's θ_B − θ_A without a "
            "penalty. " + note,
            _table(
                [
                    "estimator",
                    "rel. Frobenius error",
                    "scale-free error",
                    "drift penalty error",
                    "fit (ms)",
                    "bytes",
                    "forgetting",
                    "avg accuracy",
                    "chosen λ",
                ],
                body,
            ),
        ]
    )


def render(
    study: dict[str, Any],
    outcome: dict[str, dict[str, float]],
    figures: Sequence[tuple[str, str]],
) -> str:
    """The whole STUDY.md."""
    prov = study["provenance"]
    head = "\n".join(
        [
            "# Full vs KFAC vs diagonal: how good is each Fisher approximation, does it matter?",
            "",
            f"- Command: `{prov.get('command', '')}`",
            f"- Machine: {prov.get('platform', '')}; CPU: {prov.get('cpu', '')} "
            f"({prov.get('cores', '?')} cores); torch threads {prov.get('torch_threads', '?')}; "
            f"Python {prov.get('python', '')}, torch {prov.get('torch', '')}; "
            f"git {prov.get('git_sha', '')}",
            f"- Started {study['started']}, finished {study['finished']} "
            f"({study['duration_seconds'] / 60:.1f} min)",
            "- Raw numbers: [study.csv](study.csv), one row per measurement.",
        ]
    )
    figs = "\n\n".join(f"![{caption}]({path})\n\n*{caption}*" for path, caption in figures)
    parts = [head, findings(study, outcome), ground_truth_intro(study)]
    parts += [ground_truth_section(study, m) for m in study["ground_truth"]]
    parts += [convergence_section(study), batched_section(study), tutorial_section(study, outcome)]
    return "\n\n".join([*parts, "## Figures", figs]) + "\n"


def _row(rows: Sequence[dict[str, Any]], part: str, name: str, model: str | None = None) -> dict:
    for r in rows:
        if r["part"] == part and r["estimator"] == name and (model is None or r["model"] == model):
            return r
    return {}


def findings(study: dict[str, Any], outcome: dict[str, dict[str, float]]) -> str:
    """The main findings, as sentences with this run's numbers."""
    from scipy.stats import spearmanr

    rows, cfg = study["rows"], study["config"]
    model = cfg["model"]
    truth = study["ground_truth"][model]
    diag, kfac = (
        _row(rows, "ground-truth", "diag-exact", model),
        _row(rows, "ground-truth", "kfac-exact", model),
    )
    lines = ["## Findings", ""]
    if diag and kfac:
        lines.append(
            f"- Structure ({model}): the exact diagonal misses {100 * diag['rel_frobenius']:.0f}% "
            f"of F's Frobenius norm (relative error {diag['rel_frobenius']:.2f}) although its "
            f"trace is exact; KFAC misses {100 * kfac['rel_frobenius']:.0f}%, of which the "
            f"cross-layer blocks it ignores alone account for "
            f"{np.sqrt(truth['off_block_share']):.2f}. After the best rescaling (what a tuned "
            f"lambda does) the errors are "
            f"{diag['scale_free_error']:.2f} and {kfac['scale_free_error']:.2f}."
        )
        lines.append(
            f"- The penalty where it matters: on the real drift of task B, diag-exact's "
            f"δᵀF̂δ is off by {100 * diag['drift_penalty_error']:+.0f}% and KFAC's by "
            f"{100 * kfac['drift_penalty_error']:+.0f}%."
        )
    spec = truth.get("spectrum_seconds")
    if spec and truth.get("reference_rows"):
        r_rows, p = truth["reference_rows"], truth["parameters"]
        faster = "the Gram route" if spec["gram"] < spec["operator"] else "the operator"
        lines.append(
            f"- Spectra: the top {cfg['top_k']} eigenvalues of the exact F took "
            f"{spec['gram']:.2f} s through the R x R Gram matrix UUᵀ and {spec['operator']:.2f} s "
            f"with eigsh on the P-dimensional operator (R = {r_rows:,} factor rows, "
            f"P = {p:,}): {faster} wins here. The Gram route pays R²P to form and R³ to "
            "solve, so it wins only when R is well below P (a few mc or empirical rows per "
            "input), not for the exact factor's C rows per input."
        )
    batched = {r["batch_size"]: r["ratio_to_empirical"] for r in _part(rows, "batched-bias")}
    if 100 in batched:
        lines.append(
            f"- The tutorial's batched estimator at batch 100 is {batched[100]:.4f} times the "
            f"per-input empirical Fisher (about 1/batch size), so its lambda = 100,000 is "
            f"lambda ≈ {TUTORIAL_LAMBDA * batched[100]:,.0f} on the per-input scale."
        )
    tut = [r for r in _part(rows, "tutorial") if r["estimator"] in outcome]
    if len(tut) >= 3:
        rho, p = spearmanr(
            [r["scale_free_error"] for r in tut],
            [outcome[r["estimator"]]["forgetting"] for r in tut],
        )
        lines.append(
            f"- Does better curvature buy less forgetting? Across {len(tut)} estimators on the "
            f"tutorial sequence, Spearman's rho between the scale-free error of F̂ and forgetting "
            f"at the validation-chosen lambda is {rho:+.2f} (p = {p:.2g})."
        )
        best = min(tut, key=lambda r: outcome[r["estimator"]]["forgetting"])
        lines.append(
            f"- Least forgetting on the tutorial sequence: {best['estimator']} "
            f"({outcome[best['estimator']]['forgetting']:.3f}, scale-free error "
            f"{best['scale_free_error']:.2f}). A lambda tuned on validation absorbs most of an "
            "estimator's scale and much of its shape error; what remains is whether the "
            "penalty's directions match the drift (compare the drift penalty errors)."
        )
    if "full-exact" in outcome and "full-mc" in outcome:
        lines.append(
            f"- In the harness, full-exact forgets {outcome['full-exact']['forgetting']:.3f} and "
            f"full-mc {outcome['full-mc']['forgetting']:.3f}: with the same budget of factor "
            "rows, full-exact spends C rows on each of fewer inputs (the default protocol: 20 "
            "inputs x 10 classes against 200 inputs x 1 sample), and input coverage matters more "
            "than exact label sums at that rank."
        )
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_blocks(study: dict[str, Any], model: str, path: Path) -> None:
    """The last layer's Fisher block: exact full, KFAC, diagonal, on one colour scale."""
    from matplotlib.colors import SymLogNorm

    images = study["ground_truth"][model]["block_images"]
    order = [n for n in ("full-exact", "kfac-exact", "diag-exact") if n in images]
    arrays = [np.asarray(images[n]) for n in order]
    vmax = max(float(np.abs(a).max()) for a in arrays)
    norm = SymLogNorm(linthresh=vmax * 1e-3, vmin=-vmax, vmax=vmax)
    fig = _figure(4 * len(arrays) + 1, 4.2)
    axes = fig.subplots(1, len(arrays))
    for ax, name, a in zip(np.atleast_1d(axes), order, arrays, strict=True):
        im = ax.imshow(a, cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(
        im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="Fisher entry (symmetric log scale)"
    )
    fig.suptitle(f"Last layer's block of F ({arrays[0].shape[0]} parameters), {model}")
    fig.savefig(path, dpi=110)


def plot_spectra(study: dict[str, Any], model: str, path: Path) -> None:
    """Top-k eigenvalues of F and of each approximation, log scale."""
    fig = _figure(8, 5)
    ax = fig.subplots()
    for name, vals in study["ground_truth"][model]["spectra"].items():
        v = np.asarray(vals, dtype=float)
        style = {"color": "black", "linewidth": 2.5} if "reference" in name else {"linewidth": 1.2}
        ax.plot(np.arange(1, len(v) + 1), np.maximum(v, 1e-12), marker=".", label=name, **style)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"Top eigenvalues of F and its approximations ({model})")
    ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_convergence(study: dict[str, Any], path: Path) -> None:
    """Error vs N (left) and error vs mc samples (right), mean ± sd over seeds."""
    fig = _figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    for ax, part, key, xlabel in (
        (left, "convergence-n", "n_inputs", "inputs N"),
        (right, "convergence-mc", "mc_samples", "mc samples per input"),
    ):
        rows = _part(study["rows"], part)
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
                label=name,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative Frobenius error")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    left.set_title("against the reference F")
    right.set_title("mc against its exact counterpart")
    fig.savefig(path, dpi=110)


def plot_batched(study: dict[str, Any], path: Path) -> None:
    """diag-batched / diag-empirical trace ratio vs batch size, with 1/b."""
    rows = _part(study["rows"], "batched-bias")
    b = np.array([r["batch_size"] for r in rows], dtype=float)
    ratio = np.array([r["ratio_to_empirical"] for r in rows])
    fig = _figure(6, 4.5)
    ax = fig.subplots()
    ax.plot(b, ratio, marker="o", label="diag-batched / diag-empirical (trace)")
    ax.plot(b, 1 / b, linestyle="--", color="grey", label="1 / batch size")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ratio")
    ax.set_title("Bias of the batched estimator (tutorial network)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=110)


def plot_outcomes(study: dict[str, Any], outcome: dict[str, dict[str, float]], path: Path) -> bool:
    """Scale-free approximation error vs forgetting, one point per estimator; False if no data."""
    rows = [r for r in _part(study["rows"], "tutorial") if r["estimator"] in outcome]
    if not rows:
        return False
    fig = _figure(7, 5)
    ax = fig.subplots()
    for r in rows:
        o = outcome[r["estimator"]]
        ax.scatter(r["scale_free_error"], o["forgetting"], s=40)
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
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return True


def write_study(study: dict[str, Any], out_dir: Path, results: str | None = None) -> Path:
    """Write STUDY.md, study.csv, study.json and the figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = out_dir / "figures"
    figs.mkdir(exist_ok=True)
    outcome = outcomes(results)
    figures = []
    for model in study["ground_truth"]:
        for kind, fn, caption in (
            (
                "blocks",
                plot_blocks,
                "the last layer's block of the Fisher: exact full, KFAC and "
                "diagonal on one colour scale",
            ),
            (
                "spectra",
                plot_spectra,
                "top eigenvalues of the exact Fisher (black) and of each approximation",
            ),
        ):
            name = f"study_{kind}_{model}.png"
            fn(study, model, figs / name)
            figures.append((f"figures/{name}", f"{model}: {caption}."))
    for name, fn, caption in (
        (
            "study_convergence.png",
            plot_convergence,
            "Approximation error as the inputs (left) and the mc samples (right) grow.",
        ),
        (
            "study_batched.png",
            plot_batched,
            "The batched estimator's trace relative to the "
            "per-input empirical Fisher, by batch size.",
        ),
    ):
        fn(study, figs / name)
        figures.append((f"figures/{name}", caption))
    if plot_outcomes(study, outcome, figs / "study_outcomes.png"):
        figures.append(
            (
                "figures/study_outcomes.png",
                "Approximation error against forgetting at the validation-chosen lambda, one "
                "point per estimator.",
            )
        )
    (out_dir / "study.csv").write_text(study_csv(study["rows"]))
    (out_dir / "study.json").write_text(json.dumps(study, indent=1, default=float))
    path = out_dir / "STUDY.md"
    path.write_text(render(study, outcome, figures))
    return path
