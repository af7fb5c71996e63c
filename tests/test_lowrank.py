"""``lowrank-*`` against dense float64 references built the slow obvious way.

The reference is ``reference.dense_fisher`` (one autograd call per input and label), the best
rank-k truncation its ``torch.linalg.eigh``, and the "truncation plus diagonal remainder"
``T_k + diag(F - T_k)``. Rank below R (rows) takes the sketch (several passes); rank >= R keeps
the rows and is exact.
"""

from __future__ import annotations

import pytest
import torch

import estimators
from estimators import FisherMemoryError, LowRankDiagCurvature
from estimators.labels import MonteCarlo
from estimators.stacking import stacked_matmul
from tests import cases
from tests import reference as ref
from tests.structures import every_structure, tiny

MODES = ["exact", "mc", "empirical"]
CHUNK = 3
MC_SAMPLES = 2
SEED = 5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def forward_of(case):
    return case.forward or ref.default_forward


_REFERENCES: dict[tuple, torch.Tensor] = {}


def reference(mode, case, model, x, y, chunk=CHUNK):
    """Dense F; for mc, with the labels the estimator draws (same generator, same chunks).

    Cached by case, size, mode and chunk: ``case.make()`` is deterministic.
    """
    key = (case.name, case.n, mode, chunk)
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(mode, case, model, x, y, chunk)
    return _REFERENCES[key].clone()


def _reference(mode, case, model, x, y, chunk):
    fwd = forward_of(case)
    if mode != "mc":
        return ref.dense_fisher(model, x, mode, targets=y, forward=fwd)
    sampler = MonteCarlo(MC_SAMPLES, torch.Generator().manual_seed(SEED))
    parts = [
        sampler.sample(ref.probabilities(model, fwd, x[s : s + chunk]))
        for s in range(0, len(x), chunk)
    ]
    return ref.dense_fisher(model, x, "labels", labels=torch.cat(parts, dim=1), forward=fwd)


def fit(mode, case, model, x, y, chunk=CHUNK, **opts):
    opts = {"chunk_size": chunk, **opts}
    if case.forward is not None:
        opts["forward"] = case.forward
    if mode == "mc":
        opts.update(mc_samples=MC_SAMPLES, generator=torch.Generator().manual_seed(SEED))
    return estimators.make(f"lowrank-{mode}", **opts).fit(model, x, y)


def truncation_plus_diagonal(dense: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-k truncation T_k (eigh) plus the diagonal of the remainder F - T_k."""
    vals, vecs = torch.linalg.eigh(dense)
    top = (vecs[:, -k:] * vals[-k:]) @ vecs[:, -k:].T
    return top + torch.diag((dense - top).diagonal())


def larger():
    """The BatchNorm MLP (P = 82) on 40 inputs: 120 exact rows, F of rank up to 80."""
    case = cases.Case("mlp_bn", cases.mlp_bn, (2, 2), n=40)
    return (case, *case.make())


# -- the fit against the dense reference ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_diagonal_is_exact_and_the_remainder_psd(mode, case):
    model, x, y = case.make()
    expected = reference(mode, case, model, x, y)
    curv = fit(mode, case, model, x, y, rank=3)
    assert isinstance(curv, LowRankDiagCurvature)
    assert curv.values.numel() == 3  # R = 7 K > 3: the sketch
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= 1e-12
    assert (curv.diag >= 0).all() and (curv.values >= 0).all()
    assert rel(curv.trace(), expected.trace()) <= 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_frobenius_error_no_worse_than_dense_truncation(mode, case):
    model, x, y = case.make()
    expected = reference(mode, case, model, x, y)
    best = float((expected - truncation_plus_diagonal(expected, 3)).norm())
    curv = fit(mode, case, model, x, y, rank=3, power_iterations=10)
    assert float((expected - curv.dense()).norm()) <= best * (1 + 1e-9) + 1e-14


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", [5, 20])
def test_reaches_the_exact_top_k(mode, rank):
    """Spectrum without a gap at k (rank of F up to 80 > l): converged with enough passes."""
    case, model, x, y = larger()
    expected = reference(mode, case, model, x, y, chunk=7)
    top = torch.linalg.eigvalsh(expected).flip(0)[:rank]
    best = float((expected - truncation_plus_diagonal(expected, rank)).norm())
    curv = fit(mode, case, model, x, y, chunk=7, rank=rank, power_iterations=12)
    assert rel(curv.values, top) <= 1e-9
    basis = curv.basis
    assert torch.allclose(basis @ basis.T, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert float((expected - curv.dense()).norm()) <= best * (1 + 1e-9)
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= 1e-12
    default = fit(mode, case, model, x, y, chunk=7, rank=rank)  # 3 power iterations
    assert float((expected - default.dense()).norm()) <= best * (1 + 1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_exact_when_the_rank_covers_the_rows(mode, case):
    model, x, y = case.make()
    expected = reference(mode, case, model, x, y)
    curv = fit(mode, case, model, x, y, rank=7 * 3)  # R <= 21 rows
    assert rel(curv.dense(), expected) <= 1e-10
    assert float(curv.diag.abs().max()) <= 1e-12 * float(expected.diagonal().max())
    assert curv.values.numel() <= 7 * 2  # zero eigenvalues dropped: rank F <= N (C - 1)


def test_mc_rows_are_full_mcs():
    """Rank >= R: the same sampled rows as full-mc (same generator, same chunks)."""
    case = cases.CASES[0]
    model, x, y = case.make()
    full = estimators.make(
        "full-mc", chunk_size=CHUNK, mc_samples=2, generator=torch.Generator().manual_seed(SEED)
    ).fit(model, x, y)
    assert rel(fit("mc", case, model, x, y, rank=30).dense(), full.dense()) <= 1e-10


def test_mc_labels_are_drawn_once_for_every_pass():
    """Later passes replay the first pass's labels: else the eigenpairs would be of another F."""
    case, model, x, y = larger()
    expected = reference("mc", case, model, x, y, chunk=7)
    curv = fit("mc", case, model, x, y, chunk=7, rank=5, power_iterations=12)
    assert rel(curv.values, torch.linalg.eigvalsh(expected).flip(0)[:5]) <= 1e-9
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= 1e-12


def test_every_parameter_in_kronecker_form():
    """A bias-free Linear: no rows are written, only the g (x) a products."""
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4, bias=False).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    expected = ref.dense_fisher(model, x, "exact")
    curv = estimators.make("lowrank-exact", rank=3, power_iterations=12).fit(model, x)
    assert rel(curv.values, torch.linalg.eigvalsh(expected).flip(0)[:3]) <= 1e-9
    assert rel(curv.diagonal_flat(), expected.diagonal()) <= 1e-12


# -- passes, sizes and refusals -----------------------------------------------------------------
def counting_forward(calls: list[int]):
    def forward(model, x):
        calls.append(x.shape[0])
        return model(x)

    return forward


@pytest.mark.parametrize(
    ("mode", "rank", "q", "passes"),
    [("exact", 5, 0, 1), ("exact", 5, 2, 3), ("mc", 5, 4, 5), ("empirical", 45, 3, 1)],
)
def test_passes_over_the_inputs(mode, rank, q, passes):
    """q + 1 passes of 6 chunks for the sketch; one pass when rank >= R (40 empirical rows)."""
    _, model, x, y = larger()
    calls: list[int] = []
    opts = {"mc_samples": 2} if mode == "mc" else {}
    est = estimators.make(
        f"lowrank-{mode}",
        rank=rank,
        power_iterations=q,
        chunk_size=7,
        forward=counting_forward(calls),
        **opts,
    )
    est.fit(model, x, y)
    assert calls == [1] + [7, 7, 7, 7, 7, 5] * passes  # the probe, then the chunks


def test_bad_options():
    model, x, y = cases.CASES[0].make()  # P = 82
    with pytest.raises(ValueError, match="'rank' must be a positive integer, got 0"):
        estimators.make("lowrank-exact", rank=0)
    for option in ("oversample", "power_iterations"):
        with pytest.raises(ValueError, match=f"'{option}' must be a non-negative integer"):
            estimators.make("lowrank-mc", **{option: -1})
    est = estimators.make("lowrank-exact", rank=82)
    with pytest.raises(ValueError, match=r"'rank' must be below P = 82.*got 82"):
        est.fit(model, x, y)
    with pytest.raises(ValueError, match=r"'rank' must be below P = 82"):
        est.check_memory(model, 7, 3)
    estimators.make("lowrank-exact", rank=81, oversample=0).fit(model, x, y)  # k = P - 1 is fine


def test_memory_refusal_before_computing_and_no_factor_held():
    _, model, x, y = larger()
    calls: list[int] = []
    est = estimators.make(
        "lowrank-exact", rank=5, memory_budget=1000, forward=counting_forward(calls)
    )
    with pytest.raises(FisherMemoryError, match=r"rank-5 \+ diagonal Fisher would need") as err:
        est.fit(model, x, y)
    assert calls == [1]  # only the probe that reads the number of classes
    with pytest.raises(FisherMemoryError):
        est.check_memory(model, 40, 3)
    needed = err.value.needed
    factor = 120 * 82 * 8  # the 120 x P rows, never held on this path
    assert needed < factor
    curv = estimators.make("lowrank-exact", rank=5, memory_budget=needed).fit(model, x, y)
    assert curv.nbytes == (5 * 82 + 5 + 82) * 8


def test_float32_matches_float64():
    _, model, x, y = larger()
    c64 = estimators.make("lowrank-exact", rank=5).fit(model, x, y)
    c32 = estimators.make("lowrank-exact", rank=5).fit(model.float(), x.float(), y)
    assert c32.basis.dtype == torch.float32
    assert rel(c32.dense().double(), c64.dense()) <= 1e-4
    assert (c32.diag >= 0).all()


# -- the curvature's closed forms, online rule and stacking -------------------------------------
@pytest.fixture(scope="module")
def kinds():
    model, x, y = tiny()  # P = 31, R = 18 exact rows
    curvs = every_structure(model, x, y)
    curvs["lowrank"] = estimators.make("lowrank-exact", rank=4).fit(model, x, y)
    return curvs


def test_closed_forms_match_dense(kinds):
    curv = kinds["lowrank"]
    dense = curv.dense()
    assert curv.values.numel() == 4
    assert curv.frobenius_sq() == pytest.approx(float(dense.square().sum()), rel=1e-12)
    for idx in (torch.arange(3, 19), torch.tensor([30, 0, 7, 8, 21]), torch.tensor([5])):
        block = float(dense[idx][:, idx].square().sum())
        assert curv.block_frobenius_sq(idx) == pytest.approx(block, rel=1e-12)
    for name, other in kinds.items():
        expected = float((dense * other.dense()).sum())
        assert curv.inner(other) == pytest.approx(expected, rel=1e-12), name
        assert other.inner(curv) == pytest.approx(expected, rel=1e-12), name
    vals, _ = curv.top_eigen(3)
    assert vals == pytest.approx(torch.linalg.eigvalsh(dense).flip(0)[:3].numpy(), rel=1e-8)
    v = torch.randn(curv.numel, dtype=torch.float64)
    assert rel(curv.matvec(v), dense @ v) <= 1e-13
    assert float(curv.quadratic_flat(v)) == pytest.approx(float(v @ dense @ v), rel=1e-12)
    assert rel(curv.diagonal_flat(), dense.diagonal()) <= 1e-13
    assert curv.nbytes == (4 * 31 + 4 + 31) * 8


def test_penalty_gradient_matches_autograd(kinds):
    curv = kinds["lowrank"]
    model, _, _ = tiny()
    params = list(model.parameters())
    anchors = [p.detach() + 0.1 * torch.randn_like(p) for p in params]
    q = curv.quadratic({n: p - a for n, p, a in zip(curv.layout.names, params, anchors)})
    expected = torch.autograd.grad(0.5 * 3.0 * q, params)
    grads = [torch.zeros_like(p) for p in params]
    curv.accumulate_penalty_grad([p.detach() for p in params], anchors, grads, 3.0)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_never_online(kinds, mode):
    assert not estimators.supports_online(f"lowrank-{mode}")
    reason = estimators.online_refusal(f"lowrank-{mode}", rank=3)
    assert reason.startswith("low-rank + diagonal curvatures do not add into one of the same rank")
    for other in ("diag", "lowrank"):
        for a, b in ((kinds["lowrank"], kinds[other]), (kinds[other], kinds["lowrank"])):
            with pytest.raises(NotImplementedError, match="lowrank curvature: low-rank"):
                a.add(b, 0.5)


def test_options_are_declared():
    base = ["forward", "chunk_size", "memory_budget"]
    extra = ["rank", "oversample", "power_iterations"]
    assert list(estimators.options("lowrank-mc")) == [*base, "mc_samples", "generator", *extra]
    assert list(estimators.options("lowrank-exact")) == base + extra
    assert {"lowrank-exact", "lowrank-mc", "lowrank-empirical"} <= set(estimators.names())


def test_stacked_matmul_is_each_runs_matvec():
    """Three runs with 2, 4 and 3 eigenpairs (zero-padded to 4), one batched product."""
    model, x, y = tiny()
    curvs = []
    for s, rank in enumerate((2, 4, 3)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * (s + 1) * torch.randn_like(p))
        curvs.append(estimators.make("lowrank-exact", rank=rank).fit(model, x, y))
    assert LowRankDiagCurvature._stacked_matmul(curvs) is not None
    rows = torch.randn(3, curvs[0].numel, dtype=torch.float64)
    expected = torch.stack([c.matvec(r) for c, r in zip(curvs, rows)])
    assert torch.allclose(stacked_matmul(curvs)(rows), expected, rtol=1e-12, atol=1e-14)
