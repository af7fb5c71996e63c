r"""REPORT.md's Kronecker-ablation finding: which part of KFAC's structure carries its effect.

Generated from the records (no hand-written claims), right after the verdict, for every report
section (sequence, BatchNorm mode) that holds at least two KFAC *structures* the verdict
compares, one of them an ablation *variant*. A structure is an ``ewc`` run (separate mode) of a
``kfac-*`` estimator; a variant is one whose option ``factors`` is not ``full`` or whose
``layers`` is not ``all`` (``estimators.kfac``). Without such a section the finding is empty and
the report unchanged.

What a structure keeps (``Structure.keeps``) is read off the estimator itself: a symmetric probe
pair (A, G) goes through ``estimators.kfac.variant_factors`` and each returned factor is named
``G`` / ``A`` (kept), ``diag G`` / ``diag A`` (its diagonal) or ``I`` (the identity); the block
is :math:`G' \otimes A'` (a diagonal when neither factor is kept full), on every layer, or on the
hidden layers or the output layer only (the exact diagonal elsewhere) per ``layers``.

Per section, a table: per structure, what it keeps, whether A and G are kept full, and its
comparison with ``ewc diag-exact`` from ``verdict.comparisons`` (the same numbers and Holm
family as the verdict). Where the section holds ``ewc full-exact`` runs (any options), two more
column pairs per such control R: the paired Δ average accuracy and Δ forgetting (structure − R)
over the seeds both finished, each with its 95% interval and its p, Holm-adjusted over every row
of that column in the whole finding (one family per R and metric).

*Better* is the verdict's: Holm-adjusted p below ``verdict.ALPHA`` on at least
``verdict.MIN_PAIRS`` pairs, higher average accuracy or lower forgetting. Rules, per metric
(average accuracy, forgetting) and per *family* (one KFAC estimator with at least one variant):

1. Factors, among the family's structures with blocks on every layer. A-full: A kept full (the
   estimator itself, ``g-diag``, ``a-only``); A-reduced: diag A (``a-diag``, ``diag``). G-full:
   G kept full (the estimator, ``a-diag``); G-reduced: diag G or I (``g-diag``, ``diag``,
   ``a-only``). A factor is *singled out* when both its groups are non-empty, every full one is
   better and no reduced one is. "The input factor A carries the effect" only when A is singled
   out and G is not; the same for G; otherwise "the numbers single out neither factor" (both at
   once: the structures that ran confound the two factors).
2. Layers, when the family has both ``layers=hidden`` and ``layers=output`` with full factors:
   "the effect sits in the hidden layers' blocks" when only the hidden one is better, "in the
   output layer's block" when only the output one is; otherwise in neither alone.
3. Exact Fisher: the family's own estimator (full factors, every layer) − each control R, Δ
   average accuracy and Δ forgetting with interval and p (the column's Holm): better, worse, or
   no difference detected, by the same rule. Without a control: "no exact-Fisher control ran"
   there (and, when the report's protocol notes mention ``full-exact``, that those notes say
   where it runs).

Caveats (``ablation_notes``): the per-seed spread of each method's test average accuracy (sd,
range) with Sarle's bimodality coefficient (``metrics.bimodality_coefficient``, flagged above
5/9), the measured thread-count sensitivity (``meta["thread_checks"]``), and, where runs carry
diagnostics, their summary with the output-layer and drift-quadratic rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from estimators.kfac import variant_factors

from .. import metrics
from ..outcomes import Run, selected
from .ablation_notes import caveat_parts, diagnostics_parts, thread_sentences
from .cells import paired
from .format import fmt_p, md_table
from .verdict import ALPHA, MIN_PAIRS, REFERENCE, Comparison, comparisons, interval, report_sections

HEADING = "## Finding: the Kronecker ablation"
KFAC_PREFIX = "kfac-"
EXACT_FISHER = "full-exact"
EXACT_METRICS = ("test_avg", "forgetting")
"""What each structure is compared in against an exact-Fisher control (one Holm family each)."""
ALL_LAYERS = ("all",)
LAYER_TEXT = {
    ("hidden",): "on the hidden layers, the exact diagonal on the output layer",
    ("output",): "on the output layer, the exact diagonal on the hidden layers",
}
"""Where the blocks are for the ``layers`` groups (module names get a generic text)."""
PROBE_A = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
PROBE_G = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
"""Factors with off-diagonal entries and a diagonal that is not the identity's."""
METRICS = (
    ("average accuracy", "acc", "outcome"),
    ("forgetting", "forgetting", "forgetting_outcome"),
)
"""(name, ``Comparison`` test attribute, ``Comparison`` outcome attribute)."""


@dataclass(frozen=True)
class Structure:
    """One KFAC structure: its label, estimator, options and the factors it keeps.

    Attributes:
        label: the method label.
        estimator: the ``kfac-*`` estimator.
        factors: the ``factors`` option (``full`` when unset).
        layers: the ``layers`` option (``("all",)`` when unset).
        g: what is left of G: ``G``, ``diag G`` or ``I`` (``changed G`` for anything else).
        a: what is left of A: ``A`` or ``diag A`` (likewise).
    """

    label: str
    estimator: str
    factors: str
    layers: tuple[str, ...]
    g: str
    a: str

    @property
    def a_full(self) -> bool:
        """Whether A is kept as a full matrix."""
        return self.a == "A"

    @property
    def g_full(self) -> bool:
        """Whether G is kept as a full matrix."""
        return self.g == "G"

    @property
    def every_layer(self) -> bool:
        """Whether every Kronecker layer has its block."""
        return self.layers == ALL_LAYERS

    @property
    def is_variant(self) -> bool:
        """Whether it removes part of the structure (factors or layers)."""
        return self.factors != "full" or not self.every_layer

    @property
    def keeps(self) -> str:
        """What the block keeps: ``G (x) diag A``, ``G (x) A on the hidden layers, ...``."""
        text = f"{self.g} (x) {self.a}"
        if not (self.a_full or self.g_full):
            text += " (a diagonal)"
        if self.every_layer:
            return text
        names = ", ".join(self.layers)
        where = LAYER_TEXT.get(self.layers, f"on layers {names}, the exact diagonal elsewhere")
        return f"{text} {where}"


def _factor_text(kept: torch.Tensor, full: torch.Tensor, name: str) -> str:
    """``name`` (unchanged), ``I``, ``diag name`` or ``changed name``."""
    if torch.equal(kept, full):
        return name
    if torch.equal(kept, torch.eye(len(full), dtype=full.dtype)):
        return "I"
    if torch.equal(kept, torch.diag(full.diagonal())):
        return f"diag {name}"
    return f"changed {name}"


def structure_of(label: str, config: dict[str, Any]) -> Structure | None:
    """The run config's KFAC structure (module docstring); None for anything but ``ewc kfac-*``."""
    estimator = str(config.get("estimator") or "")
    separate = config.get("mode", "separate") == "separate"
    if config.get("method") != "ewc" or not separate or not estimator.startswith(KFAC_PREFIX):
        return None
    options = config.get("estimator_options") or {}
    factors = str(options.get("factors") or "full")
    layers = options.get("layers") or ALL_LAYERS
    layers = (layers,) if isinstance(layers, str) else tuple(map(str, layers))
    a, g = variant_factors(PROBE_A.clone(), PROBE_G.clone(), factors)
    return Structure(
        label,
        estimator,
        factors,
        layers,
        _factor_text(g, PROBE_G, "G"),
        _factor_text(a, PROBE_A, "A"),
    )


def is_control(config: dict[str, Any]) -> bool:
    """Whether a run is an exact-Fisher control: ``ewc full-exact`` (separate), any options."""
    separate = config.get("mode", "separate") == "separate"
    return config.get("method") == "ewc" and separate and config.get("estimator") == EXACT_FISHER


Row = tuple[Structure, Comparison]
Exact = dict[str, dict[str, dict[str, tuple[dict[str, Any], float | None]]]]
"""Control label -> structure label -> (paired test structure − control, Holm-adjusted p)."""


@dataclass
class Place:
    """One report section and BatchNorm mode with KFAC variants.

    Attributes:
        section: the report section; bn: its BatchNorm mode; shown: bn as the verdict shows it.
        rows: its structures with their verdict comparisons, in report order.
        controls: its exact-Fisher control labels (a finished run each).
        exact: the structures against each control (``Exact``).
    """

    section: str
    bn: str
    shown: str
    rows: list[Row]
    controls: list[str]
    exact: Exact = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The section with its BatchNorm mode where the network has one."""
        return f"{self.section} (bn = {self.shown})" if self.shown else self.section

    def runs_of(self, runs: Sequence[Run], label: str) -> list[Run]:
        """The selected runs of ``label`` here."""
        return selected(runs, self.section, self.bn, label)


def places(runs: Sequence[Run], comps: Sequence[Comparison]) -> list[Place]:
    """Every section with at least two KFAC structures, one a variant (controls, no tests yet)."""
    out = []
    for seq, bn, shown in report_sections(runs):
        rows, controls = [], []
        for comp in (c for c in comps if c.section == seq and c.bn == shown):
            config = selected(runs, seq, bn, comp.label)[0].record.config
            if (structure := structure_of(comp.label, config)) is not None:
                rows.append((structure, comp))
            elif is_control(config):
                controls.append(comp.label)
        if len(rows) >= 2 and any(s.is_variant for s, _ in rows):
            out.append(Place(seq, bn, shown, rows, controls))
    return out


def add_exact(runs: Sequence[Run], found: Sequence[Place]) -> dict[str, int]:
    """Fill each place's ``exact``; returns each control's Holm family size (module docstring).

    ``exact[ref][label][metric] = (paired test, Holm p)`` for average accuracy and forgetting,
    one Holm family per control and metric.
    """
    tests: dict[str, list[tuple[Place, str, dict[str, Any], dict[str, Any]]]] = {}
    for place in found:
        for ref in place.controls:
            ref_runs = place.runs_of(runs, ref)
            for s, _ in place.rows:
                mine = place.runs_of(runs, s.label)
                acc, forg = (paired(mine, ref_runs, m) for m in EXACT_METRICS)
                tests.setdefault(ref, []).append((place, s.label, acc, forg))
    sizes = {}
    for ref, family in tests.items():
        acc_p = metrics.holm([f[2]["t_pvalue"] for f in family])
        forg_p = metrics.holm([f[3]["t_pvalue"] for f in family])
        sizes[ref] = sum(p is not None for p in acc_p)
        for (place, label, acc, forg), pa, pf in zip(family, acc_p, forg_p, strict=True):
            place.exact.setdefault(ref, {})[label] = {
                "test_avg": (acc, pa),
                "forgetting": (forg, pf),
            }
    return sizes


def detected(test: dict[str, Any], p: float | None) -> int:
    """+1 / -1: a detected positive / negative mean difference (the verdict's rule); else 0."""
    diff = test.get("mean_diff")
    if p is None or diff is None or p >= ALPHA or test.get("n", 0) < MIN_PAIRS:
        return 0
    return 1 if diff > 0 else -1


def table(place: Place, m: int, sizes: dict[str, int]) -> str:
    """The section's table: structures, what they keep, Δ against the diagonal and controls."""
    header = ["variant", "keeps", "A full", "G full", "Δ avg accuracy [95% CI]"]
    header += [f"p (Holm, m = {m})", "Δ forgetting [95% CI]", f"p (Holm, m = {m})"]
    for ref in place.controls:
        header += [f"Δ avg accuracy vs {ref} [95% CI]", f"p (Holm, m = {sizes[ref]})"]
        header += [f"Δ forgetting vs {ref} [95% CI]", f"p (Holm, m = {sizes[ref]})"]
    rows = []
    for s, c in place.rows:
        row = [c.label + (" (λ at edge)" if c.at_edge else ""), s.keeps]
        row += ["yes" if s.a_full else "no", "yes" if s.g_full else "no", interval(c.acc)]
        row += [fmt_p(c.acc_p), interval(c.forgetting), fmt_p(c.forgetting_p)]
        for ref in place.controls:
            for metric in EXACT_METRICS:
                test, p = place.exact[ref][s.label][metric]
                row += [interval(test), fmt_p(p)]
        rows.append(row)
    return md_table(header, rows, "llll" + "r" * (len(header) - 4))


def families(place: Place) -> list[list[Row]]:
    """The place's structures per KFAC estimator, for each estimator with a variant."""
    by: dict[str, list[Row]] = {}
    for row in place.rows:
        by.setdefault(row[0].estimator, []).append(row)
    return [rows for rows in by.values() if any(s.is_variant for s, _ in rows)]


def _named(rows: Sequence[Row], attr: str) -> str:
    """``(label Δ [CI]; ...)`` or nothing."""
    return (
        f" ({'; '.join(f'{s.label} {interval(getattr(c, attr))}' for s, c in rows)})"
        if rows
        else ""
    )


def _group_text(
    rows: Sequence[Row], keep: Callable[[Structure], bool], name: str, m: tuple[str, ...]
) -> tuple[str, bool]:
    """Counts of better structures that keep the factor full and that reduce it; singled out?"""
    _, attr, outcome = m
    full = [r for r in rows if keep(r[0])]
    reduced = [r for r in rows if not keep(r[0])]
    hit_full = [r for r in full if getattr(r[1], outcome) == "better"]
    hit_reduced = [r for r in reduced if getattr(r[1], outcome) == "better"]
    text = (
        f"{len(hit_full)} of the {len(full)} that keep {name} full{_named(hit_full, attr)} and "
        f"{len(hit_reduced)} of the {len(reduced)} that reduce it{_named(hit_reduced, attr)}"
    )
    singled = bool(full and reduced) and len(hit_full) == len(full) and not hit_reduced
    return text, singled


def factor_sentences(family: Sequence[Row]) -> list[str]:
    """Rule 1 per metric (module docstring): which factor, if either, carries the effect."""
    pool = [r for r in family if r[0].every_layer]
    if len(pool) < 2:
        return []
    out = []
    for m in METRICS:
        a_text, a_single = _group_text(pool, lambda s: s.a_full, "A", m)
        g_text, g_single = _group_text(pool, lambda s: s.g_full, "G", m)
        if a_single and not g_single:
            end = "the input factor A carries the effect"
        elif g_single and not a_single:
            end = "the output-gradient factor G carries the effect"
        else:
            end = "the numbers single out neither factor" + (
                " (the structures that ran confound the two)" if a_single else ""
            )
        out.append(
            f"{m[0].capitalize()}, by factor: detected better than {REFERENCE} are {a_text}; "
            f"{g_text}. By the factor rule, {end} in {m[0]}."
        )
    return out


def layer_sentences(family: Sequence[Row]) -> list[str]:
    """Rule 2 per metric: hidden layers' blocks or the output layer's (both variants needed)."""
    full = {s.layers: (s, c) for s, c in family if s.factors == "full"}
    if ("hidden",) not in full or ("output",) not in full:
        return []
    (hs, hc), (os_, oc) = full[("hidden",)], full[("output",)]
    out = []
    for name, attr, outcome in METRICS:
        h, o = getattr(hc, outcome) == "better", getattr(oc, outcome) == "better"
        if h != o:
            end = "the effect sits in " + (
                "the hidden layers' blocks" if h else "the output layer's block"
            )
        else:
            end = "the numbers place the effect in neither alone" + (
                " (both are better)" if h else ""
            )
        out.append(
            f"{name.capitalize()}, by layers: blocks on the hidden layers only ({hs.label} "
            f"{interval(getattr(hc, attr))}, {getattr(hc, outcome)}), on the output layer only "
            f"({os_.label} {interval(getattr(oc, attr))}, {getattr(oc, outcome)}): {end}."
        )
    return out


def _notes_mention(meta: dict[str, Any], word: str) -> bool:
    """Whether the report's protocol notes (as ``provenance`` reads them) mention ``word``."""
    notes = meta.get("protocol") or meta.get("notes") or meta.get("protocol_notes") or []
    if isinstance(notes, dict):
        notes = [f"{k} {v}" for k, v in notes.items()]
    return any(word in str(n) for n in ([notes] if isinstance(notes, str) else notes))


def _p_text(p: float | None) -> str:
    """``p = 0.012`` or ``p < 0.001``."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _judged(test: dict[str, Any], p: float | None, up: str, down: str, tail: str = "") -> str:
    """``up`` / ``down`` for a detected positive / negative difference, else none detected."""
    return {1: up, -1: down}.get(
        detected(test, p), f"no difference detected at {test['n']} pairs{tail}"
    )


def exact_sentences(place: Place, family: Sequence[Row], meta: dict[str, Any]) -> list[str]:
    """Rule 3: the family's own estimator against each exact-Fisher control."""
    if not place.controls:
        where = (
            " (the protocol notes above say where it runs)"
            if _notes_mention(meta, EXACT_FISHER)
            else ""
        )
        return [
            f"No exact-Fisher control (`ewc {EXACT_FISHER}`) ran on {place.where} in this "
            f"experiment{where}: these numbers cannot say whether KFAC beats the matrix it "
            "approximates."
        ]
    base = next((s for s, _ in family if not s.is_variant), None)
    if base is None:
        return []
    out = []
    for ref in place.controls:
        what = "the exact Fisher it approximates" if ref == f"ewc {EXACT_FISHER}" else ref
        test, p = place.exact[ref][base.label]["test_avg"]
        end = _judged(
            test,
            p,
            f"{base.label} is detected better than {what}",
            f"{what} is detected better than {base.label}",
            " (which does not show equality)",
        )
        forg, pf = place.exact[ref][base.label]["forgetting"]
        forg_end = _judged(
            forg, pf, f"{what} forgets less (detected)", f"{base.label} forgets less (detected)"
        )
        out.append(
            f"Against the exact Fisher: {base.label} − {ref} = {interval(test)} in average "
            f"accuracy, {_p_text(p)} (Holm over that column): {end}; {interval(forg)} in "
            f"forgetting, {_p_text(pf)}: {forg_end}."
        )
    return out


def place_parts(
    runs: Sequence[Run], place: Place, m: int, sizes: dict[str, int], meta: dict[str, Any]
) -> list[str]:
    """One section's subsection: table, rule sentences, caveats, diagnostics."""
    lines = []
    for family in families(place):
        lines += factor_sentences(family) + layer_sentences(family)
        lines += exact_sentences(place, family, meta)
    base = next((s.label for s, _ in place.rows if not s.is_variant), None)
    ref = next((c.reference for s, c in place.rows if s.label == base), place.rows[0][1].reference)
    labels = [ref, *(s.label for s, _ in place.rows), *place.controls]
    by_label = {label: place.runs_of(runs, label) for label in labels}
    return [
        f"### {place.where}",
        "",
        table(place, m, sizes),
        "",
        *[f"- {s}" for s in lines],
        *caveat_parts(by_label),
        *diagnostics_parts(by_label, ref, base),
    ]


def finding_section(runs: Sequence[Run], meta: dict[str, Any] | None = None) -> str:
    """The finding's Markdown ('' when no section has two KFAC structures, one a variant)."""
    comps = comparisons(runs)
    found = places(runs, comps)
    if not found:
        return ""
    meta = meta or {}
    sizes = add_exact(runs, found)
    m = len([c for c in comps if c.acc.get("t_pvalue") is not None])
    parts = [
        HEADING,
        "",
        "Which part of KFAC's structure carries its difference from the diagonal: per section, "
        f"each KFAC structure (G: output-gradient second moment, A: input second moment), what "
        f"it keeps, and its Δ against `{REFERENCE}` (the verdict's numbers and Holm family); "
        f"against `ewc {EXACT_FISHER}` controls where they ran (Holm per control over its "
        "column). The sentences apply fixed rules to these numbers (`benchmark.report.ablation`): "
        "a factor carries the effect only if every structure that keeps it full is detected "
        "better than the diagonal and none that reduces it is.",
    ]
    for place in found:
        parts += ["", *place_parts(runs, place, m, sizes, meta)]
    threads = thread_sentences(meta.get("thread_checks") or [])
    if threads:
        parts += ["", *[f"- {s}" for s in threads]]
    return "\n".join(parts)
