"""The full Fisher dense or as its factor: the quick measurement, its arithmetic, its section.

Synthetic inputs only (no dataset); the quick network is the MLP 784-4-4-10 (P = 3,210).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.config import RunConfig
from benchmark.costs import scaling
from benchmark.costs import scaling_representation as sr
from benchmark.experiment import load_experiment
from benchmark.models import n_parameters
from benchmark.report import scaling as scaling_report
from benchmark.report import scaling_representation as report

SAMPLE = Path(__file__).parent / "data" / "scaling_record.json"


@pytest.fixture(scope="module")
def record():
    return sr.measure_representation(sr.quick_representation(), repeats=1)


def by_rep(point):
    return {r["representation"]: r for r in point["rows"]}


def test_quick_measures_both_representations(record):
    config = sr.quick_representation()
    p = record["settings"]["parameters"]
    assert p == 784 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10
    assert [pt["n"] for pt in record["points"]] == list(config.n_values)
    for point in record["points"]:
        rows = by_rep(point)
        assert set(rows) == {"dense", "factor"}
        r = point["rows_r"]
        assert r == 10 * point["n"]
        assert rows["dense"]["nbytes"] == 4 * p * p  # float32 P x P
        assert rows["factor"]["nbytes"] == 4 * r * p  # float32 R x P
        assert rows["dense"]["structure"] == "full-dense"
        assert rows["factor"]["structure"] == "full-factor"
        for row in rows.values():
            assert row["status"] == "ok", row
            assert row["fit_s"] > 0 and all(t > 0 for t in row["fit_times_s"])
            assert row["fit_s"] == min(row["fit_times_s"])
            assert [x["tasks"] for x in row["penalty"]] == [1, 4]
            assert all(x["median_s"] > 0 for x in row["penalty"])
            assert len(row["consolidate_s"]) == 4
            assert set(row["runs"]) == {"mnist-fmnist", "permuted-mnist"}
        pen = {rep: {x["tasks"]: x for x in row["penalty"]} for rep, row in rows.items()}
        # separate mode: four factors are four terms; four dense matrices merge into one
        assert pen["factor"][4]["penalty_bytes"] == 4 * rows["factor"]["nbytes"]
        assert pen["dense"][4]["penalty_bytes"] == rows["dense"]["nbytes"] + 4 * p  # + offset
        assert point["cheaper"]["mnist-fmnist"] in ("dense", "factor")
    assert record["threads"] >= 1 and record["protocol"]["error"] is None


def test_run_seconds_and_interpolation():
    row = {
        "fit_s": 2.0,
        "consolidate_s": [0.1, 0.2, 0.3, 0.4],
        "penalty": [{"tasks": 1, "extra_s": 0.01}, {"tasks": 4, "extra_s": 0.04}],
    }
    fmnist, permuted = sr.SHAPES
    assert sr.run_seconds(row, fmnist) == pytest.approx(2.0 + 0.1 + 2160 * 0.01)
    # T = 2, 3 interpolated: 0.02, 0.03
    assert sr.run_seconds(row, permuted) == pytest.approx(4 * 2.0 + 1.0 + 540 * 0.10)
    assert sr.penalty_at({1: 1.0, 4: 4.0}, 3) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="outside the measured T"):
        sr.penalty_at({1: 1.0, 4: 4.0}, 5)


def test_constants_match_the_experiment_files():
    """Steps, fits and N come from full-fisher.toml (and RunConfig's validation split)."""
    assert sr.STEPS_PER_EPOCH == 540 and RunConfig().val_fraction == pytest.approx(0.1)
    assert 60_000 * (1 - RunConfig().val_fraction) == sr.TRAIN_INPUTS
    groups = [
        g.base for g in load_experiment("full-fisher").groups if g.base.estimator == "full-exact"
    ]
    for base in groups:
        assert base.batch_size == sr.BATCH_SIZE
        assert (base.model, base.model_options) == (sr.MODEL, {"hidden": sr.HIDDEN})
    fmnist = [b for b in groups if b.sequence == "mnist-fmnist"]
    assert sorted(b.fisher_samples for b in fmnist) == list(sr.N_VALUES)
    assert {b.epochs for b in fmnist} == {4}
    (permuted,) = [b for b in groups if b.sequence == "permuted-mnist"]
    assert (permuted.n_tasks, permuted.epochs) == (5, 1)
    shapes = {s.sequence: s for s in sr.SHAPES}
    assert shapes["mnist-fmnist"].fits == 1 and shapes["mnist-fmnist"].steps == ((1, 2160),)
    assert shapes["permuted-mnist"].fits == permuted.n_tasks - 1
    assert sum(n for _, n in shapes["permuted-mnist"].steps) == 4 * 540
    assert n_parameters(sr.network(sr.RepresentationConfig(), "cpu")) == 13_002


def test_protocol_usage_reads_the_files():
    usage = sr.protocol_usage()
    got = {(r["experiment"], r["sequence"], r["fisher_samples"]): r for r in usage["rows"]}
    assert got[("full-fisher", "mnist-fmnist", 20)]["representation"] == "dense"
    assert got[("full-fisher", "permuted-mnist", 1000)]["representation"] == "dense"
    assert got[("ablation", "split-mnist", 1000)]["rows_r"] == 2000
    assert got[("ablation", "split-mnist-class", 1000)]["representation"] == "factor"
    broken = sr.protocol_usage(("no-such-experiment",))
    assert broken["rows"] == [] and "unknown experiment" in broken["error"]


def test_refusal_is_a_row_and_the_rest_is_measured():
    """Dense (P^2 = 41 MB) over a 600 kB budget is refused; the factor (514 kB) runs."""
    config = sr.RepresentationConfig(n_values=(4,), hidden=4, steps=1, memory_budget=600_000)
    rec = sr.measure_representation(config, repeats=1)
    (point,) = rec["points"]
    rows = by_rep(point)
    assert rows["dense"]["status"] == "refused"
    assert rows["dense"]["needed_bytes"] == 4 * rec["settings"]["parameters"] ** 2
    assert "fit_s" not in rows["dense"] and "runs" not in rows["dense"]
    assert rows["factor"]["status"] == "ok" and rows["factor"]["runs"]
    assert point["cheaper"] == {"mnist-fmnist": None, "permuted-mnist": None}
    text = "\n".join(report.representation_section({"representation": rec}))
    assert "| 4 | 40 | dense | refused (needs 39.3 MiB) |" in text
    assert "not compared at N = 4 (see the table)" in text


# -- the section ----------------------------------------------------------------------------


def hand_row(rep, fit_s, runs):
    return {
        "representation": rep,
        "status": "ok",
        "fit_s": fit_s,
        "nbytes": 4 * 13_002 * (13_002 if rep == "dense" else 10_000),
        "penalty": [{"tasks": 1, "extra_s": 0.05}, {"tasks": 4, "extra_s": 0.06}],
        "runs": dict(zip(("mnist-fmnist", "permuted-mnist"), runs, strict=True)),
    }


def hand_record(dense_runs, factor_runs, n=1000):
    """A representation record at one N with the given seconds per run (mnist-fmnist, permuted)."""
    protocol_row = {"experiment": "full-fisher", "file": "benchmark/experiments/full-fisher.toml"}
    protocol_row |= {"classes": 10, "fisher_samples": n, "rows_r": 10 * n}
    return {
        "settings": {
            "hidden": 16,
            "classes": 10,
            "parameters": 13_002,
            "estimator": "full-exact",
            "dtype": "float32",
            "memory_budget": 4 * 1024**3,
            "repeats": 3,
            "batch_size": 100,
            "optimizer": "Adam(lr=0.001)",
            "lambda": 100.0,
            "steps": 40,
            "past_tasks": [1, 4],
        },
        "shapes": [{**vars(s), "steps": [list(x) for x in s.steps]} for s in sr.SHAPES],
        "points": [
            {
                "n": n,
                "rows_r": 10 * n,
                "plain_s": 0.001,
                "rows": [hand_row("dense", 48.0, dense_runs), hand_row("factor", 3.0, factor_runs)],
            }
        ],
        "protocol": {
            "hidden": 16,
            "error": None,
            "rows": [
                {**protocol_row, "sequence": "mnist-fmnist", "representation": "dense"},
                {**protocol_row, "sequence": "permuted-mnist", "representation": "dense"},
            ],
        },
        "threads": 2,
        "device": "cpu",
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m benchmark scaling --representation-only",
        "load_average": [0.1, 0.2],
    }


def section(rep):
    return "\n".join(report.representation_section({"representation": rep}))


def test_section_names_the_cheaper_representation():
    # dense wins mnist-fmnist (one fit, many T = 1 steps); the factor wins permuted-mnist
    text = section(hand_record((100.0, 400.0), (200.0, 100.0)))
    assert text.startswith(report.HEADING)
    assert (
        "Per run of `mnist-fmnist` (1 fit, then 2,160 penalised steps at T = 1), the cheaper is "
        "the dense matrix at N = 1,000 (2x less: 100 s against 200 s)."
    ) in text
    assert (
        "Per run of `permuted-mnist` (4 fits, then 540 penalised steps at each T = 1, 2, 3, 4), "
        "the cheaper is the factor at N = 1,000 (4x less: 100 s against 400 s)."
    ) in text
    assert "| 1,000 | 10,000 | dense | 48 | 644.9 | 50.0 | 60.0 | 100 | 400 |" in text
    assert '`benchmark/experiments/full-fisher.toml` forces `representation = "dense"`' in text
    assert (
        "the forced representation is the cheaper one for full-fisher mnist-fmnist N = 1,000"
        in (text)
    )
    assert "the other one is cheaper for full-fisher permuted-mnist N = 1,000" in text
    # the same record with the costs swapped: the answer swaps too
    swapped = section(hand_record((200.0, 100.0), (100.0, 400.0), n=20))
    assert (
        "`mnist-fmnist` (1 fit, then 2,160 penalised steps at T = 1), the cheaper is the factor"
        in (swapped)
    )
    assert "the cheaper is the dense matrix at N = 20 (4x less: 100 s against 400 s)" in swapped
    assert "the forced representation is the cheaper one for full-fisher permuted-mnist N = 20" in (
        swapped
    )


def test_section_names_the_commit_it_was_measured_at():
    rep = hand_record((100.0, 400.0), (200.0, 100.0))
    assert " at git " not in section(rep)  # records made before the SHA was kept
    text = section({**rep, "git": "abc1234"})
    assert "Measured 2026-01-01T00:00:00+00:00 at git abc1234 (1-minute load average" in text


def test_missing_section_says_how_to_measure_it():
    for rec in ({}, {"representation": None}):
        assert report.representation_section(rec) == [report.HEADING, "", report.MISSING, ""]
    sample = json.loads(SAMPLE.read_text())
    text = scaling_report.render_markdown(sample)
    assert f"{report.HEADING}\n\n{report.MISSING}" in text
    assert text.index("## Where the dense full Fisher stops fitting") < text.index(report.HEADING)
    assert text.index(report.HEADING) < text.index("## Where a whole run's time goes")


# -- wiring ---------------------------------------------------------------------------------


def test_scaling_measures_it_and_quick_is_tiny(monkeypatch):
    assert scaling.ScalingConfig().representation == sr.RepresentationConfig()
    assert sr.RepresentationConfig().n_values == (20, 200, 1000)
    assert scaling.quick_config().representation == sr.quick_representation()
    # the other sections are test_scaling.py's: stubbed here, so that this test takes seconds
    monkeypatch.setattr(scaling, "sweep_n", lambda config, progress: [])
    monkeypatch.setattr(scaling, "sweep_models", lambda *args: [])
    monkeypatch.setattr(scaling, "sweep_penalty", lambda config, progress: {})
    cfg = scaling.quick_config(memory=False, throughput=None)
    rec = scaling.run_scaling(cfg)
    assert [p["n"] for p in rec["representation"]["points"]] == [4, 8]
    assert rec["representation"]["settings"]["repeats"] == cfg.repeats
    assert scaling.total_ticks(cfg) == scaling.total_ticks(replace(cfg, representation=None)) + 4
    assert scaling.run_scaling(replace(cfg, representation=None))["representation"] is None


def test_cli_representation_only(tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["scaling", "--out", str(out), "--representation-only", "--quick"]
    assert cli.main(args) == 2
    assert "run `make scaling` first" in capsys.readouterr().err
    out.mkdir()
    sample = json.loads(SAMPLE.read_text())
    (out / "scaling.json").write_text(json.dumps(sample))
    assert cli.main([*args, "--executors-only"]) == 2
    assert "give one of --executors-only, --representation-only" in capsys.readouterr().err
    assert cli.main(args) == 0
    again = json.loads((out / "scaling.json").read_text())
    rep = again.pop("representation")
    assert again == sample  # every other section kept as it was
    assert [p["n"] for p in rep["points"]] == [4, 8]
    assert rep["settings"]["repeats"] == 1 and "--representation-only" in rep["command"]
    text = (out / "scaling.md").read_text()
    assert report.HEADING in text and report.MISSING not in text
    assert "| 8 | 80 | factor |" in text
