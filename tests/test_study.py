"""The approximation study end to end on a tiny synthetic configuration (seconds)."""

from __future__ import annotations

import csv

import pytest

from benchmark.report.study import COLUMNS, write_study
from benchmark.study import QUICK, StudyConfig, run_study


@pytest.fixture(scope="module")
def study():
    return run_study(StudyConfig(data="synthetic", results=None, **QUICK))


def test_parts_and_rows(study):
    parts = {r["part"] for r in study["rows"]}
    assert parts == {"ground-truth", "convergence-n", "convergence-mc", "batched-bias", "tutorial"}
    truth = {
        r["estimator"]: r
        for r in study["rows"]
        if r["part"] == "ground-truth" and r["model"] == "mlp-16"
    }
    assert truth["full-exact"]["rel_frobenius"] == pytest.approx(0.0, abs=1e-3)
    assert truth["full-exact"]["overlap_topk"] == pytest.approx(1.0, abs=1e-6)
    # diag-exact is exactly F's diagonal: its trace is exact, its error is F's off-diagonal mass
    assert truth["diag-exact"]["rel_trace"] == pytest.approx(0.0, abs=1e-5)
    assert 0 < truth["diag-exact"]["rel_frobenius"] < 1
    assert truth["kfac-exact"]["rel_frobenius"] <= truth["diag-exact"]["rel_frobenius"] + 1e-9
    assert set(study["ground_truth"]) == {"mlp-16", "cnn"}
    for truth in study["ground_truth"].values():
        assert 0 <= truth["off_block_share"] < 1
    cnn = {
        r["estimator"]: r
        for r in study["rows"]
        if r["part"] == "ground-truth" and r["model"] == "cnn"
    }
    assert cnn["full-exact"]["rel_frobenius"] == 0.0
    assert cnn["diag-exact"]["rel_trace"] == pytest.approx(0.0, abs=1e-5)
    batched = {
        r["batch_size"]: r["ratio_to_empirical"]
        for r in study["rows"]
        if r["part"] == "batched-bias"
    }
    assert batched[1] == pytest.approx(1.0)  # batch size 1 is the empirical Fisher
    assert batched[max(batched)] < batched[1]


def test_files(study, tmp_path):
    path = write_study(study, tmp_path)
    text = path.read_text()
    for heading in ("## Findings", "## A.", "### `cnn`", "## B.", "## D.", "## E."):
        assert heading in text
    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert rows and tuple(rows[0]) == COLUMNS
    for name in (
        "study_blocks_mlp-16.png",
        "study_spectra_mlp-16.png",
        "study_blocks_cnn.png",
        "study_spectra_cnn.png",
        "study_convergence.png",
        "study_batched.png",
    ):
        data = (tmp_path / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
