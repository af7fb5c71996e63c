"""benchmark.models: the tutorial network, plain MLP, CNN, multi-head models, task forwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import estimators
from benchmark import models
from benchmark.config import RunConfig
from benchmark.models import MultiHead, make_model, n_parameters, task_forward


def _tutorial_reference() -> nn.Sequential:
    """The source tutorial's network, written out as in the tutorial."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
        nn.Linear(100, 10),
    )


def test_tutorial_mlp_is_exactly_the_tutorial_network():
    model = make_model("tutorial-mlp")
    assert isinstance(model, nn.Sequential)
    assert n_parameters(model) == 90_010
    linear = sum(p.numel() for m in model if isinstance(m, nn.Linear) for p in m.parameters())
    assert linear == 89_610
    assert [type(m) for m in model] == [
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Linear,
    ]
    shapes = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert shapes == [(784, 100), (100, 100), (100, 10)]
    # Same seed, same initialisation as the tutorial's code: parameters drawn in the same order.
    torch.manual_seed(5)
    ours = make_model("tutorial-mlp").state_dict()
    torch.manual_seed(5)
    reference = _tutorial_reference().state_dict()
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


@pytest.mark.parametrize(
    ("name", "count"),
    [("tutorial-mlp", 90_010), ("mlp", 89_610), ("cnn", 20_522), ("mlp-16", 12_730)],
)
def test_parameter_counts_and_output_shapes(name, count):
    model = make_model(name)
    assert n_parameters(model) == count
    model.eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_has_no_batchnorm_and_cnn_layers():
    assert not any(isinstance(m, nn.BatchNorm1d) for m in make_model("mlp").modules())
    cnn = make_model("cnn")
    assert [type(m) for m in cnn][:6] == [
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
    ]
    assert cnn[-1].in_features == 64


@pytest.mark.parametrize("name", models.MODELS)
def test_single_head_with_other_width(name):
    model = make_model(name, n_outputs=4)
    assert isinstance(model, nn.Sequential)
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("name", models.MODELS)
def test_multihead_layout_and_shapes(name):
    model = make_model(name, n_outputs=2, n_heads=5)
    assert isinstance(model, MultiHead)
    assert model.n_heads == 5
    assert not isinstance(model.trunk[-1], nn.Linear)  # the trunk ends before the output layer
    single = make_model(name)
    assert len(model.trunk) == len(single) - 1
    width = single[-1].in_features
    assert all((h.in_features, h.out_features) == (width, 2) for h in model.heads)
    model.eval()
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 2)
    assert all(model(x, head=k).shape == (3, 2) for k in range(5))
    trunk = n_parameters(model.trunk)
    assert n_parameters(model) == trunk + 5 * (width * 2 + 2)


def test_heads_are_independent():
    torch.manual_seed(0)
    model = make_model("tutorial-mlp", n_outputs=2, n_heads=3).eval()
    x = torch.rand(4, 1, 28, 28)
    before = [model(x, head=k).detach() for k in range(3)]
    assert not torch.allclose(before[0], before[1])  # separately initialised
    with torch.no_grad():
        model.heads[1].weight.add_(1.0)
    assert torch.equal(model(x, head=0), before[0])
    assert torch.equal(model(x, head=2), before[2])
    assert not torch.allclose(model(x, head=1), before[1])
    model.zero_grad()
    model(x, head=2).sum().backward()
    assert model.heads[0].weight.grad is None
    assert model.heads[1].weight.grad is None
    assert model.heads[2].weight.grad.abs().sum() > 0
    assert model.trunk[1].weight.grad.abs().sum() > 0


def test_multihead_rejects_a_head_out_of_range():
    model = make_model("mlp", n_outputs=2, n_heads=2)
    with pytest.raises(ValueError, match=r"heads 0\.\.1"):
        model(torch.rand(1, 1, 28, 28), head=2)
    with pytest.raises(ValueError, match=r"heads 0\.\.1"):
        model(torch.rand(1, 1, 28, 28), head=-1)


def test_task_forward():
    x = torch.rand(3, 1, 28, 28)
    multi = make_model("mlp", n_outputs=2, n_heads=3)
    assert torch.equal(task_forward(multi, 2)(multi, x), multi(x, head=2))
    single = make_model("mlp")
    assert torch.equal(task_forward(single, 0)(single, x), single(x))
    assert torch.equal(task_forward(single, 4)(single, x), single(x))  # one head: head ignored
    with pytest.raises(ValueError, match=r"heads 0\.\.2"):
        task_forward(multi, 3)


def test_task_forward_is_the_estimators_forward_option():
    """The curvature of one head's task puts nothing on the other heads."""
    torch.manual_seed(0)
    model = make_model("mlp", n_outputs=2, n_heads=3)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 2, (8,))
    curv = estimators.make("diag-empirical", forward=task_forward(model, 1)).fit(model, x, y)
    diag = curv.diagonal()
    assert diag["heads.1.weight"].abs().sum() > 0
    assert diag["heads.0.weight"].abs().sum() == 0
    assert diag["heads.2.bias"].abs().sum() == 0
    assert diag["trunk.1.weight"].abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet"}, "valid names: tutorial-mlp, mlp, cnn"),
        ({"name": "mlp", "n_outputs": 0}, "n_outputs"),
        ({"name": "mlp", "n_outputs": 1}, "n_outputs"),
        ({"name": "mlp", "n_outputs": 2.0}, "n_outputs"),
        ({"name": "mlp", "n_heads": 0}, "n_heads"),
        ({"name": "mlp", "n_heads": True}, "n_heads"),
    ],
)
def test_bad_names_and_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


# -- model specs and their options ------------------------------------------------------------
def test_mlp_options_build_the_784_400_400_network():
    model = make_model("mlp", options={"hidden": 400})
    assert models.n_parameters(model) == 784 * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    deep = make_model("mlp", options={"hidden": 8, "depth": 3, "bn": True})
    assert sum(isinstance(m, nn.Linear) for m in deep.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm1d) for m in deep.modules()) == 3


def test_tutorial_mlp_is_the_mlp_with_batchnorm_parameter_for_parameter():
    torch.manual_seed(0)
    tutorial = make_model("tutorial-mlp").state_dict()
    torch.manual_seed(0)
    same = make_model("mlp", options={"bn": True}).state_dict()
    assert list(tutorial) == list(same)
    assert all(torch.equal(tutorial[k], same[k]) for k in tutorial)


def test_cnn_options():
    cnn = make_model("cnn", options={"channels": [4, 8], "hidden": 32, "bn": True})
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == 2


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mlp", {"width": 4}, r"unknown option\(s\) 'width' for model 'mlp'; it takes: hidden"),
        ("mlp", {"hidden": 0}, "model option hidden = 0 is invalid for 'mlp': a positive integer"),
        ("mlp", {"bn": "yes"}, "true or false"),
        ("cnn", {"channels": [4]}, "two positive integers"),
        ("tutorial-mlp", {"hidden": 4}, "it takes: none"),
    ],
)
def test_bad_model_options_say_what_is_allowed(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_model(name, options=options)
    with pytest.raises(ValueError, match=message):
        RunConfig(model=name, model_options=options)


def test_model_options_are_part_of_the_run_id_only_when_set():
    base = RunConfig(model="mlp")
    assert base.run_id == RunConfig(model="mlp", model_options={}).run_id
    assert base.run_id != RunConfig(model="mlp", model_options={"hidden": 400}).run_id
