"""The report builder: golden REPORT.md and runs.csv from the committed sample, figures, edge cases.

The sample is ``tests/data/records_sample`` (written by ``tests/data/make_records_sample.py``).
After an intended change of the report, regenerate the golden files with
``EWC_BENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from benchmark import outcomes, report
from benchmark.config import RunConfig
from benchmark.records import RunRecord, read_records, write_record
from benchmark.report import figures as report_figures
from benchmark.report import format as report_format
from benchmark.report import results as report_results
from benchmark.selection import DEFAULT_SELECTION_SEEDS, choose_lambdas, is_selected

SAMPLE = Path(__file__).parent / "data" / "records_sample"
GOLDEN = Path(__file__).parent / "golden" / "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sample's report, built once (with a stale figure that the build must remove)."""
    out = tmp_path_factory.mktemp("report")
    (out / "figures").mkdir()
    (out / "figures" / "heatmap_gone_freeze.png").write_bytes(PNG_SIGNATURE)
    (out / "figures" / "keep-me.png").write_bytes(PNG_SIGNATURE)
    path = report.build_report(SAMPLE, out)
    return path


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("EWC_BENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with EWC_BENCH_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def _check_tables(text: str) -> int:
    """Every Markdown table has as many cells in each row as in its header; returns the count."""
    tables, width = 0, None
    for line in [*text.splitlines(), ""]:
        if line.startswith("| "):
            cells = len(re.findall(r"(?<!\\)\|", line)) - 1
            if width is None:
                width, tables = cells, tables + 1
            assert cells == width, line
        else:
            width = None
    return tables


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_report_md_matches_golden(built):
    assert built.name == "REPORT.md"
    _golden("REPORT.md", built.read_text())


def test_runs_csv_matches_golden(built):
    _golden("runs.csv", (built.parent / "runs.csv").read_text())


def test_report_text_is_a_pure_function_of_the_records(built):
    records = list(read_records(SAMPLE))
    runs = outcomes.summarise(records, [0])
    meta = outcomes.load_meta(SAMPLE)
    pipeline = outcomes.load_pipeline(SAMPLE)
    first = report_results.render_markdown(runs, meta, pipeline, [0])
    again = report_results.render_markdown(
        outcomes.summarise(reversed(records), [0]), meta, pipeline, [0]
    )
    assert first == again == built.read_text()
    assert report_results.runs_csv(reversed(runs)) == (built.parent / "runs.csv").read_text()


def test_runs_csv_columns_and_rows(built):
    text = (built.parent / "runs.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert tuple(header) == report_results.CSV_COLUMNS
    rows = _csv_rows(text)
    records = {r.run_id: r for r in read_records(SAMPLE)}
    assert sorted(r["run_id"] for r in rows) == sorted(records)
    for row in rows:
        record = records[row["run_id"]]
        assert json.loads(row["acc_matrix"]) == record.acc_test
        assert row["diverged"] == ("true" if record.status == "diverged" else "false")
        assert float(row["estimate_seconds"]) == pytest.approx(sum(record.estimate_seconds))


def test_selected_flags_follow_selection(built):
    records = list(read_records(SAMPLE))
    chosen = choose_lambdas(records, [0])
    rows = {r["run_id"]: r for r in _csv_rows((built.parent / "runs.csv").read_text())}
    flags = {r.run_id: is_selected(r, chosen, [0]) for r in records}
    assert {k: rows[k]["selected"] == "true" for k in rows} == flags
    assert 0 < sum(flags.values()) < len(flags)  # the sample has unselected lambdas


def test_selection_seed_changes_the_choice():
    # Seed 1 ran l2 (bn freeze) at lambda 0.1 and 1.0: with selection seed 1 the choice is the
    # better of the two on seed 1's validation split, and seed 1's runs are no test runs.
    runs = outcomes.summarise(read_records(SAMPLE), [1])
    l2 = [r for r in runs if r.sequence == "mnist-fmnist" and r.bn == "freeze" and r.label == "l2"]
    seed1 = {r.lam: r.val_avg for r in l2 if r.seed == 1}
    assert set(seed1) == {0.1, 1.0}
    assert {r.lam for r in l2 if r.selected} == {max(seed1, key=seed1.get)}
    assert all(r.role == "selection" and not r.selected for r in runs if r.seed == 1)
    assert all(r.selected for r in runs if r.label == "baseline" and r.seed != 1)


def test_every_figure_exists_and_is_a_png(built):
    fig_dir = built.parent / "figures"
    specs = report_figures.planned_figures(outcomes.summarise(read_records(SAMPLE), [0]))
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 15
    text = built.read_text()
    linked = re.findall(r"\]\(figures/([^)]+)\)", text)
    assert linked == names
    for name in names:
        data = (fig_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert 300 < width < 3000 and 200 < height < 3000, (name, width, height)
    assert not (fig_dir / "heatmap_gone_freeze.png").exists()  # stale figure removed
    assert (fig_dir / "keep-me.png").exists()  # not the report's: left alone
    kinds = {s.kind for s in specs}
    assert kinds == {"forest", "seeds", "lambda", "tasks", "heatmap", "cost"}


def test_report_sections(built):
    text = built.read_text()
    assert _check_tables(text) == 9  # verdict 1, tutorial 2, results 3, lambdas 1, cost 2
    for heading in (
        "## Verdict",
        "## How this report was produced",
        "## The tutorial's experiment (mnist-fmnist)",
        "## Results per sequence",
        "### permuted-mnist",
        "## Chosen lambdas",
        "## Cost",
        "## Figures",
    ):
        assert heading in text
    assert "*0.9772* | *0.9717* | *0.8312*" in text
    assert "*0.9762* | *0.1769* | *0.8672*" in text
    assert "Data pipeline: one training epoch takes 11.1 s" in text
    assert "git 0123abcd" in text


def test_diverged_runs_are_counted_and_never_chosen(built):
    text = built.read_text()
    # bn update, ewc kfac-exact: seed 1 diverged at the chosen lambda.
    assert "| ewc kfac-exact | 1000 | 2 | 1 of 3 diverged |" in text  # test seeds 1-3
    # bn freeze, ewc kfac-exact: lambda 10000 diverged on the selection seed, 1000 chosen.
    assert "100: 0.8885, **1000: 0.8995**, 10000: 1 of 1 diverged" in text
    assert "70 runs (2 diverged, 0 failed)" in text


def test_missing_results_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"results directory .*nope does not exist"):
        report.build_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no run records under"):
        report.build_report(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- small hand-built record sets ---------------------------------------------------------------


def _record(config: RunConfig, test, status="ok", val=None) -> RunRecord:
    T = len(test[0])
    rows = len(test)
    return RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        status=status,
        message=None if status == "ok" else "loss became nan",
        tasks=[f"task-{t}" for t in range(T)],
        acc_val=val or test,
        acc_test=test,
        train_seconds=[1.0] * rows,
        estimate_seconds=[0.1] * rows if config.method == "ewc" else [0.0] * rows,
        eval_seconds=[0.1] * rows,
        curvature_bytes=[100] * rows,
        step_ms=[1.0] * rows,
        penalty_ms=[None] + [0.5] * (rows - 1) if config.method == "ewc" else [None] * rows,
        train_loss=[0.1] * rows,
        peak_rss_mb=100.0,
    )


def test_all_diverged_group_and_no_metadata(tmp_path):
    base = RunConfig(data="synthetic", bn="update")
    records = [
        _record(base.replace(method="baseline", estimator=None, seed=1), [[0.9, 0.1], [0.3, 0.8]]),
        _record(base.replace(lam=10.0), [[0.9, 0.1], [None, None]], status="diverged"),
        _record(base.replace(lam=1.0), [[0.9, 0.1], [None, None]], status="diverged"),
        _record(base.replace(lam=1.0, seed=1), [[0.9, 0.1], [0.7, 0.7]]),
    ]
    for r in records:
        write_record(tmp_path / "results", r)
    path = report.build_report(tmp_path / "results", tmp_path / "out", selection_seeds=[0])
    text = path.read_text()
    assert _check_tables(text) == 4
    assert text.startswith("# EWC benchmark report\n")
    assert "- Command: not recorded" in text
    assert "git SHA not recorded" in text
    assert "Data pipeline" not in text
    assert (
        "| ewc diag-exact | none chosen | 0 | no lambda finished on every selection seed "
        "(2 selection runs)" in text
    )
    assert "1: 1 of 1 diverged, 10: 1 of 1 diverged" in text
    rows = _csv_rows((tmp_path / "out" / "runs.csv").read_text())
    assert [r["diverged"] for r in rows] == ["false", "true", "false", "true"]
    assert [r["selected"] for r in rows] == ["true", "false", "false", "false"]
    for spec in report_figures.planned_figures(outcomes.summarise(records, [0])):
        assert (tmp_path / "out" / "figures" / spec.name).read_bytes()[:8] == PNG_SIGNATURE


def test_meta_argument_overrides_sweep_json(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(SAMPLE, results)
    meta = outcomes.load_meta(results, {"name": "renamed", "command": "make reproduce"})
    assert meta["name"] == "renamed"
    assert meta["command"] == "make reproduce"
    assert meta["started"] == "2026-01-02T03:10:00+00:00"  # from sweep.json
    runs = outcomes.summarise(read_records(results), [0])
    text = report_results.render_markdown(runs, meta, None)
    assert text.startswith("# EWC benchmark report: renamed\n")
    assert "- Command: `make reproduce`" in text


def test_variants_of_one_label_get_a_suffix():
    base = RunConfig(data="synthetic", mode="online", sequence="permuted-mnist", n_tasks=2)
    matrix = [[0.9, 0.1], [0.8, 0.9]]
    records = [
        _record(base.replace(gamma=1.0), matrix),
        _record(base.replace(gamma=0.9), matrix),
        _record(base.replace(mode="separate"), matrix),
    ]
    labels = sorted(outcomes.display_labels(records).values(), key=outcomes.method_sort_key)
    assert labels == [
        "ewc diag-exact",
        "ewc-online diag-exact (gamma=0.9)",
        "ewc-online diag-exact (gamma=1.0)",
    ]


def test_method_label_matches_run_config():
    for record in read_records(SAMPLE):
        assert outcomes.method_label(record.config) == RunConfig.from_dict(record.config).label


def test_method_order():
    labels = [
        "joint",
        "ewc-online diag-exact",
        "ewc kfac-exact",
        "ewc diag-exact",
        "l2",
        "baseline",
        "ewc diag-batched",
        "mystery",
    ]
    assert sorted(labels, key=outcomes.method_sort_key) == [
        "baseline",
        "l2",
        "ewc diag-batched",
        "ewc diag-exact",
        "ewc kfac-exact",
        "ewc-online diag-exact",
        "joint",
        "mystery",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [(100000.0, "100000"), (0.01, "0.01"), (1e-5, "1e-05"), (0.0, "0")],
)
def test_fmt_lambda(value, text):
    assert report_format.fmt_lambda(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(12.34, "12.3 s"), (250.0, "4 min 10 s"), (3785.0, "1 h 03 min 05 s"), (None, "not recorded")],
)
def test_fmt_duration(seconds, text):
    assert report_format.fmt_duration(seconds) == text


def test_mean_matrix_places_joint_in_last_row():
    base = RunConfig(data="synthetic", method="joint", estimator=None)
    records = [_record(base.replace(seed=s), [[0.8 + 0.1 * s, 0.6]]) for s in range(2)]
    runs = outcomes.summarise(records, DEFAULT_SELECTION_SEEDS)
    mat = report_figures.mean_matrix(runs)
    assert mat.shape == (2, 2)
    assert mat[1].tolist() == pytest.approx([0.85, 0.6])
    assert all(v != v for v in mat[0])  # NaN: joint has no row after task 1


def test_duration_gives_every_invocation_when_records_came_from_several():
    from benchmark.report.provenance import _when

    meta = {"started": "a", "finished": "b", "duration_seconds": 0.2, "compute_seconds": 3000.0}
    one = _when({**meta, "invocations": [{"started": "a", "duration_seconds": 0.2}]})
    assert one == "- Started a, finished b; duration 0.2 s (compute: 50 min 00 s summed over runs)"
    calls = [
        {"started": "s1", "duration_seconds": 2858.5, "ran_now": 275, "git_sha": "593c8a2400"},
        {"started": "s2", "duration_seconds": 300.0, "ran_now": 18, "git_sha": "fc17b4a250"},
        {"started": "s3", "duration_seconds": 0.2, "ran_now": 0, "git_sha": "0aeb23eba5"},
    ]
    line = _when({**meta, "invocations": calls})
    assert line.startswith("- Made over 3 invocations, 52 min 39 s of wall time in all (compute")
    assert "s1, 47 min 38 s for 275 runs (git 593c8a2); s2, 5 min 00 s for 18 runs" in line


def _full_record(rows: int, representations: list | None = None, **config) -> RunRecord:
    c = RunConfig(model="mlp", model_options={"hidden": 8}, estimator="full-exact", **config)
    p = 784 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10  # 6,442 parameters
    return RunRecord(
        run_id=c.run_id,
        config=c.to_dict(),
        curvature_bytes=[rows * p * 4, rows * p * 4],
        representations=representations or [],
    )


def test_representation_is_recorded_or_derived_from_the_bytes():
    assert outcomes.representation(_full_record(200)) == "full-factor 200 rows"
    dense = _full_record(6442)  # P x P entries: the dense matrix
    assert outcomes.representation(dense) == "full-dense"
    given = _full_record(200, representations=["full-factor 180 rows", "full-factor 190 rows"])
    assert outcomes.representation(given) == "full-factor 190 rows"
    diag = RunRecord(run_id="x", config=RunConfig().to_dict(), curvature_bytes=[4, 4])
    assert outcomes.representation(diag) == "diag"
    base = RunRecord(run_id="y", config=RunConfig(method="baseline", estimator=None).to_dict())
    assert outcomes.representation(base) == ""


def test_full_fisher_rows_state_their_rank():
    record = _full_record(200)
    run = outcomes.summarise([record], DEFAULT_SELECTION_SEEDS)[0]
    cell = report_results.method_cell("ewc full-exact", run)
    assert cell == "ewc full-exact [factor of 200 rows: rank ≤ 200]"
    dense = outcomes.summarise([_full_record(6442)], DEFAULT_SELECTION_SEEDS)[0]
    assert report_results.method_cell("ewc full-exact", dense) == "ewc full-exact"
    row = report_results.csv_row(run)
    assert row["model"] == "mlp hidden=8" and row["representation"] == "full-factor 200 rows"
    assert row["curvature_bytes"] == str(200 * 6442 * 4)


def test_runs_on_another_network_are_their_own_section():
    """Never one table (nor one paired test) across networks; no model suffix in the labels."""
    main = _full_record(200)
    tutorial_config = RunConfig(estimator="full-exact", fisher_samples=20).to_dict()
    tutorial = RunRecord(run_id="t", config=tutorial_config, curvature_bytes=[4])
    runs = {
        r.record.run_id: r for r in outcomes.summarise([main, tutorial], DEFAULT_SELECTION_SEEDS)
    }
    assert runs["t"].sequence == "mnist-fmnist"
    assert runs[main.run_id].sequence == "mnist-fmnist on mlp hidden=8"
    assert runs[main.run_id].label == runs["t"].label == "ewc full-exact"
    assert outcomes.sequences(runs.values()) == ["mnist-fmnist", "mnist-fmnist on mlp hidden=8"]
    assert report_results.csv_row(runs[main.run_id])["sequence"] == "mnist-fmnist"
    assert report_figures.slug("mnist-fmnist on mlp hidden=8") == "mnist-fmnist_on_mlp_hidden8"


def test_a_network_without_batchnorm_is_not_headed_by_a_batchnorm_mode():
    main = outcomes.summarise([_full_record(200)], DEFAULT_SELECTION_SEEDS)
    text = report_results.results_section(main)
    assert f"#### {report_results.NO_BN_TEXT}" in text and "bn = freeze)" not in text
    assert outcomes.network_facts(main[0].record.config) == (6442, False)
    assert outcomes.network_facts(RunConfig().to_dict())[1] is True  # the tutorial network


def test_cost_percentage_is_computed_from_the_table_columns():
    """Issue 14: the penalty's % of a plain step equals the table's own ms columns' ratio."""
    runs = outcomes.summarise(read_records(SAMPLE), [0])
    for seq in outcomes.sequences(runs):
        for label in outcomes.method_labels(runs, seq):
            cost = outcomes.method_cost(outcomes.selected(runs, seq, None, label))
            if cost.penalty_ms is not None:
                assert cost.penalty_pct == pytest.approx(100 * cost.penalty_ms / cost.step_ms)
