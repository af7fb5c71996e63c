"""Methods as specs: the registry, labels, MAS's importance against brute force, MAS through the
harness, and the public EWC penalty (``estimators.EWC``) on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
from benchmark import methods
from benchmark.config import PENALISED, RunConfig
from benchmark.harness import run
from benchmark.methods.mas import mas_importance
from benchmark.models import task_forward

TINY = {
    "data": "synthetic",
    "epochs": 1,
    "fisher_samples": 64,
    "eval_limit": 100,
    "train_limit": 400,
}


# -- the registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "fields"),
    [
        ("baseline", {"method": "baseline", "estimator": None, "mode": "separate"}),
        ("l2", {"method": "l2", "estimator": None, "mode": "separate"}),
        ("ewc kfac-mc", {"method": "ewc", "estimator": "kfac-mc", "mode": "separate"}),
        ("ewc-online diag-exact", {"method": "ewc", "estimator": "diag-exact", "mode": "online"}),
        ("mas", {"method": "mas", "estimator": None, "mode": "separate"}),
        ("mas-online", {"method": "mas", "estimator": None, "mode": "online"}),
        ("joint", {"method": "joint", "estimator": None, "mode": "separate"}),
    ],
)
def test_labels_parse_and_round_trip(label, fields):
    assert methods.parse_label(label) == fields
    assert methods.label_of(fields) == label


@pytest.mark.parametrize("label", ["dropout", "ewc", "mas diag-exact", "l2-online", "joint x"])
def test_unknown_or_malformed_labels_name_the_allowed_forms(label):
    with pytest.raises(ValueError, match=r"unknown method .*use baseline, l2, 'ewc <estimator>'"):
        methods.parse_label(label)


def test_registry_drives_validation_and_order():
    assert PENALISED == ("l2", "ewc", "mas")
    labels = ["joint", "mas", "ewc-online diag-exact", "ewc kfac-exact", "ewc diag-exact", "l2"]
    ordered = sorted([*labels, "baseline"], key=methods.sort_key)
    assert ordered == [
        "baseline",
        "l2",
        "ewc diag-exact",
        "ewc kfac-exact",
        "ewc-online diag-exact",
        "mas",
        "joint",
    ]
    with pytest.raises(ValueError, match="method 'mas' takes no estimator"):
        RunConfig(method="mas", estimator="diag-exact")
    with pytest.raises(ValueError, match="method 'l2' allows separate"):
        RunConfig(method="l2", estimator=None, mode="online")
    with pytest.raises(ValueError, match="'joint' has no penalty"):
        RunConfig(method="joint", estimator=None, lam=1.0)
    assert RunConfig(method="mas", estimator=None, mode="online", lam=1.0).label == "mas-online"


# -- MAS ------------------------------------------------------------------------------------------
def _tiny_models():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.BatchNorm1d(5), nn.Linear(5, 3)
    )
    mlp[3].running_mean.uniform_(-0.5, 0.5)
    mlp[3].running_var.uniform_(0.5, 2.0)
    heads = nn.ModuleDict({"trunk": nn.Linear(6, 4), "a": nn.Linear(4, 2), "b": nn.Linear(4, 2)})
    return mlp.double(), heads.double()


def _brute_force_mas(model: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
    """mean_n |d ||f(x_n)||^2 / d theta|, one input at a time with autograd (float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    model.eval()
    for n in range(x.shape[0]):
        out = forward(model, x[n : n + 1]).square().sum()
        grads = torch.autograd.grad(out, params, allow_unused=True)
        flat = [
            torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
            for p, g in zip(params, grads)
        ]
        total += torch.cat(flat).abs()
    return total / x.shape[0]


def test_mas_importance_matches_brute_force_in_float64():
    mlp, heads = _tiny_models()
    x = torch.randn(9, 6, dtype=torch.float64)
    mlp.train()
    got = mas_importance(mlp, lambda m, v: m(v), x, chunk=4)
    assert mlp.training and mlp[3].training  # modes restored
    want = _brute_force_mas(mlp, lambda m, v: m(v), x)
    torch.testing.assert_close(got.diagonal_flat(), want, rtol=1e-12, atol=1e-14)

    def head_b(m, v):
        return m["b"](m["trunk"](v))

    got = mas_importance(heads, head_b, x, chunk=5).diagonal_flat()
    torch.testing.assert_close(got, _brute_force_mas(heads, head_b, x), rtol=1e-12, atol=1e-14)
    layout = estimators.ParamLayout.of(heads)
    assert got[layout.slice("a.weight")].abs().sum() == 0  # another head's weights: no importance


@pytest.mark.parametrize(
    ("sequence", "extra"),
    [("permuted-mnist", {"n_tasks": 3}), ("split-mnist", {"n_tasks": 3})],
)
@pytest.mark.parametrize("mode", ["separate", "online"])
def test_mas_runs_through_the_harness(sequence, extra, mode):
    cfg = RunConfig(**TINY, sequence=sequence, method="mas", estimator=None, lam=10.0, mode=mode)
    cfg = cfg.replace(**extra)
    record = run(cfg)
    assert record.status == "ok" and len(record.acc_test) == 3
    assert record.curvature_bytes[0] > 0 and record.penalty_ms[1] is not None
    baseline = run(cfg.replace(method="baseline", lam=0.0, mode="separate"))
    assert record.train_loss[0] == baseline.train_loss[0]  # nothing to penalise in task 1
    assert record.train_loss[1:] != baseline.train_loss[1:]  # the penalty acted


def test_mas_penalty_pulls_towards_the_anchor_where_important():
    mlp, _ = _tiny_models()
    x = torch.randn(16, 6, dtype=torch.float64)
    omega = mas_importance(mlp, task_forward(mlp, 0), x)
    ewc = estimators.EWC(lam=2.0)
    ewc.consolidate(mlp, omega)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.1)
    # lam/2 sum Omega (0.1)^2
    want = 0.5 * 2.0 * float(omega.diagonal_flat().sum()) * 0.01
    assert float(ewc.loss(mlp)) == pytest.approx(want, rel=1e-12)


# -- the public EWC penalty -------------------------------------------------------------------
def _fitted():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 2, (20,))
    return model, x, y


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("diag-exact", {}),
        ("kfac-exact", {}),
        ("kfac-exact", {"online_rule": "sum"}),
        ("kfac-exact", {"online_rule": "n-weighted"}),
        ("full-exact", {}),
        ("identity", {}),
    ],
)
@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_loss_and_add_gradients_agree(name, options, mode):
    if mode == "online" and (why := estimators.online_refusal(name, **options)):
        pytest.skip(f"{name} {options}: {why}")
    if mode == "separate" and "online_rule" in options:
        pytest.skip("separate mode refuses a curvature fitted with online_rule (test_online_kfac)")
    model, x, y = _fitted()
    ewc = estimators.EWC(lam=3.0, mode=mode, gamma=0.5)
    for shift in (0.0, 0.2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        ewc.consolidate(model.named_parameters(), estimators.make(name, **options).fit(model, x, y))
    merged = name == "full-exact"  # dense on this model: separate terms merge into one
    assert len(ewc) == (1 if mode == "online" or merged else 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    by_autograd = torch.autograd.grad(ewc.loss(model), list(model.parameters()))
    model.zero_grad(set_to_none=True)
    ewc.add_gradients(dict(model.named_parameters()))
    for g, p in zip(by_autograd, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_ewc_refuses_bad_settings_and_foreign_parameters():
    for kwargs, message in (
        ({"lam": -1.0}, "lam must be a finite number >= 0"),
        ({"lam": float("nan")}, "lam must be a finite number >= 0"),
        ({"lam": 1.0, "mode": "sometimes"}, "mode must be one of separate, online"),
        ({"lam": 1.0, "gamma": 2.0}, r"gamma must be a number in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            estimators.EWC(**kwargs)
    model, x, y = _fitted()
    curvature = estimators.make("diag-exact").fit(model, x, y)
    ewc = estimators.EWC(lam=1.0)
    other = nn.Sequential(nn.Linear(4, 3)).double()
    with pytest.raises(ValueError, match=r"parameter\(s\) '2.weight', '2.bias' that the given"):
        ewc.consolidate(other, curvature)
    ewc.consolidate(model, curvature)
    wider = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with pytest.raises(ValueError, match=r"parameter '0.weight' has shape \(5, 4\)"):
        ewc.loss(wider)
    with pytest.raises(ValueError, match=r"'2\.weight'"):
        ewc.add_gradients(other)
    online = estimators.EWC(lam=1.0, mode="online")
    kfac = estimators.make("kfac-exact").fit(model, x, y)
    online.consolidate(model, kfac)
    with pytest.raises(NotImplementedError, match="Kronecker"):
        online.consolidate(model, kfac)


def test_ewc_loss_is_zero_before_any_task_and_on_the_model_device():
    model, _, _ = _fitted()
    loss = estimators.EWC(lam=1.0).loss(model)
    assert float(loss) == 0.0 and loss.device == next(model.parameters()).device


def test_labels_carry_the_rank_of_a_structure():
    from benchmark.methods import label_of, parse_label, sort_key

    fields = parse_label("ewc lowrank-exact rank=50", {"memory_budget": 10})
    assert fields == {
        "method": "ewc",
        "estimator": "lowrank-exact",
        "mode": "separate",
        "estimator_options": {"memory_budget": 10, "rank": 50},
    }
    assert label_of(fields) == "ewc lowrank-exact rank=50"
    assert label_of({**fields, "estimator_options": {"memory_budget": 10}}) == "ewc lowrank-exact"
    assert "estimator_options" not in parse_label("ewc kfac-exact", {"memory_budget": 10})
    labels = ["ewc lowrank-exact rank=200", "ewc lowrank-exact rank=8", "ewc diag-exact"]
    assert sorted(labels, key=sort_key) == [labels[2], labels[1], labels[0]]
    for bad in ("ewc lowrank-exact rank=big", "ewc kfac-exact damping=3", "l2 rank=5"):
        with pytest.raises(ValueError, match=r"bad option|unknown method"):
            parse_label(bad)
