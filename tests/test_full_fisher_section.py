"""The full Fisher against each structure (``benchmark.report.full_fisher``): synthetic records
with known effects, the numbers and sentences checked by hand."""

from __future__ import annotations

import random

import pytest

from benchmark import outcomes
from benchmark.config import RunConfig
from benchmark.records import RunRecord
from benchmark.report.full_fisher import full_fisher_section
from benchmark.report.verdict import comparisons

from .synthetic_runs import effect_records, record

EFFECTS = {"full-exact": 0.0, "kfac-exact": 0.0, "diag-exact": -0.05}
"""Average accuracy of each estimator against the full Fisher's (kfac: none; diagonal: worse)."""


def _records() -> list[RunRecord]:
    return effect_records(EFFECTS)


def test_each_structure_is_paired_with_the_full_fisher():
    runs = outcomes.summarise(_records(), [99])
    comps = {c.label: c for c in comparisons(runs, reference="ewc full-exact")}
    assert set(comps) == {"ewc diag-exact", "ewc kfac-exact"}
    diag = comps["ewc diag-exact"]
    assert diag.acc["mean_diff"] == pytest.approx(-0.05, abs=6e-3)
    assert diag.forgetting["mean_diff"] == pytest.approx(+0.05, abs=6e-3)  # forgets more
    assert diag.outcome == "worse" and diag.forgetting_outcome == "worse"
    assert comps["ewc kfac-exact"].outcome == "no difference detected"
    assert diag.time_ratio == pytest.approx(0.1)


def test_the_section_states_the_answer_from_the_full_fishers_side():
    text = full_fisher_section(outcomes.summarise(_records(), [99]))
    assert text.startswith("## The full Fisher against each structure")
    assert "stored as its exact factor of 20 rows" in text
    assert (
        "- The full Fisher forgets less than (detected; Δ = structure − full): ewc diag-exact"
        in text
    )
    assert "- Lower average accuracy than the full Fisher (detected" in text
    assert (
        "No difference from the full Fisher detected in either average accuracy or forgetting"
        in text
    )
    assert "A full-Fisher run took 10.00x to 10.00x the wall time" in text


def test_no_full_fisher_no_section():
    records = [r for r in _records() if r.config["estimator"] != "full-exact"]
    assert full_fisher_section(outcomes.summarise(records, [99])) == ""


def test_pairing_by_number_of_inputs_ignores_the_full_fishers_own_options():
    """The full Fisher at N = 20 (factor) and N = 100 (dense): each structure pairs at its own N;
    a structure at an N without a full Fisher is listed as not compared."""
    full = {
        20: {"representation": "factor"},
        100: {"representation": "dense"},
    }
    records = []
    for seed in [99, *range(10)]:
        base = 0.8 + random.Random(seed).gauss(0.0, 0.03)
        for n, options in full.items():
            records.append(
                record("full-exact", seed, base, fisher_samples=n, estimator_options=options)
            )
            noise = random.Random(f"{n}/{seed}").gauss(0.0, 0.005)
            records.append(record("diag-exact", seed, base - 0.05 + noise, fisher_samples=n))
        records.append(record("kfac-exact", seed, base, fisher_samples=50))  # no full Fisher at 50
        mean = random.Random(f"mean/{seed}").gauss(0.0, 0.005)
        records.append(
            record(
                "full-exact", seed, base + mean, fisher_samples=100,
                estimator_options={"output_curvature": "mean"},
            )
        )  # fmt: skip
    runs = outcomes.summarise(records, [99])
    text = full_fisher_section(runs)
    rows = [line for line in text.splitlines() if line.startswith("| mnist-fmnist")]
    assert len(rows) == 3  # diag at 20, diag at 100, the averaged-curvature control at 100
    assert sum("-0.05" in row for row in rows) == 2
    assert any("output_curvature=mean" in row for row in rows)
    assert "Not compared (no full-Fisher run with the same settings and number of inputs): " in text
    assert "ewc kfac-exact on mnist-fmnist" in text.split("Not compared")[1]
    assert "compare the same pair with opposite signs" not in text  # no plain diag-exact row


def test_a_structure_chosen_at_a_grid_edge_carries_the_caveat():
    """The diagonal's lambda 1.0 is the largest it tried (0.1 lost): its sentence says so."""
    cfg = RunConfig(data="synthetic", method="ewc", estimator="diag-exact", lam=0.1, seed=99)
    low = [[0.98, 0.1], [0.3, 0.3]]
    extra = RunRecord(run_id=cfg.run_id, config=cfg.to_dict(), acc_val=low, acc_test=low)
    text = full_fisher_section(outcomes.summarise([*_records(), extra], [99]))
    line = next(s for s in text.splitlines() if s.startswith("- The full Fisher forgets less"))
    assert line.endswith(
        "ewc diag-exact on mnist-fmnist (bn = freeze) (+0.050 [+0.044, +0.057]) "
        "(λ at a grid edge: the difference may be the grid's)."
    )
    assert "(λ at a grid edge: the difference may be the grid's)" in line
    kfac = [s for s in text.splitlines() if "No difference from the full Fisher" in s]
    assert kfac and "grid edge" not in kfac[0]
