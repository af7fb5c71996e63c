"""What REPORT.md's tables share: cells (method, lambda, exclusions) and paired comparisons.

``paired`` compares two methods over the seeds both finished; the results tables and the
verdict use it alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from .. import metrics
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


def _by_seed(runs: Sequence[Run], attr: str) -> dict[int, float | None]:
    return {r.seed: getattr(r, attr) for r in runs if r.ok}


def paired(runs: Sequence[Run], reference: Sequence[Run], attr: str) -> dict[str, Any]:
    """``metrics.paired_test`` of ``attr`` (runs minus reference) over the seeds both finished."""
    a, b = _by_seed(runs, attr), _by_seed(reference, attr)
    seeds = sorted(set(a) & set(b))
    return metrics.paired_test([a[s] for s in seeds], [b[s] for s in seeds])
