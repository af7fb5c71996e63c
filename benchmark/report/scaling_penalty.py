"""scaling.md's penalty section: the EWC penalty's cost per training step vs past tasks T.

Reads records of schema 1 (rows named by ``estimator``) and 2 (rows also carry ``name``, the
label, and ``options``); what is measured is ``benchmark.costs.scaling_penalty``. The
paragraph on KFAC's online rules and the table of bytes held appear when the record has rows
with an ``online_rule`` (schema 1 records have none, and render as they always did).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .format import fmt_bytes, fmt_ms, md_cell
from .scaling_figures import row_label

Row = dict[str, Any]


def has_rule(row: Row) -> bool:
    """Whether the row is a fit with an ``online_rule`` (its online mode combines factors)."""
    return bool((row.get("options") or {}).get("online_rule"))


def penalty_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(label, mode) of the rows, in first-seen order."""
    return list(dict.fromkeys((row_label(r), r["mode"]) for r in rows))


def penalty_table(rows: Sequence[Row], cell: Callable[[Row], str]) -> list[str]:
    """One row per T, one column per (label, mode), ``cell(row)`` in each."""
    columns = penalty_columns(rows)
    head = "| past tasks T | " + " | ".join(f"`{e}` {m}" for e, m in columns) + " |"
    lines = [head, "| ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for t in sorted({r["tasks"] for r in rows}):
        at_t = {(row_label(x), x["mode"]): x for x in rows if x["tasks"] == t}
        cells = ["—" if key not in at_t else cell(at_t[key]) for key in columns]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def rules_paragraph(rows: Sequence[Row]) -> list[str]:
    """What KFAC's and EKFAC's online rules keep, and the bytes table (rule rows only)."""
    if not any(has_rule(r) for r in rows):
        return []
    return [
        "",
        "KFAC and EKFAC fits are accumulated online by their `online_rule` "
        "(`estimators.kfac_online`): `n-weighted` averages each layer's Kronecker factors over "
        "the tasks, one product per layer whatever T, so its cost is flat in T; `sum` keeps "
        "every task's factors and sums the products (the exact online sum, Ritter et al. 2018), "
        "so its cost and its memory grow linearly with T, as separate mode's do, with one "
        "anchor instead of T. Bytes of the penalty's curvatures after T tasks (`EWC.nbytes`: "
        "each term counted, as T separate fits would hold it; anchors not counted):",
        "",
        *penalty_table(rows, lambda r: fmt_bytes(r["penalty_bytes"])),
    ]


def fit_lines(fits: Sequence[Row]) -> list[str]:
    """One line per fitted curvature: its inputs, or why it failed."""
    lines = []
    for fit in fits:
        label = row_label(fit)
        if fit["status"] == "ok":
            lines.append(f"- `{label}` fitted on {fit['inputs']:,} inputs.")
        else:
            lines.append(f"- `{label}`: {fit['status']}: {md_cell(fit['message'])}")
    return lines


def refusal_lines(refused: Sequence[Row]) -> list[str]:
    """Online modes not measured: no online mode at all, or a rule the estimator refuses."""
    lines = []
    for r in refused:
        if has_rule(r):
            lines.append(f"- `{row_label(r)}`: not measured: {md_cell(r['reason'], 400)}.")
        else:
            lines.append(f"- `{row_label(r)}` has no online mode: {md_cell(r['reason'])}.")
    return lines


def penalty_section(record: dict[str, Any]) -> list[str]:
    """Penalty cost per training step vs past tasks, separate vs online."""
    pen = record["penalty"]
    rows = pen["rows"]
    lines = [
        "## Penalty cost per training step vs past tasks",
        "",
        f"Tutorial network, batch {pen['batch_size']}, Adam; extra ms per step over a plain "
        f"step ({fmt_ms(pen['plain_s'])} ms), median of {pen['steps']} interleaved steps, every "
        "round in a fresh seeded order "
        "(share of the plain step in brackets). Separate mode keeps one quadratic per past task "
        "(Kirkpatrick et al. 2017), so its cost grows linearly with T; online mode keeps one "
        "accumulated curvature (Schwarz et al. 2018), so its cost does not depend on T: the "
        "differences between its rows show this measurement's noise, not a trend.",
        "",
        *penalty_table(rows, lambda r: f"{fmt_ms(r['extra_s'])} ({r['overhead_pct']:.0f}%)"),
        *rules_paragraph(rows),
        "",
        *fit_lines(pen["fits"]),
        *refusal_lines(pen["online_refused"]),
    ]
    return [*lines, ""]
