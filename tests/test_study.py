"""The approximation study end to end on a tiny synthetic configuration (seconds), and part E's
link to forgetting built from hand-made sweep records."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from benchmark.config import RunConfig
from benchmark.harness import sequence_of
from benchmark.methods.ewc import fit_inputs
from benchmark.records import RunRecord, write_record
from benchmark.report.study import COLUMNS, write_study
from benchmark.report.study_figures import LINK_METRICS, MIN_CORRELATION_N, sweep_link
from benchmark.study import QUICK, StudyConfig, run_study
from benchmark.study.approx import object_key
from benchmark.study.sweep_network import draws, protocol

QUICK_NETWORK = {"data": "synthetic", **QUICK["network_overrides"]}


@pytest.fixture(scope="module")
def study():
    return run_study(StudyConfig(data="synthetic", results=None, **QUICK))


def _rows(study, part):
    return [r for r in study["rows"] if r["part"] == part]


def _part(study, part, model=None):
    return {
        (r["estimator"], r.get("inputs")): r
        for r in study["rows"]
        if r["part"] == part and (model is None or r["model"] == model)
    }


def test_parts_and_rows(study):
    parts = {r["part"] for r in study["rows"]}
    assert parts == {
        "ground-truth",
        "convergence-n",
        "convergence-mc",
        "batched-bias",
        "sweep-network",
        "F",
    }
    truth = {name: r for (name, _), r in _part(study, "ground-truth", "mlp-16").items()}
    assert truth["full-exact"]["rel_frobenius"] == pytest.approx(0.0, abs=1e-3)
    assert truth["full-exact"]["overlap_topk"] == pytest.approx(1.0, abs=1e-6)
    # diag-exact is exactly F's diagonal: its trace is exact, its error is F's off-diagonal mass
    assert truth["diag-exact"]["rel_trace"] == pytest.approx(0.0, abs=1e-5)
    assert 0 < truth["diag-exact"]["rel_frobenius"] < 1
    assert truth["kfac-exact"]["rel_frobenius"] <= truth["diag-exact"]["rel_frobenius"] + 1e-9
    assert set(study["ground_truth"]) == {"mlp-16", "cnn"}
    for truth in study["ground_truth"].values():
        assert 0 <= truth["off_block_share"] < 1
    cnn = {name: r for (name, _), r in _part(study, "ground-truth", "cnn").items()}
    assert cnn["full-exact"]["rel_frobenius"] == 0.0
    assert cnn["diag-exact"]["rel_trace"] == pytest.approx(0.0, abs=1e-5)
    batched = {r["batch_size"]: r["ratio_to_empirical"] for r in _rows(study, "batched-bias")}
    assert batched[1] == pytest.approx(1.0)  # batch size 1 is the empirical Fisher
    assert batched[max(batched)] < batched[1]
    assert set(study["parts"]) == {"A", "B-C", "D", "E", "F"}
    assert all(p["seconds"] > 0 and p["started"] <= p["finished"] for p in study["parts"].values())


def test_part_e_measures_every_estimator_of_the_sweeps_network(study):
    rows = _part(study, "sweep-network")
    fitted = {name for name, inputs in rows if inputs == "same"}
    assert fitted == {
        "identity",
        "diag-exact",
        "diag-mc",
        "diag-empirical",
        "diag-batched",
        "kfac-exact",
        "ekfac-exact",
        "lowrank-exact rank=20",
        "lowrank-exact rank=200",
    }
    facts = study["sweep_network"]
    assert facts["network"] == "mlp hidden=4" and facts["n_inputs"] == 20
    assert facts["parameters"] == 784 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10
    diag = rows[("diag-exact", "same")]
    assert diag["rel_trace"] == pytest.approx(0.0, abs=1e-5)
    assert 0 < diag["top200_error"] <= 1 and 0 < diag["flat_share_200"] < 1
    # 20 inputs x 10 classes = 200 rows <= rank 200: the low-rank fit is F itself (up to the
    # float32 floor of |F-hat - F|^2 = |F-hat|^2 - 2<F-hat, F> + |F|^2, about sqrt(1e-7))
    exact = rows[("lowrank-exact rank=200", "same")]
    for key, _ in LINK_METRICS:
        assert abs(exact[key]) < 1e-3, key
    assert rows[("lowrank-exact rank=20", "same")]["top20_error"] < diag["top20_error"]
    assert len(rows[("kfac-exact", "same")]["quadratics"]) == 200


def test_reference_noise_row_comes_from_a_disjoint_draw(study):
    noise = _part(study, "sweep-network")[("full-exact", "disjoint")]
    assert noise["n_inputs"] == QUICK_NETWORK["fisher_samples"] and noise["object"] is None
    for key, _ in LINK_METRICS:
        assert np.isfinite(noise[key])
    assert noise["rel_frobenius"] > 0 and noise["top200_error"] > 0
    assert study["sweep_network"]["draw_overlap"] == 0
    proto = protocol("default", "mlp", {"hidden": 16}, QUICK_NETWORK)
    task = sequence_of(proto.train, None, download=False).tasks[0]
    same, other = draws(proto.train, task)
    assert len(same) == len(other) == 20 and not set(same.tolist()) & set(other.tolist())
    x, y = fit_inputs(proto.train, task, 0, torch.device("cpu"))  # the sweep's own draw
    assert torch.equal(x, task.train.float_inputs(same)) and torch.equal(
        y, task.train.targets[same]
    )


def test_files(study, tmp_path):
    path = write_study(study, tmp_path)
    text = path.read_text()
    for heading in ("## Findings", "## A.", "### `cnn`", "## B.", "## D.", "## E.", "### The link"):
        assert heading in text
    assert "Part E's outcomes: none joined. No results folder was given" in text
    assert "F on 20 disjoint inputs (reference noise)" in text
    rows = list(csv.DictReader((tmp_path / "study.csv").open()))
    assert rows and tuple(rows[0]) == COLUMNS
    assert {r["inputs"] for r in rows if r["part"] == "sweep-network"} == {"same", "disjoint"}
    for name in (
        "study_blocks_mlp-16.png",
        "study_spectra_mlp-16.png",
        "study_blocks_cnn.png",
        "study_spectra_cnn.png",
        "study_convergence.png",
        "study_batched.png",
        "study_eigendirections.png",
    ):
        data = (tmp_path / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "study.json").read_text())["link"]["note"]


# -- the link to forgetting, from hand-made records ----------------------------------------------
def _record(config: RunConfig, forgetting: float, val: float = 0.8, trace=None, sha="abc"):
    """Two tasks; task 1 drops by ``forgetting``; ``val`` is the final validation average."""
    test = [[0.9, 0.1], [0.9 - forgetting, 0.8]]
    return RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        tasks=["a", "b"],
        acc_val=[[0.9, 0.1], [val, val]],
        acc_test=test,
        train_seconds=[1.0, 1.0],
        estimate_seconds=[0.1, 0.0],
        eval_seconds=[0.1, 0.1],
        curvature_bytes=[100, 0],
        curvature_trace=trace or [None, None],
        step_ms=[1.0, 1.0],
        penalty_ms=[None, 0.5],
        train_loss=[0.1, 0.1],
        provenance={"git_sha": sha},
    )


def _write_group(results, base: RunConfig, forgetting: dict[int, float], trace=None) -> None:
    """Selection seed 100 picks lambda 100 over 10; test seeds at 100, and one at 10 (unused)."""
    write_record(results, _record(base.replace(lam=10.0, seed=100), 0.5, val=0.7))
    write_record(results, _record(base.replace(lam=100.0, seed=100), 0.5, val=0.8))
    write_record(results, _record(base.replace(lam=10.0, seed=0), 0.89, sha="other"))
    for seed, f in forgetting.items():
        first = trace if seed == 0 else None
        write_record(results, _record(base.replace(lam=100.0, seed=seed), f, trace=first))


def _study_rows(bases: dict[str, RunConfig], values: dict[str, float]) -> list[dict]:
    """Hand-made part-E rows: every metric set to ``values[label]``, trace 2.0."""
    return [
        {
            "part": "sweep-network",
            "estimator": label,
            "inputs": "same",
            "object": object_key(config.to_dict()),
            "trace": 2.0,
            **{key: values[label] for key, _ in LINK_METRICS},
        }
        for label, config in bases.items()
    ]


def _hand_made(tmp_path, network: dict) -> tuple[dict, str]:
    """A study whose part E measured five estimators, and a results folder with two sequences."""
    base = RunConfig(
        method="ewc",
        fisher_samples=network.get("fisher_samples", 1000),
        **{k: v for k, v in network.items() if k != "fisher_samples"},
    )
    low = base.replace(estimator="lowrank-exact", estimator_options={"rank": 20})
    bases = {
        "identity": base.replace(method="l2", estimator=None),
        "diag-exact": base,
        "kfac-exact": base.replace(estimator="kfac-exact"),
        "lowrank-exact rank=20": low.replace(estimator_options={"rank": 20}),
        "lowrank-exact rank=200": low.replace(estimator_options={"rank": 200}),
    }
    values = dict(zip(bases, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True))
    forgetting = dict(zip(bases, (0.05, 0.10, 0.15, 0.30, 0.20), strict=True))
    results = tmp_path / "results"
    for label, config in bases.items():
        f = forgetting[label]
        _write_group(results, config, {0: f, 1: f + 0.02}, trace=[2.02, None])
    other_n = base.replace(fisher_samples=base.fisher_samples // 2)  # another object: not joined
    _write_group(results, other_n, {0: 0.4, 1: 0.4})
    for label in ("identity", "diag-exact", "kfac-exact"):  # three estimators: no correlation
        permuted = bases[label].replace(sequence="permuted-mnist", n_tasks=2)
        _write_group(results, permuted, {0: 0.1, 1: 0.2})
    baseline = base.replace(method="baseline", estimator=None)
    for seed in (0, 1):
        write_record(results, _record(baseline.replace(seed=seed), 0.6))
    (results / "sweep.json").write_text(
        json.dumps(
            {
                "selection_seeds": [100],
                "experiment": "default",
                "started": "2026-11-30T03:00:00+00:00",
                "finished": "2026-11-30T03:50:00+00:00",
            }
        )
    )
    facts = {
        "network": "mlp hidden=16"
        if "model_options" not in network
        else f"mlp hidden={network['model_options']['hidden']}",
        "data": network["data"],
        "experiment_sequence": "mnist-fmnist",
        "seed": 0,
    }
    return {"sweep_network": facts, "rows": _study_rows(bases, values)}, str(results)


REAL_NETWORK = {"data": "real", "model": "mlp", "model_options": {"hidden": 16}, "epochs": 4}


def test_link_joins_the_right_numbers(tmp_path):
    study, results = _hand_made(tmp_path, REAL_NETWORK)
    link = sweep_link(study, results)
    assert link["note"] == ""
    rows = {(r["sequence"], r["estimator"], r["n_inputs"]): r for r in link["rows"]}
    kfac = rows[("mnist-fmnist", "kfac-exact", 1000)]
    assert kfac["lam"] == 100.0 and kfac["n"] == 2 and kfac["seeds"] == 2
    assert kfac["forgetting"] == pytest.approx((0.15 + 0.17) / 2)  # not the lambda-10 run's 0.89
    assert kfac["forgetting_sd"] == pytest.approx(np.std([0.15, 0.17], ddof=1))
    assert kfac["avg_acc"] == pytest.approx(((0.75 + 0.8) / 2 + (0.73 + 0.8) / 2) / 2)
    assert kfac["metrics"]["top200_error"] == 0.3
    assert rows[("mnist-fmnist", "diag-exact", 500)]["metrics"] is None  # another N
    assert rows[("permuted-mnist", "identity", 1000)]["metrics"]["rel_frobenius"] == 0.1
    corr = {c["sequence"]: c for c in link["correlations"]}
    # metrics 0.1 ... 0.5 against forgetting 0.06, 0.11, 0.16, 0.31, 0.21: d^2 = 2, rho = 0.9
    assert corr["mnist-fmnist"]["n"] == 5
    assert corr["mnist-fmnist"]["rho"]["top200_error"][0] == pytest.approx(1 - 6 * 2 / (5 * 24))
    assert corr["mnist-fmnist"]["baseline_forgetting"] == pytest.approx(0.6)
    assert corr["permuted-mnist"]["n"] == 3 < MIN_CORRELATION_N
    assert all(v is None for v in corr["permuted-mnist"]["rho"].values())
    assert link["trace_check"] == {"n": 4, "max_rel_diff": pytest.approx(0.01)}
    assert link["shas"] == {"abc": 2 * (5 + 1 + 3)}  # the test runs in the table only
    assert link["sweep"]["finished"] == "2026-11-30T03:50:00+00:00"


def test_link_says_why_it_is_empty(tmp_path):
    study, results = _hand_made(tmp_path, REAL_NETWORK)
    assert "no results folder" in sweep_link(study, None)["note"].lower()
    assert "no sweep records" in sweep_link(study, str(tmp_path / "nowhere"))["note"]
    other = {**study, "sweep_network": {**study["sweep_network"], "network": "mlp hidden=8"}}
    assert "holds no runs of mlp hidden=8" in sweep_link(other, results)["note"]


def test_report_builds_with_a_results_folder(study, tmp_path):
    network = {**QUICK_NETWORK, "model": "mlp"}
    _, results = _hand_made(tmp_path, network)
    path = write_study(study, tmp_path / "out", results)
    text = path.read_text()
    assert f"Part E's outcomes: the sweep's records in `{results}`" in text
    assert "abc (18 runs)" in text and "finished 2026-11-30T03:50:00+00:00" in text
    link = json.loads((tmp_path / "out" / "study.json").read_text())["link"]
    joined = [r for r in link["rows"] if r["metrics"] is not None]
    assert len(joined) == 5 + 3
    assert "| mnist-fmnist | kfac-exact | 20 |" in text
    assert (tmp_path / "out" / "figures" / "study_link.png").read_bytes()[:4] == b"\x89PNG"
    empty = write_study(study, tmp_path / "empty", str(tmp_path / "nowhere")).read_text()
    assert "Part E's outcomes: none joined." in empty and "### The link to forgetting" in empty


def test_part_f_online_rules(study, tmp_path):
    """Each rule's error after T tasks equals ``rule_errors`` on the same fits; sum is exact."""
    from benchmark.study.online_part import DECAY, online_config, task_fits
    from benchmark.study.online_rules import rule_errors

    rows = _rows(study, "F")
    facts = study["online_rules"]
    assert facts["tasks"] == QUICK["online_tasks"] and facts["decays"] == [1.0, DECAY]
    assert {(r["tasks"], r["decay"]) for r in rows} == {(2, 1.0), (3, 1.0), (2, DECAY), (3, DECAY)}
    train = protocol("default", "mlp", {"hidden": 16}, QUICK_NETWORK).train
    fits, _ = task_fits(online_config(train, QUICK["online_tasks"]), None)
    again = rule_errors(fits, DECAY)  # the same seeded training and inputs: the same numbers
    for r in rows:
        if r["tasks"] == 3 and r["decay"] == DECAY:
            assert r["rel_frobenius"] == pytest.approx(again[r["rule"]], rel=1e-6, abs=1e-9)
    errors = {r["rule"]: r["rel_frobenius"] for r in rows if (r["tasks"], r["decay"]) == (3, 1.0)}
    assert errors["sum"] < 1e-5 and 0 < errors["nearest"] <= errors["n-weighted"] + 1e-9
    text = write_study(study, tmp_path).read_text()
    assert "## F. Online KFAC: each rule against the exact online sum" in text
    assert "- Online KFAC (part F): after 3 tasks of permuted-mnist at decay 1" in text
    with open(tmp_path / "study.csv") as f:
        csv_rows = [r for r in csv.DictReader(f) if r["part"] == "F"]
    assert len(csv_rows) == len(rows) and {r["rule"] for r in csv_rows} == set(errors)


def test_the_link_leaves_out_runs_of_another_optimizer(tmp_path):
    """The optimizer control's SGD runs share network and sequence, not part E's training."""
    study, results = _hand_made(tmp_path, REAL_NETWORK)
    sgd = {**study, "sweep_network": {**study["sweep_network"], "optimizer": "sgd"}}
    assert "holds no runs of mlp hidden=16" in sweep_link(sgd, results)["note"]
    assert sweep_link(study, results)["note"] == ""  # no optimizer recorded: Adam, as before
