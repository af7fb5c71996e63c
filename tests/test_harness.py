"""The harness: penalty maths, one run end to end on synthetic data, BatchNorm axis, divergence,
determinism, joint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
from benchmark.config import RunConfig
from benchmark.harness import run, set_train_mode
from estimators.diag import DiagCurvature
from estimators.layout import ParamLayout

TINY = {
    "data": "synthetic",
    "epochs": 1,
    "fisher_samples": 64,
    "eval_limit": 100,
    "train_limit": 400,
}


def tiny(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


# -- the penalty ----------------------------------------------------------------------------
def _model():
    torch.manual_seed(0)
    return nn.Linear(2, 1, bias=False).double()


def _diag(model, values):
    return DiagCurvature(ParamLayout.of(model), torch.tensor(values, dtype=torch.float64))


def test_separate_penalty_by_hand():
    model = _model()
    pen = estimators.EWC(lam=4.0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    pen.consolidate(model, _diag(model, [1.0, 3.0]))  # anchor (1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0]]))
    pen.consolidate(model, _diag(model, [2.0, 0.5]))  # anchor (0, 0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # lam/2 * [(1*0^2 + 3*1^2) + (2*1^2 + 0.5*1^2)] = 2 * (3 + 2.5) = 11
    assert float(pen(model).detach()) == pytest.approx(11.0)
    assert pen.nbytes == 2 * 2 * 8


def test_online_penalty_by_hand():
    model = _model()
    pen = estimators.EWC(lam=2.0, mode="online", gamma=0.5)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    pen.consolidate(model, _diag(model, [1.0, 3.0]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0]]))
    pen.consolidate(
        model, _diag(model, [2.0, 0.5])
    )  # F = 0.5*(1, 3) + (2, 0.5) = (2.5, 2); anchor (0, 0)
    assert len(pen.terms) == 1
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # lam/2 * (2.5 + 2) = 4.5
    assert float(pen(model).detach()) == pytest.approx(4.5)


def test_penalty_is_differentiable_and_zero_at_anchor():
    model = _model()
    pen = estimators.EWC(lam=1.0)
    assert float(pen(model)) == 0.0
    curv = estimators.make("identity").fit(model, torch.randn(3, 2, dtype=torch.float64))
    pen.consolidate(model, curv)
    assert float(pen(model)) == 0.0
    with torch.no_grad():
        model.weight.add_(1.0)
    (grad,) = torch.autograd.grad(pen(model), [model.weight])
    assert torch.allclose(grad, torch.ones_like(grad))  # lam * I * delta


# -- runs on synthetic data ---------------------------------------------------------------------
def test_run_end_to_end():
    rec = run(tiny(method="ewc", estimator="diag-exact", lam=100.0))
    assert rec.status == "ok"
    assert rec.tasks == ["mnist", "fmnist"]
    assert len(rec.acc_test) == 2 and all(len(r) == 2 for r in rec.acc_test)
    assert all(0 <= v <= 1 for row in rec.acc_val + rec.acc_test for v in row)
    assert rec.acc_test[0][0] > 0.8  # learned task 1
    # a curvature after the first task only: the last task's would never be used
    assert len(rec.estimate_seconds) == 2 and rec.estimate_seconds[0] > 0
    assert rec.estimate_seconds[1] == 0 and rec.curvature_bytes == [90010 * 4, 0]
    assert rec.representations == ["diag", None]
    assert rec.curvature_trace[0] > 0 and rec.curvature_trace[1] is None
    assert rec.penalty_ms[0] is None and rec.penalty_ms[1] is not None
    assert all(s > 0 for s in rec.step_ms)
    assert rec.peak_rss_mb is None or rec.peak_rss_mb > 0
    assert rec.provenance["torch"] == torch.__version__


def test_same_config_same_numbers():
    cfg = tiny(method="ewc", estimator="diag-mc", lam=10.0, seed=3)
    a, b = run(cfg), run(cfg)
    assert a.acc_test == b.acc_test and a.acc_val == b.acc_val
    assert a.train_loss == b.train_loss
    c = run(cfg.replace(seed=4))
    assert c.acc_test != a.acc_test or c.train_loss != a.train_loss


def test_divergence_is_recorded():
    rec = run(tiny(method="baseline", estimator=None, optimizer="sgd", lr=1e12, epochs=2))
    assert rec.status == "diverged"
    assert "non-finite" in rec.message
    assert rec.acc_test[-1] == [None, None]


def test_joint_has_one_row():
    rec = run(tiny(method="joint", estimator=None))
    assert rec.status == "ok"
    assert len(rec.acc_test) == 1 and len(rec.acc_test[0]) == 2
    assert min(rec.acc_test[0]) > 0.5


def test_multi_head_and_joint_multi_head():
    rec = run(
        tiny(sequence="split-mnist", n_tasks=3, method="ewc", estimator="kfac-exact", lam=10.0)
    )
    assert rec.status == "ok" and len(rec.acc_test) == 3
    joint = run(tiny(sequence="split-mnist", n_tasks=3, method="joint", estimator=None))
    assert joint.status == "ok" and min(joint.acc_test[0]) > 0.5


def test_bn_freeze_keeps_statistics_of_task_one():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    set_train_mode(model, 1, "freeze")
    assert model.training and not model[1].training
    set_train_mode(model, 0, "freeze")
    assert model[1].training
    set_train_mode(model, 3, "update")
    assert model[1].training


def test_bn_modes_change_results():
    freeze = run(tiny(method="baseline", estimator=None, bn="freeze"))
    update = run(tiny(method="baseline", estimator=None, bn="update"))
    assert freeze.acc_test[0] == update.acc_test[0]  # identical through task 1
    assert freeze.acc_test[1] != update.acc_test[1]


def test_online_and_l2_run():
    assert (
        run(tiny(method="ewc", estimator="diag-exact", mode="online", gamma=0.9, lam=10.0)).status
        == "ok"
    )
    rec = run(tiny(method="l2", estimator=None, lam=1.0))
    assert rec.status == "ok" and rec.curvature_bytes == [0, 0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sequence": "cifar"}, "'sequence' = 'cifar' is invalid"),
        ({"method": "ewc", "estimator": "diag-true"}, "valid|one of"),
        ({"method": "baseline", "estimator": None, "lam": 5.0}, "has no penalty"),
        ({"epochs": 0}, "'epochs' = 0 is invalid: a positive integer"),
        ({"bn": "sometimes"}, "choose one of update, freeze"),
        ({"method": "ewc", "estimator": "kfac-exact", "mode": "online"}, "online accumulation"),
        ({"sequence": "split-mnist", "n_tasks": 7}, "split-mnist: it takes 1 to 5"),
        ({"val_fraction": 1.0}, "strictly between 0 and 1"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)


def test_unknown_setting():
    with pytest.raises(
        ValueError, match=r"unknown run setting\(s\) 'epoch'.*valid settings: sequence"
    ):
        RunConfig.from_dict({"epoch": 3})


def test_run_id_ignores_device_and_tracks_everything_else():
    base = RunConfig()
    assert base.run_id == base.replace(device="auto").run_id
    assert base.run_id != base.replace(lam=1.0).run_id
    assert base.run_id != base.replace(estimator_options={"chunk_size": 64}).run_id


@pytest.mark.usefixtures("data_root")
def test_real_data_run(data_root):
    rec = run(
        RunConfig(
            method="ewc",
            estimator="diag-exact",
            lam=500.0,
            epochs=1,
            train_limit=2000,
            eval_limit=500,
            fisher_samples=200,
        ),
        root=str(data_root),
    )
    assert rec.status == "ok"
    assert rec.acc_test[0][0] > 0.8  # MNIST learned from 2,000 inputs


@pytest.mark.usefixtures("data_root")
def test_pipeline_measure(data_root):
    from benchmark.costs.pipeline import measure

    out = measure(str(data_root), limit=1000)
    assert out["images"] == 1000
    assert out["dataloader_seconds"] > out["dataloader_batches_only_seconds"] > 0
    assert out["ratio"] == pytest.approx(out["dataloader_seconds"] / out["tensor_seconds"])


# -- measuring never touches the experiment -------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {"method": "ewc", "estimator": "diag-exact", "lam": 100.0},
        {"method": "ewc", "estimator": "kfac-exact", "lam": 10.0, "bn": "update"},
        {"method": "baseline", "estimator": None},
    ],
    ids=["ewc-diag", "ewc-kfac-bn-update", "baseline"],
)
def test_record_is_bitwise_the_same_with_and_without_the_cost_probe(changes):
    """The probe steps copies: Adam's state, BatchNorm statistics and RNG stay the training's."""
    cfg = tiny(**changes, epochs=2)
    probed, plain = run(cfg, probe=True), run(cfg, probe=False)
    assert probed.acc_val == plain.acc_val and probed.acc_test == plain.acc_test
    assert probed.train_loss == plain.train_loss
    assert probed.curvature_bytes == plain.curvature_bytes
    assert all(s is not None for s in probed.step_ms)
    assert plain.step_ms == [None, None] and plain.penalty_ms == [None, None]


def test_probe_leaves_the_optimizer_state_alone():
    from benchmark import harness, training
    from benchmark.data import synthetic_split
    from benchmark.tasks import Task

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    split = synthetic_split("mnist", True)
    task = Task("t", split, split, split, head=0, n_classes=10)
    batches = training.Batches(
        task.train, 100, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    forward = harness.task_forward(model, 0)
    x, y = batches.get(torch.arange(100))
    training.train_step(model, opt, forward, x, y, None)
    before = {k: v.clone() for k, v in opt.state[model[1].weight].items()}
    weights = model[1].weight.detach().clone()
    harness.probe_step_cost(model, opt, batches, None, forward)
    after = opt.state[model[1].weight]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model[1].weight, weights)


# -- divergence is checked where it happens ---------------------------------------------------
def _blow_up_after_task(monkeypatch, task_index: int, value: float):
    """Make the last update of a task put ``value`` into the first weight."""
    from benchmark import harness

    real = harness.train_task
    calls = []

    def wrapped(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        if len(calls) == task_index:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = value
        calls.append(1)
        return out

    monkeypatch.setattr(harness, "train_task", wrapped)


@pytest.mark.parametrize("task_index", [0, 1])
def test_blow_up_on_the_last_update_is_diverged_not_ok(monkeypatch, task_index):
    _blow_up_after_task(monkeypatch, task_index, float("nan"))
    rec = run(tiny(method="ewc", estimator="diag-exact", lam=10.0))
    assert rec.status == "diverged"
    assert f"non-finite by the end of task {task_index + 1}" in rec.message
    assert rec.acc_test[-1] == [None, None] and len(rec.acc_test) == task_index + 1


def test_non_finite_logits_from_finite_weights_are_diverged(monkeypatch):
    _blow_up_after_task(monkeypatch, 0, 3e38)  # finite, but the logits overflow to inf
    rec = run(tiny(method="baseline", estimator=None))
    assert rec.status == "diverged"
    assert "logits became non-finite after task 1" in rec.message
