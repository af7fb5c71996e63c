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

from ..outcomes import Run, representation
from .references import base_label
from .verdict import Comparison, comparisons, interval, table

FULL = "ewc full-exact"
"""The reference of this section: EWC with the exact, untruncated full Fisher."""
HEADING = "## The full Fisher against each structure"


def _listing(comps: Sequence[Comparison], attr: str) -> str:
    return "; ".join(f"{c.label} on {c.where} ({interval(getattr(c, attr))})" for c in comps)


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
            out.append(f"{text} (detected; Δ = structure − full): {_listing(hits, attr)}.")
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


def full_fisher_section(runs: Sequence[Run]) -> str:
    """The section's Markdown ('' when no full-Fisher run was selected)."""
    comps = comparisons(runs, reference=FULL)
    if not comps:
        return ""
    return "\n".join(
        [
            HEADING,
            "",
            f"Each EWC structure against `{FULL}`, the exact Fisher on the same inputs with "
            "every label column (no row budget; stored as "
            f"{_representations(runs)}), on the same test seeds (paired): Δ = structure − full "
            "Fisher, mean with its 95% Student-t interval; p from the paired t-test, "
            "Holm-adjusted over every row of this table (one family per metric); detected when "
            "below 0.05. Δ forgetting above 0: the structure forgets more than the full Fisher. "
            "Run time ×: the structure's mean whole-run wall time over the full Fisher's.",
            "",
            table(comps),
            "",
            *[f"- {s}" for s in sentences(comps)],
        ]
    )
