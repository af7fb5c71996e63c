"""``Curvature.penalty``: fused diagonal and identity forms against the generic quadratic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
from estimators import DiagCurvature, IdentityCurvature, ParamLayout


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    anchors = [p.detach() + 0.1 * torch.randn_like(p) for p in model.parameters()]
    return model, x, y, anchors


def _generic(curv, params, anchors):
    names = curv.layout.names
    return curv.quadratic({n: p - a for n, p, a in zip(names, params, anchors, strict=True)})


def _value_and_grads(fn, model):
    params = list(model.parameters())
    value = fn(params)
    grads = torch.autograd.grad(value, params)
    return value.detach(), grads


def _curvatures(model, x, y):
    layout = ParamLayout.of(model)
    diag = estimators.make("diag-exact").fit(model, x, y)
    return {
        "diag": diag,
        "identity": IdentityCurvature(layout, 1.0),
        "identity x2.5": IdentityCurvature(layout, 2.5),
        "online diag": diag.add(estimators.make("diag-empirical").fit(model, x, y), 0.5),
        "kfac (generic)": estimators.make("kfac-exact").fit(model, x, y),
        "full (generic)": estimators.make("full-exact", representation="dense").fit(model, x, y),
    }


@pytest.mark.parametrize(
    "kind", ["diag", "identity", "identity x2.5", "online diag", "kfac (generic)", "full (generic)"]
)
def test_penalty_matches_quadratic_value_and_gradient(setup, kind):
    model, x, y, anchors = setup
    curv = _curvatures(model, x, y)[kind]
    fused, fused_grads = _value_and_grads(lambda ps: curv.penalty(ps, anchors), model)
    plain, plain_grads = _value_and_grads(lambda ps: _generic(curv, ps, anchors), model)
    assert fused > 0
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=0)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_penalty_is_zero_with_zero_gradient_at_the_anchor(setup):
    model, x, y, _ = setup
    curv = _curvatures(model, x, y)["diag"]
    at = [p.detach().clone() for p in model.parameters()]
    value, grads = _value_and_grads(lambda ps: curv.penalty(ps, at), model)
    assert float(value) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads)


def test_second_order_terms_of_the_fused_form(setup):
    """The gradient of the fused penalty is 2 F (theta - theta*): checked entry by entry."""
    model, x, y, anchors = setup
    curv = _curvatures(model, x, y)["diag"]
    _, grads = _value_and_grads(lambda ps: curv.penalty(ps, anchors), model)
    delta = torch.cat(
        [(p - a).reshape(-1) for p, a in zip(model.parameters(), anchors, strict=True)]
    )
    expected = 2 * curv.diag * delta.detach()
    torch.testing.assert_close(
        torch.cat([g.reshape(-1) for g in grads]), expected, rtol=1e-12, atol=0
    )


def test_mixed_dtypes_fall_back_to_the_generic_path(setup):
    model, x, y, anchors = setup
    curv = _curvatures(model, x, y)["diag"]
    params32 = [p.detach().float().requires_grad_() for p in model.parameters()]
    anchors32 = [a.float() for a in anchors]
    value = curv.penalty(params32, anchors32)
    expected = _generic(curv, [p.double() for p in params32], anchors)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value.detach(), expected.detach(), rtol=1e-6, atol=0)


def test_negative_weights_use_the_generic_path(setup):
    model, _, _, anchors = setup
    layout = ParamLayout.of(model)
    diag = torch.linspace(-1.0, 1.0, layout.numel, dtype=torch.float64)
    curv = DiagCurvature(layout, diag)
    params = list(model.parameters())
    torch.testing.assert_close(
        curv.penalty(params, anchors), _generic(curv, params, anchors), rtol=1e-12, atol=0
    )


def test_bad_pairs_say_what_is_expected(setup):
    model, x, y, anchors = setup
    curv = _curvatures(model, x, y)["diag"]
    params = list(model.parameters())
    with pytest.raises(ValueError, match="expected 4 parameters and anchors"):
        curv.penalty(params[:3], anchors)
    wrong = [*anchors[:-1], torch.zeros(7, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"parameter '2.bias': expected shape \(3,\)"):
        curv.penalty(params, wrong)
