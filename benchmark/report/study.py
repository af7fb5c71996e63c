"""STUDY.md, study.csv and study.json (the figures: ``study_figures``).

Built from the study's output (``benchmark.study.run_study``) and, for the link to outcomes, the
harness's run records.
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

from .. import metrics
from ..records import read_records
from ..selection import choose_lambdas, is_selected, selection_seeds_of
from .format import csv_cell, fmt_bytes, fmt_fixed, fmt_signed, md_table
from .provenance import command_item, git_text, libraries_text, machine_text, started_finished
from .study_figures import part_rows, write_figures

COLUMNS = (
    "part", "model", "estimator", "n_inputs", "seed", "mc_samples", "against", "batch_size",
    "rel_frobenius", "scale_free_error", "rel_trace", "top_eigenvalue_ratio", "overlap_topk",
    "drift_penalty_error", "random_penalty_error", "ratio_to_empirical", "fit_seconds", "nbytes",
)  # fmt: skip
TUTORIAL_LAMBDA = 100_000.0
"""The source tutorial's lambda for its batched estimator."""
STUDY_MACHINE_PARTS = ("platform", "cpu", "torch_threads")
"""The study runs on the CPU: its machine line leaves out the device and GPU."""


def study_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One line per measurement; empty cells where a column does not apply."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(row.get(k)) for k in COLUMNS})
    return out.getvalue()


# -- outcomes from the harness ------------------------------------------------------------------
def outcomes(
    results: str | None, sequence: str = "mnist-fmnist", bn: str = "freeze"
) -> dict[str, dict[str, float]]:
    """Per estimator: mean test forgetting and average accuracy of the selected runs, and lambda.

    Selected runs of ``sequence`` with BatchNorm mode ``bn``, separate mode; ``l2`` stands in for
    ``identity``.
    """
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
    seeds = selection_seeds_of(json.loads(meta.read_text()) if meta.exists() else {})
    chosen = choose_lambdas(records, seeds)
    by_name: dict[str, list] = defaultdict(list)
    for r in records:
        if r.status != "ok" or not is_selected(r, chosen, seeds):
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
    rows = [r for r in part_rows(study["rows"], "ground-truth") if r["model"] == model]
    cfg = study["config"]
    truth = study["ground_truth"][model]
    body = [
        [
            r["estimator"],
            fmt_fixed(r["rel_frobenius"], 3),
            fmt_fixed(r["scale_free_error"], 3),
            fmt_signed(r["rel_trace"], 3),
            fmt_fixed(r["top_eigenvalue_ratio"], 3),
            fmt_fixed(r.get("overlap_topk"), 3),
            fmt_signed(r["drift_penalty_error"], 3),
            fmt_fixed(r["random_penalty_error"], 3),
            f"{1e3 * r['fit_seconds']:.0f}",
            fmt_bytes(r["nbytes"]),
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
            md_table(header, body),
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
    rows = part_rows(study["rows"], "convergence-n")
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
    mc = part_rows(study["rows"], "convergence-mc")
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
            md_table(["estimator", *[f"N = {n:,}" for n in ns]], body),
            "Sampled estimators against their exact counterparts on the reference's "
            f"{cfg['n_ref']:,} "
            "inputs, as the labels sampled per input grow (mean ± sd over seeds):",
            md_table(["estimator", *[f"mc_samples = {k}" for k in ks]], mc_body),
        ]
    )


def batched_section(study: dict[str, Any]) -> str:
    """Part D: the batched estimator's bias by batch size."""
    rows = part_rows(study["rows"], "batched-bias")
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
            md_table(
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
    rows = part_rows(study["rows"], "tutorial")
    cfg = study["config"]
    body = []
    for r in rows:
        o = outcome.get(r["estimator"], {})
        body.append(
            [
                r["estimator"],
                fmt_fixed(r["rel_frobenius"], 3),
                fmt_fixed(r["scale_free_error"], 3),
                fmt_signed(r["drift_penalty_error"], 3),
                f"{1e3 * r['fit_seconds']:.0f}",
                fmt_bytes(r["nbytes"]),
                fmt_fixed(o.get("forgetting"), 3),
                fmt_fixed(o.get("avg_acc"), 3),
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
            md_table(
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
            command_item(prov.get("command")),
            f"- Machine: {machine_text(prov, STUDY_MACHINE_PARTS)}; {libraries_text(prov)}; "
            f"{git_text(prov.get('git_sha'))}",
            f"- {started_finished(study['started'], study['finished'])} "
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


def structure_findings(study: dict[str, Any]) -> list[str]:
    """What the diagonal and KFAC miss of F, and of the penalty on the real drift."""
    rows, model = study["rows"], study["config"]["model"]
    truth = study["ground_truth"][model]
    diag = _row(rows, "ground-truth", "diag-exact", model)
    kfac = _row(rows, "ground-truth", "kfac-exact", model)
    if not (diag and kfac):
        return []
    return [
        f"- Structure ({model}): the exact diagonal D has a relative Frobenius error "
        f"‖F − D‖/‖F‖ = {diag['rel_frobenius']:.2f} although its trace is exact, i.e. it holds "
        f"{100 * max(0.0, 1 - diag['rel_frobenius'] ** 2):.0f}% of ‖F‖² (the off-diagonal "
        f"entries hold the rest); KFAC's relative error is {kfac['rel_frobenius']:.2f}, of which "
        f"the cross-layer blocks it ignores alone account for "
        f"{np.sqrt(truth['off_block_share']):.2f}. After the best rescaling (what a tuned "
        f"lambda does) the errors are "
        f"{diag['scale_free_error']:.2f} and {kfac['scale_free_error']:.2f}.",
        f"- The penalty where it matters: on the real drift of task B, diag-exact's "
        f"δᵀF̂δ is off by {100 * diag['drift_penalty_error']:+.0f}% and KFAC's by "
        f"{100 * kfac['drift_penalty_error']:+.0f}%.",
    ]


def spectrum_findings(study: dict[str, Any]) -> list[str]:
    """Which route to the top eigenvalues was faster, and why."""
    cfg = study["config"]
    truth = study["ground_truth"][cfg["model"]]
    spec = truth.get("spectrum_seconds")
    if not (spec and truth.get("reference_rows")):
        return []
    r_rows, p = truth["reference_rows"], truth["parameters"]
    faster = "the Gram route" if spec["gram"] < spec["operator"] else "the operator"
    return [
        f"- Spectra: the top {cfg['top_k']} eigenvalues of the exact F took "
        f"{spec['gram']:.2f} s through the R x R Gram matrix UUᵀ and {spec['operator']:.2f} s "
        f"with eigsh on the P-dimensional operator (R = {r_rows:,} factor rows, "
        f"P = {p:,}): {faster} wins here. The Gram route pays R²P to form and R³ to "
        "solve, so it wins only when R is well below P (a few mc or empirical rows per "
        "input), not for the exact factor's C rows per input."
    ]


def batched_findings(study: dict[str, Any]) -> list[str]:
    """The batched estimator's scale at the tutorial's batch size."""
    batched = {
        r["batch_size"]: r["ratio_to_empirical"] for r in part_rows(study["rows"], "batched-bias")
    }
    if 100 not in batched:
        return []
    return [
        f"- The tutorial's batched estimator at batch 100 is {batched[100]:.4f} times the "
        f"per-input empirical Fisher (about 1/batch size), so its lambda = 100,000 is "
        f"lambda ≈ {TUTORIAL_LAMBDA * batched[100]:,.0f} on the per-input scale."
    ]


def outcome_findings(study: dict[str, Any], outcome: dict[str, dict[str, float]]) -> list[str]:
    """Whether a better approximation forgot less in the harness."""
    from scipy.stats import spearmanr

    lines = []
    tut = [r for r in part_rows(study["rows"], "tutorial") if r["estimator"] in outcome]
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
    return lines


def findings(study: dict[str, Any], outcome: dict[str, dict[str, float]]) -> str:
    """The main findings, as sentences with this run's numbers."""
    lines = ["## Findings", ""]
    lines += structure_findings(study)
    lines += spectrum_findings(study)
    lines += batched_findings(study)
    lines += outcome_findings(study, outcome)
    return "\n".join(lines)


def write_study(study: dict[str, Any], out_dir: Path, results: str | None = None) -> Path:
    """Write STUDY.md, study.csv, study.json and the figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = outcomes(results)
    figures = write_figures(study, outcome, out_dir / "figures")
    (out_dir / "study.csv").write_text(study_csv(study["rows"]))
    (out_dir / "study.json").write_text(json.dumps(study, indent=1, default=float))
    path = out_dir / "STUDY.md"
    path.write_text(render(study, outcome, figures))
    return path
