"""The protocol around the numbers: options, errors, memory refusal, model state, online sums."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import estimators
from estimators.fitting import make_plan
from estimators.layout import ParamLayout
from tests import cases

GRID = estimators.names()
EXPECTED_NAMES = [
    "diag-argmax", "diag-batched", "diag-empirical", "diag-exact", "diag-mc",
    "ekfac-empirical", "ekfac-exact", "ekfac-mc",
    "full-empirical", "full-exact", "full-mc", "identity",
    "kfac-empirical", "kfac-exact", "kfac-mc",
    "lowrank-empirical", "lowrank-exact", "lowrank-mc",
]  # fmt: skip


def test_names_are_the_grid():
    assert estimators.names() == EXPECTED_NAMES


def test_unknown_name_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown estimator 'diag-true'.*valid names: diag-argmax"
    ):
        estimators.make("diag-true")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'mc_samples' for estimator 'diag-exact'.*chunk_size"):
        estimators.make("diag-exact", mc_samples=3)


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("diag-exact", {"chunk_size": 0}, "'chunk_size' must be a positive integer"),
        ("diag-exact", {"chunk_size": 2.5}, "'chunk_size' must be a positive integer"),
        ("diag-mc", {"mc_samples": -1}, "'mc_samples' must be a positive integer"),
        ("diag-mc", {"mc_samples": True}, "'mc_samples' must be a positive integer"),
        ("diag-mc", {"generator": 3}, "'generator' must be None or a torch.Generator"),
        ("full-exact", {"memory_budget": -5}, "'memory_budget' must be a positive number of bytes"),
        ("full-exact", {"memory_budget": float("nan")}, "positive number of bytes"),
        ("full-exact", {"representation": "sparse"}, "one of auto, dense, factor"),
        ("kfac-exact", {"forward": "head"}, "'forward' must be None or a callable"),
        ("diag-batched", {"batch_size": 0}, "'batch_size' must be a positive integer"),
    ],
)
def test_bad_option_values(name, opts, message):
    with pytest.raises(ValueError, match=message):
        estimators.make(name, **opts)


def test_options_are_documented():
    assert set(estimators.options("full-mc")) == {
        "forward", "chunk_size", "memory_budget", "mc_samples", "generator", "representation",
        "output_curvature",
    }  # fmt: skip
    assert set(estimators.options("identity")) == {"forward", "memory_budget"}


@pytest.fixture
def small():
    return cases.CASES[0].make()


@pytest.mark.parametrize(
    "name", ["diag-empirical", "diag-batched", "kfac-empirical", "full-empirical"]
)
def test_empirical_needs_targets(name, small):
    model, x, _ = small
    with pytest.raises(ValueError, match="uses the dataset labels: pass targets"):
        estimators.make(name).fit(model, x)


@pytest.mark.parametrize("name", ["diag-exact", "kfac-mc", "full-empirical"])
def test_bad_targets(name, small):
    model, x, y = small
    with pytest.raises(ValueError, match=r"targets must be a tensor of shape \[7\]"):
        estimators.make(name).fit(model, x, y[:3])
    with pytest.raises(ValueError, match="integer class labels"):
        estimators.make(name).fit(model, x, y.double())
    if name.endswith("empirical"):
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
            estimators.make(name).fit(model, x, y + 3)


def test_bad_inputs_and_outputs(small):
    model, x, y = small
    with pytest.raises(ValueError, match="at least one input"):
        estimators.make("diag-exact").fit(model, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"logits of shape \[n, C\]"):
        estimators.make("diag-exact", forward=lambda m, v: m(v).unsqueeze(1)).fit(model, x, y)
    with pytest.raises(ValueError, match="non-finite logits for 7 of 7 inputs"):
        estimators.make("kfac-exact", forward=lambda m, v: m(v) * float("nan")).fit(model, x, y)
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        estimators.make("diag-exact").fit("model", x, y)
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        estimators.make("diag-exact").fit(frozen, x, y)


@pytest.mark.parametrize("name", ["diag-exact", "kfac-mc", "full-empirical"])
def test_batchnorm_without_running_stats_is_refused(name):
    """Without running statistics, eval-mode BatchNorm couples inputs: no per-input Fisher."""
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)
    )
    x, y = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="'1' has no running statistics"):
        estimators.make(name).fit(model, x, y)


@pytest.mark.parametrize(
    ("case_name", "generic"),
    [
        ("mlp_bn", ()),
        ("cnn", ()),
        ("multi_head", ()),
        ("generic", ("2.log_scale", "3.weight", "3.bias")),
        ("shared", ("shared.weight", "shared.bias", "norm.weight", "norm.bias")),
    ],
)
def test_plan_uses_closed_forms_where_they_exist(case_name, generic):
    """Guards the grid tests: they exercise the closed forms, not only the torch.func path."""
    case = next(c for c in cases.CASES if c.name == case_name)
    model, x, _ = case.make()
    plan = make_plan(model, case.forward or (lambda m, v: m(v)), x[:1], ParamLayout.of(model))
    assert plan.generic == generic


def _snapshot(model: nn.Module):
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


@pytest.mark.parametrize("name", GRID)
def test_model_state_unchanged(name, case):
    model, x, y = case.make()
    model.train()
    next(iter(model.children())).eval()  # a mixed pattern of training flags
    next(model.parameters()).grad = torch.ones_like(next(model.parameters()))
    before = _snapshot(model)
    opts = {"forward": case.forward} if case.forward else {}
    estimators.make(name, **opts).fit(model, x, y)
    after = _snapshot(model)
    assert before[1] == after[1]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[2], after[2]))


def test_fit_under_no_grad(small):
    model, x, y = small
    with torch.no_grad():
        curv = estimators.make("diag-exact").fit(model, x, y)
    assert curv.trace() > 0


def test_memory_refusal_reports_bytes(small):
    model, x, y = small
    p = ParamLayout.of(model).numel
    dense, factor = p * p * 8, 7 * 3 * p * 8  # N = 7 inputs, C = 3 rows each (exact)
    budget = min(dense, factor) - 1
    with pytest.raises(estimators.FisherMemoryError) as err:
        estimators.make("full-exact", memory_budget=budget).fit(model, x, y)
    assert err.value.needed == min(dense, factor)
    assert err.value.budget == budget
    assert f"{dense:,} bytes" in str(err.value) and f"{factor:,} bytes" in str(err.value)
    # Factor fits, dense does not: auto picks the factor.
    curv = estimators.make("full-exact", memory_budget=factor).fit(model, x, y)
    assert isinstance(curv, estimators.LowRankCurvature)
    with pytest.raises(estimators.FisherMemoryError, match=f"{dense:,} bytes"):
        estimators.make("full-exact", memory_budget=factor, representation="dense").fit(model, x, y)
    # dense() of any representation refuses over its budget, with P^2 bytes.
    with pytest.raises(estimators.FisherMemoryError) as err:
        curv.dense()
    assert err.value.needed == dense


def test_mc_is_reproducible_with_a_generator(small):
    model, x, _ = small

    def run(seed):
        est = estimators.make(
            "diag-mc", mc_samples=2, generator=torch.Generator().manual_seed(seed)
        )
        return est.fit(model, x).diagonal_flat()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("name", ["diag-exact", "kfac-exact", "full-exact", "diag-empirical"])
def test_chunking_does_not_change_the_result(name, case):
    model, x, y = case.make()
    opts = {"forward": case.forward} if case.forward else {}
    one = estimators.make(name, chunk_size=1, **opts).fit(model, x, y).dense()
    all_ = estimators.make(name, chunk_size=100, **opts).fit(model, x, y).dense()
    assert torch.allclose(one, all_, rtol=1e-12, atol=1e-15)


# -- online accumulation -----------------------------------------------------------------------
def _fits(model, x, y, *names):
    return [estimators.make(n).fit(model, x, y) for n in names]


def test_online_sums(small):
    model, x, y = small
    ident, diag, dense = _fits(model, x, y, "identity", "diag-exact", "full-exact")
    d, full = diag.diagonal_flat(), dense.dense()
    eye = torch.eye(dense.numel, dtype=torch.float64)
    two = ident.add(ident, 0.5)
    assert isinstance(two, estimators.IdentityCurvature) and two.scale == 1.5
    mixed = ident.add(diag, 0.25)
    assert isinstance(mixed, estimators.DiagCurvature)
    assert torch.allclose(mixed.diagonal_flat(), 0.25 + d)
    assert torch.allclose(diag.add(diag, 0.5).diagonal_flat(), 1.5 * d)
    assert torch.allclose(dense.add(diag, 0.5).dense(), 0.5 * full + torch.diag(d))
    assert torch.allclose(ident.add(dense, 2.0).dense(), 2.0 * eye + full)
    assert torch.equal(diag.diagonal_flat(), d)  # inputs untouched


def test_online_refusals(small):
    model, x, y = small
    kfac, diag = _fits(model, x, y, "kfac-exact", "diag-exact")
    (factor,) = [estimators.make("full-exact", representation="factor").fit(model, x, y)]
    with pytest.raises(NotImplementedError, match="Kronecker products is not a Kronecker product"):
        kfac.add(diag)
    with pytest.raises(NotImplementedError, match="low-rank factors grows"):
        diag.add(factor)
    with pytest.raises(ValueError, match="decay must be a finite number >= 0"):
        diag.add(diag, -1.0)
    other = estimators.make("diag-exact").fit(nn.Linear(4, 3).double(), torch.randn(2, 4).double())
    with pytest.raises(ValueError, match="different parameter layouts"):
        diag.add(other)


def test_quadratic_checks_its_input(small):
    model, x, y = small
    curv = estimators.make("diag-exact").fit(model, x, y)
    delta = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    name = next(iter(delta))
    with pytest.raises(ValueError, match=f"missing \\['{name}'\\]"):
        curv.quadratic({k: v for k, v in delta.items() if k != name})
    with pytest.raises(ValueError, match="has shape"):
        curv.quadratic(delta | {name: torch.zeros(1, dtype=torch.float64)})
    with pytest.raises(ValueError, match="flat tensor of shape"):
        curv.matvec(torch.zeros(3, dtype=torch.float64))


def test_float64_in_float64_out(small):
    model, x, y = small
    for name in ["diag-exact", "kfac-exact", "full-exact"]:
        curv = estimators.make(name).fit(model, x.float(), y)  # inputs follow the model's dtype
        assert curv.diagonal_flat().dtype == torch.float64
        assert curv.dense().dtype == torch.float64


class _ModifiesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 1.0
        out = self.fc(h)
        h.add_(1.0)  # changes the Linear's input after the layer used it
        return out


def test_input_modified_in_place_is_detected():
    model, x = _ModifiesInput(), torch.randn(5, 4)
    with pytest.raises(ValueError, match="modified in place after the layer used it"):
        estimators.make("diag-exact").fit(model, x)


def test_check_memory_refuses_before_fitting_as_fit_would(small):
    model, x, y = small
    p = ParamLayout.of(model).numel
    factor = 7 * 3 * p * 8  # N = 7 inputs, C = 3 rows each (exact), float64
    est = estimators.make("full-exact", memory_budget=factor - 1)
    with pytest.raises(estimators.FisherMemoryError) as ahead:
        est.check_memory(model, 7, 3)
    with pytest.raises(estimators.FisherMemoryError) as fitting:
        est.fit(model, x, y)
    assert str(ahead.value) == str(fitting.value)
    estimators.make("full-exact", memory_budget=factor).check_memory(model, 7, 3)
    estimators.make("full-mc", memory_budget=7 * p * 8).check_memory(model, 7, 3)  # 1 row each
    for name in ("diag-exact", "kfac-exact", "identity", "diag-batched"):
        estimators.make(name, memory_budget=1).check_memory(model, 10**6, 3)  # never refuse


def test_memory_refusal_with_a_tiny_budget_says_what_one_input_needs(small):
    model, _, _ = small
    p = ParamLayout.of(model).numel
    with pytest.raises(estimators.FisherMemoryError) as err:
        estimators.make("full-exact", memory_budget=10).check_memory(model, 7, 3)
    message = str(err.value)
    assert "at most 0 inputs" not in message
    assert "even one input's rows need" in message and f"{3 * p * 8:,} bytes" in message
