"""Runs trained together (``benchmark.grouped``) give their records alone; sweeps pack them."""

from __future__ import annotations

import pytest

from benchmark import execution, grouped
from benchmark.config import RunConfig
from benchmark.grouped import GroupError, can_group, run_group
from benchmark.harness import run
from benchmark.records import read_records
from benchmark.sweep import parse_experiment, run_sweep
from tests.test_sweep import TINY

BASE = {"data": "synthetic", "epochs": 1, "fisher_samples": 64, "eval_limit": 100}
CASES = {
    "diag-bn-freeze": {"model": "tutorial-mlp", "method": "ewc", "estimator": "diag-exact"},
    "kfac-bn-update": {
        "model": "tutorial-mlp",
        "method": "ewc",
        "estimator": "kfac-exact",
        "bn": "update",
    },
    "full-factor": {
        "model": "mlp",
        "method": "ewc",
        "estimator": "full-exact",
        "fisher_samples": 16,
    },
    "l2": {"model": "mlp", "method": "l2", "estimator": None},
    "mas-online": {"model": "mlp", "method": "mas", "estimator": None, "mode": "online"},
    "diag-mc-online": {"model": "mlp", "method": "ewc", "estimator": "diag-mc", "mode": "online"},
    "split-same-seed": {
        "model": "mlp",
        "sequence": "split-mnist",
        "n_tasks": 3,
        "method": "ewc",
        "estimator": "kfac-exact",
    },
}


def _configs(case: dict, lams=(1.0, 100.0, 10.0), seeds=(0, 0, 1)) -> list[RunConfig]:
    kw = {**BASE, "train_limit": 400, **case}
    if kw["method"] == "baseline":
        lams = (0.0,) * len(lams)
    if kw.get("sequence") == "split-mnist":
        seeds = (0,) * len(seeds)  # its task sizes depend on the seed: a lambda group
    return [RunConfig(**kw, lam=lam, seed=s) for lam, s in zip(lams, seeds)]


def _agree(group_record, alone_record, size: int = 3) -> None:
    assert group_record.status == alone_record.status == "ok"
    assert group_record.run_id == alone_record.run_id and group_record.tasks == alone_record.tasks
    for row_g, row_a in zip(group_record.acc_test, alone_record.acc_test, strict=True):
        assert row_g == pytest.approx(row_a, abs=0.02)
    assert group_record.train_loss == pytest.approx(alone_record.train_loss, rel=1e-4)
    assert group_record.curvature_bytes == alone_record.curvature_bytes
    assert group_record.representations == alone_record.representations
    if alone_record.config["estimator"] == "full-exact":  # 16 inputs x 10 classes, as a factor
        assert alone_record.representations == ["full-factor 160 rows", None]
    assert group_record.curvature_trace == [
        None if t is None else pytest.approx(t, rel=1e-3) for t in alone_record.curvature_trace
    ]
    assert group_record.provenance["group_size"] == size


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_in_a_group_gives_its_record_alone(case):
    configs = _configs(CASES[case])
    together = run_group(configs)
    for config, record in zip(configs, together, strict=True):
        _agree(record, run(config, probe=False))


def test_what_cannot_be_grouped():
    a = RunConfig(**BASE, method="ewc", estimator="diag-exact", lam=1.0)
    assert can_group([a, a.replace(lam=10.0, seed=3)]) is None
    assert "more than lambda and seed" in can_group([a, a.replace(estimator="kfac-exact")])
    joint = RunConfig(**BASE, method="joint", estimator=None)
    assert "joint" in can_group([joint, joint.replace(seed=1)])
    split = RunConfig(**BASE, sequence="split-mnist", n_tasks=2, method="baseline", estimator=None)
    with pytest.raises(GroupError, match="training inputs across the runs' seeds"):
        run_group([split, split.replace(seed=1)])


def test_a_diverging_run_fails_alone_in_its_group():
    sgd = {**CASES["l2"], "optimizer": "sgd", "lr": 0.05}  # SGD at lambda 1e6 blows up
    ok, blows = _configs(sgd, lams=(1.0, 1e6), seeds=(0, 0))
    assert run(blows, probe=False).status == "diverged"
    records = run_group([ok, blows])
    assert records[0].status == "ok" and records[1].status == "diverged"
    assert "non-finite" in records[1].message and records[1].acc_test[-1] == [None, None]
    _agree(records[0], run(ok, probe=False), size=2)


def test_pack_keeps_families_and_sizes():
    a = RunConfig(**BASE, method="ewc", estimator="diag-exact", lam=1.0)
    b = a.replace(estimator="kfac-exact")
    joint = RunConfig(**BASE, method="joint", estimator=None)
    configs = [a, b, a.replace(lam=10.0), joint, a.replace(lam=100.0), joint.replace(seed=1)]
    units = execution.pack(configs, 2)
    assert [[c.run_id for c in u] for u in units] == [
        [a.run_id, configs[2].run_id],
        [configs[4].run_id],
        [b.run_id],
        [joint.run_id],
        [configs[5].run_id],
    ]
    assert execution.pack(configs, 1) == [(c,) for c in configs]


def test_sweep_with_groups_writes_every_record_as_alone(tmp_path):
    exp = {**TINY, "seeds": [0, 1]}
    alone = run_sweep(parse_experiment(exp), tmp_path / "alone")
    grouped_meta = run_sweep(parse_experiment(exp), tmp_path / "grouped", group_size=3)
    assert grouped_meta["run_ids"] == alone["run_ids"]
    assert grouped_meta["parallel"]["group_size"] == 3
    by_id = {r.run_id: r for r in read_records(tmp_path / "alone")}
    together = list(read_records(tmp_path / "grouped"))
    assert len(together) == len(by_id)
    assert any(r.provenance.get("group_size", 1) > 1 for r in together)
    for record in together:
        assert record.status == by_id[record.run_id].status == "ok"
        for row_g, row_a in zip(record.acc_test, by_id[record.run_id].acc_test, strict=True):
            assert row_g == pytest.approx(row_a, abs=0.02)


def test_a_failing_group_runs_each_config_alone(tmp_path, monkeypatch):
    def broken(configs, **kw):
        raise RuntimeError("the stack fell over")

    monkeypatch.setattr(grouped, "run_group", broken)
    meta = run_sweep(parse_experiment({**TINY, "seeds": [0]}), tmp_path, group_size=3)
    records = list(read_records(tmp_path))
    assert records and all(r.status == "ok" for r in records)
    assert all("group_size" not in r.provenance for r in records)
    assert meta["counts"]["selection"]["failed"] == 0
