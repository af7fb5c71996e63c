r"""The Kronecker-ablation finding's caveats and diagnostics (``ablation``), generated from numbers.

- Spread: per method, over its finished selected test runs, the sample sd (n - 1) and the range
  of test average accuracy, and Sarle's bimodality coefficient b
  (``metrics.bimodality_coefficient``); b above 5/9 (``metrics.UNIFORM_BIMODALITY``, the
  uniform distribution's value) is flagged "possibly bimodal".
- Thread count: each measured thread-count check (``benchmark.threads.compare``, in the report
  meta's ``thread_checks``) as one sentence.
- Diagnostics, where runs carry them: per method the means over its runs of
  ``report.diagnostics.run_summary``'s stability, plasticity, used / exact drift-quadratic ratio
  and old-task accuracy at the end (X) and with the output layer put back (Y), and of each run's
  mean feature drift over its hidden layers. Output-layer rule: with the shortfall
  :math:`s = (Y - X) / (1 - X)` (the share of the old tasks' distance from accuracy 1 that
  putting back only the output layer recovers), a method whose :math:`s > 1/2`
  (``OUTPUT_SHARE``) has "its forgetting mostly in the output layer"; at most 1/2, not; below
  1% in size (``NEGLIGIBLE``), the output weights the old tasks use barely changed. Ratio
  rule: for the reference (``ewc diag-exact``) and the KFAC estimator itself, "the fitted
  curvature's quadratic along the actual drift is R times the exact one" (R < 1: it charges the
  drift less than the exact Fisher does; R > 1: more).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from .. import metrics
from ..outcomes import Run
from .diagnostics import run_summary
from .format import fmt_fixed, fmt_num, md_table
from .verdict import interval

OUTPUT_SHARE = 0.5
"""Share of the old tasks' shortfall from accuracy 1 that the output layer must recover."""
NEGLIGIBLE = 0.01
"""A share of the shortfall below which putting the output layer back changes nothing."""
POSSIBLY_BIMODAL = "possibly bimodal"


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def spread(runs: Sequence[Run]) -> dict[str, Any]:
    """n, sd, min, max and bimodality coefficient b of the runs' test average accuracy."""
    xs = [r.test_avg for r in runs if r.ok and r.test_avg is not None]
    return {
        "n": len(xs),
        "sd": statistics.stdev(xs) if len(xs) >= 2 else None,
        "low": min(xs, default=None),
        "high": max(xs, default=None),
        "b": metrics.bimodality_coefficient(xs),
    }


def _flagged(b: float | None) -> bool:
    return b is not None and b > metrics.UNIFORM_BIMODALITY


def caveat_parts(by_label: dict[str, list[Run]]) -> list[str]:
    """The spread table and its sentences (module docstring)."""
    found = {label: spread(runs) for label, runs in by_label.items()}
    found = {label: s for label, s in found.items() if s["n"]}
    if not found:
        return []
    rows = [
        [label, str(s["n"]), fmt_fixed(s["sd"]), f"{fmt_fixed(s['low'])} – {fmt_fixed(s['high'])}",
         fmt_fixed(s["b"], 3), POSSIBLY_BIMODAL if _flagged(s["b"]) else ""]
        for label, s in found.items()
    ]  # fmt: skip
    header = ["method", "seeds", "sd", "range", "bimodality b", ""]
    sds = {label: s["sd"] for label, s in found.items() if s["sd"] is not None}
    lines = []
    if sds:
        lo, hi = min(sds, key=sds.__getitem__), max(sds, key=sds.__getitem__)
        lines.append(
            f"Per-seed sd of test average accuracy runs from {fmt_fixed(sds[lo])} ({lo}) to "
            f"{fmt_fixed(sds[hi])} ({hi})."
        )
    flagged = [(label, s["b"]) for label, s in found.items() if _flagged(s["b"])]
    if flagged:
        names = "; ".join(f"{label} (b = {fmt_fixed(b, 3)})" for label, b in flagged)
        lines.append(
            f"Possibly bimodal (b above 5/9, the uniform distribution's value): {names}: their "
            "per-seed accuracies may fall into two groups, which a mean and a t-interval "
            "summarise poorly."
        )
    else:
        lines.append("No method's per-seed accuracies have b above 5/9 (the uniform's value).")
    return [
        "",
        "Caveats: spread of test average accuracy over the test seeds (sample sd, range) and "
        "Sarle's bimodality coefficient b = (g² + 1) / (k + 3(n−1)² / ((n−2)(n−3))) (g, k: "
        "bias-corrected skewness and excess kurtosis; above 5/9: possibly bimodal).",
        "",
        md_table(header, rows, "lrrrrl"),
        "",
        *[f"- {s}" for s in lines],
    ]


def thread_sentences(checks: Sequence[dict[str, Any]]) -> list[str]:
    """Each measured thread-count check with finished pairs, as one sentence."""
    out = []
    for check in checks:
        if not check.get("n"):
            continue
        where = f"{check['section']} (bn = {check['bn']})" if check.get("bn") else check["section"]
        before = "/".join(map(str, check.get("threads_before") or ["?"]))
        out.append(
            f"Thread count, measured: the {check['n']} test runs of {where}, {check['method']}, "
            f"rerun with {check['threads_after']} torch threads instead of {before}: "
            f"{check['identical']} of {check['n']} bitwise identical; per seed, test average "
            f"accuracy moved by {fmt_fixed(check['median_abs_diff'])} (median) and at most "
            f"{fmt_fixed(check['max_abs_diff'])}, the group's mean by "
            f"{interval(check.get('paired') or {})} (paired): in that group, per-seed "
            f"differences up to {fmt_fixed(check['max_abs_diff'])} came from the thread count "
            "alone."
        )
    return out


def diagnostic_means(runs: Sequence[Run]) -> dict[str, Any] | None:
    """Means over the runs with diagnostics (module docstring); None without any."""
    summaries = [run_summary(r.record.diagnostics) for r in runs if r.ok and r.record.diagnostics]
    if not summaries:
        return None
    keys = ("stability", "plasticity", "ratio", "end", "swapped")
    out: dict[str, Any] = {k: _mean(s[k] for s in summaries) for k in keys}
    out["drift"] = _mean(_mean(s["drift"].values()) for s in summaries)
    out["n"] = len(summaries)
    end, swapped = out["end"], out["swapped"]
    ok = end is not None and swapped is not None and end < 1
    out["recovered"] = (swapped - end) / (1 - end) if ok else None
    return out


def _output_sentences(found: dict[str, dict[str, Any]]) -> list[str]:
    """The output-layer rule (module docstring), one sentence per side that has methods."""

    def text(label: str, d: dict[str, Any]) -> str:
        return (
            f"{label} (from {fmt_fixed(d['end'])} to {fmt_fixed(d['swapped'])}, "
            f"{fmt_fixed(d['recovered'], 2)} of the shortfall)"
        )

    rated = {label: d for label, d in found.items() if d["recovered"] is not None}
    mostly = [text(k, d) for k, d in rated.items() if d["recovered"] > OUTPUT_SHARE]
    none = [k for k, d in rated.items() if abs(d["recovered"]) < NEGLIGIBLE]
    not_mostly = [
        text(k, d) for k, d in rated.items() if d["recovered"] <= OUTPUT_SHARE and k not in none
    ]
    out = []
    if none:
        out.append(
            "Putting only the output layer back moves the old tasks' accuracy by less than "
            f"{NEGLIGIBLE:.0%} of their shortfall under {'; '.join(none)}: the output weights the "
            "old tasks use barely changed (each task may have its own head), so the forgetting "
            "sits in the hidden layers."
        )
    if mostly:
        out.append(
            "The old tasks' accuracy rises by more than half of its shortfall from 1 when only "
            f"the output layer is put back under {'; '.join(mostly)}: their forgetting sits "
            "mostly in the output layer."
        )
    if not_mostly:
        out.append(
            "Putting only the output layer back recovers at most half of that shortfall under "
            f"{'; '.join(not_mostly)}: by this rule their forgetting does not sit mostly in the "
            "output layer."
        )
    return out


def _ratio_sentence(found: dict[str, dict[str, Any]], labels: Sequence[str | None]) -> list[str]:
    """The ratio rule for the reference and the KFAC estimator (module docstring)."""
    parts = [
        f"{fmt_num(found[label]['ratio'])} times the exact one under {label} ("
        f"{'less' if found[label]['ratio'] < 1 else 'more'} than the exact Fisher charges)"
        for label in labels
        if label in found and found[label]["ratio"] is not None
    ]
    if not parts:
        return []
    return [f"The fitted curvature's quadratic along the actual drift is {'; '.join(parts)}."]


def diagnostics_parts(
    by_label: dict[str, list[Run]], reference: str, base: str | None
) -> list[str]:
    """The diagnostics table and its sentences ([] when no run carries diagnostics)."""
    found = {label: d for label, runs in by_label.items() if (d := diagnostic_means(runs))}
    if not found:
        return []
    header = ["method", "seeds", "stability", "plasticity", "used / exact", "feature drift"]
    header += ["old acc, end", "old acc, output put back", "shortfall recovered"]
    rows = [
        [label, str(d["n"]), fmt_fixed(d["stability"]), fmt_fixed(d["plasticity"]),
         fmt_num(d["ratio"]), fmt_fixed(d["drift"], 3), fmt_fixed(d["end"]),
         fmt_fixed(d["swapped"]), fmt_fixed(d["recovered"], 2)]
        for label, d in found.items()
    ]  # fmt: skip
    lines = _output_sentences(found) + _ratio_sentence(found, [reference, base])
    return [
        "",
        "Diagnostics (means over the test seeds; see the results section's diagnostics for "
        "the definitions): feature drift is each run's mean over its hidden layers; shortfall "
        "recovered = (output put back − end) / (1 − end).",
        "",
        md_table(header, rows, "l" + "r" * (len(header) - 1)),
        "",
        *[f"- {s}" for s in lines],
    ]
