"""The full Fisher against each structure: does the true Fisher forget less, and at what cost?

Where a report holds EWC runs with the full Fisher (``ewc full-exact``: the exact Fisher on the
same inputs as every structure, every label column, no row budget), each other EWC method is
paired with it on the same test seeds, by the rules of the verdict (``verdict.comparisons``
with ``ewc full-exact`` as the reference; its variants, e.g. other ``fisher_samples``, pair
with the structures that share their settings, ``references``):

- Δ average accuracy and Δ forgetting, *structure − full Fisher*, mean with its 95% Student-t
  interval; paired t-test p, Holm-adjusted over this table's rows, one family per metric;
- the run time ratio, structure over full Fisher (below 1: the structure is cheaper).

The sentences read the same numbers from the full Fisher's side: it "forgets less than" a
structure when that structure's Δ forgetting is detected above 0. The full Fisher's own
representation (dense P x P, or its exact factor with all N x C rows) is stated from the records
(``outcomes.representation``), so that no truncated factor passes for the full Fisher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .. import metrics
from ..outcomes import Run, method_labels, representation, selected
from .references import REFERENCE, base_label
from .verdict import (
    Comparison,
    _is_compared,
    comparisons,
    listing,
    report_sections,
    table,
)

FULL = "ewc full-exact"
"""The reference of this section: EWC with the exact, untruncated full Fisher."""
IGNORE = ("estimator_options",)
"""Settings a full-Fisher variant's suffix may name that no structure shares (its
representation, memory budget): they do not decide the pairing."""
HEADING = "## The full Fisher against each structure"
DUPLICATE_NOTE = (
    "The diagonal's row here and the full Fisher's row in the verdict compare the same pair "
    "with opposite signs, each Holm-adjusted within its own table: read each p within its table."
)


def _representations(runs: Sequence[Run]) -> str:
    """How the full Fisher's runs stored it: ``dense P x P`` or ``factor of R rows``."""
    kinds = sorted(
        {
            representation(r.record)
            for r in runs
            if r.selected and base_label(r.label) == FULL and r.ok
        }
        - {""}
    )
    return ", ".join(_words(k) for k in kinds) if kinds else "not recorded"


def _words(kind: str) -> str:
    """``full-dense`` -> the dense P x P matrix; ``full-factor 10000 rows`` -> its exact factor."""
    if kind == "full-dense":
        return "the dense P x P matrix"
    if kind.startswith("full-factor "):
        return f"its exact factor of {int(kind.split()[1]):,} rows"
    return kind


def sentences(comps: Sequence[Comparison]) -> list[str]:
    """What the numbers say, from the full Fisher's side (detected = Holm-adjusted p < 0.05)."""
    out = []
    for text, attr, what, outcome in (
        ("The full Fisher forgets less than", "forgetting", "forgetting_outcome", "worse"),
        ("The full Fisher forgets more than", "forgetting", "forgetting_outcome", "better"),
        ("Higher average accuracy than the full Fisher", "acc", "outcome", "better"),
        ("Lower average accuracy than the full Fisher", "acc", "outcome", "worse"),
    ):
        hits = [c for c in comps if getattr(c, what) == outcome]
        if hits:
            out.append(f"{text} (detected; Δ = structure − full): {listing(hits, attr)}.")
    none = [c for c in comps if c.outcome == c.forgetting_outcome == "no difference detected"]
    if none:
        names = "; ".join(f"{c.label} on {c.where}" for c in none)
        out.append(
            "No difference from the full Fisher detected in either average accuracy or "
            f"forgetting (which does not show equality): {names}."
        )
    ratios = [1 / c.time_ratio for c in comps if c.time_ratio]
    if ratios:
        out.append(
            f"A full-Fisher run took {min(ratios):.2f}x to {max(ratios):.2f}x the wall time of "
            "a structure's run (the inverse of the last column)."
        )
    return out


def fisher_inputs(runs: Sequence[Run], c: Comparison, label: str) -> set[int]:
    """The ``fisher_samples`` (inputs per task) of a label's selected runs in c's section."""
    chosen = selected(runs, c.section, c.bn or None, label)
    return {int(r.record.config.get("fisher_samples", 0)) for r in chosen}


def full_comparisons(runs: Sequence[Run]) -> list[Comparison]:
    """Each structure against the full Fisher fitted on as many inputs, Holm over the kept rows.

    A structure whose runs fitted their curvature on another number of inputs than the full
    Fisher it would pair with is left out (``not_compared``): a difference would mix structure
    with sample size.
    """
    kept = [
        c
        for c in comparisons(runs, reference=FULL, ignore=IGNORE)
        if fisher_inputs(runs, c, c.label) == fisher_inputs(runs, c, c.reference)
    ]
    acc_p = metrics.holm([c.acc["t_pvalue"] for c in kept])
    forg_p = metrics.holm([c.forgetting["t_pvalue"] for c in kept])
    return [
        replace(c, acc_p=a, forgetting_p=f) for c, a, f in zip(kept, acc_p, forg_p, strict=True)
    ]


def not_compared(runs: Sequence[Run], comps: Sequence[Comparison]) -> list[str]:
    """``label on section`` for each EWC structure left out where full-Fisher runs exist.

    Left out: no full-Fisher variant with its settings ran, or it had another number of inputs.
    """
    done = {(c.section, c.label) for c in comps}
    out = []
    for seq, bn, shown in report_sections(runs):
        labels = method_labels(runs, seq, bn)
        if not any(base_label(lab) == FULL and selected(runs, seq, bn, lab) for lab in labels):
            continue
        where = f"{seq} (bn = {shown})" if shown else seq
        out += [
            f"{lab} on {where}"
            for lab in labels
            if _is_compared(lab, FULL) and (seq, lab) not in done and selected(runs, seq, bn, lab)
        ]
    return out


def full_fisher_section(runs: Sequence[Run]) -> str:
    """The section's Markdown ('' when no full-Fisher run was selected)."""
    comps = full_comparisons(runs)
    skipped = not_compared(runs, comps)
    if not comps and not skipped:
        return ""
    return "\n".join(
        [
            HEADING,
            "",
            f"Each EWC structure against `{FULL}`, the exact Fisher of the same number of "
            "inputs with every label column of each (all N x C rows, none dropped; stored as "
            f"{_representations(runs)}), on the same test seeds (paired): Δ = structure − full "
            "Fisher, mean with its 95% Student-t interval; p from the paired t-test, "
            "Holm-adjusted over every row of this table (one family per metric); detected when "
            "below 0.05. Δ forgetting above 0: the structure forgets more than the full Fisher. "
            "Run time ×: the structure's mean whole-run wall time over the full Fisher's.",
            "",
            table(comps) if comps else "No structure could be paired with the full Fisher.",
            "",
            *[f"- {s}" for s in sentences(comps)],
            *(
                [
                    "- Not compared (no full-Fisher run with the same settings and number of "
                    f"inputs): {'; '.join(skipped)}."
                ]
                if skipped
                else []
            ),
            *([f"- {DUPLICATE_NOTE}"] if any(c.label == REFERENCE for c in comps) else []),
        ]
    )
