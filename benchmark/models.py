"""Models: the source tutorial's MLP, a plain MLP and a small CNN, single- or multi-head.

``tutorial-mlp``: Flatten -> Linear(784, 100) -> ReLU -> BatchNorm1d(100) -> Linear(100, 100) ->
ReLU -> BatchNorm1d(100) -> Linear(100, 10): 90,010 trainable parameters (89,610 in the Linear
layers, 400 in BatchNorm affine). Activation before BatchNorm, as in the tutorial.

``mlp``: the same without BatchNorm (89,610 parameters), for libraries with limited BatchNorm
support.

``cnn``: Conv2d(1, 8, 5) -> ReLU -> MaxPool2d(2) -> Conv2d(8, 16, 5) -> ReLU -> MaxPool2d(2) ->
Flatten -> Linear(256, 64) -> ReLU -> Linear(64, 10): 20,522 parameters (28 -> 24 -> 12 -> 8 -> 4
pixels, so the flattened width is 16 * 4 * 4 = 256).

Heads: with ``n_heads == 1`` a model is a plain ``nn.Sequential`` whose last layer is
``Linear(width, n_outputs)`` (with the defaults, ``tutorial-mlp`` is exactly the tutorial's
network, parameter for parameter and in initialisation order). With ``n_heads > 1`` it is a
``MultiHead``: the same layers but the last as ``trunk``, then ``n_heads`` independent
``Linear(width, n_outputs)`` heads; ``model(x, head=k)`` uses head ``k`` only (task-incremental
learning). ``task_forward(model, head)`` gives the matching ``forward(model, x)`` callable that
the curvature estimators take.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

INPUT_PIXELS = 28 * 28

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class MultiHead(nn.Module):
    """A shared trunk and one linear head per task: ``forward(x, head) = heads[head](trunk(x))``.

    Attributes:
        trunk: every layer but the output layer; maps inputs to features ``[N, width]``.
        heads: ``n_heads`` independent ``Linear(width, n_outputs)`` layers.
    """

    def __init__(self, trunk: nn.Module, heads: nn.ModuleList) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = heads

    @property
    def n_heads(self) -> int:
        """The number of heads."""
        return len(self.heads)

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Logits ``[N, n_outputs]`` of head ``head`` (an int in ``[0, n_heads)``)."""
        if not 0 <= head < len(self.heads):
            raise ValueError(
                f"head {head} out of range: this model has heads 0..{self.n_heads - 1}"
            )
        return self.heads[head](self.trunk(x))


def _with_heads(layers: list[nn.Module], width: int, n_outputs: int, n_heads: int) -> nn.Module:
    """``Sequential(*layers, Linear(width, n_outputs))`` or a ``MultiHead`` with ``n_heads``."""
    if n_heads == 1:
        return nn.Sequential(*layers, nn.Linear(width, n_outputs))
    heads = nn.ModuleList(nn.Linear(width, n_outputs) for _ in range(n_heads))
    return MultiHead(nn.Sequential(*layers), heads)


def tutorial_mlp(n_outputs: int = 10, n_heads: int = 1) -> nn.Module:
    """The source tutorial's 784-100-100-``n_outputs`` network with ReLU then BatchNorm."""
    layers: list[nn.Module] = [
        nn.Flatten(),
        nn.Linear(INPUT_PIXELS, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.BatchNorm1d(100),
    ]
    return _with_heads(layers, 100, n_outputs, n_heads)


def mlp(n_outputs: int = 10, n_heads: int = 1, hidden: int = 100, depth: int = 2) -> nn.Module:
    """Plain ReLU MLP 784-hidden-...-``n_outputs`` (``depth`` hidden layers), no BatchNorm."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = INPUT_PIXELS
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return _with_heads(layers, width, n_outputs, n_heads)


def cnn(n_outputs: int = 10, n_heads: int = 1) -> nn.Module:
    """Small LeNet-style CNN for ``[N, 1, 28, 28]`` inputs (20,522 parameters at 10 outputs)."""
    layers: list[nn.Module] = [
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),
        nn.ReLU(),
    ]
    return _with_heads(layers, 64, n_outputs, n_heads)


def mlp16(n_outputs: int = 10, n_heads: int = 1) -> nn.Module:
    """784-16-``n_outputs`` ReLU MLP (12,730 parameters at 10 outputs).

    Small enough for the exact dense Fisher: the approximation study's ground truth.
    """
    return mlp(n_outputs, n_heads, hidden=16, depth=1)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tutorial-mlp": tutorial_mlp,
    "mlp": mlp,
    "cnn": cnn,
    "mlp-16": mlp16,
}


def make_model(name: str, n_outputs: int = 10, n_heads: int = 1) -> nn.Module:
    """Build model ``name`` with ``n_heads`` output heads of ``n_outputs`` units each.

    Parameters are initialised from torch's global generator (seed it first for a seeded init).

    Raises:
        ValueError: unknown name (listing the valid ones), or ``n_outputs`` / ``n_heads`` not a
            positive integer (``n_outputs`` >= 2).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    if not _is_int(n_outputs) or n_outputs < 2:
        raise ValueError(f"n_outputs must be an integer >= 2 (classes per head), not {n_outputs!r}")
    if not _is_int(n_heads) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, not {n_heads!r}")
    return MODELS[name](n_outputs=n_outputs, n_heads=n_heads)


def task_forward(model: nn.Module, head: int = 0) -> Forward:
    """The ``forward(model, x)`` callable for task head ``head``.

    ``lambda m, x: m(x, head=head)`` for a ``MultiHead`` model; ``lambda m, x: m(x)`` otherwise
    (single-head models ignore ``head``). This is the ``forward`` option of the estimators.

    Raises:
        ValueError: ``head`` outside the MultiHead model's heads.
    """
    if isinstance(model, MultiHead):
        if not _is_int(head) or not 0 <= head < model.n_heads:
            raise ValueError(
                f"head {head!r} out of range: the model has heads 0..{model.n_heads - 1}"
            )
        return lambda m, x: m(x, head=head)
    return lambda m, x: m(x)


def n_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
