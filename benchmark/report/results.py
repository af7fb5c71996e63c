"""REPORT.md's text and runs.csv: pure functions of the runs (``outcomes.summarise``) and metadata.

Sections, in order: the verdict (``verdict``), the Kronecker-ablation finding where KFAC
variants ran (``ablation``), provenance (``provenance.report_provenance``),
the tutorial reproduction table, per-sequence results with 95% confidence intervals over seeds
and paired tests against ``ewc diag-exact`` (Holm-adjusted per table; against the variant at a
row's own settings where it ran in variants, ``references``), the chosen lambdas, the cost
table, and the figures (``figures``).

Conventions: tables show the test split at the chosen lambda (the *selected* runs), mean ± the
half-width of a 95% Student-t interval over seeds (``metrics.mean_ci``); runs that diverged or
failed are counted ("k of n diverged") and left out of every mean. Methods are ordered baseline,
l2, ewc by estimator (``estimators.names()`` order), ewc-online, joint. Where two runs of one
sequence share a method label but differ in another setting (say ``gamma``), the label gets that
setting as a suffix.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from .. import metrics
from ..outcomes import (
    Run,
    bn_modes,
    method_cost,
    method_labels,
    model_text,
    network_facts,
    representation,
    run_sort_key,
    selected,
    sequences,
    task_names,
    task_orders,
)
from ..selection import DEFAULT_SELECTION_SEEDS, SELECTION
from .ablation import finding_section
from .cells import EDGE_NOTE, excluded_note, lambda_text, method_cell, paired
from .companions import Companion, companion_section
from .diagnostics import diagnostics_parts
from .figures import figures_section, planned_figures
from .format import (
    CONFIDENCE,
    csv_number,
    fmt_bytes,
    fmt_ci,
    fmt_lambda,
    fmt_num,
    fmt_p,
    fmt_seconds,
    fmt_signed,
    md_table,
)
from .full_fisher import full_fisher_section
from .lambdas import lambda_section, strength
from .provenance import report_provenance
from .references import any_variant_reference, compared, reference_text, references
from .verdict import verdict_section

CSV_COLUMNS = (
    "sequence", "model", "method", "estimator", "mode", "bn", "optimizer", "lr", "lr_at_edge",
    "fisher_samples",
    "representation", "curvature_bytes", "lambda", "lambda_at_edge", "lambda_trace", "seed",
    "role", "selected",
    "val_avg_acc", "test_avg_acc", "forgetting", "bwt", "acc_matrix", "estimate_seconds",
    "train_seconds", "peak_rss_mb", "diverged", "run_id",
)  # fmt: skip
REFERENCE_METHOD = "ewc diag-exact"
"""Every method is compared with this one, seed by seed (paired tests)."""
TUTORIAL_SEQUENCE = "mnist-fmnist"
TUTORIAL_PUBLISHED = (
    ("EWC (tutorial, published)", (0.9772, 0.9717, 0.8312)),
    ("no penalty (tutorial, published)", (0.9762, 0.1769, 0.8672)),
)
"""The source tutorial's reported test accuracies: MNIST after A, MNIST after B, FMNIST after B."""
NO_BN_TEXT = "The network has no BatchNorm (the bn setting changes nothing)"
BN_TEXT = {
    "freeze": "BatchNorm statistics frozen after the first task (bn = freeze)",
    "update": "BatchNorm statistics updated in every task (bn = update)",
}


# -- runs.csv ----------------------------------------------------------------------------------


def csv_row(run: Run) -> dict[str, str]:
    """One row of runs.csv (every value as text)."""
    r, c = run.record, run.record.config
    return {
        "sequence": str(c.get("sequence")),
        "model": model_text(c),
        "method": str(c.get("method")),
        "estimator": c.get("estimator") or "",
        "mode": str(c.get("mode", "")),
        "bn": run.bn,
        "optimizer": str(c.get("optimizer", "")),
        "lr": str(c.get("lr", "")),
        "lr_at_edge": "true" if run.lr_at_edge else "false",
        "fisher_samples": str(c.get("fisher_samples", "")),
        "representation": representation(r),
        "curvature_bytes": str(max(r.curvature_bytes, default=0)),
        "lambda": fmt_lambda(run.lam),
        "lambda_at_edge": "true" if run.at_edge else "false",
        "lambda_trace": csv_number(strength(run)),
        "seed": str(run.seed),
        "role": run.role,
        "selected": "true" if run.selected else "false",
        "val_avg_acc": csv_number(run.val_avg),
        "test_avg_acc": csv_number(run.test_avg),
        "forgetting": csv_number(run.forgetting),
        "bwt": csv_number(run.bwt),
        "acc_matrix": json.dumps(r.acc_test),
        "estimate_seconds": csv_number(sum(r.estimate_seconds)),
        "train_seconds": csv_number(sum(r.train_seconds)),
        "peak_rss_mb": csv_number(r.peak_rss_mb),
        "diverged": "true" if run.diverged else "false",
        "run_id": r.run_id,
    }


def runs_csv(runs: Iterable[Run]) -> str:
    """runs.csv as text: ``CSV_COLUMNS``, one row per run, in ``run_sort_key`` order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in sorted(runs, key=run_sort_key):
        writer.writerow(csv_row(run))
    return buf.getvalue()


# -- the tutorial reproduction -----------------------------------------------------------------


def tutorial_cells(run: Run) -> tuple[float | None, float | None, float | None]:
    """(MNIST after A, MNIST after B, FashionMNIST after B) of one run; joint: (—, R00, R01)."""
    m = run.record.acc_test
    if not run.ok or not m:
        return None, None, None
    if len(m) == 1:
        return None, m[0][0], m[0][1]
    return m[0][0], m[1][0], m[1][1]


def tutorial_table(runs: Sequence[Run], bn: str) -> str:
    """The tutorial's three numbers for each selected method, one bn mode."""
    header = ["method", "λ", "MNIST after A", "MNIST after B", "FashionMNIST after B", "excluded"]
    rows = []
    for label in method_labels(runs, TUTORIAL_SEQUENCE, bn):
        chosen = selected(runs, TUTORIAL_SEQUENCE, bn, label)
        if not chosen:
            continue
        cells = [tutorial_cells(r) for r in chosen]
        row = [method_cell(label, chosen[0]), lambda_text(chosen[0])]
        for k in range(3):
            mean, half, n = metrics.mean_ci([c[k] for c in cells], CONFIDENCE)
            row.append(f"{fmt_ci(mean, half)} (n={n})" if n else "—")
        rows.append([*row, excluded_note(chosen) or "—"])
    for name, values in TUTORIAL_PUBLISHED:
        rows.append([f"*{name}*", "—", *[f"*{v:.4f}*" for v in values], "one seed"])
    return md_table(header, rows, "llrrrl")


def tutorial_section(runs: Sequence[Run]) -> str:
    """The tutorial's experiment reproduced, per BatchNorm mode, with its published numbers."""
    modes = bn_modes(runs, TUTORIAL_SEQUENCE)
    if not modes:
        return ""
    parts = [
        f"## The tutorial's experiment ({TUTORIAL_SEQUENCE})",
        "",
        "Task A = MNIST, task B = FashionMNIST, one shared head; test accuracy at the chosen "
        "lambda, mean ± 95% CI over seeds (n = finished seeds). `joint` trains once on both "
        "tasks, so it has no 'after A' value. The italic rows are the tutorial's published "
        "numbers (one seed, a GPU, its own batched Fisher and lambda = 100,000).",
        "",
        "BatchNorm axis: BatchNorm's running statistics are buffers, not parameters, so no "
        "penalty protects them. With `bn = update` (train mode in task B, what the tutorial's "
        "code intends) they drift to FashionMNIST's inputs; with `bn = freeze` (eval mode after "
        "task A) they keep MNIST's. The tutorial's published EWC numbers match only the frozen "
        "case: its evaluation helper calls `model.eval()` and nothing switches back. The two "
        "tables below measure the size of the effect with this benchmark's own runs.",
    ]
    if any(r.selected and r.at_edge for r in runs if r.sequence == TUTORIAL_SEQUENCE):
        parts += ["", EDGE_NOTE]
    for bn in modes:
        parts += ["", f"### {BN_TEXT.get(bn, f'bn = {bn}')}", "", tutorial_table(runs, bn)]
    return "\n".join(parts)


# -- results per sequence ----------------------------------------------------------------------


def diff_cell(test: dict[str, Any]) -> str:
    """``+0.0123 [+0.0050, +0.0196] (n=10)``: mean paired difference and its 95% t interval."""
    if test["mean_diff"] is None:
        return "—"
    ci = ""
    if test["ci_low"] is not None:
        ci = f" [{fmt_signed(test['ci_low'])}, {fmt_signed(test['ci_high'])}]"
    return f"{fmt_signed(test['mean_diff'])}{ci} (n={test['n']})"


def effect_cell(test: dict[str, Any]) -> str:
    """Cohen's d_z (mean / sd of the paired differences), 2 decimals."""
    d = test.get("effect_size")
    return "—" if d is None else f"{d:+.2f}"


def paired_columns(
    labels: Sequence[str], chosen: dict[str, list[Run]], refs: dict[str, str | None]
) -> dict[str, list[str]]:
    """Per label: Δ avg acc [CI], Holm-adjusted paired-t p, d_z against its own reference.

    ``refs`` maps each label to its reference (``references.references``); a label that is its
    own reference shows ``reference``. The Holm adjustment runs over the comparisons of one
    table (every label with chosen runs whose reference has chosen runs too).
    """
    pairs = compared(refs)
    others = [lab for lab in labels if lab in pairs and chosen.get(lab) and chosen.get(pairs[lab])]
    tests = {lab: paired(chosen[lab], chosen[pairs[lab]], "test_avg") for lab in others}
    adjusted = dict(
        zip(others, metrics.holm([tests[lab]["t_pvalue"] for lab in others]), strict=True)
    )
    out = {lab: ["—", "—", "—"] for lab in labels}
    out.update({lab: ["reference", "—", "—"] for lab in labels if refs.get(lab) == lab})
    for lab in others:
        out[lab] = [diff_cell(tests[lab]), fmt_p(adjusted[lab]), effect_cell(tests[lab])]
    return out


def unchosen_reason(group: Sequence[Run]) -> str:
    """Why a group has no chosen lambda, from its selection runs."""
    sel = [r for r in group if r.role == SELECTION]
    failed = sum(1 for r in sel if r.record.status == "failed")
    if not sel:
        return f"no selection runs among its {len(group)} runs (no lambda to choose from)"
    if failed:
        return f"selection incomplete: {failed} of {len(sel)} selection runs failed (rerun)"
    return f"no lambda finished on every selection seed ({len(sel)} selection runs)"


def _unchosen_row(runs: Sequence[Run], sequence: str, bn: str, label: str) -> list[str]:
    """The row of a method without a chosen lambda, saying why."""
    group = [r for r in runs if r.sequence == sequence and r.bn == bn and r.label == label]
    return [label, "none chosen", "0", unchosen_reason(group), "—", "—", "—"]


def results_table(runs: Sequence[Run], sequence: str, bn: str) -> str:
    """Average accuracy, forgetting and BWT per method (test split), with paired tests."""
    labels = method_labels(runs, sequence, bn)
    refs = references(runs, sequence, bn)
    header = ["method", "λ", "seeds", "excluded", "avg accuracy", "forgetting", "BWT"]
    chosen_runs = {lab: selected(runs, sequence, bn, lab) for lab in labels}
    reference = any(chosen_runs.get(ref) for ref in refs.values() if ref)
    several = len({ref for ref in refs.values() if ref}) > 1
    if reference:
        header += ["reference"] if several else []
        header += [f"Δ avg acc vs {reference_text(refs.values())} [95% CI]"]
        header += ["p (paired t, Holm)", "d_z"]
        cells = paired_columns(labels, chosen_runs, refs)
        if several:
            cells = {lab: [refs[lab] or "none at its settings", *cells[lab]] for lab in labels}
    blank = ["—"] * (4 if several else 3) if reference else []
    rows = []
    for label in labels:
        chosen = chosen_runs[label]
        if not chosen:
            rows.append(_unchosen_row(runs, sequence, bn, label) + blank)
            continue
        ok = [r for r in chosen if r.ok]
        row = [
            method_cell(label, chosen[0]),
            lambda_text(chosen[0]),
            str(len(ok)),
            excluded_note(chosen) or "—",
        ]
        for attr in ("test_avg", "forgetting", "bwt"):
            mean, half, _ = metrics.mean_ci([getattr(r, attr) for r in ok], CONFIDENCE)
            row.append(fmt_ci(mean, half))
        if reference:
            row += cells[label]
        rows.append(row)
    return md_table(header, rows, "llrlrrr" + ("l" if reference and several else "") + "rrr")


def task_order_lines(runs: Sequence[Run], seq: str) -> list[str]:
    """``Tasks, in order: ...`` when every test seed has one order, else one line per seed."""
    orders = task_orders(runs, seq)
    distinct = {tuple(o) for o in orders.values()}
    if not orders:
        tasks = task_names(runs, seq)
        return ["", f"Tasks, in order: {', '.join(tasks)}."] if tasks else []
    if len(distinct) == 1:
        return ["", f"Tasks, in order (every test seed): {', '.join(next(iter(distinct)))}."]
    rows = [[str(seed), ", ".join(order)] for seed, order in orders.items()]
    return [
        "",
        "The task order depends on the seed (each test seed's, in training order):",
        "",
        md_table(["seed", "tasks, in order"], rows, "rl"),
    ]


def results_section(runs: Sequence[Run]) -> str:
    """For each sequence and bn mode: the results table."""
    parts = [
        "## Results per sequence",
        "",
        "Test split at the chosen lambda; mean ± 95% CI over the finished seeds (`seeds`). "
        "Average accuracy = mean of the last row of the accuracy matrix; forgetting = mean over "
        "earlier tasks of (best accuracy since learnt − final accuracy) (Chaudhry et al. 2018); "
        "BWT = mean of (final − just-learnt accuracy) (Lopez-Paz & Ranzato 2017); both are "
        "undefined (—) for joint. Δ is the mean paired difference in average accuracy against "
        f"`{REFERENCE_METHOD}` over the test seeds both finished (n pairs), with its 95% "
        "Student-t interval; p is the paired t-test's, Holm-adjusted over the comparisons of "
        "its table (Holm 1979); d_z is the paired effect size (mean difference / its standard "
        "deviation over seeds). `excluded`: runs that diverged or failed, left out of every "
        "number.",
    ]
    if any_variant_reference(runs):
        parts[-1] += (
            f" Where `{REFERENCE_METHOD}` ran in variants (a setting in its label's suffix), each "
            "row's Δ is against the variant whose settings its own runs share (column "
            "`reference`), and the Holm adjustment still runs over the whole table."
        )
    if any(r.selected and r.at_edge for r in runs):
        parts += ["", EDGE_NOTE]
    for seq in sequences(runs):
        parts += ["", f"### {seq}"]
        parts += task_order_lines(runs, seq)
        for bn in bn_modes(runs, seq):
            heading = BN_TEXT.get(bn, f"bn = {bn}")
            if not any(network_facts(r.record.config)[1] for r in runs if r.sequence == seq):
                heading = NO_BN_TEXT
            parts += ["", f"#### {heading}", "", results_table(runs, seq, bn)]
            parts += diagnostics_parts(runs, seq, bn)
    return "\n".join(parts)


# -- cost --------------------------------------------------------------------------------------


def cost_table(runs: Sequence[Run], sequence: str) -> str:
    """Per method: estimation time, penalty overhead, curvature bytes, peak memory."""
    header = [
        "method",
        "runs",
        "estimation / task",
        "penalty ms / step",
        "penalty % of plain step",
        "plain step ms",
        "curvature / task",
        "peak RSS MiB",
    ]
    rows = []
    for label in method_labels(runs, sequence):
        cost = method_cost(selected(runs, sequence, None, label))
        if cost.n == 0:
            continue
        rows.append(
            [
                label,
                str(cost.n),
                fmt_seconds(cost.estimate_per_task_s),
                fmt_num(cost.penalty_ms),
                "—" if cost.penalty_pct is None else f"{cost.penalty_pct:.1f}%",
                fmt_num(cost.step_ms),
                fmt_bytes(cost.curvature_bytes, ".3g"),
                fmt_num(cost.peak_rss_mb),
            ]
        )
    return md_table(header, rows, "lrrrrrrr")


def cost_section(runs: Sequence[Run]) -> str:
    """The cost table per sequence (selected, finished runs; both bn modes pooled)."""
    parts = [
        "## Cost",
        "",
        "Finished selected runs of each method, bn modes pooled (means over runs of per-task "
        "means). Estimation: wall time of fitting the curvature after a task (tasks where one "
        "was fitted). Penalty: median extra time per training step that the penalty costs "
        "(its closed-form gradient, added after the loss's backward), in ms and as a share of "
        "a plain step (forward, "
        "loss, backward, optimizer step). Curvature: bytes of one task's curvature. Peak RSS: "
        "the process's peak resident memory during the run.",
    ]
    for seq in sequences(runs):
        parts += ["", f"### {seq}", "", cost_table(runs, seq)]
    return "\n".join(parts)


# -- the whole text ----------------------------------------------------------------------------


def render_markdown(
    runs: Sequence[Run],
    meta: dict[str, Any],
    pipeline: dict[str, Any] | None,
    selection_seeds: Sequence[int] = DEFAULT_SELECTION_SEEDS,
    companions: Sequence[Companion] = (),
) -> str:
    """The whole REPORT.md (pure: same runs, metadata and companions' runs, same text)."""
    name = meta.get("name") or meta.get("experiment")
    title = f"# EWC benchmark report: {name}" if name else "# EWC benchmark report"
    sections = [title]
    if meta.get("description"):
        sections.append(str(meta["description"]))
    sections += [
        verdict_section(runs),
        companion_section(runs, companions),
        full_fisher_section(runs),
        finding_section(runs, meta),
        report_provenance(meta, pipeline, runs, selection_seeds),
        tutorial_section(runs),
        results_section(runs),
        lambda_section(runs, meta, selection_seeds),
        cost_section(runs),
        figures_section(planned_figures(runs)),
    ]
    return "\n\n".join(s for s in sections if s).rstrip("\n") + "\n"
