"""Table cells every REPORT.md table shares: method, lambda (with its edge mark), exclusions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..config import PENALISED
from ..outcomes import Run, representation
from .format import fmt_lambda

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
