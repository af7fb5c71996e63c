"""The scaling command: end to end on a tiny configuration, its arithmetic, its report (golden).

Regenerate the golden file after an intended change of the report's layout with
``EWC_BENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_scaling.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.costs import scaling, throughput, time_split
from benchmark.records import RunRecord
from benchmark.report import scaling as scaling_report
from benchmark.report import scaling_figures

GOLDEN = Path(__file__).parent / "golden" / "scaling.md"
SAMPLE = Path(__file__).parent / "data" / "scaling_record.json"


@pytest.fixture(scope="module")
def record():
    return scaling.run_scaling(scaling.quick_config(memory=False))


def rows(point):
    return {r.get("name", r["estimator"]): r for r in point["rows"]}


LOWRANK = "lowrank-exact rank=200"


def test_every_sweep_times_every_estimator_and_the_floor(record):
    cfg = scaling.quick_config()
    for key, values, names in (
        ("n", cfg.n_values, cfg.n_estimators),
        ("width", cfg.widths, cfg.size_estimators),
        ("depth", cfg.depths, cfg.size_estimators),
        ("classes", cfg.classes, cfg.class_estimators),
    ):
        points = record[key]
        assert [p[key] for p in points] == list(values)
        for point in points:
            by_name = rows(point)
            assert set(by_name) == {"floor", *names}
            for label, row in by_name.items():
                if label == LOWRANK and point["n"] > cfg.max_n["lowrank-exact"]:
                    continue  # the cap: test_lowrank_is_capped_and_says_so
                assert row["status"] == "ok", row
                assert len(row["times_s"]) == cfg.repeats
                assert row["median_s"] > 0
                assert row["x_floor"] == pytest.approx(
                    row["median_s"] / by_name["floor"]["median_s"]
                )


def test_sizes_grow_as_the_models_do(record):
    params = [p["parameters"] for p in record["width"]]
    # 784-h-h-10: P = 784h + h + h^2 + h + 10h + 10
    assert params == [784 * h + h + h * h + h + 10 * h + 10 for h in (4, 8)]
    depth = [p["parameters"] for p in record["depth"]]
    assert depth[1] - depth[0] == 8 * 8 + 8
    # diag holds P floats whatever the model; full holds P^2 (dense: these models are tiny)
    for point in record["width"]:
        by_name = rows(point)
        assert by_name["diag-exact"]["nbytes"] == 4 * point["parameters"]
        assert by_name["full-mc"]["structure"] == "full-dense"
        assert by_name["full-mc"]["nbytes"] == 4 * point["parameters"] ** 2


def test_penalty_terms_grow_in_separate_mode_only(record):
    pen = record["penalty"]
    got = {(r["name"], r["mode"], r["tasks"]): r for r in pen["rows"]}
    diag_one = got[("diag-exact", "separate", 1)]["penalty_bytes"]
    assert got[("diag-exact", "separate", 3)]["penalty_bytes"] == 3 * diag_one
    assert got[("diag-exact", "online", 3)]["penalty_bytes"] == diag_one
    # the low-rank and factor curvatures have no online sum: refused, and said so
    refused = {r["name"]: r for r in pen["online_refused"]}
    assert {k for k, r in refused.items() if "online_rule" not in r["options"]} == {
        "lowrank-exact rank=20",
        "full-mc",
    }
    # plain KFAC/EKFAC fits run in separate mode only: their online mode is the rules' columns
    assert ("kfac-exact", "online", 1) not in got
    assert ("kfac-exact", "separate", 3) in got and ("ekfac-exact", "separate", 3) in got
    columns = {(r["name"], r["mode"]) for r in pen["rows"]}
    assert len(columns) == 9  # diag x2, kfac, kfac x2 rules, ekfac, ekfac sum, lowrank, full-mc
    assert len(pen["rows"]) == 9 * len(scaling.quick_config().past_tasks)


def test_online_kfac_rows_per_rule(record):
    """n-weighted holds one product whatever T; sum (and ekfac's sum) hold T terms."""
    pen = record["penalty"]
    got = {(r["name"], r["mode"], r["tasks"]): r for r in pen["rows"]}
    for label, rule in (
        ("kfac-exact online_rule=n-weighted", "n-weighted"),
        ("kfac-exact online_rule=sum", "sum"),
        ("ekfac-exact online_rule=sum", "sum"),
    ):
        one, three = got[(label, "online", 1)], got[(label, "online", 3)]
        assert one["options"] == {"online_rule": rule}
        assert one["estimator"] == label.split()[0]
        assert (label, "separate", 1) not in got  # separate mode refuses a fit with a rule
        grows = 3 if rule == "sum" else 1
        assert three["penalty_bytes"] == grows * one["penalty_bytes"]
    kfac_one = got[("kfac-exact", "separate", 1)]["penalty_bytes"]
    assert got[("kfac-exact online_rule=n-weighted", "online", 3)]["penalty_bytes"] == kfac_one
    # ekfac takes the sum rule only: the other listed rule is refused, with ekfac's reason
    (ekfac,) = [r for r in pen["online_refused"] if r["estimator"] == "ekfac-exact"]
    assert ekfac["name"] == "ekfac-exact online_rule=n-weighted"
    assert "is not defined for ekfac" in ekfac["reason"]
    assert {f["name"] for f in pen["fits"]} == set(scaling.quick_config().penalty_estimators)
    text = scaling_report.render_markdown(record)
    assert " | `kfac-exact online_rule=sum` online | " in text
    assert "`n-weighted` averages each layer's Kronecker factors" in text
    assert "- `ekfac-exact online_rule=n-weighted`: not measured: option" in text


def test_new_structures_join_the_default_studies():
    cfg = scaling.ScalingConfig()
    for labels in (cfg.n_estimators, cfg.size_estimators):
        assert "ekfac-exact" in labels and LOWRANK in labels
    assert {"ekfac-exact", LOWRANK, "kfac-exact online_rule=n-weighted"} <= set(
        cfg.penalty_estimators
    )
    assert "kfac-exact online_rule=sum" in cfg.penalty_estimators
    assert "ekfac-exact online_rule=sum" in cfg.penalty_estimators
    assert cfg.max_n["lowrank-exact"] == 3000 and max(cfg.n_values) > 3000
    assert cfg.max_parameters["lowrank-exact"] == 250_000
    with pytest.raises(scaling.ScalingError, match="penalty_estimators: bad variant"):
        scaling.ScalingConfig(penalty_estimators=("ekfac-exact online_rule=n-weighted",))
    with pytest.raises(scaling.ScalingError, match=r"unknown estimator name.*in max_n"):
        scaling.ScalingConfig(max_n={"lowrank-typo": 10})


def test_lowrank_is_capped_and_says_so(record):
    """Over its N cap the low-rank row is ``not timed``, its label and options recorded."""
    small, large = (rows(p)[LOWRANK] for p in record["n"])
    assert small["status"] == "ok" and small["structure"] == "lowrank"
    assert small["estimator"] == "lowrank-exact" and small["options"] == {"rank": 200}
    assert large["status"] == "not timed" and "not timed above N = 20" in large["message"]
    assert "times_s" not in large
    text = scaling_report.render_markdown(record)
    assert " | `lowrank-exact rank=200` | " in text
    assert "- `lowrank-exact rank=200`: not timed above N = 20 (" in text


def test_parameter_cap_stops_the_wider_models():
    cfg = scaling.quick_config(
        memory=False,
        n_values=(20,),
        n_estimators=("diag-exact",),
        size_estimators=(LOWRANK, "diag-exact"),
        max_parameters={"lowrank-exact": 5000},
        classes=(2,),
        depths=(1,),
        past_tasks=(1,),
        penalty_estimators=("diag-exact",),
        throughput=None,
    )
    record = scaling.run_scaling(cfg)
    narrow, wide = (rows(p)[LOWRANK] for p in record["width"])  # P = 3,210 and 6,442
    assert narrow["status"] == "ok"
    assert wide["status"] == "not timed" and "above P = 5,000" in wide["message"]
    assert rows(record["width"][1])["diag-exact"]["status"] == "ok"
    with pytest.raises(scaling.NotTimed, match="above N = 3,000"):
        scaling.check_limits(scaling.ScalingConfig(), "lowrank-exact", 10_000, 100)
    scaling.check_limits(scaling.ScalingConfig(), "kfac-exact", 10**6, 10**9)  # no cap


def test_refusal_is_a_row_with_the_bytes_it_needs():
    cfg = scaling.quick_config(
        memory=False,
        memory_budget=10_000,
        n_estimators=("full-mc",),
        widths=(4,),
        depths=(1,),
        classes=(2,),
        class_estimators=("diag-exact",),
        past_tasks=(1,),
        penalty_estimators=("diag-exact",),
    )
    record = scaling.run_scaling(cfg)
    row = rows(record["width"][0])["full-mc"]
    assert row["status"] == "refused"
    p = record["width"][0]["parameters"]
    assert row["needed_bytes"] == 4 * cfg.size_n * p  # the smaller choice, the factor
    assert "times_s" not in row
    text = scaling_report.render_markdown(record)
    assert "refused (needs" in text


def test_dense_limit():
    budget = 2 * 1024**3
    p = scaling.dense_limit(budget)
    assert p == 23170
    assert 4 * p * p <= budget < 4 * (p + 1) ** 2


def test_bad_configuration_says_what_is_wrong():
    with pytest.raises(scaling.ScalingError, match="widths must be positive integers"):
        scaling.ScalingConfig(widths=(0, 8))
    with pytest.raises(scaling.ScalingError, match="classes must be >= 2"):
        scaling.ScalingConfig(classes=(1,))
    with pytest.raises(scaling.ScalingError, match=r"unknown estimator name.*diag-typo"):
        scaling.ScalingConfig(n_estimators=("diag-typo",))


def test_run_time_split_by_hand():
    record = RunRecord(
        run_id="x",
        config={},
        train_seconds=[10.0, 12.0],
        estimate_seconds=[1.0, 0.0],
        eval_seconds=[0.5, 0.5],
        step_ms=[2.0, 2.0],
        penalty_ms=[None, 1.0],
    )
    split = time_split.run_time_split(record)
    # task 2: the penalty is 1 ms of a 3 ms step, a third of its 12 s of training
    assert split == {"training": 18.0, "penalty": 4.0, "estimation": 1.0, "evaluation": 1.0}


def test_time_split_from_sample_records():
    sample = Path(__file__).parent / "data" / "records_sample"
    split = time_split.time_split(str(sample))
    assert split["rows"] and split["reason"] is None
    for row in split["rows"]:
        assert row["runs"] >= 1
        assert all(row[k] >= 0 for k in scaling_report.SPLIT_PARTS)
    missing = time_split.time_split("/nonexistent/results")
    assert missing["rows"] == [] and "not a folder" in missing["reason"]


def test_report_matches_golden():
    record = json.loads(SAMPLE.read_text())
    text = scaling_report.render_markdown(record, list(scaling_figures.FIGURES.values()))
    if os.environ.get("EWC_BENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "reports"
    assert cli.main(["scaling", "--quick", "--no-memory", "--out", str(out)]) == 0
    assert "scaling.md" in capsys.readouterr().out
    text = (out / "scaling.md").read_text()
    for heading in ("## Fit cost vs N", "## Penalty cost per training step", "dense full Fisher"):
        assert heading in text
    for name in ("scaling_n.png", "scaling_penalty_tasks.png", "scaling_dense_limit.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "scaling.json").read_text())
    assert record["schema"] == scaling.SCHEMA
    assert record["time_split"] is None
    assert [(r["network"], r["group_size"]) for r in record["throughput"]] == [
        ("mlp hidden=16", 1),
        ("mlp hidden=16", 2),
    ]
    assert "| mlp hidden=16 | 2 |" in text


def test_throughput_rates_and_ratio(monkeypatch):
    """Runs per minute are 60 S / median seconds; the speed-up is grouped over alone."""
    clock = iter([10.0, 4.0, 30.0, 6.0, 20.0, 5.0])  # alone, grouped, alone, grouped, ...
    monkeypatch.setattr(throughput, "_seconds", lambda call: next(clock))
    config = throughput.ThroughputConfig(networks=("mlp hidden=16",), sizes=(4,), repeats=3)
    (row,) = throughput.measure_throughput(config)
    assert row["runs_per_min_alone"] == pytest.approx(60 * 4 / 20.0)
    assert row["runs_per_min_grouped"] == pytest.approx(60 * 4 / 5.0)
    assert row["speedup"] == pytest.approx(4.0)
    configs = throughput.member_configs(config, "mlp hidden=16", 3)
    assert [c.seed for c in configs] == [0, 1, 2]
    assert len({c.replace(seed=0).run_id for c in configs}) == 1
    with pytest.raises(ValueError, match="unknown network 'vgg'"):
        throughput.measure_throughput(throughput.ThroughputConfig(networks=("vgg",)))


def test_cli_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        cli.main(["scaling", "--repeats", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_time_split_only_rewrites_that_section_and_keeps_the_rest(tmp_path, capsys):
    """``scaling --time-split-only`` recomputes the split from records, measures nothing."""
    from benchmark.cli import main

    sample = Path(__file__).parent / "data" / "records_sample"
    out = tmp_path / "reports"
    args = ["scaling", "--out", str(out), "--time-split-only"]
    assert main([*args, "--results", str(sample)]) == 2
    assert "run `make scaling` first" in capsys.readouterr().err
    out.mkdir()
    record = json.loads(SAMPLE.read_text())
    (out / "scaling.json").write_text(json.dumps(record))
    assert main(args) == 2 and "needs --results" in capsys.readouterr().err
    assert main([*args, "--results", str(sample)]) == 0
    again = json.loads((out / "scaling.json").read_text())
    assert again["time_split"] == time_split.time_split(str(sample))
    assert {k: v for k, v in again.items() if k != "time_split"} == {
        k: v for k, v in record.items() if k != "time_split"
    }
    assert "## Where a whole run's time goes" in (out / "scaling.md").read_text()
