r"""REPORT.md's diagnostics tables: why methods kept or forgot old tasks (run diagnostics).

For each report section (sequence, bn mode) whose selected test runs carry diagnostics (the run
setting ``diagnostics``), one table with a row per method label. Per run, over its old tasks t
(all but the last), with :math:`d_t = \theta_{end} - \theta^*_t`:

- stability: mean final test accuracy of the old tasks; plasticity: the last task's;
- exact :math:`d^\top F d`: mean over t of :math:`d_t^\top F_t d_t` (all Linear / Conv layers
  together, the true Fisher of task t at its anchor, on a fixed subset of its test inputs);
- used / exact: the mean over t of :math:`d_t^\top \hat F_t d_t` (the curvature the run fitted
  after task t) over the mean over t of the exact one (ewc runs only);
- feature drift per hidden layer: mean over t of the relative drift of its features;
- old accuracy, end / output put back: mean over t of task t's accuracy on that subset, of the
  final network and of the final network with task t's output layer put back to its anchor.

Each cell is the mean of those per-run numbers over the runs (test seeds) that finished and
carry diagnostics; ``—`` where no run has the number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..outcomes import Run, method_labels, selected
from .format import fmt_fixed, fmt_num, md_table

TOTAL = "total"
TEXT = (
    "Diagnostics after the last task (`diagnostics = true`), per method, mean over its test "
    "seeds; per run, means over the old tasks t of: the exact Fisher quadratic "
    "d^T F_t d of the drift d = θ_end − θ*_t (F_t: the true Fisher of task t at its anchor "
    "θ*_t, on up to 1,000 of its test inputs; all layers together), the fitted curvature's "
    "quadratic over it (used / exact; ewc only), each hidden layer's relative feature drift "
    "‖H(θ_end) − H(θ*_t)‖ / ‖H(θ*_t)‖, and task t's accuracy on those inputs with the final "
    "network and with its output layer put back to θ*_t. Stability: mean final test accuracy "
    "of the old tasks; plasticity: the last task's."
)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def run_summary(diagnostics: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers for the table, from its record's ``diagnostics`` (module docstring)."""
    tasks = list(diagnostics.get("tasks", {}).values())
    quad = [t["drift_quadratic"] for t in tasks]
    exact = _mean(q["exact"][TOTAL] for q in quad)
    used = (
        _mean(q["used"][TOTAL] for q in quad) if quad and all("used" in q for q in quad) else None
    )
    hidden = diagnostics.get("hidden", [])
    swapped = [t["swapped_output_accuracy"] for t in tasks]
    return {
        "stability": diagnostics.get("stability"),
        "plasticity": diagnostics.get("plasticity"),
        "exact": exact,
        "ratio": used / exact if used is not None and exact else None,
        "drift": {h: _mean(t["feature_drift"].get(h) for t in tasks) for h in hidden},
        "end": _mean(s["end"] for s in swapped),
        "swapped": _mean(s["swapped"] for s in swapped),
    }


def _with_diagnostics(runs: Iterable[Run]) -> list[Run]:
    return [r for r in runs if r.ok and r.record.diagnostics]


def diagnostics_table(runs: Sequence[Run], sequence: str, bn: str) -> str:
    """The table of one section (``""`` when no selected run of it carries diagnostics)."""
    rows_of = {
        label: [run_summary(r.record.diagnostics) for r in _with_diagnostics(chosen)]
        for label in method_labels(runs, sequence, bn)
        if (chosen := selected(runs, sequence, bn, label))
    }
    rows_of = {label: s for label, s in rows_of.items() if s}
    if not rows_of:
        return ""
    hidden = list(dict.fromkeys(h for s in rows_of.values() for one in s for h in one["drift"]))
    header = [
        "method",
        "seeds",
        "stability",
        "plasticity",
        "exact dᵀFd",
        "used / exact",
        *(f"feature drift {h}" for h in hidden),
        "old acc, end",
        "old acc, output put back",
    ]
    rows = []
    for label, summaries in rows_of.items():
        mean = {k: _mean(s[k] for s in summaries) for k in summaries[0] if k != "drift"}
        drift = [_mean(s["drift"].get(h) for s in summaries) for h in hidden]
        rows.append(
            [
                label,
                str(len(summaries)),
                fmt_fixed(mean["stability"]),
                fmt_fixed(mean["plasticity"]),
                fmt_num(mean["exact"]),
                fmt_num(mean["ratio"]),
                *(fmt_fixed(d, 3) for d in drift),
                fmt_fixed(mean["end"]),
                fmt_fixed(mean["swapped"]),
            ]
        )
    return md_table(header, rows, "l" + "r" * (len(header) - 1))


def diagnostics_parts(runs: Sequence[Run], sequence: str, bn: str) -> list[str]:
    """Lines to append after a section's results table: its diagnostics, or nothing."""
    table = diagnostics_table(runs, sequence, bn)
    return ["", TEXT, "", table] if table else []
