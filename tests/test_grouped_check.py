"""The grouped-training check (``benchmark.grouped_check``): one group rerun alone and stacked."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark import grouped_check
from benchmark.cli import main
from benchmark.outcomes import summarise
from benchmark.records import read_records
from benchmark.report import build_report
from benchmark.report.provenance import grouped_check_text
from benchmark.sweep import parse_experiment, run_sweep
from tests.test_sweep import TINY

SECTION, METHOD = "mnist-fmnist", "ewc diag-exact"


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    results = tmp_path_factory.mktemp("grouped") / "results"
    run_sweep(parse_experiment(TINY), results, threads=1)
    out = grouped_check.measure(results, [7], 2, SECTION, METHOD)
    return results, out


def test_alone_reruns_reproduce_the_sweep_bitwise(checked):
    _, out = checked
    alone = out["alone"]
    assert alone["n"] == 2 and alone["identical"] == 2 and alone["max_abs_diff"] == 0.0


def test_stacked_reruns_agree_with_the_sweep_to_float32_rounding(checked):
    _, out = checked
    grouped = out["grouped"]
    assert grouped["n"] == 2 and out["size"] == 2
    assert grouped["max_abs_diff"] < 0.05
    by_seed = {row["seed"]: row for row in grouped["per_seed"]}
    assert set(by_seed) == {0, 1}
    # the paired difference is computed from the per-seed values, stacked minus sweep
    diffs = [row["after"] - row["before"] for row in grouped["per_seed"]]
    assert grouped["paired"]["mean_diff"] == pytest.approx(sum(diffs) / 2, abs=1e-12)


def test_the_reruns_live_in_their_own_folders_and_record_their_group(checked):
    results, _ = checked
    base = grouped_check.folder(results, 2)
    stacked = list(read_records(base / "grouped"))
    assert len(stacked) == 2 and {r.provenance["group_size"] for r in stacked} == {2}
    assert len(list(read_records(base / "alone"))) == 2
    timing = json.loads((base / "timing.json").read_text())
    assert timing["runs"] == 2 and timing["threads"] == 1
    assert timing["alone_seconds"] > 0 and timing["grouped_seconds"] > 0


def test_a_resumed_check_reuses_its_reruns_and_keeps_the_first_timing(checked):
    results, out = checked
    before = (grouped_check.folder(results, 2) / "timing.json").read_text()
    again = grouped_check.measure(results, [7], 2, SECTION, METHOD)
    assert again["timing"] == out["timing"]
    assert (grouped_check.folder(results, 2) / "timing.json").read_text() == before


def test_the_report_states_the_check(checked, tmp_path):
    results, out = checked
    text = build_report(results, tmp_path / "out").read_text()
    where = f"the 2 test runs of {SECTION} (bn = freeze), {METHOD}, rerun alone: 2 of 2 bitwise"
    assert f"Grouped training, measured: {where}" in text
    assert "trained in stacks of 2 (`--group-size 2`)" in text
    ratio = out["timing"]["alone_seconds"] / out["timing"]["grouped_seconds"]
    assert f"{ratio:.2f}x the runs per minute" in text


def test_without_timing_the_text_says_no_speed(checked):
    _, out = checked
    text = grouped_check_text({**out, "timing": None})
    assert "runs per minute" not in text and "bitwise identical" in text


def test_load_checks_finds_the_check_from_the_records_alone(checked):
    results, out = checked
    runs = summarise(read_records(results), [7])
    (check,) = grouped_check.load_checks(results, runs)
    assert check["grouped"]["per_seed"] == out["grouped"]["per_seed"]
    assert check["alone"]["identical"] == 2


def test_bad_input_gets_a_clear_error(checked, capsys):
    results, _ = checked
    with pytest.raises(ValueError, match="at least 2 runs"):
        grouped_check.measure(results, [7], 1, SECTION, METHOD)
    with pytest.raises(ValueError, match="selected groups: mnist-fmnist / baseline"):
        grouped_check.measure(results, [7], 2, "permuted-mnist", METHOD)
    code = main(["grouped", "--results", str(results / "nowhere")])
    assert code == 2 and "run the sweep first" in capsys.readouterr().err


def test_the_thread_count_is_restored(checked):
    results, _ = checked
    before = torch.get_num_threads()
    grouped_check.measure(results, [7], 2, SECTION, METHOD)
    assert torch.get_num_threads() == before


def test_the_end_to_end_time_is_stored_and_stated(checked, tmp_path, capsys):
    from benchmark import clock

    results, _ = checked
    started = 1_700_000_000.0
    data = clock.record(results, started, now=started + 3725.0)
    assert data["seconds"] == 3725.0 and data["started"] == "2023-11-14T22:13:20+00:00"
    assert clock.load(results) == data
    text = build_report(results, tmp_path / "out").read_text()
    assert "- End to end: `make reproduce` took 1 h 02 min 05 s" in text
    assert "started 2023-11-14T22:13:20+00:00" in text
    # through the command line: a bad --started is refused before anything is written
    (results / clock.FILE).unlink()
    out = str(tmp_path / "out2")
    assert main(["report", "--results", str(results), "--out", out, "--started", "nan"]) == 2
    assert "seconds since the epoch" in capsys.readouterr().err
    assert main(["report", "--results", str(results), "--out", out, "--started", "9e12"]) == 2
    assert "lies in the future" in capsys.readouterr().err
    assert clock.load(results) is None
    import time

    assert (
        main(["report", "--results", str(results), "--out", out, "--started", str(time.time() - 5)])
        == 0
    )
    assert 0 < clock.load(results)["seconds"] < 600


def test_an_unreadable_measurement_is_ignored(tmp_path):
    from benchmark import clock

    (tmp_path / clock.FILE).write_text("{not json")
    assert clock.load(tmp_path) is None
    (tmp_path / clock.FILE).write_text('{"seconds": "soon"}')
    assert clock.load(tmp_path) is None
