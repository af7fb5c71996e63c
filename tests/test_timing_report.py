"""The timing command: the Markdown report (golden), the CLI end to end, the memory child.

Regenerate the golden file after an intended change of the report's layout with
``EWC_BENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_timing_report.py``, and review
the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmark import cli, costs
from benchmark.costs import child, measure, timing, variants
from benchmark.errors import UserError
from benchmark.report import format as report_format
from benchmark.report import timing as timing_report

GOLDEN = Path(__file__).parent / "golden" / "timing.md"


def _row(name, median_s, nbytes, extra_mib, repeats=5, structure="diag"):
    return {
        "name": name,
        "status": "ok",
        "structure": structure,
        "nbytes": nbytes,
        "warmup_s": median_s * 1.5,
        "times_s": [median_s] * repeats,
        "repeats": repeats,
        "median_s": median_s,
        "memory": {"method": "proc", "extra_bytes": int(extra_mib * 1024**2)},
    }


RECORD = {
    "schema": timing.SCHEMA,
    "environment": {
        "platform": "Linux-6.1-x86_64",
        "cpu": "Example CPU 9000",
        "cores": 2,
        "torch_threads": 2,
        "omp_num_threads": "2",
        "python": "3.11.7",
        "torch": "2.14.1",
        "device": "cpu",
        "git_sha": "0123abc",
        "command": "python -m benchmark timing --data-root data --out reports",
        "date": "2025-01-02T03:04:05+00:00",
        "load_average_start": 0.5,
        "load_average_end": 1.25,
    },
    "settings": {
        "model": "tutorial-mlp",
        "parameters": 90010,
        "dtype": "float32",
        "data": "the first N MNIST training inputs (/data)",
        "bn_warmup_inputs": 500,
        "sizes": [1000, 10000],
        "repeats": 5,
        "slow_budget_s": 30.0,
        "naive_max_inputs": 1000,
        "memory": {"method": "proc", "reason": None},
        "quick": False,
    },
    "sizes": [
        {
            "n": 1000,
            "floor": {**_row("floor", 0.004, None, 2.0, repeats=10), "nbytes": None},
            "naive": {
                **_row("naive", 0.5, 360040, 1.5),
                "measured_inputs": 1000,
                "scale": 1.0,
                "measured_median_s": 0.5,
            },
            "estimators": [
                _row("diag-exact", 0.012, 360040, 10.25),
                _row("full-mc", 1.234, 360040000, 350.0, repeats=3, structure="full-factor"),
                {
                    "name": "full-exact",
                    "status": "refused",
                    "message": "the full Fisher would need 3.4 GiB",
                    "needed_bytes": 3600400000,
                    "budget_bytes": 2 * 1024**3,
                    "memory": {"extra_bytes": None, "reason": "the fit did not succeed"},
                },
                {
                    "name": "kfac-mc",
                    "status": "error",
                    "message": "RuntimeError: shapes | mismatch\nsecond line",
                    "memory": {"extra_bytes": None, "reason": "the fit did not succeed"},
                },
                {
                    **_row("identity", 0.00002, 0, 0.0, structure="identity"),
                    "memory": {"extra_bytes": None, "reason": "child exited 1: boom"},
                },
            ],
        },
        {
            "n": 10000,
            "floor": {**_row("floor", 0.04, None, 20.0, repeats=10), "nbytes": None},
            "naive": {
                **_row("naive", 5.0, 360040, 1.5),
                "measured_inputs": 1000,
                "scale": 10.0,
                "measured_median_s": 0.5,
            },
            "estimators": [_row("diag-exact", 0.12, 360040, 60.0)],
        },
    ],
    "penalty": {
        "n": 1000,
        "batch_size": 100,
        "steps": 200,
        "warmup_steps": 5,
        "lam": 100.0,
        "optimizer": "Adam(lr=0.001)",
        "plain": {"times_s": [0.002], "median_s": 0.002},
        "rows": [
            {
                "name": "identity",
                "options": {},
                "status": "ok",
                "structure": "identity",
                "nbytes": 0,
                "median_s": 0.0021,
                "overhead_pct": 5.0,
            },
            {
                "name": "full-mc",
                "options": {"representation": "factor"},
                "status": "ok",
                "structure": "full-factor",
                "nbytes": 360040000,
                "median_s": 0.05,
                "overhead_pct": 2400.0,
            },
            {
                "name": "kfac-exact",
                "options": {},
                "status": "error",
                "message": "ValueError: bad",
            },
        ],
    },
    "compare": {
        "n": 1000,
        "model": "mlp 784-100-100-10 (no BatchNorm)",
        "parameters": 89610,
        "versions": {"backpack": "1.7.1", "nngeometry": None},
        "missing": "not installed: nngeometry; their rows are skipped "
        "(install with `pip install -e '.[compare]'`)",
        "floor": {"name": "floor", "status": "ok", "median_s": 0.004},
        "rows": [
            {
                "name": "diag-exact",
                "library": "ewc-bench",
                "method": "diag-exact",
                "ours": "diag-exact",
                "status": "ok",
                "median_s": 0.012,
                "x_floor": 3.0,
            },
            {
                "name": "backpack DiagGGNExact",
                "library": "backpack",
                "method": "DiagGGNExact",
                "ours": "diag-exact",
                "status": "ok",
                "median_s": 0.02,
                "x_floor": 5.0,
                "against": "diag-exact",
                "rel_diff": 1.5e-7,
            },
            {
                "name": "backpack KFLR",
                "library": "backpack",
                "method": "KFLR",
                "ours": "kfac-exact",
                "status": "ok",
                "median_s": 0.03,
                "x_floor": 7.5,
                "against": "kfac-exact",
                "rel_diff": None,
                "error": "ValueError: diagonals differ in size: 10 vs 12",
            },
            {
                "name": "backpack KFAC (1 sample)",
                "library": "backpack",
                "method": "KFAC (1 sample)",
                "ours": "kfac-mc",
                "status": "error",
                "message": "RuntimeError: unsupported module",
            },
        ],
    },
}


def test_render_markdown_matches_golden():
    text = timing_report.render_markdown(RECORD)
    if os.environ.get("EWC_BENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_render_markdown_is_pure():
    before = json.dumps(RECORD, sort_keys=True)
    assert timing_report.render_markdown(RECORD) == timing_report.render_markdown(RECORD)
    assert json.dumps(RECORD, sort_keys=True) == before


def test_render_markdown_without_penalty():
    text = timing_report.render_markdown({**RECORD, "penalty": None})
    assert "EWC penalty" not in text
    assert text.endswith(".\n")
    assert not text.endswith("\n\n")


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.00008, "0.08"), (0.0123, "12.3"), (1.2345, "1,234"), (0.004, "4.00")],
)
def test_fmt_ms(value, text):
    assert report_format.fmt_ms(value) == text


def test_repeats_for_slow_calls():
    assert measure.repeats_for(0.01, 5) == 5
    assert measure.repeats_for(10.0, 5, budget_s=30.0) == 3
    assert measure.repeats_for(100.0, 5, budget_s=30.0) == 1


def test_setup_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """A SetupError is a UserError: the command line prints it as one line, status 2."""
    assert issubclass(measure.SetupError, UserError)

    def refuse(config):
        raise measure.SetupError("MNIST has 10 training inputs; asked for N = 200")

    monkeypatch.setattr(costs, "run_timing", refuse)
    argv = ["timing", "--quick", "--synthetic", "--no-memory", "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "error: MNIST has 10 training inputs; asked for N = 200\n"


def test_check_names_orders_and_rejects():
    assert timing.check_names(["kfac-exact", "diag-exact", "kfac-exact"]) == (
        "diag-exact",
        "kfac-exact",
    )
    with pytest.raises(measure.SetupError, match=r"valid names: diag-argmax"):
        timing.check_names(["diag-true"])


@pytest.fixture
def restore_threads():
    """The timing command may call torch.set_num_threads; give later tests torch's setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_timing_quick_end_to_end(tmp_path, capsys, restore_threads):
    out = tmp_path / "reports"
    # One thread: two OpenMP threads on two cores that other processes also use can be 100x
    # slower; this test checks the pipeline, not the speed.
    argv = ["timing", "--quick", "--synthetic", "--no-memory", "--device", "cpu", "--threads", "1"]
    assert cli.main([*argv, "--out", str(out), "--penalty-steps", "3"]) == 0
    assert "timing.md" in capsys.readouterr().out
    record = json.loads((out / "timing.json").read_text())
    markdown = (out / "timing.md").read_text()
    assert markdown == timing_report.render_markdown(record)
    (size,) = record["sizes"]
    assert size["n"] == 200
    assert [r["name"] for r in size["estimators"]] == list(variants.default_labels())
    for row in size["estimators"]:
        assert f"| {timing_report.fit_label(row)} |" in markdown
    assert "| lowrank-exact rank=200 |" in markdown  # the options it was timed with
    for row in size["estimators"]:
        assert row["status"] in ("ok", "refused", "error")
        if row["status"] == "ok":
            assert row["median_s"] > 0
            assert row["x_floor"] == pytest.approx(row["median_s"] / size["floor"]["median_s"])
    assert size["floor"]["median_s"] > 0
    assert size["naive"]["measured_inputs"] == 200
    assert {r["name"] for r in record["penalty"]["rows"]} == {
        name for name, _ in timing.PENALTY_ESTIMATORS
    }
    assert "## EWC penalty cost per training step" in markdown
    assert record["environment"]["command"].startswith("python -m benchmark timing --quick")


def test_memory_child_measures_one_fit():
    spec = child.ChildSpec(
        kind="estimator", name="diag-exact", n=64, n_loaded=64, threads=1, synthetic=True
    )
    result = child.measure_in_child(spec, timeout_s=120)
    reason = measure.proc_memory_unsupported()
    if reason is None:
        assert isinstance(result["extra_bytes"], int), result
        assert result["extra_bytes"] >= 0
        assert result["hwm"] >= result["rss_before"]
    else:
        assert result["extra_bytes"] is None
        assert result["reason"] == reason


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--names", "diag-true"], "valid names: diag-argmax"),
        (["--names", "diag-exact,bogus"], "unknown estimator name(s) 'bogus'"),
        (["--sizes", "0"], "argument --sizes: expected a positive integer"),
        (["--sizes", "1000,x"], "argument --sizes: expected a positive integer, got 'x'"),
        (["--repeats", "-1"], "argument --repeats"),
        (["--device", "tpu"], "argument --device: invalid choice"),
    ],
)
def test_bad_values_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["timing", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_data_is_a_usage_error(tmp_path, capsys):
    status = cli.main(["timing", "--data-root", str(tmp_path), "--device", "cpu", "--no-memory"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST not found") and err.count("\n") == 1
    assert not (tmp_path / "timing.md").exists()


def test_help_explains_timing(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "timing" in text
    assert "timing.md" in text


def test_ekfac_note_states_its_ratio_to_kfac():
    """The note gives ekfac-exact's time over kfac-exact's; nothing without both rows."""
    rows = [
        {"name": "kfac-exact", "status": "ok", "median_s": 0.020},
        {"name": "ekfac-exact", "status": "ok", "median_s": 0.050},
    ]
    (note,) = timing_report.ekfac_notes(rows)
    assert note.startswith("ekfac-exact takes 2.50x kfac-exact's time.")
    assert timing_report.ekfac_notes(rows[:1]) == []
    failed = [rows[0], {"name": "ekfac-exact", "status": "failed"}]
    assert timing_report.ekfac_notes(failed) == []
