"""The Kronecker-ablation finding (``report.ablation``): its rules on synthetic sweeps whose
effects are known, its numbers against the verdict's, its caveats and diagnostics, and its
absence from reports without variants."""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark import metrics, outcomes
from benchmark.config import RunConfig
from benchmark.records import RunRecord, read_records
from benchmark.report import ablation, ablation_notes, verdict
from benchmark.report.format import fmt_p
from benchmark.report.results import render_markdown

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "records_sample"
TEST_SEEDS = range(10)
SELECTION_SEED = 99

KFAC = {
    "kfac": {},
    "a-diag": {"factors": "a-diag"},
    "g-diag": {"factors": "g-diag"},
    "diag": {"factors": "diag"},
    "a-only": {"factors": "a-only"},
    "hidden": {"layers": ["hidden"]},
    "output": {"layers": ["output"]},
}
"""Name -> the kfac-exact options of each structure."""
CONTROLS = {"full": {}, "full-mean": {"output_curvature": "mean"}}
A_CARRIES = {"kfac": 0.05, "g-diag": 0.05, "a-only": 0.05, "a-diag": 0.0, "diag": 0.0}
A_CARRIES |= {"hidden": 0.05, "output": 0.0}
"""True effects on average accuracy against the diagonal: every A-full structure better."""
MIXED = {"kfac": 0.05, "g-diag": 0.0, "a-only": 0.05, "a-diag": 0.05, "diag": 0.0}


def _noise(*key: object) -> float:
    """A deterministic standard-normal-ish number from ``key``."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _config(name: str, seed: int) -> RunConfig:
    if name == "diag-exact":
        estimator, options = "diag-exact", {}
    elif name in CONTROLS:
        estimator, options = "full-exact", CONTROLS[name]
    else:
        estimator, options = "kfac-exact", KFAC[name]
    return RunConfig(
        data="synthetic", method="ewc", estimator=estimator, estimator_options=options,
        lam=1.0, seed=seed,
    )  # fmt: skip


def _record(name: str, seed: int, x: float, diagnostics: dict | None = None) -> RunRecord:
    """A two-task run whose test average accuracy is ``x`` (forgetting 1 - x)."""
    cfg = _config(name, seed)
    matrix = [[0.98, 0.1], [x - 0.02, x + 0.02]]
    return RunRecord(
        run_id=cfg.run_id, config=cfg.to_dict(), acc_val=matrix, acc_test=matrix,
        total_seconds=10.0, diagnostics=diagnostics,
    )  # fmt: skip


def _sweep(effects: dict[str, float]) -> list[outcomes.Run]:
    """Each seed's own difficulty (shared: the pairing) plus each run's noise (sd 0.005).

    The noise is antithetic (seeds 2i and 2i + 1 get opposite values), so that over the test
    seeds its mean is 0 and a zero effect is never detected by chance.
    """
    records = []
    for name, effect in {"diag-exact": 0.0, **effects}.items():
        for seed in [SELECTION_SEED, *TEST_SEEDS]:
            noise = 0.005 * _noise(name, seed // 2) * (-1) ** seed
            x = 0.7 + 0.03 * _noise("seed", seed) + effect + noise
            records.append(_record(name, seed, x))
    return outcomes.summarise(records, [SELECTION_SEED])


def _first_table(text: str, header: str) -> list[str]:
    """The body rows of the first table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


# -- (a), (b): which factor --------------------------------------------------------------------


def test_a_full_structures_better_single_out_the_input_factor():
    text = ablation.finding_section(_sweep(A_CARRIES))
    assert text.startswith(ablation.HEADING)
    acc = next(s for s in _bullets(text) if s.startswith("- Average accuracy, by factor"))
    assert "3 of the 3 that keep A full" in acc and "0 of the 2 that reduce it;" in acc
    assert "the input factor A carries the effect in average accuracy" in acc
    assert "neither factor" not in acc
    # forgetting = 0.98 - (x - 0.02): the same structures forget less, so the same conclusion
    forg = next(s for s in _bullets(text) if s.startswith("- Forgetting, by factor"))
    assert "the input factor A carries the effect in forgetting" in forg
    layers = next(s for s in _bullets(text) if s.startswith("- Average accuracy, by layers"))
    assert "the effect sits in the hidden layers' blocks" in layers


def test_a_mixed_outcome_singles_out_neither_factor():
    text = ablation.finding_section(_sweep(MIXED))
    acc = next(s for s in _bullets(text) if s.startswith("- Average accuracy, by factor"))
    # A-full: kfac and a-only better, g-diag not; G-full: kfac, a-diag; reduced: a-only too
    assert "2 of the 3 that keep A full" in acc and "1 of the 2 that reduce it" in acc
    assert "the numbers single out neither factor in average accuracy" in acc
    assert "carries the effect" not in acc
    assert "by layers" not in text  # no layers variants ran


def test_only_kfac_and_its_diagonal_confound_the_factors():
    text = ablation.finding_section(_sweep({"kfac": 0.05, "diag": 0.0}))
    acc = next(s for s in _bullets(text) if s.startswith("- Average accuracy, by factor"))
    assert "single out neither factor (the structures that ran confound the two)" in acc


def test_what_each_structure_keeps_comes_from_the_estimator():
    runs = _sweep(A_CARRIES)
    comps = verdict.comparisons(runs)
    (place,) = ablation.places(runs, comps)
    keeps = {s.label: (s.keeps, s.a_full, s.g_full) for s, _ in place.rows}
    assert keeps == {
        "ewc kfac-exact": ("G (x) A", True, True),
        "ewc kfac-exact factors=a-diag": ("G (x) diag A", False, True),
        "ewc kfac-exact factors=g-diag": ("diag G (x) A", True, False),
        "ewc kfac-exact factors=diag": ("diag G (x) diag A (a diagonal)", False, False),
        "ewc kfac-exact factors=a-only": ("I (x) A", True, False),
        "ewc kfac-exact layers=hidden": (
            "G (x) A on the hidden layers, the exact diagonal on the output layer", True, True
        ),
        "ewc kfac-exact layers=output": (
            "G (x) A on the output layer, the exact diagonal on the hidden layers", True, True
        ),
    }  # fmt: skip
    assert ablation.structure_of("ewc diag-exact", _config("diag-exact", 0).to_dict()) is None


# -- (c): the exact Fisher ---------------------------------------------------------------------


def test_the_exact_fisher_comparison_has_the_right_sign():
    runs = _sweep({**A_CARRIES, "full": 0.02, "full-mean": 0.10})
    text = ablation.finding_section(runs)
    exact = [s for s in _bullets(text) if s.startswith("- Against the exact Fisher")]
    plain = next(s for s in exact if "− ewc full-exact =" in s)
    mean = next(s for s in exact if "output_curvature=mean =" in s)
    assert "ewc kfac-exact is detected better than the exact Fisher it approximates" in plain
    assert "ewc full-exact output_curvature=mean is detected better than ewc kfac-exact" in mean
    # the numbers: kfac − full over the paired seeds, by hand, and Holm over the column (7 rows)
    by = {(r.label, r.seed): r.test_avg for r in runs if r.selected}
    diffs = [by[("ewc kfac-exact", s)] - by[("ewc full-exact", s)] for s in TEST_SEEDS]
    assert f"= {verdict.interval({'mean_diff': np.mean(diffs)})} [" in plain
    assert "p (Holm, m = 7)" in text
    assert "No exact-Fisher control" not in text
    # forgetting is 1 - x here: kfac forgets less than full, full-mean less than kfac
    assert "in forgetting, p <0.001: ewc kfac-exact forgets less (detected)." in plain
    assert "in forgetting, p <0.001: ewc full-exact output_curvature=mean forgets less" in mean
    forg = [-d for d in diffs]
    assert f"; {verdict.interval({'mean_diff': np.mean(forg)})} [" in plain
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert "| Δ forgetting vs ewc full-exact [95% CI] |" in header


def test_without_a_control_the_finding_says_so():
    text = ablation.finding_section(
        _sweep(A_CARRIES), {"notes": ["the `full` experiment has ewc full-exact"]}
    )
    line = next(s for s in _bullets(text) if "No exact-Fisher control" in s)
    assert "(the protocol notes above say where it runs)" in line
    plain = ablation.finding_section(_sweep(A_CARRIES))
    assert "No exact-Fisher control" in plain and "protocol notes" not in plain


# -- (d): reports without variants ------------------------------------------------------------


def test_no_variants_no_finding():
    runs = outcomes.summarise(read_records(SAMPLE), [0])
    assert ablation.finding_section(runs) == ""
    assert ablation.HEADING not in render_markdown(runs, outcomes.load_meta(SAMPLE), None, [0])
    only_kfac = _sweep({"kfac": 0.05})  # one structure, no variant
    assert ablation.finding_section(only_kfac) == ""


def test_the_finding_follows_the_verdict_in_the_report():
    text = render_markdown(_sweep(A_CARRIES), {}, None, [SELECTION_SEED])
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == [verdict.HEADING, ablation.HEADING]
    assert verdict.extract(text).count(ablation.HEADING) == 0  # the verdict block stays its own


# -- (e): the bimodality coefficient ----------------------------------------------------------


def test_bimodality_coefficient_by_hand():
    # 0,0,0,1,1,1: m2 = 1/4, m3 = 0, m4 = 1/16, so g = 0 and g2 = m4/m2^2 - 3 = -2;
    # k = ((n+1) g2 + 6)(n-1) / ((n-2)(n-3)) = (7(-2) + 6) 5 / 12 = -10/3;
    # b = (0 + 1) / (-10/3 + 3 * 25 / 12) = 1 / (35/12) = 12/35
    assert metrics.bimodality_coefficient([0, 0, 0, 1, 1, 1]) == pytest.approx(12 / 35)
    xs = np.array([0.1, 0.2, 0.2, 0.5, 0.9, 0.95])
    n, d = len(xs), xs - xs.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    g = math.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
    k = ((n + 1) * (m4 / m2**2 - 3) + 6) * (n - 1) / ((n - 2) * (n - 3))
    want = (g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    assert metrics.bimodality_coefficient(list(xs)) == pytest.approx(want, rel=1e-12)
    assert metrics.bimodality_coefficient([1.0, 2.0, None, 3.0]) is None  # n < 4 after drops
    assert metrics.bimodality_coefficient([0.5] * 6) is None  # zero variance


def test_two_groups_of_seeds_are_flagged_possibly_bimodal():
    two = [0.2 + 0.001 * i for i in range(10)] + [0.6 + 0.001 * i for i in range(10)]
    b = metrics.bimodality_coefficient(two)
    assert b > metrics.UNIFORM_BIMODALITY
    one = [0.4 + 0.01 * _noise("one", i) for i in range(20)]
    assert metrics.bimodality_coefficient(one) < metrics.UNIFORM_BIMODALITY
    records = [_record("kfac", s, x) for s, x in enumerate(two)]
    records += [_record("diag-exact", s, x) for s, x in enumerate(one)]
    runs = outcomes.summarise(records, [99])
    by_label = {r.label: [q for q in runs if q.label == r.label] for r in runs}
    text = "\n".join(ablation_notes.caveat_parts(by_label))
    row = next(line for line in text.splitlines() if line.startswith("| ewc kfac-exact "))
    assert "possibly bimodal" in row and f"{b:.3f}" in row
    assert "possibly bimodal" not in next(
        line for line in text.splitlines() if line.startswith("| ewc diag-exact ")
    )
    assert "Possibly bimodal (b above 5/9" in text and "ewc kfac-exact (b = " in text


# -- (f): the table's numbers are the verdict's -----------------------------------------------


def test_the_table_numbers_equal_the_verdicts():
    runs = _sweep({**A_CARRIES, "full": 0.02})
    comps = {c.label: c for c in verdict.comparisons(runs)}
    text = ablation.finding_section(runs)
    rows = _first_table(text, "| variant |")
    assert len(rows) == len(KFAC)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        c = comps[cells[0].removesuffix(" (λ at edge)")]
        assert cells[4:8] == [
            verdict.interval(c.acc), fmt_p(c.acc_p), verdict.interval(c.forgetting),
            fmt_p(c.forgetting_p),
        ]  # fmt: skip
    m = len([c for c in comps.values() if c.acc.get("t_pvalue") is not None])
    assert f"p (Holm, m = {m})" in text


# -- caveats: threads and diagnostics ---------------------------------------------------------


def test_a_thread_check_becomes_one_sentence():
    check = {
        "section": "s", "bn": "", "method": "ewc kfac-exact", "n": 20, "identical": 3,
        "median_abs_diff": 0.01, "max_abs_diff": 0.2, "threads_before": [1], "threads_after": 2,
        "paired": {"mean_diff": 0.001, "ci_low": -0.01, "ci_high": 0.012},
    }  # fmt: skip
    text = ablation.finding_section(_sweep(A_CARRIES), {"thread_checks": [check]})
    line = next(s for s in _bullets(text) if s.startswith("- Thread count, measured"))
    assert "3 of 20 bitwise identical" in line and "at most 0.2000" in line
    assert "rerun with 2 torch threads instead of 1" in line


def _diagnostics(end: float, swapped: float, ratio: float) -> dict:
    task = {
        "drift_quadratic": {"exact": {"total": 2.0}, "used": {"total": 2.0 * ratio}},
        "feature_drift": {"1": 0.1, "3": 0.3},
        "swapped_output_accuracy": {"end": end, "swapped": swapped},
    }
    return {"stability": end, "plasticity": 0.9, "hidden": ["1", "3"], "tasks": {"0": task}}


def test_diagnostics_rules():
    records = []
    values = {
        "diag-exact": (0.2, 0.8, 0.5),
        "kfac": (0.6, 0.7, 1.5),
        "a-diag": (0.4, 0.5, 1.0),
        "g-diag": (0.5, 0.502, 1.0),  # recovers 0.004 of the shortfall: nothing
    }
    for name, (end, swapped, ratio) in values.items():
        for seed in [SELECTION_SEED, *TEST_SEEDS]:
            x = 0.7 + 0.01 * _noise(name, seed)
            records.append(_record(name, seed, x, copy.deepcopy(_diagnostics(end, swapped, ratio))))
    text = ablation.finding_section(outcomes.summarise(records, [SELECTION_SEED]))
    row = _first_table(text, "| method | seeds | stability |")[0]
    # drift: mean over the hidden layers (0.1 + 0.3) / 2; recovered (0.8 - 0.2) / (1 - 0.2)
    assert "| 0.200 |" in row and row.rstrip("| ").endswith("0.75")
    mostly = next(s for s in _bullets(text) if "sits mostly in the output layer" in s)
    assert "ewc diag-exact (from 0.2000 to 0.8000, 0.75 of the shortfall)" in mostly
    rest = next(s for s in _bullets(text) if "does not sit mostly" in s)
    assert "ewc kfac-exact (from 0.6000" in rest and "factors=a-diag (from 0.4000" in rest
    assert "g-diag" not in rest
    barely = next(s for s in _bullets(text) if "barely changed" in s)
    assert "by less than 1% of their shortfall under ewc kfac-exact factors=g-diag:" in barely
    ratio = next(s for s in _bullets(text) if s.startswith("- The fitted curvature's quadratic"))
    assert "0.5 times the exact one under ewc diag-exact (less than" in ratio
    assert "1.5 times the exact one under ewc kfac-exact (more than" in ratio
    assert "Diagnostics" not in ablation.finding_section(_sweep(A_CARRIES))
