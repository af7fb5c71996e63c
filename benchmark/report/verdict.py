"""REPORT.md's first section: the verdict, generated from the records (no hand-written claims).

For every report section (sequence and network) and BatchNorm mode where ``ewc diag-exact`` ran,
each other EWC method is compared with it over the test seeds both finished (paired); where
``ewc diag-exact`` ran in variants (a setting in its label's suffix, say ``fisher_samples``),
each method with the variant whose settings its own runs share (``references``):

- Δ average accuracy and Δ forgetting (method − diagonal), mean with its 95% Student-t
  interval (``metrics.paired_test``);
- the paired t-test's p-value, Holm-adjusted over every comparison of the verdict table, one
  family per metric (``metrics.holm``): the table makes 2 x (rows) claims and controls their
  family-wise error rate at ``ALPHA``;
- the whole-run time ratio: mean wall time of the method's test runs over the diagonal's.

A difference is *detected* when its adjusted p is below ``ALPHA``; otherwise the verdict says
that no difference was detected at the number of seeds it had (which is not a proof of
equality). The sentences after the table are built from the same numbers (``sentences``).
The README's top shows this section (``sync_readme``), kept equal to the committed report by a
test and by ``make report``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metrics
from ..outcomes import (
    OPTIMIZER_JOIN,
    Run,
    bn_modes,
    method_labels,
    network_facts,
    selected,
    sequences,
)
from .cells import paired
from .format import fmt_p, fmt_signed, md_table
from .references import REFERENCE, is_reference, references, variant_fields

ALPHA = 0.05
"""Family-wise error rate of the verdict's claims (Holm-adjusted p below it: detected)."""
MIN_PAIRS = 3
"""Fewest paired seeds on which a difference may count as detected (a t-test on 2 pairs has one
degree of freedom: its p says little)."""
HEADING = "## Verdict"
README_BEGIN = "<!-- verdict:begin (generated from reports/REPORT.md by `make report`) -->"
README_END = "<!-- verdict:end -->"


@dataclass(frozen=True)
class Comparison:
    """One method against the reference in one section and BatchNorm mode.

    Attributes:
        section: the report section (sequence, and the network unless it is the tutorial's).
        bn: BatchNorm mode, '' where the network has no BatchNorm.
        label: the method's label.
        acc: ``metrics.paired_test`` of test average accuracy (method − reference).
        forgetting: the same for forgetting (lower is better).
        time_ratio: mean whole-run seconds of the method over the reference's (None: unknown).
        seeds: test seeds either side ran (the pairs are those both finished).
        at_edge: the method's or the reference's chosen lambda is an edge of its grid.
        lr_at_edge: the method's or the reference's chosen lr (where chosen) is an edge of its
            ``lr_grid``.
        acc_p: Holm-adjusted p of ``acc`` over the verdict's accuracy comparisons.
        forgetting_p: Holm-adjusted p of ``forgetting`` over its forgetting comparisons.
        reference: the label it is compared with (``references``).
    """

    section: str
    bn: str
    label: str
    acc: dict[str, Any]
    forgetting: dict[str, Any]
    time_ratio: float | None
    seeds: int = 0
    at_edge: bool = False
    lr_at_edge: bool = False
    acc_p: float | None = None
    forgetting_p: float | None = None
    reference: str = REFERENCE

    @property
    def where(self) -> str:
        """``section`` with its BatchNorm mode where the network has one."""
        return f"{self.section} (bn = {self.bn})" if self.bn else self.section

    @property
    def outcome(self) -> str:
        """``better``, ``worse`` or ``no difference detected`` (average accuracy, adjusted p)."""
        return _outcome(self.acc, self.acc_p, higher_is_better=True)

    @property
    def forgetting_outcome(self) -> str:
        """The same for forgetting (lower is better)."""
        return _outcome(self.forgetting, self.forgetting_p, higher_is_better=False)


def _outcome(test: dict[str, Any], p: float | None, higher_is_better: bool) -> str:
    """``better``/``worse`` when detected (adjusted p < ALPHA on >= MIN_PAIRS pairs)."""
    diff = test.get("mean_diff")
    if p is None or diff is None or p >= ALPHA or test.get("n", 0) < MIN_PAIRS:
        return "no difference detected"
    return "better" if (diff > 0) == higher_is_better else "worse"


def wall_seconds(runs: Sequence[Run]) -> list[float]:
    """Whole-run wall seconds of the runs that finished (and recorded them)."""
    return [r.record.total_seconds for r in runs if r.ok and r.record.total_seconds > 0]


def _seconds(runs: Sequence[Run]) -> float | None:
    values = wall_seconds(runs)
    return sum(values) / len(values) if values else None


def _is_compared(label: str, reference: str = REFERENCE) -> bool:
    """EWC methods other than the reference (baseline, l2 and joint are not structures)."""
    base = label.partition(" (")[0]
    return base.startswith(("ewc ", "ewc-online ")) and not is_reference(label, reference)


def _compare(
    seq: str, bn: str, label: str, mine: list[Run], ref: list[Run], ref_label: str
) -> Comparison:
    """One comparison against ``ref_label``'s runs ``ref`` (p-values not yet adjusted)."""
    mine_s, ref_s = _seconds(mine), _seconds(ref)
    return Comparison(
        section=seq,
        bn=bn,
        label=label,
        acc=paired(mine, ref, "test_avg"),
        forgetting=paired(mine, ref, "forgetting"),
        time_ratio=mine_s / ref_s if mine_s and ref_s else None,
        seeds=len({r.seed for r in mine} | {r.seed for r in ref}),
        at_edge=any(r.at_edge for r in mine[:1] + ref[:1]),
        lr_at_edge=any(r.lr_at_edge for r in mine[:1] + ref[:1]),
        reference=ref_label,
    )


def report_sections(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """``(section, bn, shown bn)`` of every section and mode (shown: '' without BatchNorm)."""
    out = []
    for seq in sequences(runs):
        has_bn = any(network_facts(r.record.config)[1] for r in runs if r.sequence == seq)
        out += [(seq, bn, bn if has_bn else "") for bn in bn_modes(runs, seq)]
    return out


def comparisons(
    runs: Sequence[Run], reference: str = REFERENCE, ignore: tuple[str, ...] = ()
) -> list[Comparison]:
    """Every method against its reference, in report order, with Holm-adjusted p-values.

    ``reference`` and ``ignore``: the method paired with and the suffix settings that need
    not agree (``references``).
    """
    found = []
    for seq, bn, shown in report_sections(runs):
        refs = references(runs, seq, bn, reference, ignore)
        labels = [lab for lab in method_labels(runs, seq, bn) if _is_compared(lab, reference)]
        for label in labels:
            ref_label = refs[label]
            ref = selected(runs, seq, bn, ref_label) if ref_label else []
            mine = selected(runs, seq, bn, label)
            if any(r.ok for r in ref) and any(r.ok for r in mine):
                found.append(_compare(seq, shown, label, mine, ref, str(ref_label)))
    acc_p = metrics.holm([c.acc["t_pvalue"] for c in found])
    forg_p = metrics.holm([c.forgetting["t_pvalue"] for c in found])
    return [
        Comparison(**{**c.__dict__, "acc_p": a, "forgetting_p": f})
        for c, a, f in zip(found, acc_p, forg_p, strict=True)
    ]


def interval(test: dict[str, Any], digits: int = 3) -> str:
    """``+0.043 [+0.031, +0.055]``: a mean paired difference and its 95% interval."""
    if test.get("mean_diff") is None:
        return "—"
    text = fmt_signed(test["mean_diff"], digits)
    if test.get("ci_low") is not None:
        text += f" [{fmt_signed(test['ci_low'], digits)}, {fmt_signed(test['ci_high'], digits)}]"
    return text


def not_compared(runs: Sequence[Run]) -> list[str]:
    """``method on section (why)`` for every EWC method the verdict could not compare."""
    out = []
    for seq, bn, shown in report_sections(runs):
        where = f"{seq} (bn = {shown})" if shown else seq
        refs = references(runs, seq, bn)
        for label in filter(_is_compared, method_labels(runs, seq, bn)):
            mine, ref = selected(runs, seq, bn, label), refs[label]
            if ref is None:
                out.append(f"{label} on {where} (no {REFERENCE} variant with its settings ran)")
            elif not any(r.ok for r in selected(runs, seq, bn, ref)):
                out.append(f"{label} on {where} (no finished {ref} test run)")
            elif not mine:
                out.append(f"{label} on {where} (no chosen lambda)")
            elif not any(r.ok for r in mine):
                out.append(f"{label} on {where} (every test run diverged or failed)")
    return out


def _variants(comps: Sequence[Comparison]) -> list[str]:
    """The settings the comparisons' references name in their suffixes (``[]``: plain)."""
    return variant_fields(c.reference for c in comps)


def table(comps: Sequence[Comparison]) -> str:
    """The verdict table: one row per comparison (a ``reference`` column where they differ)."""
    m = len([c for c in comps if c.acc.get("t_pvalue") is not None])
    shown = bool(_variants(comps))
    header = [
        "sequence",
        "method",
        *(["reference"] if shown else []),
        "pairs",
        "Δ avg accuracy [95% CI]",
        f"p (Holm, m = {m})",
        "Δ forgetting [95% CI]",
        f"p (Holm, m = {m})",
        "run time ×",
    ]
    rows = [
        [
            c.where,
            c.label + edge_mark(c),
            *([c.reference] if shown else []),
            f"{c.acc['n']} of {c.seeds}",
            interval(c.acc),
            fmt_p(c.acc_p),
            interval(c.forgetting),
            fmt_p(c.forgetting_p),
            "—" if c.time_ratio is None else f"{c.time_ratio:.2f}",
        ]
        for c in comps
    ]
    return md_table(header, rows, ("lll" if shown else "ll") + "rrrrrr")


def _edges(c: Comparison) -> str:
    """``λ``, ``lr`` or ``λ and lr``: which choices of the pair sit at an edge ('' none)."""
    return " and ".join(name for name, flag in (("λ", c.at_edge), ("lr", c.lr_at_edge)) if flag)


def edge_mark(c: Comparison) -> str:
    """`` (λ at edge)``, `` (lr at edge)`` or both: the choice may lie beyond its grid."""
    return f" ({_edges(c)} at edge)" if _edges(c) else ""


def listing(comps: Sequence[Comparison], attr: str = "acc") -> str:
    """``label on where (interval)`` per comparison, with the grid-edge caveat where it applies."""

    def edge(c: Comparison) -> str:
        which = _edges(c)
        return f" ({which} at a grid edge: the difference may be the grid's)" if which else ""

    return "; ".join(
        f"{c.label} on {c.where} ({interval(getattr(c, attr))}){edge(c)}" for c in comps
    )


def sentences(comps: Sequence[Comparison]) -> list[str]:
    """Sentences built from the table's numbers: accuracy, forgetting, nothing detected, time."""
    if not comps:
        return []
    ref = f"its {REFERENCE} variant" if _variants(comps) else REFERENCE
    out = []
    for kind, attr, outcome, what in (
        ("Higher average accuracy", "acc", "better", "outcome"),
        ("Lower average accuracy", "acc", "worse", "outcome"),
        ("Less forgetting", "forgetting", "better", "forgetting_outcome"),
        ("More forgetting", "forgetting", "worse", "forgetting_outcome"),
    ):
        hits = [c for c in comps if getattr(c, what) == outcome]
        if hits:
            out.append(f"{kind} than {ref} (detected): {listing(hits, attr)}.")
    none = [c for c in comps if c.outcome == c.forgetting_outcome == "no difference detected"]
    if none:
        seeds = sorted({c.acc["n"] for c in none})
        n_text = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
        names = "; ".join(f"{c.label} on {c.where}" for c in none)
        out.append(
            f"No difference from {ref} detected in either average accuracy or forgetting "
            f"at {n_text} paired test seeds (which does not show equality): {names}."
        )
    ratios = [c.time_ratio for c in comps if c.time_ratio is not None]
    if ratios:
        out.append(
            f"Whole runs took {min(ratios):.2f}x to {max(ratios):.2f}x the diagonal's wall time "
            "(the last column; wall times of runs that shared the machine)."
        )
    return out


def optimizer_pairs(comps: Sequence[Comparison]) -> list[tuple[Comparison, Comparison, str]]:
    """``(under Adam, under another optimizer, its name)`` for each structure run under both.

    A section trained with another optimizer is named ``<section> with <optimizer>``
    (``outcomes.section_of``); its rows pair with the same label and mode in ``<section>``.
    """
    by_place = {(c.section, c.bn, c.label): c for c in comps}
    pairs = []
    for c in comps:
        base, sep, optimizer = c.section.rpartition(OPTIMIZER_JOIN)
        adam = by_place.get((base, c.bn, c.label)) if sep else None
        if adam is not None:
            pairs.append((adam, c, optimizer))
    return pairs


def _seed_diffs(runs: Sequence[Run], c: Comparison, attr: str) -> dict[int, float]:
    """Per test seed: the method's ``attr`` minus its reference's (seeds both finished)."""

    def values(label: str) -> dict[int, float]:
        chosen = selected(runs, c.section, c.bn or None, label)
        return {r.seed: v for r in chosen if r.ok and (v := getattr(r, attr)) is not None}

    mine, ref = values(c.label), values(c.reference)
    return {seed: mine[seed] - ref[seed] for seed in sorted(mine.keys() & ref.keys())}


def interaction(runs: Sequence[Run], adam: Comparison, other: Comparison) -> dict[str, Any]:
    """``metrics.paired_test`` of (Δ under the other optimizer) − (Δ under Adam), seed by seed.

    Each Δ is the method's test average accuracy minus the diagonal's on the same seed; the
    two optimizers' runs share their seeds (tasks, initialisation, data order), so the
    difference of the two Δs pairs too.
    """
    a, b = _seed_diffs(runs, other, "test_avg"), _seed_diffs(runs, adam, "test_avg")
    seeds = sorted(a.keys() & b.keys())
    return metrics.paired_test([a[k] for k in seeds], [b[k] for k in seeds])


def optimizer_sentences(comps: Sequence[Comparison], runs: Sequence[Run] = ()) -> list[str]:
    """Whether each structure's difference from the diagonal holds without Adam's normalisation.

    Per structure run under both: its Δ average accuracy and Δ forgetting against the diagonal
    under each optimizer (the verdict's Holm-adjusted outcomes), and, from ``runs``, the
    difference of the two Δs paired over the seeds with its unadjusted 95% interval.
    """
    out = []
    for adam, other, name in optimizer_pairs(comps):
        same = adam.outcome == other.outcome
        verdict = (
            f"the same outcome in average accuracy ({adam.outcome}) under both"
            if same
            else f"{adam.outcome} under Adam, {other.outcome} under {name}"
        )
        change = ""
        if runs and (test := interaction(runs, adam, other)).get("mean_diff") is not None:
            change = (
                f"; the change of Δ from Adam to {name}, paired over {test['n']} seeds: "
                f"{interval(test)} (unadjusted 95% interval)"
            )
        out.append(
            f"Optimizer control, {adam.label} against the diagonal on {adam.where}: Δ average "
            f"accuracy {interval(adam.acc)} under Adam, {interval(other.acc)} under {name}"
            f"{edge_mark(other)}; Δ forgetting {interval(adam.forgetting)} under Adam, "
            f"{interval(other.forgetting)} under {name}{change}: {verdict}."
        )
    return out


def verdict_section(runs: Sequence[Run]) -> str:
    """The section's Markdown ('' when no section has the reference)."""
    comps = comparisons(runs)
    if not comps:
        return ""
    return "\n".join(
        [
            HEADING,
            "",
            f"Each EWC method against `{REFERENCE}` on the same test seeds (paired): the mean "
            "difference with its 95% Student-t interval; p from the paired t-test, "
            f"Holm-adjusted over every row of this table (one family per metric); a difference "
            f"counts as detected when that p is below {ALPHA}. Forgetting: lower is better. Run "
            "time ×: mean whole-run wall time over the diagonal's. Lambda was chosen for each "
            "method on its own selection seeds (never test seeds); the per-sequence tables below "
            f"hold the details. A difference needs at least {MIN_PAIRS} pairs to count."
            + _variant_text(comps),
            "",
            table(comps),
            "",
            *[f"- {s}" for s in sentences(comps)],
            *[f"- {s}" for s in optimizer_sentences(comps, runs)],
            *(
                [f"- Not compared: {'; '.join(skipped)}."]
                if (skipped := not_compared(runs))
                else []
            ),
        ]
    )


def _variant_text(comps: Sequence[Comparison]) -> str:
    """The intro's sentence on variant references ('' when every row has the plain one)."""
    fields = _variants(comps)
    if not fields:
        return ""
    names = ", ".join(f"`{f}`" for f in fields)
    return (
        f" `{REFERENCE}` ran in variants that differ in {names}: each row is compared with the "
        f"variant whose {names} its own runs share (column `reference`; the sentences below "
        "call it 'its variant'); the Holm family is still the whole table."
    )


def extract(report_text: str) -> str:
    """The verdict section of a REPORT.md's text ('' when it has none)."""
    match = re.search(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", report_text, re.S | re.M)
    return match.group(0).strip() if match else ""


def readme_block(report_text: str) -> str:
    """What the README shows between its verdict markers: the report's verdict, headed."""
    body = extract(report_text).removeprefix(HEADING).strip()
    return "\n".join(
        [
            README_BEGIN,
            "",
            "What the default report in [reports/REPORT.md](reports/REPORT.md) finds:",
            "",
            body or "(the committed report has no verdict yet)",
            "",
            README_END,
        ]
    )


def sync_readme(readme: Path, report: Path) -> bool:
    """Replace the README's verdict block by the report's; True when the README changed.

    Raises:
        ValueError: the README has no (or a broken) pair of verdict markers.
    """
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(
            f"{readme} has no verdict block: add the lines {README_BEGIN!r} and "
            f"{README_END!r} where the verdict should go"
        )
    new = text[:start] + readme_block(report.read_text()) + text[end + len(README_END) :]
    if new == text:
        return False
    readme.write_text(new)
    return True
