"""REPORT.md's text and runs.csv: pure functions of the runs (``outcomes.summarise``) and metadata.

Sections, in order: provenance (``provenance.report_provenance``), the tutorial reproduction
table, per-sequence results with 95% confidence intervals over seeds and paired tests against
``ewc diag-exact``, the chosen lambdas, the cost table, and the figures (``figures``).

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
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .. import metrics
from ..config import PENALISED
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
    setting_text,
    task_names,
)
from ..selection import DEFAULT_SELECTION_SEEDS, SELECTION
from .figures import figures_section, planned_figures
from .format import (
    CONFIDENCE,
    csv_number,
    fmt_bytes,
    fmt_ci,
    fmt_fixed,
    fmt_lambda,
    fmt_num,
    fmt_p,
    fmt_seconds,
    fmt_signed,
    md_table,
)
from .provenance import report_provenance

CSV_COLUMNS = (
    "sequence", "model", "method", "estimator", "mode", "bn", "optimizer", "fisher_samples",
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


# -- cells -------------------------------------------------------------------------------------


EDGE_MARK = " (edge)"
EDGE_NOTE = (
    "A lambda marked (edge) is the smallest or the largest value its grid tried (after any "
    "extension): the best value may lie beyond it, so that method's row may understate it."
)


def method_cell(label: str, run: Run) -> str:
    """The method's label; a full Fisher kept as a factor states its rank bound."""
    text = representation(run.record)
    if text.startswith("full-factor "):
        rows = text.split()[1]
        return f"{label} [factor of {rows} rows: rank ≤ {rows}]"
    return label


def lambda_text(run: Run) -> str:
    """The run's lambda, ``—`` for a method without a penalty; `` (edge)`` at a grid edge."""
    if run.record.config.get("method") not in PENALISED:
        return "—"
    return fmt_lambda(run.lam) + (EDGE_MARK if run.at_edge else "")


def excluded_note(runs: Sequence[Run]) -> str:
    """``"1 of 3 diverged"`` (and failed), or ``""`` when every run finished."""
    n = len(runs)
    counts = Counter(r.record.status for r in runs)
    parts = [f"{counts[s]} of {n} {s}" for s in ("diverged", "failed") if counts[s]]
    return ", ".join(parts)


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


def _by_seed(runs: Sequence[Run], attr: str) -> dict[int, float | None]:
    return {r.seed: getattr(r, attr) for r in runs if r.ok}


def paired_cells(runs: Sequence[Run], reference: Sequence[Run]) -> list[str]:
    """Δ test average accuracy vs the reference (same seeds), paired-t p and Wilcoxon p."""
    a, b = _by_seed(runs, "test_avg"), _by_seed(reference, "test_avg")
    seeds = sorted(set(a) & set(b))
    test = metrics.paired_test([a[s] for s in seeds], [b[s] for s in seeds])
    if test["mean_diff"] is None:
        return ["—", "—", "—"]
    return [
        f"{fmt_signed(test['mean_diff'])} (n={test['n']})",
        fmt_p(test["t_pvalue"]),
        fmt_p(test["wilcoxon_pvalue"]),
    ]


def _unchosen_row(runs: Sequence[Run], sequence: str, bn: str, label: str) -> list[str]:
    """The row of a method that had no finished run on the selection seed."""
    n_all = sum(1 for r in runs if r.sequence == sequence and r.bn == bn and r.label == label)
    reason = f"no lambda finished on every selection seed ({n_all} runs)"
    return [label, "none chosen", "0", reason, "—", "—", "—"]


def results_table(runs: Sequence[Run], sequence: str, bn: str) -> str:
    """Average accuracy, forgetting and BWT per method (test split), with paired tests."""
    labels = method_labels(runs, sequence, bn)
    refs = [lab for lab in labels if lab.partition(" (")[0] == REFERENCE_METHOD]
    reference = selected(runs, sequence, bn, refs[0]) if refs else []
    header = ["method", "λ", "seeds", "excluded", "avg accuracy", "forgetting", "BWT"]
    if reference:
        header += [f"Δ avg acc vs {refs[0]}", "p (paired t)", "p (Wilcoxon)"]
    rows = []
    for label in labels:
        chosen = selected(runs, sequence, bn, label)
        if not chosen:
            rows.append(_unchosen_row(runs, sequence, bn, label) + (["—"] * 3 if reference else []))
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
            is_ref = label == refs[0]
            row += ["reference", "—", "—"] if is_ref else paired_cells(chosen, reference)
        rows.append(row)
    return md_table(header, rows, "llrlrrrrrr")


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
        f"`{REFERENCE_METHOD}` over the seeds both finished (n pairs), with the paired t-test's "
        "p-value and, from 6 pairs on, the Wilcoxon signed-rank test's. `excluded`: runs that "
        "diverged or failed, left out of every number.",
    ]
    if any(r.selected and r.at_edge for r in runs):
        parts += ["", EDGE_NOTE]
    for seq in sequences(runs):
        parts += ["", f"### {seq}"]
        tasks = task_names(runs, seq)
        if tasks:
            parts += ["", f"Tasks, in order: {', '.join(tasks)}."]
        for bn in bn_modes(runs, seq):
            heading = BN_TEXT.get(bn, f"bn = {bn}")
            if not any(network_facts(r.record.config)[1] for r in runs if r.sequence == seq):
                heading = NO_BN_TEXT
            parts += ["", f"#### {heading}", "", results_table(runs, seq, bn)]
    return "\n".join(parts)


# -- chosen lambdas ----------------------------------------------------------------------------


def selection_scores(group: Sequence[Run]) -> dict[float, tuple[float | None, str]]:
    """``lambda -> (mean validation score over its selection runs, note)`` of one group.

    The score is None unless every selection run of that lambda finished; the note then says
    how many diverged or failed (``2 of 3 diverged``).
    """
    by_lam: dict[float, list[Run]] = {}
    for r in group:
        if r.role == SELECTION:
            by_lam.setdefault(r.lam, []).append(r)
    out: dict[float, tuple[float | None, str]] = {}
    for lam, rs in sorted(by_lam.items()):
        bad = Counter(r.record.status for r in rs if not r.ok)
        if bad or any(r.val_avg is None for r in rs):
            note = ", ".join(f"{n} of {len(rs)} {status}" for status, n in sorted(bad.items()))
            out[lam] = (None, note or "incomplete")
        else:
            out[lam] = (sum(r.val_avg for r in rs) / len(rs), "")  # type: ignore[misc]
    return out


def lambda_grid_cell(group: Sequence[Run], chosen: float) -> str:
    """``100: 0.8712, **316.2: 0.8930**, 1000: 1 of 3 diverged``: mean over selection seeds."""
    items = []
    for lam, (score, note) in selection_scores(group).items():
        text = f"{fmt_lambda(lam)}: {fmt_fixed(score) if score is not None else note}"
        items.append(f"**{text}**" if lam == chosen and score is not None else text)
    return ", ".join(items) if items else "—"


def strength(run: Run) -> float | None:
    """``lambda * mean_t tr(F_t)`` over the curvatures a run fitted (None: none recorded)."""
    traces = [t for t in run.record.curvature_trace if t is not None]
    return run.lam * sum(traces) / len(traces) if traces else None


def strength_cell(chosen: Sequence[Run]) -> str:
    """Mean of ``strength`` over the finished selected runs, 3 significant digits."""
    values = [v for r in chosen if r.ok and (v := strength(r)) is not None]
    return f"{sum(values) / len(values):.3g}" if values else "—"


def declared_grid(meta: dict[str, Any]) -> str:
    """The experiment's lambda grids (``lambdas`` in sweep.json or its ``source``), as text."""
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    grid = meta.get("lambda_grid") or meta.get("lambdas") or source.get("lambdas")
    if not grid:
        return ""

    def values(v: Any) -> str:
        if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            return ", ".join(fmt_lambda(float(x)) for x in v)
        return setting_text(v)

    if isinstance(grid, dict):
        return "; ".join(f"{k}: {values(v)}" for k, v in grid.items())
    return values(grid)


def lambda_rows(runs: Sequence[Run]) -> list[list[str]]:
    """One row per sequence, bn and penalised method: chosen lambda, strength, score, grid."""
    rows = []
    for seq in sequences(runs):
        for bn in bn_modes(runs, seq):
            for label in method_labels(runs, seq, bn):
                group = [r for r in runs if r.sequence == seq and r.bn == bn and r.label == label]
                if group[0].record.config.get("method") not in PENALISED:
                    continue
                chosen = [r for r in group if r.selected]
                lam = chosen[0].lam if chosen else None
                best = selection_scores(group).get(lam, (None, ""))[0] if chosen else None
                rows.append(
                    [
                        seq,
                        bn,
                        label,
                        lambda_text(chosen[0]) if chosen else "none",
                        strength_cell(chosen),
                        fmt_fixed(best),
                        lambda_grid_cell(group, -1.0 if lam is None else lam),
                    ]
                )
    return rows


def lambda_section(
    runs: Sequence[Run], meta: dict[str, Any], selection_seeds: Sequence[int]
) -> str:
    """Chosen lambda per sequence, bn and penalised method, with the validation scores."""
    rows = lambda_rows(runs)
    seeds = ", ".join(map(str, selection_seeds))
    parts = [
        "## Chosen lambdas",
        "",
        f"Chosen per sequence, bn and penalised method on the validation split of the selection "
        f"seeds ({seeds}), which are never test seeds: the highest mean validation average "
        "accuracy over those seeds, ties to the smaller lambda, a lambda that diverged or "
        "failed on any of them never chosen (the chosen one in bold). The last column lists "
        "every lambda the group ran. λ·tr(F) is lambda times the mean trace of the curvatures "
        "the selected runs fitted: the penalty's strength on one axis for every structure (two "
        "structures with the same λ·tr(F) penalise a random direction equally on average). "
        "Baseline and joint have no lambda.",
    ]
    grid = declared_grid(meta)
    if grid:
        parts += ["", f"Lambda grids declared by the experiment: {grid}."]
    if any(r.selected and r.at_edge for r in runs):
        parts += ["", EDGE_NOTE]
    if rows:
        header = [
            "sequence",
            "bn",
            "method",
            "chosen λ",
            "λ·tr(F)",
            "val avg acc",
            "λ grid: mean val avg acc per λ",
        ]
        parts += ["", md_table(header, rows, "lllrrrl")]
    else:
        parts += ["", "No penalised runs."]
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
) -> str:
    """The whole REPORT.md (pure: same runs and metadata, same text)."""
    name = meta.get("name") or meta.get("experiment")
    title = f"# EWC benchmark report: {name}" if name else "# EWC benchmark report"
    sections = [title]
    if meta.get("description"):
        sections.append(str(meta["description"]))
    sections += [
        report_provenance(meta, pipeline, runs, selection_seeds),
        tutorial_section(runs),
        results_section(runs),
        lambda_section(runs, meta, selection_seeds),
        cost_section(runs),
        figures_section(planned_figures(runs)),
    ]
    return "\n\n".join(s for s in sections if s).rstrip("\n") + "\n"
