"""The thread-count measurement (``benchmark.threads``): one group rerun, compared run by run."""

from __future__ import annotations

import pytest
import torch

from benchmark import threads
from benchmark.outcomes import summarise
from benchmark.records import read_records
from benchmark.report import build_report
from benchmark.sweep import parse_experiment, run_sweep
from tests.test_sweep import TINY


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("threads") / "results"
    run_sweep(parse_experiment(TINY), results, threads=1)
    return results


def test_a_rerun_with_the_same_thread_count_is_bitwise_identical(swept):
    before = torch.get_num_threads()
    out = threads.measure(swept, [7], 1, "mnist-fmnist", "ewc diag-exact")
    assert out["n"] == 2 and out["identical"] == 2
    assert out["max_abs_diff"] == 0.0 and out["mean_before"] == out["mean_after"]
    assert out["threads_before"] == [1] and out["threads_after"] == 1
    # the sweep's own records are untouched: the reruns live in their own folder
    assert len(list(read_records(threads.folder(swept, 1)))) == 2
    assert torch.get_num_threads() == before  # restored after the reruns


def test_the_report_states_the_measurement(swept, tmp_path):
    text = build_report(swept, tmp_path / "out").read_text()
    where = "the 2 test runs of mnist-fmnist (bn = freeze), ewc diag-exact"  # it has BatchNorm
    assert f"Thread count, measured: {where}" in text
    assert "2 of 2 bitwise identical" in text


def test_an_unknown_group_names_the_known_ones(swept):
    runs = summarise(read_records(swept), [7])
    with pytest.raises(ValueError, match="selected groups: mnist-fmnist / baseline"):
        threads.group_runs(runs, "permuted-mnist", "ewc diag-exact")


def test_a_network_without_batchnorm_names_no_bn_mode():
    from benchmark.config import RunConfig
    from benchmark.records import RunRecord
    from benchmark.report.provenance import thread_check_text

    cfg = RunConfig(data="synthetic", model="mlp", method="ewc", estimator="kfac-exact", lam=1.0)
    recs = [
        RunRecord(run_id=c.run_id, config=c.to_dict(), acc_val=[[0.5, 0.5]], acc_test=[[v, v]])
        for c, v in ((cfg.replace(seed=7), 0.5), (cfg.replace(seed=0), 0.6))
    ]
    group = threads.group_runs(summarise(recs, [7]), "mnist-fmnist on mlp", "ewc kfac-exact")
    out = threads.compare(group, [recs[1]], 2)
    assert out["bn"] == "" and out["n"] == 1 and out["identical"] == 1
    assert "mnist-fmnist on mlp, ewc kfac-exact" in thread_check_text(out)
