"""Models as specs with options: the source tutorial's MLP, a plain MLP, a small CNN; multi-head.

``tutorial-mlp``: Flatten -> Linear(784, 100) -> ReLU -> BatchNorm1d(100) -> Linear(100, 100) ->
ReLU -> BatchNorm1d(100) -> Linear(100, 10): 90,010 trainable parameters (89,610 in the Linear
layers, 400 in BatchNorm affine). Activation before BatchNorm, as in the tutorial.

``mlp``: ReLU MLP with options ``hidden`` (100), ``depth`` (2) and ``bn`` (false: no BatchNorm;
true: BatchNorm1d after each ReLU, so ``mlp`` with ``bn = true`` is ``tutorial-mlp``). E.g. the
784-400-400 MLP is ``model = "mlp"``, ``model_options = {hidden = 400}``.

``cnn``: Conv2d(1, c1, 5) -> ReLU -> MaxPool2d(2) -> Conv2d(c1, c2, 5) -> ReLU -> MaxPool2d(2) ->
Flatten -> Linear(16 c2, hidden) -> ReLU -> Linear(hidden, 10), options ``channels`` ((8, 16)),
``hidden`` (64), ``bn`` (BatchNorm2d after each convolution's ReLU): 20,522 parameters with the
defaults (28 -> 24 -> 12 -> 8 -> 4 pixels, so the flattened width is 16 * 4 * 4 = 256).

``mlp-16``: 784-16-10, small enough for the dense Fisher (the approximation study's ground truth).

Each model is a ``ModelSpec`` in ``SPECS``: a builder and the options it takes, checked by
``check_model`` (unknown option or bad value: a ValueError saying what is allowed). A run's
``model_options`` are part of its identity.

Heads: with ``n_heads == 1`` a model is a plain ``nn.Sequential`` whose last layer is
``Linear(width, n_outputs)`` (with the defaults, ``tutorial-mlp`` is exactly the tutorial's
network, parameter for parameter and in initialisation order). With ``n_heads > 1`` it is a
``MultiHead``: the same layers but the last as ``trunk``, then ``n_heads`` independent
``Linear(width, n_outputs)`` heads; ``model(x, head=k)`` uses head ``k`` only (task-incremental
learning). ``task_forward(model, head)`` gives the matching ``forward(model, x)`` callable that
the curvature estimators take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    return mlp(n_outputs, n_heads, hidden=100, depth=2, bn=True)


def mlp(
    n_outputs: int = 10, n_heads: int = 1, hidden: int = 100, depth: int = 2, bn: bool = False
) -> nn.Module:
    """ReLU MLP 784-hidden-...-``n_outputs`` (``depth`` hidden layers; ``bn``: BatchNorm after)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = INPUT_PIXELS
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if bn:
            layers.append(nn.BatchNorm1d(hidden))
        width = hidden
    return _with_heads(layers, width, n_outputs, n_heads)


def cnn(
    n_outputs: int = 10,
    n_heads: int = 1,
    channels: tuple[int, int] = (8, 16),
    hidden: int = 64,
    bn: bool = False,
) -> nn.Module:
    """LeNet-style CNN for ``[N, 1, 28, 28]`` inputs (20,522 parameters with the defaults).

    Two 5x5 convolutions (``channels``), each ReLU (then BatchNorm2d with ``bn``) and 2x2 max
    pooling (28 -> 24 -> 12 -> 8 -> 4 pixels), then Linear(c2 * 16, ``hidden``), ReLU, the head.
    """
    c1, c2 = channels
    layers: list[nn.Module] = []
    for c_in, c_out in ((1, c1), (c1, c2)):
        layers += [nn.Conv2d(c_in, c_out, 5), nn.ReLU()]
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(c2 * 4 * 4, hidden), nn.ReLU()]
    return _with_heads(layers, hidden, n_outputs, n_heads)


def mlp16(n_outputs: int = 10, n_heads: int = 1) -> nn.Module:
    """784-16-``n_outputs`` ReLU MLP (12,730 parameters at 10 outputs).

    Small enough for the exact dense Fisher: the approximation study's ground truth.
    """
    return mlp(n_outputs, n_heads, hidden=16, depth=1)


# -- the models, one spec each ---------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """A model option: its default, a check of a value (a message, or None when fine), its doc."""

    default: Any
    check: Callable[[Any], str | None]
    doc: str


def _positive(v: Any) -> str | None:
    return None if _is_int(v) and v >= 1 else "a positive integer"


def _non_negative(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _two_channels(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(c) and c >= 1 for c in v)
    return None if ok else "two positive integers, e.g. [8, 16]"


@dataclass(frozen=True)
class ModelSpec:
    """One named network: its builder and the options it takes (each part of a run's identity).

    Attributes:
        name: the ``model`` setting.
        summary: one line for help texts.
        build: ``build(n_outputs, n_heads, **options) -> nn.Module``.
        options: the options ``model_options`` may set, with defaults.
    """

    name: str
    summary: str
    build: Callable[..., nn.Module]
    options: dict[str, Option] = field(default_factory=dict)


_MLP_OPTIONS = {
    "hidden": Option(100, _positive, "units per hidden layer"),
    "depth": Option(2, _non_negative, "hidden layers"),
    "bn": Option(False, _flag, "BatchNorm1d after each hidden ReLU"),
}
SPECS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            "tutorial-mlp", "the source tutorial's 784-100-100-10 MLP with BatchNorm", tutorial_mlp
        ),
        ModelSpec("mlp", "ReLU MLP 784-hidden x depth-10 (e.g. hidden = 400)", mlp, _MLP_OPTIONS),
        ModelSpec(
            "cnn",
            "LeNet-style CNN: two 5x5 convolutions, max pooling, one hidden layer",
            cnn,
            {
                "channels": Option((8, 16), _two_channels, "channels of the two convolutions"),
                "hidden": Option(64, _positive, "units of the hidden linear layer"),
                "bn": Option(False, _flag, "BatchNorm2d after each convolution's ReLU"),
            },
        ),
        ModelSpec("mlp-16", "784-16-10 MLP, small enough for the dense Fisher", mlp16),
    )
}
MODELS = tuple(SPECS)
"""Every model name."""


def check_model(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of model ``name``, defaults filled in.

    Raises:
        ValueError: unknown model or option, or a bad value (saying what is allowed).
    """
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(SPECS)}")
    spec, options = SPECS[name], dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(f"{k} ({o.doc})" for k, o in spec.options.items()) or "none"
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"it takes: {allowed}"
        )
    for key, value in options.items():
        problem = spec.options[key].check(value)
        if problem:
            raise ValueError(f"model option {key} = {value!r} is invalid for {name!r}: {problem}")
    return {k: options.get(k, o.default) for k, o in spec.options.items()}


def make_model(
    name: str, n_outputs: int = 10, n_heads: int = 1, options: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build model ``name`` with ``n_heads`` output heads of ``n_outputs`` units each.

    Parameters are initialised from torch's global generator (seed it first for a seeded init).

    Raises:
        ValueError: unknown name or option (listing the valid ones), a bad option value, or
            ``n_outputs`` / ``n_heads`` not a positive integer (``n_outputs`` >= 2).
    """
    resolved = check_model(name, options)
    if not _is_int(n_outputs) or n_outputs < 2:
        raise ValueError(f"n_outputs must be an integer >= 2 (classes per head), not {n_outputs!r}")
    if not _is_int(n_heads) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, not {n_heads!r}")
    if "channels" in resolved:
        resolved["channels"] = tuple(resolved["channels"])
    return SPECS[name].build(n_outputs=n_outputs, n_heads=n_heads, **resolved)


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
