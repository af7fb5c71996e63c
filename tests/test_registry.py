"""The registry built from the structures' declarations: names, options, online rules, and that a
new structure needs nothing but its declaration.
"""

from __future__ import annotations

import pytest
import torch

import estimators
from estimators.diag import DiagAccumulator, DiagCurvature
from estimators.estimator import Estimator
from estimators.options import OPTIONS
from estimators.registry import GridStructure, Registry, Single, never_online
from tests import cases

B = ["forward", "chunk_size", "memory_budget"]
MC = ["mc_samples", "generator"]
LR = ["rank", "oversample", "power_iterations"]
KV = ["factors", "layers", "online_rule"]
OR = ["online_rule"]
FO = ["representation", "output_curvature"]
OPTION_LISTS = {
    "diag-argmax": B, "diag-batched": ["forward", "batch_size", "memory_budget"],
    "diag-empirical": B, "diag-exact": B, "diag-mc": B + MC,
    "ekfac-empirical": B + OR, "ekfac-exact": B + OR, "ekfac-mc": B + MC + OR,
    "full-empirical": B + FO, "full-exact": B + FO,
    "full-mc": B + MC + FO, "identity": ["forward", "memory_budget"],
    "kfac-empirical": B + KV, "kfac-exact": B + KV, "kfac-mc": B + MC + KV,
    "lowrank-empirical": B + LR, "lowrank-exact": B + LR, "lowrank-mc": B + MC + LR,
}  # fmt: skip
ONLINE_BY_DEFAULT = {
    "diag-argmax", "diag-batched", "diag-empirical", "diag-exact", "diag-mc", "identity",
}  # fmt: skip
ONLINE = {name: name in ONLINE_BY_DEFAULT for name in OPTION_LISTS}


def test_options_in_order():
    assert estimators.names() == sorted(OPTION_LISTS)
    for name, expected in OPTION_LISTS.items():
        assert estimators.options(name) == {k: OPTIONS[k].doc for k in expected}
        assert list(estimators.options(name)) == expected


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_supports_online(name):
    assert estimators.supports_online(name) is ONLINE[name]
    reason = estimators.online_refusal(name)
    assert (reason is None) is ONLINE[name]
    if name.startswith("kfac"):
        assert reason.startswith("a sum of Kronecker products is not a Kronecker product; pass ")


@pytest.mark.parametrize("name", ["full-exact", "full-mc", "full-empirical"])
@pytest.mark.parametrize("representation", ["auto", "dense", "factor"])
def test_full_is_online_only_when_dense(name, representation):
    assert estimators.supports_online(name, representation=representation) is (
        representation == "dense"
    )
    if representation != "dense":
        reason = estimators.online_refusal(name, representation=representation)
        assert f"representation {representation!r} may give a low-rank factor" in reason
        assert "pass representation='dense'" in reason


def test_supports_online_validates_like_make():
    with pytest.raises(ValueError, match=r"unknown estimator 'diag-true'.*valid names"):
        estimators.supports_online("diag-true")
    with pytest.raises(ValueError, match="'mc_samples' for estimator 'diag-exact'"):
        estimators.supports_online("diag-exact", mc_samples=2)
    with pytest.raises(ValueError, match="one of auto, dense, factor"):
        estimators.supports_online("full-exact", representation="sparse")


VARIANTS = [(n, {}) for n in sorted(ONLINE) if not n.startswith("full")]
VARIANTS += [
    (n, {"representation": r}) for n in ("full-exact", "full-mc") for r in ("dense", "factor")
]


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
def test_the_rule_agrees_with_the_curvature(name, opts):
    """What the registry promises before fitting is what ``Curvature.add`` does after."""
    model, x, y = cases.CASES[0].make()
    curv = estimators.make(name, **opts).fit(model, x, y)
    if estimators.supports_online(name, **opts):
        curv.add(curv, 0.5)
    else:
        with pytest.raises(NotImplementedError, match="online accumulation is not defined"):
            curv.add(curv, 0.5)


# -- a new structure: one declaration ------------------------------------------------------------
class TwiceDiagAccumulator(DiagAccumulator):
    """A toy structure: twice the diagonal."""

    def result(self) -> DiagCurvature:
        return DiagCurvature(self.layout, 2 * self.flat, self.options["memory_budget"])


class ConstantEstimator(Estimator):
    """A toy single estimator: the identity scaled by 3, whatever the data."""

    def _fit(self, model, inputs, targets, layout):
        return estimators.IdentityCurvature(layout, 3.0, self.options["memory_budget"])


@pytest.fixture
def registry(monkeypatch):
    """The package registry, restored after the test."""
    monkeypatch.setattr(estimators, "_REGISTRY", estimators._REGISTRY.copy())


def test_a_declaration_is_all_a_structure_needs(registry):
    estimators.declare(GridStructure("twice", TwiceDiagAccumulator, ("exact", "mc")))
    estimators.declare(
        Single("constant", ConstantEstimator, ("memory_budget",), never_online("a toy"))
    )
    assert {"twice-exact", "twice-mc", "constant"} <= set(estimators.names())
    assert list(estimators.options("twice-mc")) == B + MC
    assert list(estimators.options("constant")) == ["memory_budget"]
    model, x, y = cases.CASES[0].make()
    twice = estimators.make("twice-exact", chunk_size=2).fit(model, x, y)
    once = estimators.make("diag-exact").fit(model, x, y)
    assert torch.allclose(twice.diagonal_flat(), 2 * once.diagonal_flat())
    assert estimators.make("constant").fit(model, x, y).scale == 3.0
    assert estimators.supports_online("twice-mc", mc_samples=3)
    assert estimators.online_refusal("constant") == "a toy"
    with pytest.raises(ValueError, match="'chunk_size' for estimator 'constant'"):
        estimators.make("constant", chunk_size=3)


def test_a_copy_is_independent():
    base = Registry(estimators.diag.DECLARATION)
    clone = base.copy()
    clone.declare(GridStructure("twice", TwiceDiagAccumulator, ("exact",)))
    assert "twice-exact" in clone.names()
    assert base.names() == ["diag-argmax", "diag-empirical", "diag-exact", "diag-mc"]


def test_bad_declarations_are_refused(registry):
    with pytest.raises(ValueError, match="already declared: diag-exact, diag-mc"):
        estimators.declare(GridStructure("diag", TwiceDiagAccumulator, ("exact", "mc")))
    with pytest.raises(ValueError, match="declares unknown option"):
        estimators.declare(Single("odd", ConstantEstimator, ("colour",)))
    with pytest.raises(ValueError, match=r"unknown label mode\(s\) \['true'\]; valid modes: exact"):
        estimators.declare(GridStructure("odd", TwiceDiagAccumulator, ("exact", "true")))
    assert not [n for n in estimators.names() if n.startswith("odd")]
