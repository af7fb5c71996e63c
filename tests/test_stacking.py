"""``estimators.StackedPenalty``: S runs' penalty gradients at once equal each run's own."""

from __future__ import annotations

import copy

import pytest
import torch

import estimators
from estimators import EWC, StackedPenalty
from estimators.stacking import stacked_matmul
from tests.structures import every_structure, tiny

STRUCTURES = ["identity", "diag", "kfac", "kfac-reblocked", "dense", "factor", "toy"]


def _runs(n: int):
    """``n`` copies of the tiny model with different weights, and one batch of inputs."""
    model, x, y = tiny()
    models = []
    for s in range(n):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * (s + 1) * torch.randn_like(p))
        models.append(m)
    return models, x, y


def _structure(name: str, model, x, y):
    return every_structure(model, x, y)[name]


def _stacked(models):
    names = [n for n, _ in models[0].named_parameters()]
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names
    }
    return names, params


@pytest.mark.parametrize("name", STRUCTURES)
def test_stacked_matmul_is_each_runs_matvec(name):
    models, x, y = _runs(3)
    curvatures = [_structure(name, m, x, y) for m in models]
    rows = torch.randn(3, curvatures[0].numel, dtype=torch.float64)
    expected = torch.stack([c.matvec(r) for c, r in zip(curvatures, rows, strict=True)])
    assert torch.allclose(stacked_matmul(curvatures)(rows), expected, rtol=1e-12, atol=1e-14)


def test_a_batched_form_exists_where_promised():
    models, x, y = _runs(2)
    for name in ("identity", "diag", "kfac"):
        curvatures = [_structure(name, m, x, y) for m in models]
        assert type(curvatures[0])._stacked_matmul(curvatures) is not None, name
    for name in ("dense", "factor", "toy"):  # one matvec per run on purpose (memory)
        curvatures = [_structure(name, m, x, y) for m in models]
        assert type(curvatures[0])._stacked_matmul(curvatures) is None, name


CASES = [(n, "separate") for n in ("diag", "kfac", "identity", "dense", "factor")]
CASES += [(n, "online") for n in ("diag", "identity", "dense")]  # the structures that add


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_stacked_gradients_equal_each_runs_own(name, mode):
    """Runs with 2, 1 and 0 consolidated tasks and one without a penalty, different lambdas."""
    models, x, y = _runs(4)
    penalties: list[EWC | None] = [EWC(lam, mode) for lam in (3.0, 0.5, 7.0)] + [None]
    for s, depth in enumerate((2, 1, 0)):
        for t in range(depth):
            anchor = copy.deepcopy(models[s])
            with torch.no_grad():
                for p in anchor.parameters():
                    p.add_(0.1 * (t + 1) * torch.randn_like(p))
            penalties[s].consolidate(anchor, _structure(name, anchor, x[t:], y[t:]))
    names, params = _stacked(models)
    grads = {n: torch.randn_like(p) for n, p in params.items()}
    expected = {n: g.clone() for n, g in grads.items()}
    for s, (model, penalty) in enumerate(zip(models, penalties, strict=True)):
        if penalty is not None:
            own = {n: expected[n][s] for n in names}
            penalty.add_gradients(model, grads=own)
    StackedPenalty(penalties).add_gradients(params, grads)
    for n in names:
        assert torch.allclose(grads[n], expected[n], rtol=1e-12, atol=1e-13), n


def test_the_plan_follows_new_consolidations():
    models, x, y = _runs(2)
    penalties = [EWC(1.0), EWC(2.0)]
    stacked = StackedPenalty(penalties)
    names, params = _stacked(models)
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    stacked.add_gradients(params, grads)  # nothing consolidated: nothing added
    assert all(not g.any() for g in grads.values())
    for model, penalty in zip(models, penalties, strict=True):
        anchor = copy.deepcopy(model)
        with torch.no_grad():
            for p in anchor.parameters():
                p.add_(0.1)
        penalty.consolidate(anchor, estimators.make("diag-exact").fit(anchor, x, y))
    stacked.add_gradients(params, grads)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for s, (model, penalty) in enumerate(zip(models, penalties, strict=True)):
        penalty.add_gradients(model, grads={n: expected[n][s] for n in names})
    for n in names:
        assert torch.allclose(grads[n], expected[n], rtol=1e-12, atol=1e-14)
        assert grads[n].abs().sum() > 0


def test_curvatures_of_other_layouts_are_refused():
    models, x, y = _runs(1)
    small, sx, sy = torch.nn.Linear(3, 2).double(), x, torch.randint(0, 2, (6,))
    a = estimators.make("diag-exact").fit(models[0], x, y)
    b = estimators.make("diag-exact").fit(small, sx, sy)
    with pytest.raises(ValueError, match="share one parameter layout"):
        stacked_matmul([a, b])
