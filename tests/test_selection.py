"""Nested lambda selection (``benchmark.selection``): hand-made records, hand-computed choices."""

from __future__ import annotations

import pytest

from benchmark.config import RunConfig
from benchmark.records import RunRecord
from benchmark.selection import (
    choose_lambdas,
    group_key,
    is_selected,
    lattice,
    role,
    selection_seeds_of,
)

EWC = RunConfig(data="synthetic", method="ewc", estimator="diag-exact")
KEY = group_key(EWC.to_dict())


def rec(lam: float, seed: int, val: float | None, status: str = "ok", cfg=EWC) -> RunRecord:
    c = cfg.replace(lam=lam, seed=seed)
    row = [None, None] if val is None else [val, val]
    return RunRecord(run_id=c.run_id, config=c.to_dict(), status=status, acc_val=[row])


def test_the_mean_over_selection_seeds_chooses_not_one_seed():
    # seed 100 alone would pick 10 (0.90 > 0.85); the mean over 100-102 picks 1
    # (mean(0.85, 0.84, 0.86) = 0.85 > mean(0.90, 0.70, 0.71) = 0.77)
    records = [
        rec(1.0, 100, 0.85), rec(1.0, 101, 0.84), rec(1.0, 102, 0.86),
        rec(10.0, 100, 0.90), rec(10.0, 101, 0.70), rec(10.0, 102, 0.71),
    ]  # fmt: skip
    assert choose_lambdas(records, [100]) == {KEY: 10.0}
    assert choose_lambdas(records, [100, 101, 102]) == {KEY: 1.0}


def test_a_lambda_must_finish_on_every_selection_seed():
    records = [
        rec(1.0, 100, 0.80), rec(1.0, 101, 0.80),
        rec(10.0, 100, 0.95), rec(10.0, 101, None, status="diverged"),
        rec(100.0, 100, 0.99),  # seed 101 missing: not scored
    ]  # fmt: skip
    assert choose_lambdas(records, [100, 101]) == {KEY: 1.0}
    only_bad = [rec(10.0, 100, 0.95), rec(10.0, 101, None, status="diverged")]
    assert choose_lambdas(only_bad, [100, 101]) == {KEY: None}


def test_ties_go_to_the_smaller_lambda_and_test_runs_never_choose():
    records = [rec(10.0, 100, 0.8), rec(1.0, 100, 0.8), rec(100.0, 0, 0.99)]
    assert choose_lambdas(records, [100]) == {KEY: 1.0}


def test_selected_runs_are_test_runs_at_the_chosen_lambda():
    records = [rec(1.0, 100, 0.8), rec(1.0, 0, 0.7), rec(10.0, 0, 0.9)]
    chosen = choose_lambdas(records, [100])
    assert [is_selected(r, chosen, [100]) for r in records] == [False, True, False]
    assert [role(r.config["seed"], [100]) for r in records] == ["selection", "test", "test"]


def test_methods_without_a_penalty_need_no_selection_run():
    base = EWC.replace(method="baseline", estimator=None)
    records = [rec(0.0, 0, 0.5, cfg=base), rec(0.0, 1, 0.6, cfg=base)]
    chosen = choose_lambdas(records, [100, 101, 102])
    assert chosen == {group_key(base.to_dict()): 0.0}
    assert all(is_selected(r, chosen, [100]) for r in records)


@pytest.mark.parametrize(
    ("value", "steps", "per_decade", "expected"),
    [
        (1000.0, 1, 2, 3162.0),
        (3162.0, 1, 2, 10000.0),
        (316.2, -1, 2, 100.0),
        (100.0, -1, 2, 31.62),
        (0.3162, 1, 2, 1.0),
        (100.0, 1, 1, 1000.0),
        (500.0, 1, 1, 5000.0),  # off the lattice: scaled by 10^(1/per_decade)
    ],
)
def test_lattice(value, steps, per_decade, expected):
    assert lattice(value, steps, per_decade) == expected


def test_lattice_refuses_zero():
    with pytest.raises(ValueError, match="positive values only"):
        lattice(0.0, 1, 2)


def test_selection_seeds_of_metadata():
    assert selection_seeds_of({"selection_seeds": [5, 6]}) == (5, 6)
    assert selection_seeds_of({"selection_seed": 0}) == (0,)  # sweeps before nested selection
    assert len(selection_seeds_of({})) == 3


def test_a_failed_selection_run_leaves_its_group_undecided():
    """Unlike a divergence, a failure says nothing about the lambda: nothing is chosen (and so
    nothing tested) until a rerun completes the selection, whatever the other lambdas scored."""
    records = [
        rec(1.0, 100, 0.80), rec(1.0, 101, 0.80),
        rec(10.0, 100, 0.95), rec(10.0, 101, None, status="failed"),
    ]  # fmt: skip
    assert choose_lambdas(records, [100, 101]) == {KEY: None}
    healed = [*records[:3], rec(10.0, 101, 0.93)]
    assert choose_lambdas(healed, [100, 101]) == {KEY: 10.0}
