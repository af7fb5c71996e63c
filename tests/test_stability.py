"""float32 with confident predictions (top probability >= 0.9999): finite, and equal to float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import estimators
from estimators.labels import Exact, logit_gradients
from tests.cases import CASES

F32_TOL = 2e-5  # relative Frobenius error; measured <= 1.3e-6 here, 3e-4 with a naive 1 - p_y


def confident(case):
    """The case's model with a large margin on class 0: every top probability >= 0.9999."""
    model, x, y = case.make()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    fwd = case.forward or (lambda m, v: m(v))
    if case.forward is not None:  # multi-head: the exposed head is the last Linear used
        last = model.heads[1]
    for margin in range(8, 40, 2):
        with torch.no_grad():
            last.bias[0] += 2.0
            p = fwd(model, x).softmax(-1).max(-1).values
        if p.min() >= 0.9999:
            assert margin < 38
            return model, x, y
    raise AssertionError(f"could not make {case.name} confident")


@pytest.mark.parametrize("name", [n for n in estimators.names() if n != "identity"])
@pytest.mark.parametrize("case", CASES[:3], ids=[c.name for c in CASES[:3]])
def test_float32_confident_matches_float64(name, case):
    model64, x64, y = confident(case)
    model32 = copy.deepcopy(model64).float()
    opts = {"forward": case.forward} if case.forward else {}
    if name.endswith("-mc"):
        opts["mc_samples"] = 4

    def run(model, x):
        o = dict(opts)
        if name.endswith("-mc"):
            o["generator"] = torch.Generator().manual_seed(5)
        return estimators.make(name, **o).fit(model, x, y)

    c32, c64 = run(model32, x64.float()), run(model64, x64)
    d32 = c32.dense()
    assert d32.dtype == torch.float32
    assert torch.isfinite(d32).all()
    d64 = c64.dense()
    err = float((d32.double() - d64).norm() / d64.norm())
    assert err <= F32_TOL, f"{name}: relative error {err:.2e}"


def test_logit_gradient_label_entry_has_no_cancellation():
    """p_y - 1 computed as -(sum of the other probabilities): exact to float32 precision."""
    logits64 = torch.tensor([[12.0, 0.0, -1.0, 2.0]], dtype=torch.float64)
    p64 = logits64.softmax(-1)
    g32 = logit_gradients(logits64.float().softmax(-1), torch.tensor([[0]]))[0, 0, 0]
    expected = -(1 - p64[0, 0])
    assert abs(float(g32) - float(expected)) <= 1e-6 * abs(float(expected))


def test_exact_factor_reproduces_diag_minus_outer():
    """S S^T = diag(p) - p p^T, and stays finite for a top probability near 1."""
    logits = torch.tensor([[30.0, 0.0, -3.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    s = Exact().factor(logits, None)  # [C, n, C]
    p = logits.softmax(-1)
    for i in range(2):
        si = s[:, i, :].T  # [C, K]
        expected = torch.diag(p[i]) - torch.outer(p[i], p[i])
        assert torch.allclose(si @ si.T, expected, atol=1e-15)
    assert torch.isfinite(Exact().factor(logits.float() * 10, None)).all()
