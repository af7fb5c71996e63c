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


# -- part E's metrics, by hand -------------------------------------------------------------------
C = 2**-0.5
Q = np.array([[C, -C, 0.0], [C, C, 0.0], [0.0, 0.0, 1.0]])
"""F's eigenvectors (columns): a 45-degree rotation of the first two axes."""


def _three() -> ParamLayout:
    """A layout of three float64 parameters (Linear(2, 1): weight 1 x 2, bias 1)."""
    return ParamLayout.of(nn.Linear(2, 1).double())


def _dense(layout, m) -> DenseCurvature:
    return DenseCurvature(layout, torch.as_tensor(m, dtype=torch.float64))


def test_top_eigen_dense_finds_known_eigenpairs():
    f = Q @ np.diag([3.0, 2.0, 1.0]) @ Q.T  # [[2.5, 0.5, 0], [0.5, 2.5, 0], [0, 0, 1]]
    assert np.allclose(f, [[2.5, 0.5, 0], [0.5, 2.5, 0], [0, 0, 1]])
    vals, vecs, residual = approx.top_eigen_dense(torch.as_tensor(f), 3)
    assert np.allclose(vals, [3.0, 2.0, 1.0])
    assert np.allclose(np.abs(vecs.T @ Q), np.eye(3), atol=1e-12)
    assert residual < 1e-12


def test_top_eigen_dense_matches_eigh_on_a_random_psd_matrix():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(30, 80, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 80)
    f = u.T @ u / 30
    vals, vecs, residual = approx.top_eigen_dense(f, 10, oversample=20, iterations=20)
    exact = np.linalg.eigvalsh(f.numpy())[::-1][:10]
    assert np.allclose(vals, exact, rtol=1e-8)
    assert residual < 1e-6
    assert np.allclose(vecs.T @ vecs, np.eye(10), atol=1e-10)


def test_top_penalty_errors_by_hand():
    layout = _three()
    lam = np.array([3.0, 2.0, 1.0])
    # F-hat = Q [[2, 1, 0], [1, 2, 0], [0, 0, 1]] Q^T: a_i = v_i^T F-hat v_i = 2, 2, 1
    f_hat = _dense(layout, Q @ np.array([[2.0, 1, 0], [1, 2, 0], [0, 0, 1]]) @ Q.T)
    a = approx.eigen_quadratics(f_hat, Q)
    assert np.allclose(a, [2.0, 2.0, 1.0])
    assert approx.top_penalty_error(a, lam, 2) == pytest.approx((1 + 0) / 5)
    assert approx.top_penalty_error(a, lam, 3) == pytest.approx(1 / 6)
    assert approx.flat_share(a, 5.0, 2) == pytest.approx(1 - 4 / 5)
    # the diagonal of F, (2.5, 2.5, 1): a = (2.5, 2.5, 1), trace 6
    diag = DiagCurvature(layout, torch.tensor([2.5, 2.5, 1.0], dtype=torch.float64))
    a = approx.eigen_quadratics(diag, Q)
    assert np.allclose(a, [2.5, 2.5, 1.0])
    assert approx.top_penalty_error(a, lam, 2) == pytest.approx((0.5 + 0.5) / 5)
    assert approx.rescaled_top_penalty_error(a, lam, 2) == pytest.approx(1 / 5)  # any s in .8-1.2
    assert approx.flat_share(a, 6.0, 2) == pytest.approx(1 / 6)
    # the identity: a = 1 everywhere; flat share 1 - 2/3 outside the top 2
    a = approx.eigen_quadratics(IdentityCurvature(layout, 1.0), Q)
    assert np.allclose(a, 1.0)
    assert approx.top_penalty_error(a, lam, 2) == pytest.approx((2 + 1) / 5)
    assert approx.flat_share(a, 3.0, 2) == pytest.approx(1 / 3)


def test_rescaled_error_is_the_weighted_median_optimum():
    a, lam = np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0])
    assert approx.top_penalty_error(a, lam, 3) == pytest.approx((1 + 0 + 2) / 6)
    # ratios 2, 1, 0.5 with weights 1, 2, 4: the weighted median is 0.5,
    # where |0.5 - 2| + |1 - 2| + |2 - 2| = 2.5
    assert approx.rescaled_top_penalty_error(a, lam, 3) == pytest.approx(2.5 / 6)
    grid = np.linspace(0, 3, 30001)
    brute = min(np.abs(s * a - lam).sum() for s in grid) / lam.sum()
    assert approx.rescaled_top_penalty_error(a, lam, 3) == pytest.approx(brute, abs=1e-4)
    assert approx.rescaled_top_penalty_error(np.zeros(3), lam, 3) == 1.0  # no penalty at all
    assert approx.rescaled_top_penalty_error(2 * lam, lam, 3) == pytest.approx(0.0)


def test_frobenius_errors_by_hand():
    # F = I (two parameters, |F|^2 = 2), F-hat = 2I: |F-hat - F| = |I|, rescaled exact
    rel, scale_free = approx.frobenius_errors(8.0, 4.0, 2.0)
    assert rel == pytest.approx(1.0)
    assert scale_free == pytest.approx(0.0, abs=1e-7)
    # F-hat = diag(1, 0) against I: error 1/sqrt(2); cos = 1/sqrt(2), scale-free 1/sqrt(2)
    rel, scale_free = approx.frobenius_errors(1.0, 1.0, 2.0)
    assert rel == pytest.approx(2**-0.5)
    assert scale_free == pytest.approx(2**-0.5)


def test_dense_inner_matches_dense_arithmetic(setup):
    model, x, y, _ = setup
    kinds = all_kinds(model, x, y)
    m = dense(kinds["dense"])
    for name, c in kinds.items():
        expected = float((dense(c) * m).sum())
        assert approx.dense_inner(c, m) == pytest.approx(expected, rel=1e-10, abs=1e-14), name


def test_object_key_names_what_was_fitted():
    from benchmark.config import RunConfig

    base = RunConfig(model="mlp", model_options={"hidden": 16}, fisher_samples=1000)
    low = base.replace(estimator="lowrank-exact", estimator_options={"rank": 20}).to_dict()
    l2 = base.replace(method="l2", estimator=None).to_dict()
    assert approx.curvature_label(low) == "lowrank-exact rank=20"
    assert approx.curvature_label(l2) == "identity"
    assert approx.object_key(low) != approx.object_key({**low, "fisher_samples": 500})
    assert approx.object_key(low) == approx.object_key({**low, "lam": 3.0, "seed": 7})
    # the identity does not use the inputs: N does not tell two apart
    assert approx.object_key(l2) == approx.object_key({**l2, "fisher_samples": 500})
    assert approx.object_key(low) != approx.object_key({**low, "model_options": {"hidden": 4}})
