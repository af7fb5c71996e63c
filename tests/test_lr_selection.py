"""Learning rate chosen with lambda (``lrs``): hand-made records and hand-computed choices for
``selection.choose``, the experiment's groups, and a whole synthetic sweep with SGD."""

from __future__ import annotations

import csv

import pytest

from benchmark.config import RunConfig
from benchmark.outcomes import section_of, summarise
from benchmark.records import RunRecord, read_records
from benchmark.report.lambdas import lambda_rows
from benchmark.selection import choose, choose_lambdas, family_key, group_key, lr_edges
from benchmark.sweep import parse_experiment, run_sweep

SGD = RunConfig(data="synthetic", method="ewc", estimator="diag-exact", optimizer="sgd")
BASE = RunConfig(data="synthetic", method="baseline", estimator=None, optimizer="sgd")


GRID = [0.01, 0.1, 1.0]
"""The lr_grid every hand-made record was chosen from (a study's lrs)."""


def rec(
    cfg: RunConfig, lr: float, lam: float, seed: int, val: float | None, status="ok", grid=GRID
):
    c = cfg.replace(lr=lr, lam=lam, seed=seed, lr_grid=list(grid))
    row = [None, None] if val is None else [val, val]
    return RunRecord(run_id=c.run_id, config=c.to_dict(), status=status, acc_val=[row])


def key(cfg: RunConfig, lr: float, grid=GRID) -> str:
    return group_key(cfg.replace(lr=lr, lr_grid=list(grid)).to_dict())


def test_the_family_keeps_the_lr_whose_chosen_lambda_scores_best():
    # lr 0.01: lambda 10 wins its grid with mean 0.80; lr 0.1: lambda 1 wins with 0.85.
    records = [
        rec(SGD, 0.01, 1.0, 100, 0.70), rec(SGD, 0.01, 1.0, 101, 0.72),
        rec(SGD, 0.01, 10.0, 100, 0.79), rec(SGD, 0.01, 10.0, 101, 0.81),
        rec(SGD, 0.1, 1.0, 100, 0.84), rec(SGD, 0.1, 1.0, 101, 0.86),
        rec(SGD, 0.1, 10.0, 100, None, "diverged"), rec(SGD, 0.1, 10.0, 101, 0.99),
    ]  # fmt: skip
    per_lr = choose_lambdas(records, [100, 101])
    assert per_lr == {key(SGD, 0.01): 10.0, key(SGD, 0.1): 1.0}
    assert choose(records, [100, 101]) == {key(SGD, 0.01): None, key(SGD, 0.1): 1.0}
    assert family_key(records[0].config) == family_key(records[-1].config)


def test_ties_go_to_the_smaller_lr_and_an_lr_that_diverged_everywhere_never_wins():
    records = [
        rec(SGD, 0.1, 1.0, 100, 0.8), rec(SGD, 0.01, 1.0, 100, 0.8),
        rec(SGD, 1.0, 1.0, 100, None, "diverged"),
    ]  # fmt: skip
    assert choose(records, [100]) == {key(SGD, 0.01): 1.0, key(SGD, 0.1): None, key(SGD, 1.0): None}


def test_unpenalised_methods_choose_their_lr_on_the_selection_seeds():
    records = [rec(BASE, 0.01, 0.0, 100, 0.6), rec(BASE, 0.1, 0.0, 100, 0.9)]
    assert choose(records, [100]) == {key(BASE, 0.01): None, key(BASE, 0.1): 0.0}
    assert lr_edges(records) == {family_key(records[0].config): (0.01, 1.0)}  # the grid's ends


def test_a_failed_selection_run_leaves_the_whole_family_undecided():
    records = [
        rec(SGD, 0.01, 1.0, 100, 0.9),
        rec(SGD, 0.1, 1.0, 100, None, "failed"),
    ]
    assert choose(records, [100]) == {key(SGD, 0.01): None, key(SGD, 0.1): None}


def test_without_an_lr_grid_groups_at_different_lrs_never_compete():
    """Two studies that merely set different lrs: each group is tested at its own lr."""
    records = [
        rec(SGD, 0.01, 1.0, 100, 0.7, grid=[]), rec(SGD, 0.01, 10.0, 100, 0.8, grid=[]),
        rec(SGD, 0.1, 1.0, 100, 0.9, grid=[]),
    ]  # fmt: skip
    want = {key(SGD, 0.01, []): 10.0, key(SGD, 0.1, []): 1.0}
    assert choose(records, [100]) == choose_lambdas(records, [100]) == want
    assert lr_edges(records) == {}
    base = [rec(BASE, lr, 0.0, 0, 0.5, grid=[]) for lr in (0.01, 0.1)]  # test runs only
    assert choose(base, [100]) == {key(BASE, 0.01, []): 0.0, key(BASE, 0.1, []): 0.0}


def test_two_studies_at_different_lrs_stay_two_groups_each_tested():
    data = {
        **TINY,
        "studies": [
            {
                "sequence": "mnist-fmnist",
                "settings": {"lr": lr},
                "methods": ["baseline", "ewc diag-exact"],
            }
            for lr in (0.01, 0.1)
        ],
    }
    exp = parse_experiment(data)
    assert [(g.base.lr, g.tunes_lr, g.selects) for g in exp.groups] == [
        (0.01, False, False), (0.01, False, True), (0.1, False, False), (0.1, False, True),
    ]  # fmt: skip
    # both ewc groups choose their own lambda and are tested; both baselines are tested
    records = [
        RunRecord(run_id=c.run_id, config=c.to_dict(), acc_val=[[0.8, 0.8]])
        for c in exp.selection_configs()
    ]
    chosen = choose(records, [7])
    final = exp.final_configs(chosen)
    assert sorted((c.method, c.lr) for c in final if c.seed == 0) == [
        ("baseline", 0.01), ("baseline", 0.1), ("ewc", 0.01), ("ewc", 0.1),
    ]  # fmt: skip


def test_lr_grid_is_validated():
    with pytest.raises(ValueError, match="one of the run's lr_grid"):
        SGD.replace(lr=0.5, lr_grid=[0.01, 0.1])
    with pytest.raises(ValueError, match="two or more distinct learning rates"):
        SGD.replace(lr=0.1, lr_grid=[0.1])


def test_other_optimizers_get_their_own_report_section():
    adam = RunConfig(data="synthetic", method="ewc", estimator="diag-exact").to_dict()
    assert section_of(SGD.to_dict()) == section_of(adam) + " with sgd"


TINY = {
    "name": "tiny-lr",
    "seeds": [0, 1],
    "selection_seeds": [7],
    "defaults": {
        "data": "synthetic",
        "epochs": 1,
        "fisher_samples": 32,
        "train_limit": 300,
        "eval_limit": 100,
        "optimizer": "sgd",
    },
    "lambdas": {"default": [1.0, 100.0]},
    "studies": [
        {"sequence": "mnist-fmnist", "lrs": [0.01, 0.1], "methods": ["baseline", "ewc diag-exact"]}
    ],
}


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"lrs": []}, "non-empty list of distinct positive numbers"),
        ({"lrs": [0.1, 0.1]}, "non-empty list of distinct positive numbers"),
        ({"lrs": [-0.1]}, "non-empty list of distinct positive numbers"),
        ({"lrs": [0.1], "settings": {"lr": 0.1}}, "sets both lr"),
    ],
)
def test_bad_lr_grids_are_refused(study, message):
    bad = {**TINY, "studies": [{**TINY["studies"][0], **study}]}
    with pytest.raises(ValueError, match=message):
        parse_experiment(bad)


def test_groups_per_lr_all_select_and_set_lr_collapses_them():
    exp = parse_experiment(TINY)
    assert all(g.base.lr_grid == [0.01, 0.1] for g in exp.groups)
    assert [(g.base.method, g.base.lr, g.tunes_lr) for g in exp.groups] == [
        ("baseline", 0.01, True), ("baseline", 0.1, True),
        ("ewc", 0.01, True), ("ewc", 0.1, True),
    ]  # fmt: skip
    # the baseline runs on the selection seed once per lr; ewc per lr and lambda
    assert len(exp.selection_configs()) == 2 + 2 * 2
    one = parse_experiment(TINY, {"lr": 0.05})
    assert [(g.base.lr, g.base.lr_grid, g.tunes_lr) for g in one.groups] == [
        (0.05, [], False), (0.05, [], False),
    ]  # fmt: skip
    assert [c.method for c in one.selection_configs()] == ["ewc", "ewc"]


def test_sweep_tests_only_the_chosen_lr_and_the_report_says_which(tmp_path):
    results = tmp_path / "results"
    run_sweep(parse_experiment(TINY), results)
    records = list(read_records(results))
    test = [r for r in records if r.config["seed"] != 7]
    assert len(records) == 6 + 2 * 2  # selection, then 2 test seeds of 2 methods
    chosen = choose(records, [7])
    for method in ("baseline", "ewc"):
        lrs = {r.config["lr"] for r in test if r.config["method"] == method}
        winners = [k for k, v in chosen.items() if v is not None and f'"method":"{method}"' in k]
        assert len(lrs) == 1 and len(winners) == 1 and f'"lr":{lrs.pop()}' in winners[0]
    runs = summarise(records, [7])
    assert {r.label for r in runs} == {"baseline", "ewc diag-exact"}
    assert all(r.sequence.endswith(" with sgd") for r in runs)
    rows = {row[2]: row for row in lambda_rows(runs)}
    assert set(rows) == {"baseline", "ewc diag-exact"}
    assert " at lr " in rows["ewc diag-exact"][3] and "**lr " in rows["ewc diag-exact"][6]
    assert rows["baseline"][6].count("lr ") == 2

    from benchmark.report import build_report

    build_report(results, tmp_path / "report")
    table = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert sum(r["selected"] == "true" for r in table) == 4
    assert "lr is chosen with lambda" in (tmp_path / "report" / "REPORT.md").read_text()
