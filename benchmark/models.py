"""Models. ``tutorial-mlp`` is exactly the source tutorial's network.

``tutorial-mlp``: Flatten -> Linear(784, 100) -> ReLU -> BatchNorm1d(100) -> Linear(100, 100) ->
ReLU -> BatchNorm1d(100) -> Linear(100, 10): 90,010 trainable parameters (89,610 in the Linear
layers, 400 in BatchNorm affine). Activation before BatchNorm, as in the tutorial.
``mlp``: the same without BatchNorm (89,610 parameters), for libraries with limited BatchNorm
support.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def tutorial_mlp(n_classes: int = 10) -> nn.Sequential:
    """The source tutorial's 784-100-100-10 network with ReLU then BatchNorm."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
        nn.Linear(100, n_classes),
    )


def mlp(n_classes: int = 10, hidden: int = 100, depth: int = 2) -> nn.Sequential:
    """Plain ReLU MLP 784-hidden-...-n_classes without BatchNorm."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {"tutorial-mlp": tutorial_mlp, "mlp": mlp}


def make_model(name: str, **kwargs: int) -> nn.Module:
    """Build model ``name``; unknown names raise ValueError listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
