"""The penalty's closed-form gradient (what training adds) against autograd, in float64."""

from __future__ import annotations

import copy

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


def curvatures(model, x, y):
    layout = ParamLayout.of(model)
    diag = estimators.make("diag-exact").fit(model, x, y)
    return {
        "diag": diag,
        "identity": IdentityCurvature(layout, 2.5),
        "online diag": diag.add(estimators.make("diag-empirical").fit(model, x, y), 0.5),
        "kfac": estimators.make("kfac-exact").fit(model, x, y),
        "dense": estimators.make("full-exact", representation="dense").fit(model, x, y),
        "factor": estimators.make("full-mc", representation="factor", mc_samples=3).fit(
            model, x, y
        ),
        "negative diag": DiagCurvature(
            layout, torch.linspace(-1.0, 1.0, layout.numel, dtype=torch.float64)
        ),
    }


def autograd_gradient(curv, params, anchors, scale):
    """d/dtheta of scale/2 * quadratic(theta - theta*)."""
    names = curv.layout.names
    q = curv.quadratic({n: p - a for n, p, a in zip(names, params, anchors, strict=True)})
    return torch.autograd.grad(0.5 * scale * q, params)


@pytest.mark.parametrize(
    "kind", ["diag", "identity", "online diag", "kfac", "dense", "factor", "negative diag"]
)
def test_closed_form_matches_autograd(setup, kind):
    model, x, y, anchors = setup
    curv = curvatures(model, x, y)[kind]
    params = list(model.parameters())
    expected = autograd_gradient(curv, params, anchors, 7.0)
    start = [torch.randn_like(p) for p in params]  # adds to whatever is there
    grads = [g.clone() for g in start]
    curv.accumulate_penalty_grad([p.detach() for p in params], anchors, grads, 7.0)
    for g, s, e in zip(grads, start, expected, strict=True):
        torch.testing.assert_close(g - s, e, rtol=1e-11, atol=1e-14)
        assert not g.requires_grad


def test_mixed_dtypes_take_the_generic_path(setup):
    model, x, y, anchors = setup
    curv = curvatures(model, x, y)["diag"]  # float64
    params32 = [p.detach().float() for p in model.parameters()]
    grads = [torch.zeros_like(p) for p in params32]
    curv.accumulate_penalty_grad(params32, [a.float() for a in anchors], grads, 1.0)
    expected = autograd_gradient(curv, list(model.parameters()), anchors, 1.0)
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e.float(), rtol=1e-5, atol=1e-6)


def test_bad_lists_say_what_is_expected(setup):
    model, x, y, anchors = setup
    curv = curvatures(model, x, y)["kfac"]
    params = [p.detach() for p in model.parameters()]
    grads = [torch.zeros_like(p) for p in params]
    with pytest.raises(ValueError, match="expected 4 parameters, anchors and gradients"):
        curv.accumulate_penalty_grad(params[:3], anchors, grads, 1.0)
    wrong = [*grads[:-1], torch.zeros(7, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"parameter '2.bias': expected shape \(3,\)"):
        curv.accumulate_penalty_grad(params, anchors, wrong, 1.0)


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_penalty_gradients_match_autograd(setup, mode):
    """add_gradients after the loss's backward == backward of loss + penalty, two past tasks."""
    model, x, y, _ = setup
    first = estimators.make("diag-exact").fit(model, x, y)
    penalty = estimators.EWC(lam=3.0, mode=mode)
    penalty.consolidate(model, first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    penalty.consolidate(model, estimators.make("diag-mc", mc_samples=2).fit(model, x, y))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    twin = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(model(x), y)
    (loss + penalty(model)).backward()
    nn.functional.cross_entropy(twin(x), y).backward()
    twin_params = dict(twin.named_parameters())
    assert all(twin_params[n].grad is not None for n, _ in model.named_parameters())
    penalty.add_gradients(twin)
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-11, atol=1e-14, msg=n)


def test_parameters_without_a_gradient_get_one(setup):
    model = setup[0]
    penalty = estimators.EWC(lam=1.0)
    penalty.consolidate(model, IdentityCurvature(ParamLayout.of(model), 1.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    penalty.add_gradients(model)  # no backward ran: every .grad is None
    for p in model.parameters():
        torch.testing.assert_close(p.grad, torch.ones_like(p))


def test_accumulate_penalty_grad_takes_mappings_by_name_as_quadratic_does():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    curv = estimators.make("kfac-exact").fit(model, x, y)
    names = curv.layout.names
    params = dict(model.named_parameters())
    anchors = {n: p.detach() + 0.1 for n, p in params.items()}
    by_list = [torch.zeros_like(params[n]) for n in names]
    curv.accumulate_penalty_grad(
        [params[n].detach() for n in names], [anchors[n] for n in names], by_list, 2.0
    )
    by_name = {n: torch.zeros_like(p) for n, p in params.items()}
    curv.accumulate_penalty_grad(
        {n: p.detach() for n, p in reversed(params.items())}, anchors, by_name, 2.0
    )
    for n, g in zip(names, by_list):
        torch.testing.assert_close(by_name[n], g, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"anchors lacks parameter\(s\) '2.bias'"):
        curv.accumulate_penalty_grad(params, {n: anchors[n] for n in names[:-1]}, by_name, 1.0)
    with pytest.raises(TypeError, match="params must be a list of tensors in the layout's order"):
        curv.accumulate_penalty_grad("weights", anchors, by_name, 1.0)


def test_separate_dense_terms_merge_exactly(setup):
    """Three dense tasks become one P x P term; loss and gradient equal the explicit sum."""
    model, x, y, _ = setup
    penalty = estimators.EWC(lam=2.0)
    kept = []  # (anchor, F) copies: consolidate takes ownership of the matrices
    for t in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        curv = estimators.make("full-exact", representation="dense").fit(model, x[t:], y[t:])
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        kept.append((flat.clone(), curv.matrix.clone()))
        penalty.consolidate(model, curv)
    assert len(penalty) == 1 and penalty.nbytes == kept[0][1].numel() * 8 + flat.numel() * 8
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    explicit = sum(torch.dot(theta - a, m @ (theta - a)) for a, m in kept)
    torch.testing.assert_close(penalty(model).detach(), 0.5 * 2.0 * explicit, rtol=1e-12, atol=0)
    grad = 2.0 * sum(m @ (theta - a) for a, m in kept)
    for p in model.parameters():
        p.grad = None
    penalty.add_gradients(model)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, grad, rtol=1e-11, atol=1e-14)
