"""EKFAC's two passes: the kept first-pass captures, their budget, and the deflated eigenbases.

The second pass (s in the KFAC eigenbases) replays the first pass's captures while they fit in
``second_pass.CACHE_BYTES``, else recomputes them; both must give the same curvature in every
label mode. The eigenbases split off a factor's exactly-zero rows (``linalg.eigh_deflated``);
a fit on inputs with always-zero features is checked against the float64 brute force.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
from estimators import ekfac, second_pass
from estimators.fitting import FisherPass
from estimators.linalg import eigh_deflated, zero_rows
from tests import reference as ref
from tests.cases import CASES

TOL = 1e-10
MODES = [("exact", {}), ("empirical", {}), ("mc", {"mc_samples": 2})]


def spy_passes(monkeypatch) -> list[tuple[int, int]]:
    """Record (chunk size, planned layers) of every ``FisherPass.capture`` call."""
    seen: list[tuple[int, int]] = []
    original = FisherPass.capture

    def spy(self, inputs, targets):
        seen.append((inputs.shape[0], len(self.plan.layers)))
        return original(self, inputs, targets)

    monkeypatch.setattr(FisherPass, "capture", spy)
    return seen


def fit(mode: str, options: dict, model, x, y, chunk: int = 3) -> torch.Tensor:
    opts = {"chunk_size": chunk, **options}
    if mode == "mc":
        opts["generator"] = torch.Generator().manual_seed(3)
    return estimators.make(f"ekfac-{mode}", **opts).fit(model, x, y).dense()


def test_kept_captures_make_one_pass(monkeypatch):
    """Within the budget: one chunked pass over the inputs, no forward or backward after it."""
    seen = spy_passes(monkeypatch)
    model, x, y = CASES[0].make()  # mlp_bn: 3 Linear + 2 BatchNorm layers, 7 inputs
    estimators.make("ekfac-exact", chunk_size=3).fit(model, x, y)
    assert seen == [(3, 5), (3, 5), (1, 5)]


def test_over_budget_recomputes_in_a_second_pass(monkeypatch):
    """Over the budget: the second pass backpropagates to the Kronecker layers only."""
    monkeypatch.setattr(second_pass, "CACHE_BYTES", 0)
    seen = spy_passes(monkeypatch)
    model, x, y = CASES[0].make()
    estimators.make("ekfac-exact", chunk_size=3).fit(model, x, y)
    assert seen == [(3, 5), (3, 5), (1, 5), (3, 3), (3, 3), (1, 3)]


def first_chunk_bytes(mode: str, options: dict, model, x, y, monkeypatch) -> int:
    """Bytes the first chunk's kept captures take (a budget the second chunk then exceeds)."""
    sizes: list[int] = []
    original = second_pass.KeptCaptures.keep

    def keep(self, cap, layers):
        original(self, cap, layers)
        sizes.append(self.nbytes)

    monkeypatch.setattr(second_pass.KeptCaptures, "keep", keep)
    fit(mode, options, model, x, y)
    monkeypatch.setattr(second_pass.KeptCaptures, "keep", original)
    assert len(sizes) >= 2 and sizes[1] > sizes[0], "needs two chunks to drop midway"
    return sizes[0]


@pytest.mark.parametrize("case", CASES[:2], ids=[c.name for c in CASES[:2]])
@pytest.mark.parametrize("budget", ["none-kept", "dropped-midway"])
@pytest.mark.parametrize(("mode", "options"), MODES, ids=[m for m, _ in MODES])
def test_kept_and_recomputed_agree(mode, options, budget, case, monkeypatch):
    """The same curvature from kept captures as from recomputed ones (mc: the same draws), with
    nothing kept or with the captures dropped after the first chunk; the recompute pass ran."""
    model, x, y = case.make()
    kept = fit(mode, options, model, x, y)
    limit = 0
    if budget == "dropped-midway":
        limit = first_chunk_bytes(mode, options, model, x, y, monkeypatch)
    monkeypatch.setattr(second_pass, "CACHE_BYTES", limit)
    seen = spy_passes(monkeypatch)
    recomputed = fit(mode, options, model, x, y)
    chunks = -(-x.shape[0] // 3)
    assert len(seen) == 2 * chunks  # both passes over every chunk
    assert torch.allclose(kept, recomputed, rtol=0, atol=1e-13)


def test_budget_is_dropped_midway(monkeypatch):
    """A budget that the second chunk exceeds keeps nothing (nothing half-kept)."""
    model, x, y = CASES[0].make()
    caps = []
    original = FisherPass.capture

    def grab(self, inputs, targets):
        caps.append(original(self, inputs, targets))
        return caps[-1]

    monkeypatch.setattr(FisherPass, "capture", grab)
    estimators.make("ekfac-exact", chunk_size=3).fit(model, x, y)
    layers = {id(lc.layer) for lc in caps[0].layers}
    first = sum(lc.a.nelement() * 8 + lc.g.nelement() * 8 for lc in caps[0].layers)
    kept = second_pass.KeptCaptures(first)
    kept.keep(caps[0], layers)
    assert kept.complete and kept.nbytes == first
    kept.keep(caps[1], layers)
    assert not kept.complete and kept.chunks is None


def test_zero_input_features_against_brute_force():
    """Inputs with always-zero features (MNIST's borders): the deflated eigenbasis of A."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 3, (9,))
    x[:, [1, 4]] = 0.0
    curv = estimators.make("ekfac-exact", chunk_size=4).fit(model, x, y)
    _, _, want, _ = ref.ekfac_brute_force(model, x, "exact", targets=y)
    assert float((curv.dense() - want).norm() / want.norm()) <= TOL


def dead_unit_network(conv: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Zero input features (MLP: 1 and 4; CNN: input channel 1) and a hidden ReLU unit or
    channel (2) that never fires: zero rows of the first layer's A and G, a zero column of the
    second layer's A (MLP) or zero rows of its A (CNN)."""
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)
        ).double()
        x = torch.rand(9, 2, 4, 4, dtype=torch.float64)
        x[:, 1] = 0.0
    else:
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
        x = torch.rand(9, 6, dtype=torch.float64)
        x[:, [1, 4]] = 0.0
    with torch.no_grad():  # inputs are >= 0: this unit's pre-activation is < 0 on all of them
        model[0].weight[2] = -1.0
        model[0].bias[2] = -1.0
    return model, x, torch.randint(0, 3, (9,))


def dead_columns(blk, side: str, rows: list[int]) -> torch.Tensor:
    """S where the unit eigenvectors of the zero ``rows`` of Q_G (``side`` "QG") or Q_A are."""
    basis = getattr(blk, side)
    cols = [int((basis[i] == 1.0).nonzero()) for i in rows]
    return blk.S[cols] if side == "QG" else blk.S[:, cols]


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "cnn"])
@pytest.mark.parametrize(("mode", "options"), MODES, ids=[m for m, _ in MODES])
def test_live_sub_blocks_match_whole_blocks(mode, options, conv, monkeypatch):
    """The s pass on the live columns only equals the pass on the whole bases; dead s is 0."""
    model, x, y = dead_unit_network(conv)
    made = []
    original = ekfac.LiveBlock.of

    def spy(layer, blk, rows, cols):
        made.append(original(layer, blk, rows, cols))
        return made[-1]

    monkeypatch.setattr(ekfac.LiveBlock, "of", staticmethod(spy))
    live = fit(mode, options, model, x, y)
    assert not made[0].whole  # the first layer's pass ran on a sub-block
    curv = estimators.make(f"ekfac-{mode}", chunk_size=3, **options).fit(model, x, y)
    first, second = curv.blocks
    assert not dead_columns(first, "QG", [2]).any()  # the dead unit's row
    zero_features = list(range(9, 18)) if conv else [1, 4]  # channel 1's patch rows
    assert not dead_columns(first, "QA", zero_features).any()
    if not conv:  # the dead unit as the second layer's input feature
        assert not dead_columns(second, "QA", [2]).any()

    def whole(layer, blk, rows, cols):
        return original(layer, blk, torch.arange(blk.S.shape[0]), torch.arange(blk.S.shape[1]))

    monkeypatch.setattr(ekfac.LiveBlock, "of", staticmethod(whole))
    assert float((fit(mode, options, model, x, y) - live).norm() / live.norm()) <= 1e-13
    if mode != "mc":
        _, _, want, _ = ref.ekfac_brute_force(model, x, mode, targets=y)
        assert float((live - want).norm() / want.norm()) <= TOL


def test_eigh_deflated_orders_a_negative_kept_eigenvalue_first():
    """Rounding can leave a kept eigenvalue below zero: it sorts before the exact zeros."""
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[1:3, 1:3] = torch.tensor([[-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    values, vectors, live = eigh_deflated(m)
    assert values.tolist() == [-1.0, 0.0, 0.0, 2.0]
    assert torch.allclose(vectors @ torch.diag(values) @ vectors.T, m)
    assert vectors[:, 0].abs().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert live.tolist() == [0, 3] and vectors.is_contiguous()


@pytest.mark.parametrize("width", [12, 3], ids=["full-rank", "rank-3"])
@pytest.mark.parametrize("zero_rows", [[], [0], [1, 4, 6], list(range(7))])
def test_eigh_deflated(zero_rows, width):
    """An eigendecomposition in ``torch.linalg.eigh``'s form, whatever rows are zero (rank 3:
    the kept block has zero eigenvalues, which rounding can put below the exact zeros)."""
    torch.manual_seed(1)
    x = torch.randn(7, width, dtype=torch.float64)
    x[zero_rows] = 0.0
    m = x @ x.T
    values, vectors, live = eigh_deflated(m)
    eye = torch.eye(7, dtype=torch.float64)
    assert torch.allclose(vectors @ torch.diag(values) @ vectors.T, m, atol=1e-12)
    assert torch.allclose(vectors.T @ vectors, eye, atol=1e-12)
    assert torch.allclose(values, torch.linalg.eigvalsh(m), atol=1e-12)
    assert bool((values[1:] >= values[:-1]).all())
    assert vectors.is_contiguous()
    for i in zero_rows:  # a zero row's eigenvector is its unit vector, eigenvalue 0
        col = vectors[i].abs().argmax()
        assert vectors[i, col] == 1.0 and values[col] == 0.0
        assert int(col) not in live.tolist()
    dead = [c for c in range(7) if c not in live.tolist()]
    assert len(dead) == len(zero_rows)
    kept = [i for i in range(7) if i not in zero_rows]
    assert not vectors[kept][:, dead].any()  # outside live: unit vectors of zero rows only


def test_zero_rows_checks_whole_rows():
    """A zero diagonal entry alone does not make a zero row (an indefinite matrix)."""
    m = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert zero_rows(m).tolist() == [False, False, True]
