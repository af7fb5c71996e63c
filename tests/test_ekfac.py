"""``ekfac-*`` against brute force in float64, its closed forms, and its two-pass fit.

The reference is built the slow obvious way: the dense Fisher F (one autograd call per input and
label, ``reference.dense_fisher``), the KFAC factors of each Linear/Conv2d layer
(``reference.kfac_factors``), their eigenbases, and s = diag(Q^T F_bb Q) read off the rotated
dense block. EKFAC must equal Q diag(s) Q^T on every layer block, the exact diagonal elsewhere,
and be no farther from F than KFAC on any block.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import estimators
from estimators import EKFACCurvature, FisherMemoryError, eigen_scales
from estimators import ekfac as ekfac_module
from estimators.labels import MonteCarlo
from estimators.stacking import stacked_matmul
from tests import reference as ref
from tests.cases import CASE_IDS, CASES
from tests.structures import every_structure, tiny

TOL = 1e-10
MODES = [("exact", 1), ("empirical", 1), ("mc", 1), ("mc", 2), ("mc", 5)]  # C = 3: K < C, K >= C
MODE_IDS = [m if m != "mc" else f"mc{k}" for m, k in MODES]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# -- the brute-force reference --------------------------------------------------------------------
def replayed_labels(model, forward, x, mc_samples, seed, chunk) -> torch.Tensor:
    """The labels an mc fit draws: same generator, same chunks (the first pass's draws)."""
    sampler = MonteCarlo(mc_samples, torch.Generator().manual_seed(seed))
    parts = [
        sampler.sample(ref.probabilities(model, forward, x[s : s + chunk]))
        for s in range(0, len(x), chunk)
    ]
    return torch.cat(parts, dim=1)


def fit_and_reference(case, mode, mc_samples, structure="ekfac", chunk=3, seed=7):
    model, x, y = case.make()
    fwd = case.forward or ref.default_forward
    opts = {"chunk_size": chunk} | ({"forward": case.forward} if case.forward else {})
    kw = {"targets": y, "forward": fwd}
    ref_mode = mode
    if mode == "mc":
        opts |= {"mc_samples": mc_samples, "generator": torch.Generator().manual_seed(seed)}
        kw = {"labels": replayed_labels(model, fwd, x, mc_samples, seed, chunk), "forward": fwd}
        ref_mode = "labels"
    curv = estimators.make(f"{structure}-{mode}", **opts).fit(model, x, y)
    return curv, ref.ekfac_brute_force(model, x, ref_mode, **kw), model


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def fitted(request):
    """Per case: mode id -> (EKFAC curvature, (F, KFAC, EKFAC, blocks) by brute force)."""
    out = {}
    for (mode, k), mode_id in zip(MODES, MODE_IDS):
        curv, reference, _ = fit_and_reference(request.param, mode, k)
        out[mode_id] = (curv, reference)
    return out


# -- against brute force --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODE_IDS)
def test_matches_brute_force(fitted, mode):
    curv, (_, _, expected, _) = fitted[mode]
    assert isinstance(curv, EKFACCurvature)
    assert rel(curv.dense(), expected) <= TOL
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= TOL
    assert rel(curv.trace(), expected.trace()) <= TOL
    v = torch.randn(curv.numel, 3, dtype=torch.float64)
    assert rel(curv.matmat(v), expected @ v) <= TOL
    d = v[:, 0]
    assert float(curv.quadratic_flat(d)) == pytest.approx(float(d @ expected @ d), rel=TOL)


@pytest.mark.parametrize("mode", MODE_IDS)
def test_scales_are_the_rotated_fisher_diagonal(fitted, mode):
    """With the fit's own eigenbases: Q orthonormal, s = diag(Q^T F_bb Q), block = Q diag(s) Q^T."""
    curv, (fisher, kfac, _, blocks) = fitted[mode]
    dense = curv.dense()
    expected = {tuple(idx.tolist()) for idx in blocks}
    for blk in curv.blocks:
        idx = blk.frame.flat_index()
        if tuple(idx.tolist()) not in expected:  # a layer the forward never uses (a spare head)
            assert not blk.S.any()
            continue
        expected.remove(tuple(idx.tolist()))
        q = torch.kron(blk.QG, blk.QA)
        assert torch.allclose(q.T @ q, torch.eye(len(idx), dtype=q.dtype), atol=1e-12)
        s = (q.T @ fisher[idx][:, idx] @ q).diagonal()
        assert rel(blk.S.reshape(-1), s) <= TOL
        assert rel(dense[idx][:, idx], q @ torch.diag(s) @ q.T) <= TOL
        rotated_kfac = q.T @ kfac[idx][:, idx] @ q  # the basis diagonalises KFAC's block
        off = rotated_kfac - torch.diag(rotated_kfac.diagonal())
        assert float(off.norm()) <= 1e-10 * float(rotated_kfac.norm())
    assert not expected


@pytest.mark.parametrize("mode", MODE_IDS)
def test_no_farther_from_fisher_than_kfac_on_any_block(fitted, mode):
    curv, (fisher, kfac, _, blocks) = fitted[mode]
    dense = curv.dense()
    gains = []
    for idx in blocks:
        block = fisher[idx][:, idx]
        e = float((block - dense[idx][:, idx]).norm())
        k = float((block - kfac[idx][:, idx]).norm())
        assert e <= k * (1 + 1e-12) + 1e-15
        gains.append(k - e)
    assert max(gains) > 1e-3 * float(fisher.norm())  # strictly better somewhere
    rest = curv.rest_index
    assert torch.allclose(curv.rest_diag, fisher[rest, rest], rtol=1e-12, atol=0)


def test_mc_stream_is_kfacs():
    """ekfac-mc draws once per input (the second pass replays): kfac-mc's labels and state."""
    case = CASES[0]
    model, x, _ = case.make()
    gens = [torch.Generator().manual_seed(11) for _ in range(2)]
    kfac = estimators.make("kfac-mc", mc_samples=2, generator=gens[0], chunk_size=3).fit(model, x)
    ekfac = estimators.make("ekfac-mc", mc_samples=2, generator=gens[1], chunk_size=3).fit(model, x)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())
    for k, e in zip(kfac.blocks, ekfac.blocks):
        for factor, q in ((k.G, e.QG), (k.A, e.QA)):
            rotated = q.T @ factor @ q
            assert torch.allclose(rotated, torch.diag(rotated.diagonal()), atol=1e-12)
    states = []
    for name in ("kfac-mc", "ekfac-mc"):  # no generator: the global RNG, advanced alike
        torch.manual_seed(5)
        estimators.make(name, chunk_size=3).fit(model, x)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def test_exact_for_one_input_one_linear():
    """One input, one Linear layer: KFAC is exact, hence so is EKFAC."""
    torch.manual_seed(3)
    model = nn.Linear(4, 3).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    curv = estimators.make("ekfac-exact").fit(model, x)
    assert rel(curv.dense(), ref.dense_fisher(model, x, "exact")) <= TOL


# -- the fit: every layer form (the passes: test_ekfac_passes) ---------------------------------
@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
def test_layer_forms_agree_with_per_input_gradients(case, monkeypatch):
    """Linear and Conv2d closed forms equal the generic per-input form, in any slab size."""
    model, x, y = case.make()
    fast = estimators.make("ekfac-exact", chunk_size=4).fit(model, x, y)
    monkeypatch.setattr(eigen_scales, "WORK_BYTES", 1)  # one input per slab
    monkeypatch.setattr(ekfac_module, "layer_scales", lambda *a: eigen_scales.generic_scales(*a))
    slow = estimators.make("ekfac-exact", chunk_size=7).fit(model, x, y)
    for f, s in zip(fast.blocks, slow.blocks):
        assert rel(f.S, s.S) <= 1e-12


def test_float32_fits_close_to_float64():
    model, x, y = CASES[1].make()
    exact = estimators.make("ekfac-exact").fit(model, x, y).dense()
    single = estimators.make("ekfac-exact").fit(model.float(), x.float(), y)
    assert single.layout.dtype == torch.float32
    assert rel(single.dense().double(), exact) <= 1e-4


# -- closed forms ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kinds():
    """every_structure's curvatures of the tiny model, plus EKFAC of it and of other weights."""
    model, x, y = tiny()
    curvs = every_structure(model, x, y)
    curvs["ekfac"] = estimators.make("ekfac-exact").fit(model, x, y)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    curvs["ekfac-other"] = estimators.make("ekfac-empirical").fit(other, x, y)
    return curvs


OTHERS = ["ekfac", "ekfac-other", "kfac", "kfac-reblocked", "dense", "diag", "identity", "toy"]


def test_frobenius_sq(kinds):
    c = kinds["ekfac"]
    assert c.frobenius_sq() == pytest.approx(float(c.dense().square().sum()), rel=1e-12)


@pytest.mark.parametrize("other", OTHERS)
def test_inner(kinds, other):
    a, b = kinds["ekfac"], kinds[other]
    expected = float((a.dense() * b.dense()).sum())
    assert a.inner(b) == pytest.approx(expected, rel=1e-12)
    assert b.inner(a) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("other", ["ekfac-other", "kfac", "dense"])
def test_inner_is_answered_in_closed_form(kinds, other, monkeypatch):
    def refuse(self, other):
        raise AssertionError("generic inner product used")

    monkeypatch.setattr(estimators.Curvature, "_generic_inner", refuse)
    kinds["ekfac"].inner(kinds[other])
    kinds[other].inner(kinds["ekfac"])


def test_top_eigen_is_explicit(kinds):
    c = kinds["ekfac"]
    m = c.dense().numpy()
    for k in (1, 6):  # k = 1: every other block contributes no eigenpair
        vals, vecs = c.top_eigen(k)
        assert np.allclose(vals, np.linalg.eigvalsh(m)[::-1][:k], rtol=1e-10, atol=1e-14)
        assert np.abs(m @ vecs - vecs * vals).max() <= 1e-10 * vals[0]
        assert np.allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    full_vals, _ = c.top_eigen(c.numel)  # every block entry and rest entry, capped at P - 1
    assert np.allclose(full_vals, np.linalg.eigvalsh(m)[::-1][: c.numel - 1], atol=1e-12)


def test_block_frobenius_sq(kinds):
    c = kinds["ekfac"]
    idx = torch.tensor([30, 0, 7, 8, 21, 3])
    assert c.block_frobenius_sq(idx) == pytest.approx(
        float(c.dense()[idx][:, idx].square().sum()), rel=1e-12
    )


def test_stacked_matmul_is_each_runs_matvec(kinds):
    runs = [kinds["ekfac"], kinds["ekfac-other"], kinds["ekfac"]]
    assert EKFACCurvature._stacked_matmul(runs) is not None
    rows = torch.randn(3, runs[0].numel, dtype=torch.float64)
    expected = torch.stack([c.matvec(r) for c, r in zip(runs, rows)])
    assert torch.allclose(stacked_matmul(runs)(rows), expected, rtol=1e-12, atol=1e-14)
    moved = copy.copy(kinds["ekfac"])
    moved.blocks = moved.blocks[:1]  # other blocks: no batched form, one matvec each
    assert EKFACCurvature._stacked_matmul([kinds["ekfac"], moved]) is None


def test_quadratic_and_penalty_gradient(kinds):
    c = kinds["ekfac"]
    model, _, _ = tiny()
    delta = {n: torch.randn_like(p, requires_grad=True) for n, p in model.named_parameters()}
    (grad,) = torch.autograd.grad(c.quadratic(delta), [delta["0.weight"]])
    flat = c.layout.flatten({n: d.detach() for n, d in delta.items()})
    assert rel(grad.reshape(-1), (2 * c.matvec(flat))[c.layout.slice("0.weight")]) <= TOL
    params = [p.detach() for p in model.parameters()]
    anchors = [p - d.detach() for p, d in zip(params, delta.values())]
    grads = [torch.zeros_like(p) for p in params]
    c.accumulate_penalty_grad(params, anchors, grads, 3.0)
    assert rel(torch.cat([g.reshape(-1) for g in grads]), 3.0 * c.matvec(flat)) <= TOL


def test_online_is_refused(kinds):
    for name in ("ekfac-exact", "ekfac-mc", "ekfac-empirical"):
        assert not estimators.supports_online(name)
        assert "different eigenbases" in estimators.online_refusal(name)
    with pytest.raises(NotImplementedError, match="ekfac curvature: fits in different eigen"):
        kinds["ekfac"].add(kinds["ekfac"], 0.5)


def test_nbytes_and_memory_budget():
    model, x, y = tiny()  # Linear(3, 4), Linear(4, 3): Q_A 4x4 and 5x5, Q_G 4x4 and 3x3
    curv = estimators.make("ekfac-exact", memory_budget=100).fit(model, x, y)
    assert curv.nbytes == 8 * ((16 + 16 + 16) + (25 + 9 + 15))
    assert curv.memory_budget == 100
    with pytest.raises(FisherMemoryError, match="ekfac curvature"):
        curv.dense()
    assert list(estimators.options("ekfac-mc")) == [
        "forward", "chunk_size", "memory_budget", "mc_samples", "generator", "online_rule",
    ]  # fmt: skip


def test_an_eigensolver_failure_in_float32_is_retried_in_float64(monkeypatch):
    """LAPACK's float32 eigh can fail on an ill-conditioned factor (seen on a sweep: the MLP's
    first-layer A, MNIST's blank borders): EKFAC retries in float64 and gives the same fit."""
    import estimators.linalg as linalg

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    want = estimators.make("ekfac-exact").fit(model, x, y).dense()
    real = torch.linalg.eigh
    calls = []

    def flaky(matrix):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(matrix)

    monkeypatch.setattr(linalg.torch.linalg, "eigh", flaky)
    got = estimators.make("ekfac-exact").fit(model, x, y).dense()
    assert torch.float64 in calls and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
