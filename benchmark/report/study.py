"""STUDY.md, study.csv and study.json (figures, link: ``study_figures``; F: ``study_online``).

From the study's output (``benchmark.study.run_study``) and, for part E's link to forgetting, the
sweep's run records (``study_figures.sweep_link``). The header says which run of which code made
each part's numbers: the study's own run for parts A-D, E's metrics and F, the sweep's records
(their git SHAs, counted) and ``sweep.json`` for the outcomes joined in E.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .format import csv_cell, fmt_bytes, fmt_fixed, fmt_num, fmt_signed, md_table
from .provenance import command_item, git_text, libraries_text, machine_text
from .study_figures import (
    E_METRICS,
    LINK_METRICS,
    MIN_CORRELATION_N,
    below_noise,
    e_label,
    part_rows,
    sweep_link,
    write_figures,
)
from .study_online import online_findings, online_section

COLUMNS = (
    "part", "model", "estimator", "rank", "n_inputs", "inputs", "seed", "mc_samples", "against",
    "batch_size", "rel_frobenius", "scale_free_error", "rel_trace", "top_eigenvalue_ratio",
    "overlap_topk", "drift_penalty_error", "random_penalty_error", "top20_error", "top200_error",
    "top200_error_rescaled", "flat_share_200", "trace", "ratio_to_empirical", "fit_seconds",
    "nbytes", "rule", "tasks", "decay",
)  # fmt: skip
TRUTH_COLUMNS = (
    ("rel_frobenius", False), ("scale_free_error", False), ("rel_trace", True),
    ("top_eigenvalue_ratio", False), ("overlap_topk", False), ("drift_penalty_error", True),
    ("random_penalty_error", False),
)  # fmt: skip
"""Part A's metric columns: (row key, signed)."""
TUTORIAL_LAMBDA = 100_000.0
"""The source tutorial's lambda for its batched estimator."""
BATCHED_HEADER = (
    "batch size", "trace ratio to diag-empirical", "lambda multiplier (1/ratio)",
    "tutorial's lambda on the per-input scale",
)  # fmt: skip
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


# -- markdown ------------------------------------------------------------------------------------
def ground_truth_section(study: dict[str, Any], model: str) -> str:
    """Part A for one model: every estimator against the exact Fisher."""
    rows = [r for r in part_rows(study["rows"], "ground-truth") if r["model"] == model]
    cfg = study["config"]
    truth = study["ground_truth"][model]
    body = [[r["estimator"], *(_cell(r, k, s) for k, s in TRUTH_COLUMNS), *_cost(r)] for r in rows]
    header = [
        "estimator", "rel. Frobenius error", "scale-free error", "rel. trace error",
        "top eigenvalue ratio", f"top-{cfg['top_k']} overlap", "drift penalty error",
        "random-direction penalty error", "fit (ms)", "bytes",
    ]  # fmt: skip
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
            cells.append(f"{np.mean(errs):.3f} ± {np.std(errs):.3f}" if errs else "—")
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
            f"{cfg['n_ref']:,} inputs, as the labels sampled per input grow (mean ± sd over "
            f"seeds; full-mc stops at {cfg.get('full_mc_max', 'every')} samples: from C = 10 on, "
            "its factor has as many rows R as the exact one, and each comparison costs 4R²P "
            "flops):",
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
            md_table(BATCHED_HEADER, body),
        ]
    )


def header(study: dict[str, Any], link: dict[str, Any]) -> str:
    """Title, command, machine, and which run of which code made each part's numbers."""
    prov, parts = study["provenance"], study.get("parts", {})
    times = ", ".join(f"{name} {p['seconds']:.0f} s" for name, p in parts.items())
    lines = [
        "# Full vs KFAC vs diagonal: how good is each Fisher approximation, does it matter?",
        "",
        command_item(prov.get("command")),
        f"- Machine: {machine_text(prov, STUDY_MACHINE_PARTS)}; {libraries_text(prov)}",
        f"- Parts A-D, E's metrics and F: this run of the study, {git_text(prov.get('git_sha'))}"
        f"; started {study['started']}, finished {study['finished']} "
        f"({study['duration_seconds'] / 60:.1f} min" + (f"; {times})" if times else ")"),
    ]
    if link.get("rows"):
        shas = ", ".join(f"{sha} ({n} runs)" for sha, n in sorted(link["shas"].items()))
        sweep = link["sweep"]
        lines.append(
            f"- Part E's outcomes: the sweep's records in `{link['results']}` (experiment "
            f"{sweep.get('experiment') or 'not recorded'}; sweep.json: started "
            f"{sweep.get('started') or 'not recorded'}, finished "
            f"{sweep.get('finished') or 'not recorded'}); the "
            f"{sum(r['seeds'] for r in link['rows'])} test runs in its link table were made at "
            f"git {shas}"
        )
    else:
        lines.append(f"- Part E's outcomes: none joined. {link.get('note', '')}")
    lines.append("- Raw numbers: [study.csv](study.csv), one row per measurement.")
    return "\n".join(lines)


def networks_text(study: dict[str, Any]) -> str:
    """Which network each part measures."""
    params, cfg = study["parameters"], study["config"]
    facts = study.get("sweep_network") or {}
    models = ", ".join(f"`{m}` ({params[m]:,} parameters)" for m in study["ground_truth"])
    text = (
        f"Networks: part A uses {models}; parts B and C `{cfg['model']}` (784-16-10); part D "
        f"the tutorial's `tutorial-mlp` (784-100-100-10 with BatchNorm, "
        f"{params.get('tutorial-mlp', 0):,} parameters)"
    )
    if facts:
        text += (
            f"; part E the sweep's main comparison network `{facts['network']}` "
            f"({facts['parameters']:,} parameters, no BatchNorm)"
        )
    changed = ", ".join(f"{k} = {v}" for k, v in cfg.get("network_overrides", {}).items())
    return text + (f" (this run overrides the sweep's settings: {changed})." if changed else ".")


def render(study: dict[str, Any], link: dict[str, Any], figures: Sequence[tuple[str, str]]) -> str:
    """The whole STUDY.md."""
    figs = "\n\n".join(f"![{caption}]({path})\n\n*{caption}*" for path, caption in figures)
    parts = [header(study, link), networks_text(study), findings(study, link)]
    parts += [ground_truth_intro(study)]
    parts += [ground_truth_section(study, m) for m in study["ground_truth"]]
    parts += [convergence_section(study), batched_section(study)]
    if study.get("sweep_network"):
        parts += [network_section(study), link_section(study, link)]
    parts += [online_section(study)] if study.get("online_rules") else []
    return "\n\n".join([*parts, "## Figures", figs]) + "\n"


def _row(rows: Sequence[dict[str, Any]], part: str, name: str, model: str | None = None) -> dict:
    found = (r for r in rows if (r["part"], r["estimator"]) == (part, name))
    return next((r for r in found if model in (None, r["model"])), {})


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


def findings(study: dict[str, Any], link: dict[str, Any]) -> str:
    """The main findings, as sentences with this run's numbers."""
    lines = ["## Findings", ""]
    lines += structure_findings(study)
    lines += spectrum_findings(study)
    lines += batched_findings(study)
    lines += network_findings(study, link) + online_findings(study)
    return "\n".join(lines)


def write_study(study: dict[str, Any], out_dir: Path, results: str | None = None) -> Path:
    """Write STUDY.md, study.csv, study.json and the figures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    link = sweep_link(study, results)
    figures = write_figures(study, link, out_dir / "figures")
    (out_dir / "study.csv").write_text(study_csv(study["rows"]))
    data = {**study, "link": link}
    (out_dir / "study.json").write_text(json.dumps(data, indent=1, default=float))
    path = out_dir / "STUDY.md"
    path.write_text(render(study, link, figures))
    return path


# -- part E ---------------------------------------------------------------------------------------
DROPPED_TUTORIAL = (
    "The tutorial network (784-100-100-10 with BatchNorm, 90,010 parameters) is not measured "
    "here any more. Its sweep runs fit their curvature on 1,000 inputs; an exact reference on as "
    "many inputs is a factor of 10,000 rows x 90,010 columns (3.4 GiB in float32), and a second, "
    "disjoint draw to measure that reference's own noise doubles it, over the 4 GiB the study "
    "may use. The earlier part E used a 200-input factor whose noise was never measured and "
    "could not judge estimators fitted on 1,000 inputs."
)


def _cell(row: dict[str, Any] | None, key: str, signed: bool) -> str:
    value = None if row is None else row.get(key)
    return (fmt_signed if signed else fmt_fixed)(value, 3)


def _cost(row: dict[str, Any]) -> list[str]:
    return [f"{1e3 * row['fit_seconds']:.0f}", fmt_bytes(row["nbytes"])]


def _link_cells(r: dict[str, Any]) -> list[str]:
    """One row of the link table: what was measured, then what the sweep found."""
    identity = r["estimator"] == "identity"
    label, n = ("identity (l2)", "—") if identity else (r["estimator"], f"{r['n_inputs']:,}")
    metrics = [_cell(r["metrics"], key, signed) for key, _, signed in E_METRICS]
    forgetting = f"{fmt_fixed(r['forgetting'], 3)} ± {fmt_fixed(r['forgetting_sd'], 3)}"
    outcome = [forgetting, fmt_fixed(r["avg_acc"], 3), str(r["n"]), f"{r['lam']:g}"]
    return [r["sequence"], label, n, *metrics, *outcome]


def _check_text(check: dict[str, Any], facts: dict[str, Any]) -> str:
    where = f"seed-{facts['seed']} {facts['experiment_sequence']} runs"
    if not check["n"]:
        return f"No {where} of the sweep recorded tr(F̂) after task A, so the join is unchecked."
    return (
        f"Check of the join: tr(F̂) that the sweep's {where} recorded after task A against this "
        f"study's fits: largest relative difference {fmt_num(check['max_rel_diff'])} over "
        f"{check['n']} runs (the identity left out)."
    )


def _rho_text(rho: tuple[float, float] | None) -> str:
    return "—" if rho is None else f"{rho[0]:+.2f} ({rho[1]:.2g})"


def network_section(study: dict[str, Any]) -> str:
    """Part E: every estimator of the sweep's network against its exact dense Fisher."""
    facts, rows = study["sweep_network"], part_rows(study["rows"], "sweep-network")
    ref, (k1, k2) = facts["reference"], facts["k"]
    body = [[e_label(r), *(_cell(r, k, s) for k, _, s in E_METRICS), *_cost(r)] for r in rows]
    header = ["estimator", *(h for _, h, _ in E_METRICS), "fit (ms)", "bytes"]
    top = np.asarray(ref["eigenvalues"], dtype=float)
    n = facts["n_inputs"]
    return "\n\n".join(
        [
            f"## E. The sweep's network: {facts['network']} ({facts['parameters']:,} parameters)",
            f"Trained through the harness as every seed-{facts['seed']} run of the sweep trains "
            f"it: {facts['experiment_sequence']}, {facts['epochs']} epoch(s) per task, no "
            f"penalty during task A (MNIST); the metrics are measured at the end of task A, on "
            f"what each seed-{facts['seed']} run of the sweep fits after it. The reference F is "
            f"`full-exact` stored dense ({ref['dtype']}, {fmt_bytes(ref['nbytes'])}, fitted in "
            f"{ref['fit_seconds']:.1f} s) on the sweep's own {n:,} inputs; every estimator is "
            "fitted by the sweep's own code with its settings on the same inputs (the mc labels "
            "of that run too). The first row is F's own sampling noise: the same exact Fisher "
            f"on the next {n:,} inputs of the same draw (disjoint), compared with F by every "
            "metric; an estimator's error at or below it is within what another draw of inputs "
            "changes.",
            f"Metrics, with F's top eigenpairs (λ_i, v_i) and a_i = v_iᵀF̂v_i: *rel. Frobenius* "
            "‖F̂ − F‖/‖F‖; *scale-free* min_s ‖sF̂ − F‖/‖F‖ = √(1 − cos²); *rel. trace* "
            "(tr F̂ − tr F)/tr F; *drift penalty* (δᵀF̂δ − δᵀFδ)/δᵀFδ on the real drift δ = "
            "θ_B − θ_A of FashionMNIST trained next without a penalty; *top-k penalty error* "
            f"Σ_(i≤k) |a_i − λ_i| / Σ_(i≤k) λ_i for k = {k1} and {k2} (the sweep's two low "
            "ranks): how wrong the penalty is in the directions F penalises most; *rescaled* "
            f"the top-{k2} error after the best scale s ≥ 0 (min_s Σ|s a_i − λ_i| / Σ λ_i, a "
            "weighted median), what is left once lambda absorbs the scale; *flat share* "
            f"1 − Σ_(i≤{k2}) a_i / tr F̂, the part of F̂'s penalty outside F's top-{k2} "
            f"eigenspace (F's own: {fmt_fixed(1 - top[:k2].sum() / ref['trace'], 3)}).",
            md_table(header, body),
            f"F: trace {fmt_num(ref['trace'])}, top eigenvalue {fmt_num(top[0])}; its top {k1} "
            f"and {k2} eigenvalues hold {100 * top[:k1].sum() / ref['trace']:.1f}% and "
            f"{100 * top[:k2].sum() / ref['trace']:.1f}% of its trace. Its top {k2} eigenpairs "
            f"come from subspace iteration ({ref['eigen_seconds']:.1f} s; largest residual "
            f"‖Fv − λv‖ = {ref['eigen_residual']:.1e} λ_1). The two draws of inputs share "
            f"{facts['draw_overlap']} inputs.",
            DROPPED_TUTORIAL,
        ]
    )


def link_section(study: dict[str, Any], link: dict[str, Any]) -> str:
    """Part E's metrics beside the sweep's outcomes, and their rank correlations."""
    head = "### The link to forgetting"
    if not link.get("rows"):
        return f"{head}\n\n{link.get('note') or 'No outcomes were joined.'}"
    facts = study["sweep_network"]
    body = [_link_cells(r) for r in link["rows"]]
    names = [h for _, h in LINK_METRICS]
    corr = [
        [c["sequence"], c["heads"], f"{c['parameters']:,}", str(c["n"])]
        + [fmt_fixed(c["baseline_forgetting"], 3)]
        + [_rho_text(c["rho"][k]) for k, _ in LINK_METRICS]
        for c in link["correlations"]
    ]
    missing = sorted({r["estimator"] for r in link["rows"] if r["metrics"] is None})
    check = link["trace_check"]
    return "\n\n".join(
        [
            head,
            "One row per sequence and estimator that the sweep ran on "
            f"{facts['network']}: the metrics are those of the table above, measured once, on "
            f"{facts['experiment_sequence']}'s first task at seed {facts['seed']} (the object "
            "each row is about: that estimator with its options and N on this network; a row "
            "gets them only when the sweep's runs used the same estimator, options, N and "
            "network); the outcomes are the sweep's test runs at the lambda chosen on the "
            "selection seeds: mean ± sd of forgetting and mean average test accuracy over the n "
            "finished test seeds.",
            md_table(
                ["sequence", "estimator", "N", *names, "forgetting", "avg acc", "n", "λ"], body
            ),
            "Spearman's ρ (p) between each metric and forgetting over the estimators of one "
            f"sequence (n joined; — where n < {MIN_CORRELATION_N} or a side is constant; signed "
            "metrics by their absolute value). Every sequence's network has the hidden layers "
            "measured here (its heads may differ) but learns other tasks: read ρ as whether the "
            "ranking of the structures on mnist-fmnist's first task carries over.",
            md_table(
                ["sequence", "heads x outputs", "P", "n", "baseline forgetting", *names], corr
            ),
            (
                f"Not measured by this study (other options or N): {', '.join(missing)}. "
                if missing
                else ""
            )
            + _check_text(check, facts),
        ]
    )


def network_findings(study: dict[str, Any], link: dict[str, Any]) -> list[str]:
    """Part E in sentences: the reference's noise, what separates, the link."""
    rows = part_rows(study["rows"], "sweep-network")
    if not rows:
        return []
    facts, below = study["sweep_network"], below_noise(rows)
    noise = next(r for r in rows if r["inputs"] != "same")
    same = [r for r in rows if r["inputs"] == "same"]
    tops = ", ".join(f"{e_label(r)} {r['top200_error']:.2f}" for r in same)
    lines = [
        f"- Part E ({facts['network']}, N = {facts['n_inputs']:,}): the exact Fisher's own "
        f"sampling noise (a disjoint draw of inputs) is {noise['rel_frobenius']:.3f} in relative "
        f"Frobenius error, {noise['top200_error']:.3f} in top-200 penalty error and "
        f"{abs(noise['drift_penalty_error']):.3f} on the drift. At or below that noise in "
        f"top-200 penalty error: {', '.join(below.get('top200_error', [])) or 'none'}.",
        f"- The top-200 penalty error separates the structures: {tops}.",
    ]
    key = "top200_error_rescaled"
    corr = [c for c in link.get("correlations", []) if c["rho"].get(key)]
    if corr:
        lines.append(
            "- Does a better curvature buy less forgetting? Spearman's ρ between the rescaled "
            "top-200 error (mnist-fmnist, task A) and forgetting: "
            + "; ".join(f"{c['sequence']} {c['rho'][key][0]:+.2f} (n = {c['n']})" for c in corr)
            + "."
        )
    return lines
