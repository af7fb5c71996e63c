"""Online accumulation ``old.add(new, decay)`` for every ordered pair of structures.

Allowed sums (identity, diag, dense, in any mixture) equal the dense sums and take the richer
structure; KFAC and low-rank factors refuse with their reason; a structure that declares no sum
(the toy) is refused too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import estimators
from estimators import Curvature, DenseCurvature, DiagCurvature, IdentityCurvature
from tests.structures import every_structure, tiny

NAMES = ["identity", "diag", "dense", "kfac", "kfac-reblocked", "factor", "toy"]
PAIRS = [(a, b) for a in NAMES for b in NAMES]
RICHER = {"identity": 0, "diag": 1, "dense": 2}
CLASSES = {"identity": IdentityCurvature, "diag": DiagCurvature, "dense": DenseCurvature}
REFUSALS = {
    "kfac": "kfac curvature: a sum of Kronecker products is not a Kronecker product",
    "kfac-reblocked": "kfac curvature: a sum of Kronecker products is not a Kronecker product",
    "factor": "full-factor curvature: stacking low-rank factors grows with every task",
}


@pytest.fixture(scope="module")
def kinds() -> dict[str, Curvature]:
    curvs = every_structure(*tiny())
    curvs["dense"].memory_budget = 12345  # the sum keeps the larger budget
    return curvs


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_add_every_pair(kinds, old, new):
    a, b = kinds[old], kinds[new]
    dense_a, dense_b = a.dense(), b.dense()
    refusing = [n for n in (old, new) if n in REFUSALS]
    if refusing:  # the old one's reason first, as before
        with pytest.raises(NotImplementedError, match=REFUSALS[refusing[0]] + ".*separate mode"):
            a.add(b, 0.5)
    elif "toy" in (old, new):
        with pytest.raises(NotImplementedError, match="neither structure holds their sum"):
            a.add(b, 0.5)
    else:
        total = a.add(b, 0.5)
        assert type(total) is CLASSES[max(old, new, key=RICHER.get)]
        assert torch.allclose(total.dense(), 0.5 * dense_a + dense_b, rtol=1e-15, atol=0)
        assert total.memory_budget == max(a.memory_budget, b.memory_budget)
        assert total.layout is a.layout
    assert torch.equal(a.dense(), dense_a) and torch.equal(b.dense(), dense_b)  # untouched


def test_identity_sums_stay_identity(kinds):
    total = kinds["identity"].add(IdentityCurvature(kinds["identity"].layout, 2.0), 0.5)
    assert isinstance(total, IdentityCurvature) and total.scale == 0.5 * 0.7 + 2.0


@pytest.mark.parametrize("decay", [-1.0, math.nan, math.inf, True, "1", None])
def test_bad_decay(kinds, decay):
    with pytest.raises(ValueError, match="decay must be a finite number >= 0"):
        kinds["diag"].add(kinds["diag"], decay)


@pytest.mark.parametrize("decay", [0, 0.0, 1, 2.5])
def test_good_decay(kinds, decay):
    total = kinds["diag"].add(kinds["diag"], decay)
    assert torch.allclose(total.diagonal_flat(), (decay + 1) * kinds["diag"].diagonal_flat())


def test_different_layouts(kinds):
    other = estimators.make("diag-exact").fit(nn.Linear(2, 2).double(), torch.randn(3, 2).double())
    with pytest.raises(ValueError, match="cannot add curvatures over different parameter layouts"):
        kinds["diag"].add(other)


def test_decay_is_checked_before_the_structure(kinds):
    with pytest.raises(ValueError, match="decay"):
        kinds["kfac"].add(kinds["kfac"], -1.0)
