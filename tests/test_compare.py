"""The optional comparison with BackPACK and nngeometry: conversions by hand, agreement with ours.

The agreement tests need the ``compare`` extra (``pip install -e '.[compare]'``) and skip, saying
so, without it; the conversions and the report's table are tested either way.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmark.costs import compare
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


def test_relative_difference():
    ours = torch.tensor([3.0, 4.0])
    assert compare.relative_difference(ours, ours) == 0.0
    assert compare.relative_difference(torch.tensor([3.0, 5.0]), ours) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="differ in size"):
        compare.relative_difference(torch.ones(3), ours)


def test_missing_libraries_are_named():
    note = compare.missing_note({"backpack": None, "nngeometry": "0.4"})
    assert "backpack-for-pytorch" in note and "nngeometry" not in note.split(";")[0]
    assert ".[compare]" in note
    assert compare.missing_note({"backpack": "1.7", "nngeometry": "0.4"}) is None
    assert compare.external_methods({"backpack": None, "nngeometry": None}) == []


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


@pytest.mark.parametrize("label", ["FIM PMatDiag", "FIM PMatKFAC"])
def test_nngeometry_agrees_with_ours(tiny, label):
    _need("nngeometry")
    model, x, y = tiny  # nngeometry works in float32 only
    method = next(m for m in compare.nngeometry_methods() if m.label == label)
    got = compare.agreement(method, copy.deepcopy(model).float(), x.float(), y, {})
    assert got.get("error") is None
    assert got["rel_diff"] < 1e-5


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
