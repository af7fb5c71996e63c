"""The true full Fisher's answer in REPORT.md, read from the experiments that train with it.

EWC with the untruncated full Fisher costs 10-150x a structure's run, so the default protocol
(``make reproduce``, under 90 minutes on 2 cores) cannot hold it with nested selection and 10-20
test seeds. Two companion experiments do: ``full-fisher`` (MNIST -> FashionMNIST and permuted
MNIST, the dense P x P matrix) and ``ablation`` (split MNIST, task- and class-incremental, the
exact factor with every row). REPORT.md's verdict ends with their answer, so that it states, per
sequence:

- whether the full Fisher forgets less than the diagonal, KFAC and EKFAC: Δ forgetting and
  Δ average accuracy, *structure − full Fisher*, paired over test seeds, mean with its 95%
  Student-t interval and the Holm-adjusted p of the companion's own table
  (``full_fisher.full_comparisons``: the same numbers as the companion's report);
- what a full-Fisher run costs, as a multiple of the structure's whole-run wall time;
- the sequences of this report that no companion ran with the full Fisher.

Only the structures fitted on the full Fisher's own number of inputs are shown (the row
budget's smaller N stay in the companion's report). A companion whose records are absent is
named with the command that makes them. The text depends on the runs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from estimators.curvature import DEFAULT_MEMORY_BUDGET

from ..outcomes import FLOAT32_BYTES, Run, network_facts, selected
from .format import fmt_bytes, fmt_p
from .full_fisher import FULL, fisher_inputs, full_comparisons
from .verdict import Comparison, interval, report_sections, wall_seconds

STRUCTURES = ("ewc diag-exact", "ewc kfac-exact", "ewc ekfac-exact")
"""The structures whose answer the verdict states (each companion's report has the rest)."""
NAMES = {"ewc diag-exact": "the diagonal", "ewc kfac-exact": "KFAC", "ewc ekfac-exact": "EKFAC"}
HEADING = "### The true full Fisher against the diagonal, KFAC and EKFAC"


@dataclass(frozen=True)
class Companion:
    """A companion experiment's runs (``None``: no records here) and how to make them."""

    name: str
    runs: Sequence[Run] | None


def _base(label: str) -> str:
    return label.partition(" (")[0]


def main_rows(runs: Sequence[Run], comps: Sequence[Comparison]) -> list[Comparison]:
    """The structures of ``STRUCTURES`` fitted on their section's largest number of inputs."""
    rows = [c for c in comps if _base(c.label) in STRUCTURES]
    inputs = {id(c): max(fisher_inputs(runs, c, c.label), default=0) for c in rows}
    top: dict[str, int] = {}
    for c in rows:
        top[c.where] = max(top.get(c.where, 0), inputs[id(c)])
    return [c for c in rows if inputs[id(c)] == top[c.where]]


def _verb(c: Comparison) -> str:
    """The full Fisher's side of a structure's Δ (structure − full), forgetting then accuracy."""
    forgets = {
        "worse": "forgets less than",
        "better": "forgets more than",
    }.get(c.forgetting_outcome, "shows no detected difference in forgetting from")
    accuracy = {
        "worse": " and reaches higher average accuracy (detected)",
        "better": " and reaches lower average accuracy (detected)",
    }.get(c.outcome, "")
    return f"{forgets} {NAMES[_base(c.label)]}{accuracy}"


def _clause(c: Comparison) -> str:
    cost = f"; a full-Fisher run cost {1 / c.time_ratio:.0f}x its wall time" if c.time_ratio else ""
    edge = "; λ at a grid edge: the difference may be the grid's" if c.at_edge else ""
    return (
        f"{_verb(c)} (Δ forgetting {interval(c.forgetting)}, p {fmt_p(c.forgetting_p)}; "
        f"Δ average accuracy {interval(c.acc)}, p {fmt_p(c.acc_p)}{cost}{edge})"
    )


def _run_time(runs: Sequence[Run], c: Comparison) -> str:
    """`` (a run: X min, ...)``: the full Fisher's mean whole-run wall time on its test runs."""
    mine = wall_seconds(selected(runs, c.section, c.bn or None, c.reference))
    if not mine:
        return ""
    return f" (a run: {sum(mine) / len(mine) / 60:.1f} min, mean over its {len(mine)} test runs)"


def _too_big(runs: Sequence[Run], seq: str) -> str:
    """`` (P = ...: a dense Fisher needs ... GiB)`` where that is over the default memory budget.

    Why a section has no full-Fisher line: its network's dense P x P float32 matrix
    (:math:`4 P^2` bytes) would not fit ``DEFAULT_MEMORY_BUDGET`` (its rank-200 low-rank +
    diagonal rows stand in). Nothing where it would fit or the section mixes networks.
    """
    sizes = {network_facts(r.record.config)[0] for r in runs if r.sequence == seq}
    if len(sizes) != 1:
        return ""
    p = sizes.pop()
    need = FLOAT32_BYTES * p * p
    if need <= DEFAULT_MEMORY_BUDGET:
        return ""
    return f" (P = {p:,}: its dense Fisher would need {fmt_bytes(need)})"


def _lines(companion: Companion) -> list[str]:
    """One line per sequence the companion ran with the full Fisher."""
    if companion.runs is None:
        return [f"- `{companion.name}`: no records here (`make {companion.name}` makes them)."]
    rows = main_rows(companion.runs, full_comparisons(companion.runs))
    if not rows:
        return [f"- `{companion.name}`: no full-Fisher run paired with these structures."]
    out = []
    for where in dict.fromkeys(c.where for c in rows):
        mine = sorted(
            (c for c in rows if c.where == where), key=lambda c: STRUCTURES.index(_base(c.label))
        )
        pairs = sorted({c.acc.get("n", 0) for c in mine})
        out.append(
            f"- {where} (`make {companion.name}`, {'-'.join(map(str, pairs))} paired test "
            f"seeds, `reports/{companion.name}/REPORT.md`): the full Fisher"
            f"{_run_time(companion.runs, mine[0])} " + "; ".join(_clause(c) for c in mine) + "."
        )
    return out


def companion_section(runs: Sequence[Run], companions: Sequence[Companion]) -> str:
    """The verdict's closing subsection ('' when no companion is given)."""
    if not companions:
        return ""
    covered = {
        c.where
        for comp in companions
        if comp.runs is not None
        for c in main_rows(comp.runs, full_comparisons(comp.runs))
    }
    own = [
        (f"{seq} (bn = {shown})" if shown else seq, seq) for seq, _, shown in report_sections(runs)
    ]
    missing = [where + _too_big(runs, seq) for where, seq in own if where not in covered]
    return "\n".join(
        [
            HEADING,
            "",
            f"EWC with `{FULL}`, the untruncated exact Fisher (every input's every label "
            "column), costs too much for this protocol's nested selection and seeds; the "
            "companion experiments below train with it on this report's network. Δ = structure "
            "− full Fisher, paired over test seeds, mean with its 95% Student-t interval; p "
            "Holm-adjusted within the companion's own table (its report has every row).",
            "",
            *[line for comp in companions for line in _lines(comp)],
            *(["- Not run with the full Fisher: " + "; ".join(missing) + "."] if missing else []),
        ]
    )
