"""The verdict (REPORT.md's first section): its statistics against hand computations, its numbers
against the records, its robustness to the choice of test seeds, and the README's copy of it."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from benchmark import metrics, outcomes
from benchmark.config import RunConfig
from benchmark.records import RunRecord, read_records
from benchmark.report import verdict
from benchmark.report.results import render_markdown

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "records_sample"


# -- statistics by hand ------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04)
    assert metrics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert metrics.holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert metrics.holm([]) == []


def test_paired_interval_and_effect_size_by_hand():
    a, b = [0.9, 0.8, 0.85, 0.95], [0.8, 0.8, 0.8, 0.8]
    d = np.array(a) - np.array(b)  # 0.1, 0, 0.05, 0.15
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    test = metrics.paired_test(a, b)
    assert test["mean_diff"] == pytest.approx(0.075)
    assert (test["ci_low"], test["ci_high"]) == pytest.approx((0.075 - half, 0.075 + half))
    assert test["effect_size"] == pytest.approx(0.075 / sd)
    one = metrics.paired_test([0.9], [0.8])
    assert one["ci_low"] is None and one["effect_size"] is None


# -- the verdict's numbers are the records' ---------------------------------------------------


def test_verdict_numbers_match_the_records():
    records = list(read_records(SAMPLE))
    runs = outcomes.summarise(records, [0])
    comps = verdict.comparisons(runs)
    kfac = next(c for c in comps if c.label == "ewc kfac-exact" and c.bn == "freeze")
    # by hand: test average accuracy (mean of the last row) per test seed, paired by seed
    avg = {}
    for r in records:
        c = r.config
        mine = c["sequence"] == "mnist-fmnist" and c["bn"] == "freeze" and c["seed"] != 0
        at_chosen = c.get("estimator") in ("kfac-exact", "diag-exact") and c["lam"] == 1000.0
        if mine and at_chosen and r.status == "ok":
            avg[(c["estimator"], c["seed"])] = sum(r.acc_test[-1]) / 2
    diffs = [avg[("kfac-exact", s)] - avg[("diag-exact", s)] for s in (1, 2, 3)]
    assert kfac.acc["n"] == 3
    assert kfac.acc["mean_diff"] == pytest.approx(sum(diffs) / 3)
    assert kfac.acc["t_pvalue"] == pytest.approx(stats.ttest_rel(
        [avg[("kfac-exact", s)] for s in (1, 2, 3)], [avg[("diag-exact", s)] for s in (1, 2, 3)]
    ).pvalue)  # fmt: skip
    # the table shows those numbers, and the Holm family is the whole table
    text = verdict.verdict_section(runs)
    assert verdict.interval(kfac.acc) in text
    raw = [c.acc["t_pvalue"] for c in comps]
    assert [c.acc_p for c in comps] == pytest.approx(metrics.holm(raw))


def test_the_report_opens_with_the_verdict():
    runs = outcomes.summarise(read_records(SAMPLE), [0])
    text = render_markdown(runs, outcomes.load_meta(SAMPLE), None, [0])
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0] == verdict.HEADING
    assert verdict.extract(text).startswith(verdict.HEADING)


def test_no_reference_no_verdict():
    cfg = RunConfig(data="synthetic", method="baseline", estimator=None, seed=1)
    record = RunRecord(run_id=cfg.run_id, config=cfg.to_dict(), acc_test=[[0.9, 0.5]])
    assert verdict.verdict_section(outcomes.summarise([record], [0])) == ""


# -- robust by construction ----------------------------------------------------------------------


def _noise(*key) -> float:
    """A deterministic standard-normal-ish number from ``key``."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


EFFECTS = {"diag-exact": 0.0, "kfac-exact": 0.05, "ekfac-exact": 0.0, "diag-mc": -0.05}
"""True effect of each estimator on average accuracy (against diag-exact) in the synthetic sweep."""


def _sweep(test_seeds: range) -> list[RunRecord]:
    """A synthetic sweep: one lambda per method, selection seed 99, the given test seeds.

    Each seed has its own difficulty (shared by every method: the pairing), and each run its own
    noise (sd 0.01) around the method's true effect.
    """
    records = []
    for name, effect in EFFECTS.items():
        for seed in [99, *test_seeds]:
            cfg = RunConfig(data="synthetic", method="ewc", estimator=name, lam=1.0, seed=seed)
            x = 0.8 + 0.03 * _noise("seed", seed) + effect + 0.01 * _noise(name, seed)
            matrix = [[0.98, 0.1], [x - 0.02, x + 0.02]]
            records.append(
                RunRecord(
                    run_id=cfg.run_id,
                    config=cfg.to_dict(),
                    acc_val=matrix,
                    acc_test=matrix,
                    total_seconds=10.0 * (1 + effect),
                )
            )
    return records


def test_two_sweeps_differing_only_in_test_seeds_give_the_same_verdict():
    a = verdict.comparisons(outcomes.summarise(_sweep(range(0, 10)), [99]))
    b = verdict.comparisons(outcomes.summarise(_sweep(range(10, 20)), [99]))
    outcome_a = {c.label: c.outcome for c in a}
    outcome_b = {c.label: c.outcome for c in b}
    # the statistics say: +0.05 and -0.05 at sd 0.01 over 10 pairs are detected, 0 is not
    assert (
        outcome_a
        == outcome_b
        == {
            "ewc diag-mc": "worse",
            "ewc kfac-exact": "better",
            "ewc ekfac-exact": "no difference detected",
        }
    )
    for c in a + b:  # and each interval holds the true effect
        effect = EFFECTS[c.label.removeprefix("ewc ")]
        assert c.acc["ci_low"] <= effect <= c.acc["ci_high"]
    text_a = verdict.sentences(a)
    text_b = verdict.sentences(b)
    assert [s.split(":")[0] for s in text_a] == [s.split(":")[0] for s in text_b]


# -- the README shows the committed report's verdict ---------------------------------------------


def test_readme_shows_the_committed_verdict():
    report = (ROOT / "reports" / "REPORT.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert verdict.readme_block(report) in readme, (
        "README.md's verdict block differs from reports/REPORT.md's verdict: run `make report` "
        "(or `python -m benchmark report ... --readme README.md`)"
    )


def test_sync_readme_replaces_only_the_block(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# t\n\n## Verdict\n\nthe table\n\n## How\n\nrest\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{verdict.README_BEGIN}\nold\n{verdict.README_END}\nbottom\n")
    assert verdict.sync_readme(readme, report)
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n")
    assert "the table" in text and "old" not in text and "rest" not in text
    assert not verdict.sync_readme(readme, report)  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no verdict block"):
        verdict.sync_readme(readme, report)


@pytest.mark.parametrize("command", ["report", "reproduce"])
def test_a_missing_readme_is_refused_before_any_work(tmp_path, command):
    import subprocess
    import sys

    args = [sys.executable, "-m", "benchmark", command, "--out", str(tmp_path / "out")]
    args += ["--readme", str(tmp_path / "nope.md")]
    if command == "report":
        args += ["--results", str(SAMPLE)]
    else:
        args += ["--experiment", "quick", "--results", str(tmp_path / "res")]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: --readme {tmp_path / 'nope.md'} is not a file"
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


def _comparison(section: str, mean: float, lo: float, hi: float, p: float) -> verdict.Comparison:
    test = {"mean_diff": mean, "ci_low": lo, "ci_high": hi, "n": 10}
    return verdict.Comparison(
        section=section,
        bn="",
        label="ewc kfac-exact",
        acc=test,
        forgetting={"mean_diff": None, "n": 10},
        time_ratio=1.0,
        acc_p=p,
    )


def test_the_optimizer_control_pairs_each_structure_with_its_adam_row():
    adam = _comparison("mnist-fmnist on mlp hidden=16", 0.016, 0.010, 0.022, 0.001)
    sgd = _comparison("mnist-fmnist on mlp hidden=16 with sgd", 0.004, -0.002, 0.010, 0.40)
    other = _comparison("split-mnist on mlp hidden=16", 0.03, 0.02, 0.04, 0.001)
    assert verdict.optimizer_pairs([adam, sgd, other]) == [(adam, sgd, "sgd")]
    (text,) = verdict.optimizer_sentences([adam, sgd, other])
    assert "+0.016 [+0.010, +0.022] under Adam, +0.004 [-0.002, +0.010] under sgd" in text
    assert text.endswith("better under Adam, no difference detected under sgd.")
    same = _comparison("mnist-fmnist on mlp hidden=16 with sgd", 0.02, 0.01, 0.03, 0.01)
    (text,) = verdict.optimizer_sentences([adam, same])
    assert text.endswith("the same outcome in average accuracy (better) under both.")
    assert verdict.optimizer_sentences([adam, other]) == []


def test_the_optimizer_control_measures_the_change_of_the_difference_seed_by_seed():
    """KFAC is +0.05 over the diagonal under Adam and +0.00 under SGD: the change is -0.05."""
    records = []
    for optimizer, effect in (("adam", 0.05), ("sgd", 0.0)):
        for name in ("diag-exact", "kfac-exact"):
            for seed in [99, *range(10)]:
                cfg = RunConfig(
                    data="synthetic", method="ewc", estimator=name, lam=1.0, seed=seed,
                    optimizer=optimizer,
                )  # fmt: skip
                lift = effect if name == "kfac-exact" else 0.0
                x = 0.8 + 0.03 * _noise("seed", seed) + lift + 0.005 * _noise(name, optimizer, seed)
                matrix = [[0.98, 0.1], [x - 0.02, x + 0.02]]
                records.append(
                    RunRecord(
                        run_id=cfg.run_id, config=cfg.to_dict(), acc_val=matrix, acc_test=matrix
                    )
                )
    runs = outcomes.summarise(records, [99])
    comps = verdict.comparisons(runs)
    ((adam, sgd, name),) = verdict.optimizer_pairs(comps)
    assert name == "sgd" and sgd.section == adam.section + " with sgd"
    test = verdict.interaction(runs, adam, sgd)
    assert test["n"] == 10 and test["ci_low"] < -0.05 < test["ci_high"]
    (text,) = verdict.optimizer_sentences(comps, runs)
    assert "the change of Δ from Adam to sgd, paired over 10 seeds: -0.0" in text
    assert text.endswith("better under Adam, no difference detected under sgd.")
