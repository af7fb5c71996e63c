"""pytest-benchmark groups for the other cost questions: the penalty, past tasks, model width.

Groups (one table each under ``make bench``):

- ``penalty step``: one training step (the harness's ``training.train_step`` and Adam, batch 100)
  of the tutorial network, plain and with the EWC penalty of each structure (identity, diag,
  KFAC, the full Fisher's 200-row factor), whose closed-form gradient is added after the loss's
  backward (``costs.workloads.Variant``);
- ``penalty vs past tasks``: the diagonal penalty after T past tasks, separate mode (T terms)
  against online mode (one accumulated curvature);
- ``fit vs width``: diag-exact and kfac-exact on MLP 784-h-h-10 at N = 1000 (P grows ~h^2).

Inputs are seeded synthetic images (a step's or a fit's cost does not depend on pixel values), so
this file never skips. Under ``make test`` benchmarking is disabled and each function runs once.
"""

from __future__ import annotations

import pytest
import torch

import estimators
from benchmark.costs import workloads
from benchmark.models import mlp

pytestmark = pytest.mark.bench

PENALTY_CASES = [
    ("plain", None, {}),
    ("identity", "identity", {}),
    ("diag-exact", "diag-exact", {}),
    ("kfac-exact", "kfac-exact", {}),
    ("full-mc factor", "full-mc", {"representation": "factor"}),
]
PAST_TASKS = (1, 4, 16)
WIDTHS = (64, 256)


@pytest.fixture(scope="module")
def network():
    """The tutorial network with BatchNorm statistics from synthetic inputs (eval mode)."""
    return workloads.synthetic_tutorial_network("cpu")


@pytest.fixture(scope="module")
def data():
    """1,000 synthetic inputs and labels."""
    return workloads.synthetic(1000, 10, "cpu")


@pytest.fixture(scope="module")
def curvatures(network, data):
    """Each penalty case's curvature (full Fisher: 200 factor rows, the harness's default)."""
    x, y = data
    out = {}
    for label, name, options in PENALTY_CASES:
        if name is not None:
            n = 200 if name.startswith("full-") else len(x)
            out[label] = estimators.make(name, **options).fit(network, x[:n], y[:n])
    return out


def _variant(network, curvature, mode="separate", tasks=1):
    return workloads.make_variant(network, curvature, "x", mode, tasks)


@pytest.mark.benchmark(group="penalty step")
@pytest.mark.parametrize("label", [c[0] for c in PENALTY_CASES])
def test_penalty_step(benchmark, network, curvatures, data, label):
    x, y = (t[:100] for t in data)
    variant = _variant(network, curvatures.get(label))
    benchmark.extra_info.update(penalty=label, batch=100)
    benchmark(variant.step, x, y)
    assert all(torch.isfinite(p).all() for p in variant.model.parameters())


@pytest.mark.benchmark(group="penalty vs past tasks")
@pytest.mark.parametrize("mode", ["separate", "online"])
@pytest.mark.parametrize("tasks", PAST_TASKS)
def test_penalty_past_tasks(benchmark, network, curvatures, data, mode, tasks):
    x, y = (t[:100] for t in data)
    variant = _variant(network, curvatures["diag-exact"], mode, tasks)
    expected_terms = tasks if mode == "separate" else 1
    assert len(variant.penalty.terms) == expected_terms
    benchmark.extra_info.update(mode=mode, tasks=tasks)
    benchmark(variant.step, x, y)


@pytest.mark.benchmark(group="fit vs width")
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["diag-exact", "kfac-exact"])
def test_fit_width(benchmark, data, name, width):
    torch.manual_seed(0)
    model = mlp(hidden=width, depth=2).eval()
    x, y = data
    benchmark.extra_info.update(estimator=name, width=width, n=len(x))
    curvature = benchmark(estimators.make(name).fit, model, x, y)
    assert curvature.numel == sum(p.numel() for p in model.parameters())


@pytest.mark.benchmark(group="fit vs width")
@pytest.mark.parametrize("width", WIDTHS)
def test_floor_width(benchmark, data, width):
    torch.manual_seed(0)
    model = mlp(hidden=width, depth=2).eval()
    x, y = data
    benchmark.extra_info.update(reference="floor", width=width, n=len(x))
    grads = benchmark(workloads.floor_pass, model, x, y)
    assert len(grads) == len(list(model.parameters()))
