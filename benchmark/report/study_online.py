"""STUDY.md's part F: each online KFAC rule's distance from the exact online sum (its rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .format import fmt_num, md_table


def _errors(rows: Sequence[dict[str, Any]], decay: float) -> dict[int, dict[str, float]]:
    """``tasks -> rule -> error`` of part F's rows at ``decay``."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get("part") == "F" and r.get("decay") == decay:
            out.setdefault(int(r["tasks"]), {})[r["rule"]] = float(r["rel_frobenius"])
    return out


def online_section(study: dict[str, Any]) -> str:
    """The table per decay: tasks T by rule, relative Frobenius error to the exact sum."""
    facts = study.get("online_rules")
    if not facts:
        return ""
    rules = facts["rules"]
    lines = [
        "## F. Online KFAC: each rule against the exact online sum",
        "",
        f"The main comparison's network trained with no penalty on {facts['sequence']} "
        f"({facts['tasks']} tasks, seed {facts['seed']}, {facts['epochs']} epoch(s) per task); "
        f"`kfac-exact` fitted after each task on the {facts['n']:,} inputs an EWC run of that "
        "seed uses. Each `online_rule` combines the first T tasks' fits as online EWC does "
        "(`benchmark/study/online_part.py`); the cells are its relative Frobenius error "
        "‖S_T − F_rule‖_F / ‖S_T‖_F to the exact sum S_T = Σ_t γ^(T−t) G_t ⊗ A_t over all "
        "Kronecker blocks (`sum` keeps every term: rounding only). The fits come from weights "
        "trained without a penalty; under EWC the weights stay closer to the old tasks', so "
        "their factors may differ less (not measured here).",
    ]
    for decay in facts["decays"]:
        table = _errors(study["rows"], decay)
        body = [[str(t), *(fmt_num(table[t].get(rule)) for rule in rules)] for t in sorted(table)]
        lines += [
            "",
            f"Decay γ = {decay:g}:",
            "",
            md_table(["tasks T", *rules], body, "r" * (1 + len(rules))),
        ]
    return "\n".join(lines)


def online_findings(study: dict[str, Any]) -> list[str]:
    """One sentence: the rules' errors after the most tasks at decay 1, best first."""
    facts = study.get("online_rules")
    if not facts:
        return []
    table = _errors(study["rows"], 1.0)
    if not table:
        return []
    last = max(table)
    approx = sorted(
        ((e, rule) for rule, e in table[last].items() if rule != "sum"), key=lambda p: p[0]
    )
    listed = ", ".join(f"`{rule}` {fmt_num(e)}" for e, rule in approx)
    return [
        f"- Online KFAC (part F): after {last} tasks of {facts['sequence']} at decay 1, the "
        f"single Kronecker product each rule keeps is this far from the exact sum of the tasks' "
        f"Kronecker blocks (relative Frobenius error): {listed}; `sum` keeps every task's "
        "term (exact, memory growing with the tasks)."
    ]
