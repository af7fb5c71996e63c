"""mc converges to exact as mc_samples grows: a fast loose test, and a tight one marked slow."""

from __future__ import annotations

import pytest
import torch

import estimators


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def mc_error(case, structure: str, samples: int, seed: int = 0) -> float:
    model, x, y = case.make()
    opts = {"forward": case.forward} if case.forward else {}
    exact = estimators.make(f"{structure}-exact", **opts).fit(model, x, y).dense()
    gen = torch.Generator().manual_seed(seed)
    mc = estimators.make(f"{structure}-mc", mc_samples=samples, generator=gen, **opts)
    return rel(mc.fit(model, x, y).dense(), exact)


@pytest.mark.parametrize("structure", ["diag", "kfac", "full"])
def test_mc_converges_loose(structure, case):
    """Error shrinks roughly like 1/sqrt(mc_samples): 16 -> 1,600 samples cuts it ~10x."""
    few, many = mc_error(case, structure, 16), mc_error(case, structure, 1600)
    assert many < 0.1
    assert many < few / 3


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["diag", "kfac", "full"])
def test_mc_converges_tight(structure, case):
    assert mc_error(case, structure, 200_000) < 0.01
