"""Each structure's closed forms against dense float64 arithmetic, and the dispatch between them.

``frobenius_sq``, ``inner`` (every ordered pair of structures, the generic fallback included),
``top_eigen`` and ``block_frobenius_sq`` on a tiny model (P = 31).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import estimators
from estimators import Curvature
from estimators import curvature as curvature_module
from tests.structures import every_structure, tiny

NAMES = [
    "identity", "diag", "kfac", "kfac-reblocked", "dense", "factor", "factor-empirical", "toy",
]  # fmt: skip
PAIRS = [(a, b) for a in NAMES for b in NAMES]


@pytest.fixture(scope="module")
def kinds() -> dict[str, Curvature]:
    return every_structure(*tiny())


@pytest.fixture(scope="module")
def dense(kinds) -> dict[str, torch.Tensor]:
    return {name: c.dense() for name, c in kinds.items()}


@pytest.mark.parametrize("name", NAMES)
def test_frobenius_sq_matches_dense(kinds, dense, name):
    expected = float(dense[name].square().sum())
    assert kinds[name].frobenius_sq() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}.{b}" for a, b in PAIRS])
def test_inner_matches_dense(kinds, dense, a, b):
    expected = float((dense[a] * dense[b]).sum())
    assert kinds[a].inner(kinds[b]) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def answered_by(monkeypatch, a: Curvature, b: Curvature) -> str:
    """Who computed ``a.inner(b)``: ``a``, ``b`` (a closed form) or ``generic``."""
    calls = []
    for cls in {type(a), type(b)}:
        original = cls._inner

        def spy(self, other, original=original):
            value = original(self, other)
            if value is not NotImplemented:
                calls.append("a" if self is a else "b")
            return value

        monkeypatch.setattr(cls, "_inner", spy)
    generic = Curvature._generic_inner
    monkeypatch.setattr(
        Curvature, "_generic_inner", lambda s, o: calls.append("generic") or generic(s, o)
    )
    a.inner(b)
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize(
    ("a", "b", "who"),
    [
        ("dense", "factor", "b"),  # the cheaper closed form answers: U^T U's rows
        ("factor", "dense", "a"),
        ("kfac", "dense", "a"),  # <G (x) A, M_bb> block by block
        ("dense", "kfac", "b"),
        ("diag", "factor", "a"),  # the diagonal reads the other's diagonal
        ("identity", "diag", "b"),  # a tie: the right operand's, as the former approx.inner
        ("diag", "identity", "b"),
        ("factor", "factor-empirical", "b"),
        ("toy", "diag", "b"),
        ("toy", "factor", "b"),
        ("toy", "dense", "generic"),  # no closed form: blocks of identity columns
        ("kfac", "toy", "generic"),
        ("toy", "toy", "generic"),
        ("kfac", "kfac-reblocked", "generic"),  # different blocks: G (x) A does not split
    ],
)
def test_inner_dispatch(kinds, monkeypatch, a, b, who):
    assert answered_by(monkeypatch, kinds[a], kinds[b]) == who


def test_inner_refuses_different_layouts(kinds):
    other = estimators.make("diag-exact").fit(nn.Linear(2, 2).double(), torch.randn(3, 2).double())
    with pytest.raises(ValueError, match="inner product of curvatures over different layouts"):
        kinds["dense"].inner(other)


@pytest.mark.parametrize("name", NAMES)
def test_top_eigen_matches_dense(kinds, dense, name):
    k, m = 4, dense[name].numpy()
    expected = np.linalg.eigvalsh(m)[::-1][:k]
    vals, vecs = kinds[name].top_eigen(k)
    assert vals.dtype == np.float64
    assert np.all(np.diff(vals) <= 0)
    assert np.allclose(vals, expected, rtol=1e-8, atol=1e-12 * expected[0])
    if name == "identity":
        assert vecs is None  # every vector is an eigenvector
        return
    assert vecs.shape == (m.shape[0], k)
    assert np.abs(m @ vecs - vecs * vals).max() <= 1e-8 * vals[0]
    assert np.allclose(vecs.T @ vecs, np.eye(k), atol=1e-8)


def test_top_eigen_caps_k(kinds):
    p = kinds["diag"].numel
    assert len(kinds["identity"].top_eigen(100)[0]) == p - 1
    assert len(kinds["diag"].top_eigen(100)[0]) == p - 1
    factor = kinds["factor-empirical"]
    assert len(factor.top_eigen(100)[0]) == factor.factor.shape[0]  # at most R eigenpairs


INDEX_SETS = {
    "contiguous": torch.arange(3, 19),
    "scattered": torch.tensor([30, 0, 7, 8, 21]),
    "single": torch.tensor([5]),
    "all": torch.arange(31),
}


@pytest.mark.parametrize("which", INDEX_SETS)
@pytest.mark.parametrize("name", NAMES)
def test_block_frobenius_sq_matches_dense(kinds, dense, name, which):
    idx = INDEX_SETS[which]
    expected = float(dense[name][idx][:, idx].square().sum())
    assert kinds[name].block_frobenius_sq(idx) == pytest.approx(expected, rel=1e-12)


def test_generic_block_is_refused_for_large_models(kinds, monkeypatch):
    monkeypatch.setattr(curvature_module, "GENERIC_BLOCK_MAX", 30)
    idx = INDEX_SETS["scattered"]
    for name in ("toy", "kfac"):
        with pytest.raises(NotImplementedError, match=r"no closed form .* P = 31 parameters"):
            kinds[name].block_frobenius_sq(idx)
    for name in ("identity", "diag", "dense", "factor"):
        kinds[name].block_frobenius_sq(idx)  # closed forms need no fallback


def test_float32_sums_accumulate_in_float64():
    model, x, y = tiny()
    kinds = every_structure(model.float(), x.float(), y)
    for name in ("diag", "kfac", "dense", "factor"):
        c = kinds[name]
        assert c.layout.dtype == torch.float32
        expected = float(c.dense().double().square().sum())
        assert c.frobenius_sq() == pytest.approx(expected, rel=1e-6)
        assert isinstance(c.inner(kinds["dense"]), float)
