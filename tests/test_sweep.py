"""Sweeps: experiment parsing and validation, selection on validation, resume, CLI errors, and the
whole pipeline (sweep -> selection -> report) on a tiny synthetic experiment."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmark import harness, memwatch, sweep
from benchmark.records import read_records
from benchmark.selection import choose_lambdas, group_key
from benchmark.sweep import load_experiment, parse_experiment, run_sweep

TINY = {
    "name": "tiny",
    "description": "tiny synthetic experiment for tests",
    "seeds": [0, 1],
    "selection_seeds": [7],
    "defaults": {
        "data": "synthetic",
        "epochs": 1,
        "fisher_samples": 32,
        "train_limit": 300,
        "eval_limit": 100,
    },
    "lambdas": {"default": [1.0, 100.0], "l2": [0.1]},
    "studies": [
        {
            "sequence": "mnist-fmnist",
            "bn": ["freeze"],
            "methods": ["baseline", "l2", "ewc diag-exact"],
        }
    ],
}


def test_builtin_experiments_validate():
    names = sweep.builtin_experiments()
    assert {"default", "quick", "full"} <= set(names)
    for name in names:
        exp = load_experiment(name)
        assert exp.groups and not set(exp.selection_seeds) & set(exp.all_test_seeds())


def test_default_experiment_meets_the_protocol():
    """Issue 14: 3 selection seeds, >= 10 test seeds (20 class-incremental), half-decades."""
    exp = load_experiment("default")
    assert len(exp.selection_seeds) == 3 and exp.per_decade == 2 and exp.extend >= 2
    for g in exp.groups:
        assert len(g.seeds) >= (20 if g.base.sequence == "split-mnist-class" else 10)


def test_plan_counts():
    exp = parse_experiment(TINY)
    assert len(exp.groups) == 3
    assert [len(g.lambdas) for g in exp.groups] == [1, 1, 2]
    sel = exp.selection_configs()  # baseline has no lambda to choose: no selection runs
    assert (
        len(sel) == 3 and {c.seed for c in sel} == {7} and "baseline" not in {c.method for c in sel}
    )
    chosen = {group_key(g.base.to_dict()): g.lambdas[-1] for g in exp.groups}
    final = exp.final_configs(chosen)
    assert len(final) == 6 and {c.seed for c in final} == {0, 1}
    assert {c.lam for c in final if c.method == "baseline"} == {0.0}


def test_study_seeds_override_the_test_seeds():
    studies = [{**TINY["studies"][0], "seeds": [3, 4, 5]}]
    exp = parse_experiment({**TINY, "studies": studies})
    chosen = {group_key(g.base.to_dict()): g.lambdas[0] for g in exp.groups}
    assert {c.seed for c in exp.final_configs(chosen)} == {3, 4, 5}
    assert exp.all_test_seeds() == [3, 4, 5]


def test_selection_and_test_seeds_must_be_disjoint():
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] of studies\[0\] are also selection"):
        parse_experiment({**TINY, "selection_seeds": [1, 9]})
    studies = [{**TINY["studies"][0], "seeds": [7]}]
    with pytest.raises(ValueError, match="also selection seeds"):
        parse_experiment({**TINY, "studies": studies})
    exp = parse_experiment(TINY)
    with pytest.raises(ValueError, match="also selection seeds"):
        exp.set_test_seeds([0, 7])
    exp.set_test_seeds([2, 3])
    assert {c.seed for c in exp.final_configs({})} == {2, 3}  # baseline only: no lambda chosen


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"studies": [{"sequence": "mnist-fmnist", "methods": ["ewc diag-true"]}]}, "estimator"),
        (
            {"studies": [{"sequence": "mnist-fmnist", "methods": ["dropout"]}]},
            "unknown method 'dropout'",
        ),
        (
            {"studies": [{"sequence": "mnist-fmnist", "methods": ["baseline"], "colour": 1}]},
            "unknown key",
        ),
        ({"defaults": {"epoch": 1}}, r"unknown key\(s\) 'epoch' in \[defaults\]"),
        ({"seeds": []}, "non-empty list"),
        ({"selection_seed": 9}, "replaced by selection_seeds"),
        ({"extend_factor": 3}, "replaced by per_decade"),
        ({"selection_seeds": [1, 1]}, "distinct integers"),
        ({"per_decade": 0}, "per_decade must be an integer >= 1"),
        ({"lambdas": {"l2": [0.1]}}, "no lambda grid for 'ewc diag-exact'"),
        ({"studies": []}, "no studies"),
        ({"colour": "red"}, r"unknown key\(s\) 'colour' in the experiment"),
    ],
)
def test_experiment_errors(patch, message):
    with pytest.raises(ValueError, match=message):
        parse_experiment({**TINY, **patch})


def test_unknown_experiment_name():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; built-in: ablation, default"):
        load_experiment("nope")


def test_sweep_selection_resume_and_report(tmp_path, monkeypatch):
    """Interrupt after two runs; the restart does only the rest; the report builds from records."""
    exp = parse_experiment(TINY)
    results = tmp_path / "results"
    calls = []
    real_run = harness.run

    def interrupting(config, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(config.run_id)
        return real_run(config, **kw)

    monkeypatch.setattr(harness, "run", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(exp, results)
    done = {r.run_id for r in read_records(results)}
    assert done == set(calls) and len(done) == 2
    assert not list((results / "runs").glob(".*.tmp"))

    calls.clear()
    monkeypatch.setattr(
        harness,
        "run",
        lambda config, **kw: (calls.append(config.run_id), real_run(config, **kw))[1],
    )
    meta = run_sweep(exp, results)
    assert not set(calls) & done  # nothing redone
    records = list(read_records(results))
    assert len(records) == 3 + 6  # selection 3 (seed 7), then test seeds 0, 1 of 3 groups
    written = json.loads((results / "sweep.json").read_text())
    assert meta["runs"] == 9 and written["experiment"] == "tiny"
    assert written["selection_seeds"] == [7] and written["seeds"] == [0, 1]
    if memwatch.supported():  # the driver (and any worker) sampled while the sweep ran
        assert written["memory"]["peak_pss_bytes"] > 0
        assert written["invocations"][-1]["memory"] == written["memory"]
    chosen = choose_lambdas(records, [7])
    assert all(v is not None for v in chosen.values())

    calls.clear()
    run_sweep(exp, results)
    assert calls == []  # a finished sweep redoes nothing

    from benchmark.report import build_report

    report = build_report(results, tmp_path / "report")
    text = report.read_text()
    assert "mnist-fmnist" in text and "selection seeds (7)" in text
    assert ("- Sweep memory: peak " in text) == memwatch.supported()
    import csv

    rows = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert len(rows) == 9
    assert {r["role"] for r in rows if r["seed"] == "7"} == {"selection"}
    assert {r["role"] for r in rows if r["seed"] != "7"} == {"test"}
    assert all(r["selected"] == "false" for r in rows if r["role"] == "selection")
    assert sum(r["selected"] == "true" for r in rows) == 6


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path, monkeypatch):
    exp = parse_experiment({**TINY, "seeds": [0]})

    def failing(config, **kw):
        if config.method == "l2":
            raise RuntimeError("boom")
        return harness.__dict__["_real_run"](config, **kw)

    monkeypatch.setitem(harness.__dict__, "_real_run", harness.run)
    monkeypatch.setattr(harness, "run", failing)
    run_sweep(exp, tmp_path)
    statuses = {r.config["method"]: r.status for r in read_records(tmp_path)}
    assert statuses["l2"] == "failed" and statuses["baseline"] == "ok"
    failed = next(r for r in read_records(tmp_path) if r.status == "failed")
    assert "RuntimeError: boom" in failed.message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--sequence", "cifar"], "'sequence' = 'cifar' is invalid"),
        (["run", "--estimator", "diag-true"], "estimator"),
        (["run", "--epochs", "0"], "a positive integer"),
        (["sweep", "--experiment", "nope", "--dry-run"], "unknown experiment 'nope'"),
        (["sweep", "--set", "epoch=1", "--dry-run"], r"unknown key\(s\) 'epoch'"),
        (["sweep", "--set", "epochs", "--dry-run"], "KEY=VALUE"),
        (["report", "--results", "/nonexistent"], "no records"),
    ],
)
def test_cli_errors(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert pytest.importorskip("re").search(message, proc.stderr), proc.stderr


def test_cli_help_lists_commands():
    out = _cli("--help").stdout
    for command in ("run", "sweep", "report", "pipeline", "reproduce", "timing"):
        assert command in out
    assert "--fisher-samples" in _cli("run", "--help").stdout


def test_cli_dry_run():
    proc = _cli("sweep", "--experiment", "quick", "--dry-run")
    assert proc.returncode == 0 and "selection runs" in proc.stdout


def _record(config, val):
    from benchmark.records import RunRecord

    return RunRecord(run_id=config.run_id, config=config.to_dict(), acc_val=[[val, val]])


def test_grid_grows_past_a_winning_edge():
    exp = parse_experiment({**TINY, "extend": 2})
    group = exp.groups[2]  # ewc diag-exact, grid (1, 100)
    runs = [g.base.replace(seed=7, lam=lam) for g in exp.groups for lam in g.lambdas]
    scores = {1.0: 0.5, 100.0: 0.9}  # the upper edge wins
    records = [_record(c, scores.get(c.lam, 0.4)) for c in runs]
    added = exp.extend_grids(records)
    assert [c.lam for c in added if c.method == "ewc"] == [1000.0]
    assert {c.seed for c in added} == {7}
    assert group.lambdas == (1.0, 100.0, 1000.0)
    assert exp.groups[0].lambdas == (0.0,)  # baseline: nothing to extend
    # l2's grid has one value: it is both edges, so it grows both ways
    assert exp.groups[1].lambdas == (0.01, 0.1, 1.0)
    records += [_record(c, 0.7) for c in added]  # 1000 is worse: 100 is now interior
    again = exp.extend_grids(records)
    assert all(c.method != "ewc" for c in again)


def test_extend_settings_are_validated():
    with pytest.raises(ValueError, match="extend must be an integer >= 0"):
        parse_experiment({**TINY, "extend": -1})


def test_half_decade_grid_grows_on_its_lattice():
    """per_decade = 2: 3162 -> 10000 -> 31620, never 9999.9 from accumulated rounding."""
    exp = parse_experiment(
        {**TINY, "extend": 3, "per_decade": 2, "lambdas": {"default": [316.2, 1000.0, 3162.0]}}
    )
    group = exp.groups[2]
    grown = []
    for _ in range(2):
        runs = [group.base.replace(seed=7, lam=lam) for lam in group.lambdas]
        added = exp.extend_grids([_record(c, c.lam / 1e5) for c in runs])  # larger is better
        grown += [c.lam for c in added if c.method == "ewc"]
    assert grown == [10000.0, 31620.0]


def test_records_written_before_a_setting_existed_still_group_with_new_configs(tmp_path):
    """A record without ``model_options`` (written before the setting existed) keeps its run id
    and its lambda group: a resumed sweep reuses it and still chooses lambda from it."""
    from benchmark.config import RunConfig
    from benchmark.records import RunRecord

    cfg = RunConfig(data="synthetic", method="ewc", estimator="diag-exact", lam=1.0)
    old = RunRecord(run_id=cfg.run_id, config=cfg.to_dict(), acc_val=[[0.5, 0.5]]).to_dict()
    del old["config"]["model_options"]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{cfg.run_id}.json").write_text(json.dumps(old))
    (record,) = read_records(tmp_path)
    assert record.config["model_options"] == {}
    assert RunConfig.from_dict(record.config).run_id == cfg.run_id
    assert choose_lambdas([record], [0]) == {group_key(cfg.to_dict()): 1.0}
    wider = cfg.replace(model="mlp", model_options={"hidden": 8})
    assert wider.run_id != cfg.replace(model="mlp").run_id  # a set option is part of the id


def test_sweep_json_keeps_every_invocation(tmp_path):
    exp = parse_experiment({**TINY, "seeds": [0]})
    first = run_sweep(exp, tmp_path)
    second = run_sweep(parse_experiment({**TINY, "seeds": [0]}), tmp_path)
    assert [c["ran_now"] for c in first["invocations"]] == [first["runs"]]
    assert [c["ran_now"] for c in second["invocations"]] == [first["runs"], 0]
    assert second["invocations"][0] == first["invocations"][0]
    other = parse_experiment({**TINY, "name": "other", "seeds": [0]})
    assert len(run_sweep(other, tmp_path)["invocations"]) == 1  # another experiment: fresh


def test_jobs_and_threads(monkeypatch, tmp_path):
    from benchmark import execution

    monkeypatch.setattr(execution, "available_cores", lambda: 4)
    assert execution.resolve_jobs("auto") == 4 and execution.resolve_jobs(3) == 3
    assert execution.threads_per_run(2) == 2 and execution.threads_per_run(4) == 1
    assert execution.threads_per_run(8) == 1 and execution.threads_per_run(2, 3) == 3
    monkeypatch.undo()
    exp = parse_experiment({**TINY, "seeds": [0]})
    meta = run_sweep(exp, tmp_path, jobs=2, threads=1)
    assert meta["parallel"] == {"jobs": 2, "threads_per_run": 1, "group_size": 1}
    assert {r.provenance["torch_threads"] for r in read_records(tmp_path)} == {1}


def test_cli_jobs_accepts_auto_and_refuses_zero():
    from benchmark.cli.common import jobs_arg

    assert jobs_arg("auto") == "auto" and jobs_arg("2") == 2
    with pytest.raises(Exception, match="positive integer"):
        jobs_arg("0")


def test_an_interrupted_sweep_says_how_many_records_it_keeps(tmp_path, monkeypatch):
    """Ctrl-C mid-phase: the message counts the records on disk, which the next run reuses."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(3):
        (runs / f"run{i}.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    class Pool:
        closed = None

        def close(self, kill):
            Pool.closed = kill

    monkeypatch.setattr(sweep, "_phases", interrupted)
    monkeypatch.setattr(sweep, "clean_partial", lambda results: None)
    with pytest.raises(sweep.SweepInterrupted, match=r"^3 finished run records kept in "):
        sweep._run_phases(None, tmp_path, Pool(), None, False, None)
    assert Pool.closed is True  # the workers were stopped


def test_a_second_interrupt_while_stopping_workers_is_absorbed():
    """Killing the pool finishes even when Ctrl-C arrives again during the workers' join."""
    from benchmark.execution import stop_executor

    class Proc:
        def __init__(self):
            self.killed = self.joined = False

        def is_alive(self):
            return True

        def kill(self):
            self.killed = True

        def join(self, timeout=None):
            self.joined = True
            raise KeyboardInterrupt

    class Executor:
        def __init__(self):
            self._processes = {1: Proc(), 2: Proc()}

        def shutdown(self, wait, cancel_futures=False):
            self.cancelled = cancel_futures

    executor = Executor()
    procs = list(executor._processes.values())
    stop_executor(executor, kill=True)  # must not raise
    assert executor.cancelled and all(p.killed and p.joined for p in procs)
