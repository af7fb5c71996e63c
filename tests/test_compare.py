"""The optional comparison with BackPACK, nngeometry and curvlinops: conversions, agreement.

The agreement tests need the ``compare`` extra (``pip install -e '.[compare]'``) and skip, saying
so, without it (they never download); the conversions and the report's table are tested either way.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import estimators
from benchmark.costs import compare, compare_common, compare_curvlinops
from benchmark.models import mlp
from benchmark.report import timing as timing_report


def test_kron_diagonal_by_hand():
    g = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    a = torch.tensor([[5.0, 0.0, 1.0], [0.0, 7.0, 0.0], [1.0, 0.0, 11.0]])
    weight = compare.kron_diagonal([g, a], torch.Size([2, 3]))
    assert torch.equal(weight, torch.tensor([[10.0, 14.0, 22.0], [15.0, 21.0, 33.0]]))
    # the diagonal of kron(G, A) in row-major order, the layout of our flat parameters
    assert torch.equal(weight.reshape(-1), torch.diagonal(torch.kron(g, a)))
    assert torch.equal(compare.kron_diagonal([g], torch.Size([2])), torch.tensor([2.0, 3.0]))


def test_eigen_block_diagonal_by_hand():
    torch.manual_seed(1)
    qg = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64)).Q
    qa = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64)).Q
    s = torch.rand(3, 4, dtype=torch.float64)
    q = torch.kron(qg, qa)  # column (p, q) is Q_G[:, p] x Q_A[:, q], row-major like S
    dense = q @ torch.diag(s.reshape(-1)) @ q.T
    got = compare_common.eigen_block_diagonal(qg, s.reshape(-1), qa)
    assert torch.allclose(got.reshape(-1), torch.diagonal(dense), atol=1e-14)
    g, a = torch.diag(torch.tensor([2.0, 3.0])), torch.diag(torch.tensor([5.0, 7.0, 11.0]))
    assert torch.equal(
        compare_common.kron_block_diagonal(g, a).reshape(-1), torch.diagonal(torch.kron(g, a))
    )


def test_layer_diagonals_lay_out_weight_then_bias_column():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1, bias=False))
    first = torch.arange(9.0).reshape(3, 3)  # [W | b]: columns 0-1 weight, column 2 bias
    last = torch.tensor([[10.0, 11.0, 12.0]])  # no bias: all columns are the weight's
    flat = compare_common.layer_diagonals(model, {"0": first, "2": last})
    assert flat.tolist() == [0, 1, 3, 4, 6, 7, 2, 5, 8, 10, 11, 12]
    with pytest.raises(ValueError, match="no Kronecker block"):
        compare_common.layer_diagonals(model, {"0": first})


def test_relative_difference():
    ours = torch.tensor([3.0, 4.0])
    assert compare.relative_difference(ours, ours) == 0.0
    assert compare.relative_difference(torch.tensor([3.0, 5.0]), ours) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="differ in size"):
        compare.relative_difference(torch.ones(3), ours)


def test_missing_libraries_are_named():
    note = compare.missing_note({"backpack": None, "nngeometry": "0.4", "curvlinops": None})
    assert "backpack-for-pytorch" in note and "nngeometry" not in note.split(";")[0]
    assert "curvlinops-for-pytorch" in note
    assert ".[compare]" in note
    assert (
        compare.missing_note({"backpack": "1.7", "nngeometry": "0.4", "curvlinops": "3.0"}) is None
    )
    assert (
        compare.external_methods({"backpack": None, "nngeometry": None, "curvlinops": None}) == []
    )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = mlp(hidden=6, depth=2).double().eval()
    x = torch.rand(40, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    return model, x, y


def _need(module: str) -> None:
    if compare.versions()[module] is None:
        pytest.skip(f"{compare.LIBRARIES[module]} not installed (pip install -e '.[compare]')")


@pytest.mark.parametrize(
    "label", ["SumGradSquared", "DiagGGNExact", "KFLR", "DiagGGNMC (1 sample)", "KFAC (1 sample)"]
)
def test_backpack_agrees_with_ours(tiny, label):
    _need("backpack")
    model, x, y = tiny
    method = next(m for m in compare.backpack_methods() if m.label == label)
    got = compare.agreement(method, model, x, y, {})
    assert got.get("error") is None
    if method.sampled:  # one label per input: a noisy estimate of the exact quantity
        assert 1e-6 < got["rel_diff"] < 1.0
    else:
        assert got["rel_diff"] < 1e-10


@pytest.mark.parametrize("label", ["FIM PMatDiag", "FIM PMatKFAC", "FIM PMatEKFAC"])
def test_nngeometry_agrees_with_ours(tiny, label):
    _need("nngeometry")
    model, x, y = tiny  # nngeometry works in float32 only
    method = next(m for m in compare.nngeometry_methods() if m.label == label)
    got = compare.agreement(method, copy.deepcopy(model).float(), x.float(), y, {})
    assert got.get("error") is None
    assert got["rel_diff"] < 1e-5


@pytest.mark.parametrize(
    "label", ["KFAC type-2", "KFAC empirical", "EKFAC type-2", "KFAC mc (1 sample)"]
)
def test_curvlinops_agrees_with_ours(tiny, label):
    _need("curvlinops")
    model, x, y = tiny
    method = next(m for m in compare_curvlinops.curvlinops_methods() if m.label == label)
    got = compare.agreement(method, model, x, y, {})
    assert got.get("error") is None
    if method.sampled:  # one label per input: a noisy estimate of kfac-exact
        assert 1e-6 < got["rel_diff"] < 1.0
    else:
        assert got["rel_diff"] < 1e-10


@pytest.fixture(scope="module")
def small():
    """A float64 MLP small enough for dense matrices (5-4-3, 47 parameters), 30 inputs."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, x, y


@pytest.mark.parametrize(
    ("ours", "mode", "eigen"),
    [
        ("kfac-exact", "exact", False),
        ("kfac-empirical", "empirical", False),
        ("ekfac-exact", "exact", True),
    ],
)
def test_curvlinops_dense_matrix_is_ours(small, ours, mode, eigen):
    """Every entry, not just the diagonal: weight-bias cross terms, zero blocks between layers."""
    _need("curvlinops")
    model, x, y = small
    operator = compare_curvlinops.curvlinops_operator(model, x, y, mode, eigen)
    p = sum(t.numel() for t in model.parameters())
    theirs = operator @ torch.eye(p, dtype=torch.float64)  # columns in named_parameters order
    mine = estimators.make(ours).fit(model, x, y).dense()
    assert (theirs - mine).norm() / mine.norm() < 1e-10


def test_curvlinops_kronecker_factors_are_ours_one_by_one(small):
    """Same normalisation of each factor (mean over inputs in both), not only of G x A."""
    _need("curvlinops")
    model, x, y = small
    state = compare_curvlinops.curvlinops_operator(model, x, y, "exact").state_dict()
    mine = estimators.make("kfac-exact").fit(model, x, y)
    for name, block in zip(["0", "2"], mine.blocks, strict=True):
        assert torch.allclose(state["input_covariances"][name], block.A, rtol=1e-12, atol=0)
        assert torch.allclose(state["gradient_covariances"][name], block.G, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("eigen", [False, True])
def test_curvlinops_fit_defers_nothing(small, eigen):
    """After the timed fit, a product computes no factor or correction any more."""
    _need("curvlinops")
    model, x, y = small
    operator = compare_curvlinops.curvlinops_operator(model, x, y, "exact", eigen)

    def deferred() -> None:
        raise AssertionError("curvlinops computed after the timed fit")

    operator.compute_kronecker_factors = deferred
    operator.compute_eigenvalue_correction = deferred
    p = sum(t.numel() for t in model.parameters())
    assert torch.isfinite(operator @ torch.ones(p, dtype=torch.float64)).all()


def test_measure_and_render_without_failures(tiny):
    _model, x, y = tiny
    result = compare.measure_compare(20, x.float(), y, repeats=1, device="cpu")
    names = [r["method"] for r in result["rows"]]
    assert names[: len(compare.OURS)] == list(compare.OURS)
    for row in result["rows"]:
        assert row["status"] == "ok", row
        assert row["x_floor"] > 0
    text = "\n".join(timing_report.compare_section(result))
    assert "## Against other libraries" in text
    for name in compare.OURS:
        assert f"| ewc-bench | {name} |" in text
    if result["missing"]:
        assert "Skipped: not installed" in text


def test_versions_name_installed_distributions():
    for module, version in compare.versions().items():
        assert module in compare.LIBRARIES
        assert version is None or version[0].isdigit() or version == "unknown version"
