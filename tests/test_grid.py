"""Every estimator name against the brute-force dense Fisher in float64 (relative error 1e-10)."""

from __future__ import annotations

import pytest
import torch

import estimators
from estimators.labels import MonteCarlo
from tests import reference as ref

TOL = 1e-10
DETERMINISTIC = {"exact": "exact", "empirical": "empirical", "argmax": "argmax"}
GRID = [n for n in estimators.names() if n not in ("identity", "diag-batched")]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def replay_mc_labels(model, forward, x, mc_samples, seed, chunk) -> torch.Tensor:
    """The labels an mc estimator draws: same generator, same per-chunk order."""
    sampler = MonteCarlo(mc_samples, torch.Generator().manual_seed(seed))
    parts = [
        sampler.sample(ref.probabilities(model, forward, x[s : s + chunk]))
        for s in range(0, len(x), chunk)
    ]
    return torch.cat(parts, dim=1)


def reference_dense(name, case, model, x, y, chunk, mc_samples=3, seed=7):
    structure, mode = name.split("-")
    fwd = case.forward or ref.default_forward
    kw = {"targets": y, "forward": fwd}
    if mode == "mc":
        labels = replay_mc_labels(model, fwd, x, mc_samples, seed, chunk)
        kw = {"labels": labels, "forward": fwd}
        mode = "labels"
    if structure == "kfac":
        return ref.kfac_dense(model, x, mode, **kw)
    if structure == "ekfac":
        return ref.ekfac_dense(model, x, mode, **kw)
    dense = ref.dense_fisher(model, x, mode, **kw)
    return torch.diag(dense.diagonal()) if structure == "diag" else dense


def fit(name, case, model, x, y, chunk, mc_samples=3, seed=7, **extra):
    opts = {"chunk_size": chunk, **extra}
    if case.forward is not None:
        opts["forward"] = case.forward
    if name.endswith("-mc"):
        opts.update(mc_samples=mc_samples, generator=torch.Generator().manual_seed(seed))
    return estimators.make(name, **opts).fit(model, x, y)


# mc: K < C uses sampled columns, K >= C the per-class counts form (C = 3 here).
POINTS = [(n, 1) for n in GRID if not n.endswith("-mc")]
POINTS += [(n, k) for n in GRID if n.endswith("-mc") for k in (1, 2, 5)]


@pytest.mark.parametrize(("name", "mc_samples"), POINTS, ids=[f"{n}-k{k}" for n, k in POINTS])
def test_matches_brute_force(name, mc_samples, case):
    model, x, y = case.make()
    chunk = 3  # N = 7: three chunks, the last one partial
    expected = reference_dense(name, case, model, x, y, chunk, mc_samples)
    curv = fit(name, case, model, x, y, chunk, mc_samples)
    assert rel(curv.dense(), expected) <= TOL
    d = curv.diagonal()
    flat_d = torch.cat([d[n].reshape(-1) for n in curv.layout.names])
    assert rel(flat_d, expected.diagonal()) <= TOL
    v = torch.randn(curv.numel, dtype=torch.float64)
    assert rel(curv.matvec(v), expected @ v) <= TOL
    delta = {n: torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad}
    flat = torch.cat([delta[n].reshape(-1) for n in curv.layout.names])
    assert abs(float(curv.quadratic(delta)) - float(flat @ expected @ flat)) <= TOL * float(
        flat @ expected @ flat
    )
    op = curv.as_linear_operator()
    assert op.shape == (curv.numel, curv.numel)
    assert rel(torch.from_numpy(op.matvec(v.numpy())), expected @ v) <= TOL
    m = torch.randn(curv.numel, 4, dtype=torch.float64)
    assert rel(torch.from_numpy(op.matmat(m.numpy())), expected @ m) <= TOL
    assert rel(curv.trace(), expected.trace()) <= TOL


@pytest.mark.parametrize("name", ["full-exact", "full-mc", "full-empirical"])
def test_full_factor_matches_dense(name, case):
    """The low-rank factor represents the same F as the dense matrix."""
    model, x, y = case.make()
    dense = fit(name, case, model, x, y, 3, representation="dense")
    factor = fit(name, case, model, x, y, 3, representation="factor")
    assert isinstance(dense, estimators.DenseCurvature)
    assert isinstance(factor, estimators.LowRankCurvature)
    assert rel(factor.dense(), dense.dense()) <= TOL
    rows = {"full-exact": 3, "full-mc": 3, "full-empirical": 1}[name] * case.n  # mc: min(K, C)
    assert factor.factor.shape == (rows, factor.numel)
    assert factor.nbytes == rows * factor.numel * 8
    assert (
        rel(
            torch.linalg.eigvalsh(factor.gram()).sort().values[-3:],
            torch.linalg.eigvalsh(dense.dense()).sort().values[-3:],
        )
        <= 1e-8
    )


def test_diag_batched_matches_brute_force(case):
    model, x, y = case.make()
    fwd = case.forward or ref.default_forward
    expected = ref.batched_diagonal(model, x, y, batch_size=3, forward=fwd)
    opts = {"batch_size": 3} | ({"forward": case.forward} if case.forward else {})
    curv = estimators.make("diag-batched", **opts).fit(model, x, y)
    assert rel(curv.diagonal_flat(), expected) <= TOL
    assert rel(curv.dense(), torch.diag(expected)) <= TOL


def test_identity_is_l2(case):
    model, x, y = case.make()
    curv = estimators.make("identity").fit(model, x, y)
    delta = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    expected = sum(float(t.square().sum()) for t in delta.values())
    assert float(curv.quadratic(delta)) == pytest.approx(expected, rel=1e-12)
    assert torch.equal(curv.dense(), torch.eye(curv.numel, dtype=torch.float64))
    assert curv.nbytes == 0


@pytest.mark.parametrize("mode", ["exact", "mc", "empirical"])
def test_diagonal_of_full_equals_diag(mode, case):
    model, x, y = case.make()
    full = fit(f"full-{mode}", case, model, x, y, 4)
    diag = fit(f"diag-{mode}", case, model, x, y, 4)
    assert rel(full.diagonal_flat(), diag.diagonal_flat()) <= TOL


def test_kfac_exact_equals_full_exact_for_one_input_one_linear():
    """With one input and one Linear layer, G (x) A is the exact Fisher."""
    torch.manual_seed(3)
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    kfac = estimators.make("kfac-exact").fit(model, x)
    full = estimators.make("full-exact").fit(model, x)
    assert rel(kfac.dense(), full.dense()) <= TOL
    assert rel(full.dense(), ref.dense_fisher(model, x, "exact")) <= TOL


def test_quadratic_is_differentiable(case):
    """d/d delta of delta^T F delta is 2 F delta, for every structure."""
    model, x, y = case.make()
    for name in ["identity", "diag-exact", "kfac-exact", "full-exact", "diag-batched"]:
        opts = {"forward": case.forward} if case.forward else {}
        curv = estimators.make(name, **opts).fit(model, x, y)
        delta = {n: torch.randn_like(p, requires_grad=True) for n, p in model.named_parameters()}
        grads = torch.autograd.grad(curv.quadratic(delta), list(delta.values()))
        flat_grad = torch.cat([g.reshape(-1) for g in grads])
        flat = torch.cat([delta[n].detach().reshape(-1) for n in curv.layout.names])
        assert rel(flat_grad, 2 * curv.matvec(flat)) <= TOL, name
