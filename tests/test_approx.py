"""Approximation metrics on matrices with known answers, and against dense arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import estimators
from benchmark.study import approx
from estimators import DenseCurvature, DiagCurvature, IdentityCurvature, LowRankCurvature
from estimators.layout import ParamLayout
from tests.structures import every_structure


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    return model, x, y, ParamLayout.of(model)


def dense(c):
    return c.dense()


def all_kinds(model, x, y):
    """Every structure, and two that take the generic paths (see ``tests.structures``)."""
    return every_structure(model, x, y)


def test_frobenius_and_inner_match_dense_arithmetic(setup):
    model, x, y, _ = setup
    kinds = all_kinds(model, x, y)
    for a in kinds.values():
        assert approx.frobenius_sq(a) == pytest.approx(float(dense(a).square().sum()), rel=1e-12)
        for b in kinds.values():
            expected = float((dense(a) * dense(b)).sum())
            assert approx.inner(a, b) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_relative_error_matches_dense(setup):
    model, x, y, _ = setup
    kinds = all_kinds(model, x, y)
    ref = kinds["dense"]
    for a in kinds.values():
        expected = float((dense(a) - dense(ref)).norm() / dense(ref).norm())
        assert approx.relative_frobenius_error(a, ref) == pytest.approx(
            expected, rel=1e-8, abs=1e-7
        )


def test_diagonal_reference_makes_diag_exact(setup):
    _, _, _, layout = setup
    d = torch.rand(layout.numel, dtype=torch.float64) + 0.1
    ref = DenseCurvature(layout, torch.diag(d))
    est = DiagCurvature(layout, d.clone())
    assert approx.relative_frobenius_error(est, ref) == pytest.approx(0.0, abs=1e-7)
    assert approx.relative_trace_error(est, ref) == pytest.approx(0.0, abs=1e-12)
    vals, vecs = approx.top_eigen(ref, 5)
    vals_hat, vecs_hat = approx.top_eigen(est, 5)
    assert np.allclose(vals, vals_hat)
    assert approx.subspace_overlap(vecs, vecs_hat) == pytest.approx(1.0)


def test_kronecker_reference_makes_kfac_exact(setup):
    model, x, y, layout = setup
    kfac = estimators.make("kfac-exact").fit(model, x, y)
    ref = DenseCurvature(layout, kfac.dense())
    assert approx.relative_frobenius_error(kfac, ref) == pytest.approx(0.0, abs=1e-7)
    delta = torch.randn(layout.numel, dtype=torch.float64)
    assert approx.relative_quadratic_error(kfac, ref, delta) == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(approx.top_eigen(kfac, 4)[0], approx.top_eigen(ref, 4)[0])


def test_rank_one_has_one_nonzero_eigenvalue(setup):
    _, _, _, layout = setup
    u = torch.randn(1, layout.numel, dtype=torch.float64)
    f = LowRankCurvature(layout, u)
    vals, vecs = approx.top_eigen(f, 4)
    assert vals[0] == pytest.approx(float(u.square().sum()))
    assert np.allclose(vals[1:], 0.0)
    dense_vals = np.linalg.eigvalsh(dense(f).numpy())[::-1]
    assert dense_vals[0] == pytest.approx(vals[0])
    assert np.allclose(dense_vals[1:], 0.0, atol=1e-10)
    assert np.allclose(np.abs(vecs[:, 0]), np.abs(u[0].numpy()) / float(u.norm()))


def test_overlap_extremes():
    e = np.eye(4)
    assert approx.subspace_overlap(e[:, :2], e[:, :2]) == 1.0
    assert approx.subspace_overlap(e[:, :2], e[:, 2:]) == 0.0
    assert approx.subspace_overlap(None, e) is None


def test_off_block_share_matches_brute_force(setup):
    model, x, y, layout = setup
    ref_dense = estimators.make("full-exact", representation="dense").fit(model, x, y)
    ref_factor = estimators.make("full-exact", representation="factor").fit(model, x, y)
    m = dense(ref_dense)
    split = layout.slice("0.bias").stop  # layer 1 = 0.weight, 0.bias; layer 2 = the rest
    blocks = [torch.arange(0, split), torch.arange(split, layout.numel)]
    inside = sum(float(m[b][:, b].square().sum()) for b in blocks)
    expected = 1 - inside / float(m.square().sum())
    assert approx.off_block_share(ref_dense, blocks) == pytest.approx(expected)
    assert approx.off_block_share(ref_factor, blocks) == pytest.approx(expected)
    assert 0 < expected < 1


def test_off_block_share_of_every_structure(setup):
    model, x, y, layout = setup
    split = layout.slice("0.bias").stop
    blocks = [torch.arange(0, split), torch.arange(split, layout.numel)]
    for name, c in all_kinds(model, x, y).items():
        m = dense(c)
        inside = sum(float(m[b][:, b].square().sum()) for b in blocks)
        expected = 1 - inside / float(m.square().sum())
        assert approx.off_block_share(c, blocks) == pytest.approx(expected, abs=1e-12), name


def test_identity_has_no_eigenvectors(setup):
    _, _, _, layout = setup
    vals, vecs = approx.top_eigen(IdentityCurvature(layout, 2.0), 3)
    assert np.allclose(vals, 2.0) and vecs is None
