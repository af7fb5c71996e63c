"""Per-run diagnostics (``benchmark.diagnostics``): the drift's Fisher quadratics against brute
force, feature drift and the swapped output layer by hand, a whole run's record, the report table.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import estimators
from benchmark import diagnostics as diag
from benchmark.config import RunConfig
from benchmark.grouped import GroupError, run_group
from benchmark.harness import run
from benchmark.methods.ewc import CurvatureRegulariser
from benchmark.models import MultiHead
from benchmark.outcomes import summarise
from benchmark.records import RunRecord, load_record, record_path, write_record
from benchmark.report.diagnostics import diagnostics_table, run_summary
from benchmark.report.results import results_section

TINY = {"data": "synthetic", "epochs": 1, "fisher_samples": 64, "eval_limit": 100}
TINY_RUN = {
    **TINY,
    "train_limit": 400,
    "sequence": "split-mnist-class",
    "n_tasks": 3,
    "model": "mlp",
    "model_options": {"hidden": 8},
}


def _seeded(model: nn.Module) -> nn.Module:
    """Random parameters and BatchNorm statistics (float64, eval mode)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype).abs() + 0.1)
    return model.eval()


def _plain() -> nn.Module:
    return _seeded(
        nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
    ).double()


def _multihead_bn() -> nn.Module:
    trunk = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5))
    heads = nn.ModuleList(nn.Linear(5, 3) for _ in range(2))
    return _seeded(MultiHead(trunk, heads).double())


def _drift(model: nn.Module, scale: float = 0.3) -> tuple[dict, dict, diag.Deltas]:
    """(anchor state, end state, drift by layer): a random drift of every parameter."""
    g = torch.Generator().manual_seed(2)
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    end = {
        k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if k in params else v
        for k, v in anchor.items()
    }
    deltas = {
        name: {n: end[n] - anchor[n] for n in params} for name, params in diag.layers(model).items()
    }
    return anchor, end, deltas


def _flat(deltas: diag.Deltas, shapes: dict[str, torch.Size], only: str | None = None):
    """The drift as a flat vector over ``shapes`` (zero outside the Linear layers, or ``only``)."""
    parts = {n: t for layer, d in deltas.items() if only in (None, layer) for n, t in d.items()}
    zero = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    return torch.cat([parts.get(n, zero[n]).reshape(-1) for n in shapes])


def _brute_fisher(model: nn.Module, x: torch.Tensor, head: int) -> tuple[torch.Tensor, dict]:
    """The true Fisher E_x sum_c p_c s_c s_c^T, s_c = grad log softmax_c, input by input."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    params = list(model.parameters())
    size = sum(p.numel() for p in params)
    fisher = torch.zeros(size, size, dtype=torch.float64)
    kwargs = {"head": head} if isinstance(model, MultiHead) else {}
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i : i + 1], **kwargs)[0], -1)
        for c in range(len(logp)):
            grads = torch.autograd.grad(logp[c], params, retain_graph=True, allow_unused=True)
            parts = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            s = torch.cat([g.reshape(-1) for g in parts])
            fisher += logp[c].exp().detach() * torch.outer(s, s)
    return fisher / len(x), shapes


@pytest.mark.parametrize(("build", "head"), [(_plain, 0), (_multihead_bn, 1)])
def test_exact_drift_quadratic_matches_the_dense_fisher(build, head):
    model = build()
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    anchor, _, deltas = _drift(model)
    model.load_state_dict(anchor)
    fisher, shapes = _brute_fisher(model, x, head)
    got = diag.exact_quadratics(model, anchor, deltas, x, head)
    assert set(got) == {*deltas, diag.TOTAL}
    for layer in deltas:
        d = _flat(deltas, shapes, layer)
        assert got[layer] == pytest.approx(float(d @ fisher @ d), rel=1e-10, abs=1e-14)
    d = _flat(deltas, shapes)  # BatchNorm's parameters do not drift in the quadratic
    assert got[diag.TOTAL] == pytest.approx(float(d @ fisher @ d), rel=1e-10)
    assert got[diag.TOTAL] > 0
    if isinstance(model, MultiHead):  # another task's head: no Fisher
        assert got["heads.0"] == 0.0


@pytest.mark.parametrize("name", ["diag-exact", "kfac-exact"])
def test_used_quadratic_is_that_of_the_dense_curvature(name):
    model = _plain()
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    curvature = estimators.make(name).fit(model, x)
    dense, layout = curvature.dense(), curvature.layout
    _, _, deltas = _drift(model)
    shapes = dict(zip(layout.names, layout.shapes, strict=True))
    got = diag.used_quadratics(curvature, deltas)
    for layer in deltas:
        d = _flat(deltas, shapes, layer)
        assert got[layer] == pytest.approx(float(d @ dense @ d), rel=1e-10)
    d = _flat(deltas, shapes)
    assert got[diag.TOTAL] == pytest.approx(float(d @ dense @ d), rel=1e-10)
    with pytest.raises(ValueError, match="does not cover"):
        diag.used_quadratics(curvature, {"x": {"nope.weight": torch.zeros(1)}})


def test_a_dense_curvature_is_kept_as_fitted_though_the_penalty_merges_it():
    model = nn.Linear(2, 1).double()
    layout = estimators.ParamLayout.of(model)
    matrices = [torch.eye(3, dtype=torch.float64) * (k + 1) for k in range(2)]
    fits = iter(matrices)
    config = RunConfig(data="synthetic", method="ewc", estimator="full-exact", lam=1.0)
    regulariser = CurvatureRegulariser(
        config, lambda *_: estimators.DenseCurvature(layout, next(fits).clone())
    )
    kept = diag.Kept()
    kept.watch(config, regulariser)
    for t in range(2):
        regulariser.consolidate(model, None, t, torch.device("cpu"))
    assert len(regulariser.penalty.terms) == 1  # merged: its matrix is the sum
    assert torch.equal(regulariser.penalty.terms[0][1].matrix, matrices[0] + matrices[1])
    assert [torch.equal(c.matrix, m) for c, m in zip(kept.curvatures, matrices)] == [True, True]
    baseline = CurvatureRegulariser(config.replace(method="l2", estimator=None))
    diag.Kept().watch(baseline.config, baseline)  # l2: nothing to compare with
    assert baseline.fitted is None


def test_structure_of_the_networks():
    assert diag.layers(_plain()) == {
        "0": ["0.weight", "0.bias"],
        "2": ["2.weight", "2.bias"],
        "4": ["4.weight", "4.bias"],
    }
    plain = _plain()
    assert {k: type(m) for k, m in diag.hidden_features(plain).items()} == {
        "0": nn.Tanh,
        "2": nn.ReLU,
    }
    multi = _multihead_bn()
    assert diag.output_layers(multi) == ["heads.0", "heads.1"]
    assert diag.output_layer(multi, 1) == "heads.1"
    assert list(diag.hidden_features(multi)) == ["trunk.0"]  # after its ReLU, before BatchNorm
    assert diag.hidden_features(multi)["trunk.0"] is multi.trunk[1]


def test_feature_drift_by_hand():
    model = _seeded(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double())
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    anchor, end, _ = _drift(model)
    assert diag.feature_drift(model, anchor, anchor, x) == {"0": 0.0}
    h0 = torch.relu(x @ anchor["0.weight"].T + anchor["0.bias"])
    h1 = torch.relu(x @ end["0.weight"].T + end["0.bias"])
    want = float((h1 - h0).norm() / h0.norm())
    assert diag.feature_drift(model, end, anchor, x)["0"] == pytest.approx(want, rel=1e-12)


def test_swapped_output_accuracy_is_the_anchors_when_only_the_output_changed():
    model = _plain()
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    anchor = {k: v.clone() for k, v in model.state_dict().items()}
    y = model(x).argmax(-1)
    y[::3] = (y[::3] + 1) % 3  # some wrong, so that margins have both signs
    end = {k: v + 5.0 * torch.randn_like(v) if k.startswith("4.") else v for k, v in anchor.items()}
    got = diag.swapped_output(model, end, anchor, x, y)
    acc, margin = diag.accuracy_margin(model, anchor, x, y)
    assert (got["swapped"], got["swapped_margin"]) == (acc, margin)
    assert acc == pytest.approx(1 - 17 / 50)
    logits = model(x).detach()
    others = logits.clone()
    others[torch.arange(50), y] = -torch.inf
    want = float((logits[torch.arange(50), y] - others.max(1).values).mean())
    assert margin == pytest.approx(want, rel=1e-12)
    assert got["end"] == diag.accuracy_margin(model, end, x, y)[0]


def test_a_run_records_diagnostics_that_round_trip(tmp_path):
    config = RunConfig(**TINY_RUN, method="ewc", estimator="kfac-exact", lam=10.0, diagnostics=True)
    record = run(config, probe=False)
    assert record.status == "ok"
    d = record.diagnostics
    assert (
        set(d["tasks"]) == {"0", "1"}
        and d["layers"] == ["1", "3", "5"]
        and d["hidden"] == ["1", "3"]
    )
    assert d["plasticity"] == record.acc_test[-1][-1]
    assert d["stability"] == pytest.approx(sum(record.acc_test[-1][:2]) / 2)
    for t, task in d["tasks"].items():
        quad = task["drift_quadratic"]
        assert set(quad) == {"exact", "used", "ratio", "norm_sq"}
        assert quad["ratio"]["total"] == pytest.approx(
            quad["used"]["total"] / quad["exact"]["total"]
        )
        # eval_limit keeps fewer test inputs than INPUTS: the subset is the whole test split
        assert task["swapped_output_accuracy"]["end"] == record.acc_test[-1][int(t)]
    write_record(tmp_path, record)
    loaded = load_record(record_path(tmp_path, record.run_id), tmp_path)
    assert loaded.diagnostics == json.loads(json.dumps(record.to_dict()))["diagnostics"]


def test_diagnostics_off_has_none_and_keeps_the_run_id():
    config = RunConfig(**TINY_RUN, method="baseline", estimator=None)
    assert "diagnostics" not in config.key()
    assert config.replace(diagnostics=True).run_id != config.run_id
    record = run(config, probe=False)
    assert record.diagnostics is None
    without = {k: v for k, v in record.to_dict().items() if k != "diagnostics"}
    assert RunRecord.from_dict(without).diagnostics is None  # records made before the field
    old = dict(record.to_dict())
    del old["config"]["diagnostics"]  # a config written before the setting existed
    assert RunConfig.from_dict(RunRecord.from_dict(old).config).run_id == record.run_id
    on = run(config.replace(diagnostics=True), probe=False)  # baseline: the exact quadratic only
    assert set(on.diagnostics["tasks"]["0"]["drift_quadratic"]) == {"exact", "norm_sq"}
    assert on.acc_test == record.acc_test and on.train_loss == record.train_loss


def test_a_bad_diagnostics_setting_or_record_is_refused():
    with pytest.raises(ValueError, match="diagnostics"):
        RunConfig(data="synthetic", diagnostics="yes")
    record = RunRecord(run_id="x", config={}).to_dict()
    with pytest.raises(ValueError, match="diagnostics"):
        RunRecord.from_dict({**record, "diagnostics": [1]})


def test_grouped_training_refuses_diagnostics():
    configs = [
        RunConfig(**TINY_RUN, method="baseline", estimator=None, diagnostics=True, seed=s)
        for s in (0, 1)
    ]
    with pytest.raises(GroupError, match="diagnostics"):
        run_group(configs)


def _record(seed: int, stability: float, exact: float, drift: float, end: float) -> RunRecord:
    config = RunConfig(data="synthetic", method="baseline", estimator=None, seed=seed)
    task = {
        "inputs": 10,
        "drift_quadratic": {"exact": {"1": exact, "total": exact}, "norm_sq": {"total": 1.0}},
        "feature_drift": {"1": drift},
        "swapped_output_accuracy": {
            "end": end,
            "swapped": 0.5,
            "end_margin": 0,
            "swapped_margin": 0,
        },
    }
    tasks = {"0": task, "1": copy.deepcopy(task)}
    tasks["1"]["drift_quadratic"]["exact"]["total"] = 3 * exact
    diagnostics = {"plasticity": 0.9, "stability": stability, "hidden": ["1"], "tasks": tasks}
    return RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        tasks=["a", "b", "c"],
        acc_val=[[0.5, 0.5, 0.5]] * 3,
        acc_test=[[0.5, 0.5, 0.5]] * 3,
        diagnostics=diagnostics,
    )


def test_the_report_table_from_two_records():
    runs = summarise([_record(0, 0.2, 1.0, 0.1, 0.3), _record(1, 0.4, 3.0, 0.3, 0.1)], (100,))
    table = diagnostics_table(runs, runs[0].sequence, runs[0].bn)
    header, _, row = table.splitlines()
    assert "feature drift 1" in header and "old acc, output put back" in header
    # means over seeds: stability (0.2 + 0.4) / 2; exact, per run the mean over its old tasks:
    # (1 + 3) / 2 = 2 and (3 + 9) / 2 = 6, so 4; no curvature: no ratio; drift (0.1 + 0.3) / 2
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["baseline", "2", "0.3000", "0.9000", "4", "—", "0.200", "0.2000", "0.5000"]
    assert "Diagnostics after the last task" in results_section(runs)
    plain = _record(0, 0.2, 1.0, 0.1, 0.3)
    plain.diagnostics = None
    assert "Diagnostics" not in results_section(summarise([plain], (100,)))


def test_the_ratio_is_of_the_means_over_old_tasks():
    task = _record(0, 0.2, 1.0, 0.1, 0.3).diagnostics["tasks"]["0"]
    tasks = {
        str(t): {**task, "drift_quadratic": {"exact": {"total": e}, "used": {"total": u}}}
        for t, (e, u) in enumerate([(2.0, 0.5), (6.0, 0.5)])
    }
    assert run_summary({"tasks": tasks})["ratio"] == pytest.approx(1.0 / 8.0)
