"""The row budget (issue 12, item 2): each method against the diagonal variant at its own
``fisher_samples``, in the verdict, the results table and the forest plot alike; the budget
figure and its sentences; reports without variants unchanged; and the full-fisher experiment's
N = 1,000 groups unchanged beside its new N = 20 and 200 groups."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import pytest
from scipy import stats

from benchmark import outcomes
from benchmark.config import RunConfig
from benchmark.experiment import load_experiment, parse_experiment, tomllib
from benchmark.records import RunRecord, read_records
from benchmark.report import figures, verdict
from benchmark.report.cells import paired
from benchmark.report.figures_budget import budget_sentences, structure
from benchmark.report.figures_common import paired_labels
from benchmark.report.references import REFERENCE, references
from benchmark.report.results import diff_cell, render_markdown, results_table

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "records_sample"
FULL_FISHER = ROOT / "benchmark" / "experiments" / "full-fisher.toml"
FULL_FISHER_RUNS = ROOT / "reports" / "full-fisher" / "runs.csv"
TEST_SEEDS = range(8)
SELECTION_SEED = 99
SECTION, BN = "mnist-fmnist", "freeze"

EFFECTS = {
    ("diag-exact", 20): 0.0,
    ("kfac-exact", 20): 0.02,
    ("full-exact", 20): 0.01,
    ("diag-exact", 200): 0.0,
    ("kfac-exact", 200): 0.02,
    ("full-exact", 200): 0.04,
    ("lowrank-exact", 200): 0.03,
}
"""(estimator, N) -> true effect on test average accuracy (the lowrank run only at N = 200)."""


def _noise(*key: object) -> float:
    """A deterministic standard-normal-ish number from ``key``."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _accuracy(estimator: str, n: int, seed: int) -> float:
    """The run's test average accuracy: seed difficulty (the pairing), effect, own noise."""
    return (
        0.7
        + 0.03 * _noise("seed", seed)
        + EFFECTS[estimator, n]
        + 0.01 * _noise(estimator, n, seed)
    )


def _config(estimator: str, n: int, seed: int, **changes: object) -> RunConfig:
    options = {"rank": 20} if estimator == "lowrank-exact" else {}
    return RunConfig(
        data="synthetic", method="ewc", estimator=estimator, estimator_options=options,
        fisher_samples=n, lam=1.0, seed=seed,
    ).replace(**changes)  # fmt: skip


def _record(config: RunConfig, x: float) -> RunRecord:
    """A two-task run whose test average accuracy is ``x`` (forgetting 1 - x)."""
    matrix = [[0.98, 0.1], [x - 0.02, x + 0.02]]
    return RunRecord(
        run_id=config.run_id, config=config.to_dict(), acc_val=matrix, acc_test=matrix,
        total_seconds=10.0,
    )  # fmt: skip


def _records() -> list[RunRecord]:
    out = [
        _record(_config(est, n, seed), _accuracy(est, n, seed))
        for est, n in EFFECTS
        for seed in [SELECTION_SEED, *TEST_SEEDS]
    ]
    base = RunConfig(data="synthetic", method="baseline", estimator=None)
    out += [_record(base.replace(seed=s), 0.5) for s in [SELECTION_SEED, *TEST_SEEDS]]
    return out


@pytest.fixture(scope="module")
def runs() -> list[outcomes.Run]:
    return outcomes.summarise(_records(), [SELECTION_SEED])


def _label(estimator: str, n: int) -> str:
    if estimator == "lowrank-exact":
        return "ewc lowrank-exact rank=20"
    return f"ewc {estimator} (fisher_samples={n})"


def _row(table: str, label: str) -> list[str]:
    """The cells of the table row of ``label``."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


# -- each row's reference ----------------------------------------------------------------------


def test_each_label_is_paired_with_the_diagonal_at_its_own_fisher_samples(runs):
    refs = references(runs, SECTION, BN)
    assert refs == {
        "baseline": None,  # fisher_samples 1000: no diagonal variant ran there
        _label("diag-exact", 20): _label("diag-exact", 20),
        _label("diag-exact", 200): _label("diag-exact", 200),
        _label("kfac-exact", 20): _label("diag-exact", 20),
        _label("kfac-exact", 200): _label("diag-exact", 200),
        "ewc lowrank-exact rank=20": _label("diag-exact", 200),
        _label("full-exact", 20): _label("diag-exact", 20),
        _label("full-exact", 200): _label("diag-exact", 200),
    }
    assert paired_labels(runs, SECTION, BN) == {
        lab: ref for lab, ref in refs.items() if ref is not None and ref != lab
    }


def test_full_against_the_diagonal_at_n_200_by_hand(runs):
    full = [_accuracy("full-exact", 200, s) for s in TEST_SEEDS]
    diag = [_accuracy("diag-exact", 200, s) for s in TEST_SEEDS]
    d = [a - b for a, b in zip(full, diag)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
    comp = next(c for c in verdict.comparisons(runs) if c.label == _label("full-exact", 200))
    assert comp.reference == _label("diag-exact", 200)
    assert comp.acc["n"] == len(TEST_SEEDS)
    assert comp.acc["mean_diff"] == pytest.approx(mean)
    assert (comp.acc["ci_low"], comp.acc["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert comp.acc["t_pvalue"] == pytest.approx(stats.ttest_rel(full, diag).pvalue)
    # forgetting = 1 - x here, so its difference is the accuracy's negated
    assert comp.forgetting["mean_diff"] == pytest.approx(-mean)


def test_the_verdict_and_the_results_table_agree(runs):
    comps = verdict.comparisons(runs)
    assert {c.label for c in comps} == {
        _label(e, n) for e, n in EFFECTS if e != "diag-exact"
    }  # the diagonal variants are references, never rows
    table = results_table(runs, SECTION, BN)
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "| reference |" in header and f"Δ avg acc vs its {REFERENCE} variant" in header
    for c in comps:
        row = _row(table, c.label)
        assert row[7] == c.reference
        assert row[8] == diff_cell(c.acc)
    assert _row(table, _label("diag-exact", 20))[8] == "reference"
    assert _row(table, "baseline")[7:9] == ["none at its settings", "—"]


def test_the_verdict_names_each_rows_reference(runs):
    text = verdict.verdict_section(runs)
    assert "ran in variants that differ in `fisher_samples`" in text
    assert "| reference |" in text.splitlines()[4]
    row = next(line for line in text.splitlines() if "| ewc lowrank-exact rank=20 (" in line)
    assert f"| {_label('diag-exact', 200)} |" in row
    assert f"than its {REFERENCE} variant (detected)" in text


def test_a_method_without_a_matching_diagonal_is_not_compared():
    records = _records()
    records += [_record(_config("diag-mc", 1000, s), 0.7) for s in [SELECTION_SEED, *TEST_SEEDS]]
    runs = outcomes.summarise(records, [SELECTION_SEED])
    assert "ewc diag-mc" not in {c.label for c in verdict.comparisons(runs)}
    assert verdict.not_compared(runs) == [
        f"ewc diag-mc on {SECTION} (bn = {BN}) (no {REFERENCE} variant with its settings ran)"
    ]


# -- the budget figure and its sentences -------------------------------------------------------


def test_structure_drops_only_fisher_samples():
    assert structure("ewc full-exact (fisher_samples=20)") == "ewc full-exact"
    assert structure("ewc lowrank-exact rank=20") == "ewc lowrank-exact rank=20"
    assert structure("ewc-online diag-exact (fisher_samples=20, gamma=0.9)") == (
        "ewc-online diag-exact (gamma=0.9)"
    )


def test_the_budget_figure_is_planned_and_drawn(runs, tmp_path):
    specs = [s for s in figures.planned_figures(runs) if s.kind == "budget"]
    assert [s.name for s in specs] == [f"budget_{SECTION}_{BN}.png"]
    (spec,) = specs
    assert spec.name.startswith(figures.FIGURE_PREFIXES)
    assert "N = 20 and 200" in spec.caption and f"n = {len(TEST_SEEDS)} per point" in spec.caption
    assert "Not at every N: ewc lowrank-exact rank=20 (N = 200)." in spec.caption
    path = figures.draw_figure(spec, runs, tmp_path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 1000


def test_the_sentences_numbers_are_the_paired_tests(runs):
    sentences = budget_sentences(runs, SECTION, BN)
    # diag, kfac and full ran at both N; lowrank at one N only: three pairs
    assert [s.split(",")[0] for s in sentences] == [
        "ewc kfac-exact − ewc diag-exact",
        "ewc full-exact − ewc diag-exact",
        "ewc full-exact − ewc kfac-exact",
    ]
    full_diag = sentences[1]
    comps = {c.label: c for c in verdict.comparisons(runs)}
    for n in (20, 200):
        comp = comps[_label("full-exact", n)]
        assert f"at N = {n}, {verdict.interval(comp.acc)} ({comp.acc['n']} pairs)" in full_diag
        assert f"at N = {n}, {verdict.interval(comp.forgetting)}" in full_diag
    full_kfac = sentences[2]
    at = {
        lab: outcomes.selected(runs, SECTION, BN, lab)
        for lab in outcomes.method_labels(runs, SECTION, BN)
    }
    test = paired(at[_label("full-exact", 200)], at[_label("kfac-exact", 200)], "test_avg")
    assert f"at N = 200, {verdict.interval(test)}" in full_kfac


def test_the_report_embeds_the_figure_with_its_sentences(runs):
    text = render_markdown(runs, {}, None, [SELECTION_SEED])
    lines = text.splitlines()
    at = lines.index(f"![budget {SECTION} {BN}](figures/budget_{SECTION}_{BN}.png)")
    assert lines[at + 2].startswith("*Row budget, ")
    assert lines[at + 4 : at + 7] == [f"- {s}" for s in budget_sentences(runs, SECTION, BN)]
    assert "each row's Δ is against the variant whose settings its own runs share" in text


# -- reports without variants are unchanged ----------------------------------------------------


def test_without_variants_every_label_has_the_plain_reference():
    runs = outcomes.summarise(read_records(SAMPLE), [0])
    for seq in outcomes.sequences(runs):
        for bn in outcomes.bn_modes(runs, seq):
            assert set(references(runs, seq, bn).values()) == {REFERENCE}
    assert all(c.reference == REFERENCE for c in verdict.comparisons(runs))
    assert not [s for s in figures.planned_figures(runs) if s.kind == "budget"]
    text = render_markdown(runs, outcomes.load_meta(SAMPLE), None, [0])
    assert "| BWT | reference |" not in text and "| method | reference |" not in text
    assert "| BWT | Δ avg acc vs ewc diag-exact [95% CI] |" in text


# -- the full-fisher experiment ----------------------------------------------------------------


def test_full_fisher_keeps_its_n_1000_groups_and_adds_the_row_budget():
    data = tomllib.loads(FULL_FISHER.read_text())
    old = parse_experiment({**data, "studies": data["studies"][:1]})
    new = load_experiment("full-fisher")
    assert [(g.base.run_id, g.lambdas) for g in new.groups[: len(old.groups)]] == [
        (g.base.run_id, g.lambdas) for g in old.groups
    ]
    assert {g.base.fisher_samples for g in old.groups} == {1000}
    added = [g for g in new.groups[len(old.groups) :] if g.base.sequence == "mnist-fmnist"]
    assert sorted((g.base.fisher_samples, g.base.label) for g in added) == sorted(
        (n, f"ewc {e}") for n in (20, 200) for e in ("diag-exact", "kfac-exact", "full-exact")
    )
    permuted = [g for g in new.groups if g.base.sequence == "permuted-mnist"]
    assert {g.base.fisher_samples for g in permuted} == {1000}
    assert "ewc full-exact" in {g.base.label for g in permuted}
    assert len(old.groups) + len(added) + len(permuted) == len(new.groups)
    full = [g for g in new.groups if g.base.estimator == "full-exact"]
    assert all(g.base.estimator_options == {"representation": "dense"} for g in full)


@pytest.mark.skipif(not FULL_FISHER_RUNS.is_file(), reason="no committed full-fisher report")
def test_full_fisher_committed_runs_keep_their_ids():
    groups = load_experiment("full-fisher").groups
    with FULL_FISHER_RUNS.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        lam = float(row["lambda"].replace(",", "")) if row["lambda"] != "—" else 0.0
        ids = {
            g.base.replace(seed=int(row["seed"]), lam=lam if g.penalised else 0.0).run_id
            for g in groups
        }
        assert row["run_id"] in ids, row["run_id"]
