"""The one batched pass that every structure consumes.

For a chunk of inputs: one forward with hooks that keep each closed-form layer's input, the label
factor S from the logits (see ``labels``), scaled by 1/sqrt(N) so that sums over inputs are means,
and one backward of all K columns of S at once (``is_grads_batched``) to every hooked layer's
output. Parameters of layers without a closed form get per-input gradients from ``torch.func``
(``functional_call`` + ``vjp``, vmapped over inputs and columns). Nothing loops over inputs or
classes in Python.

The model runs in eval mode; each module's mode is restored afterwards, and nothing writes to
parameters, buffers or ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from .labels import LabelMode
from .layers import RULES, LayerRule
from .layout import ParamLayout

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def default_forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)``."""
    return model(inputs)


@dataclass
class PlannedLayer:
    """A module handled in closed form: its rule and ``attr -> layout name`` of trainable params."""

    module: nn.Module
    rule: LayerRule
    params: dict[str, str]

    @property
    def attrs(self) -> tuple[str, ...]:
        """Trainable attributes (``weight``/``bias``)."""
        return tuple(self.params)


@dataclass
class Plan:
    """Which parameters use closed forms and which use ``torch.func``; the number of classes."""

    layers: list[PlannedLayer]
    generic: tuple[str, ...]
    n_classes: int
    called: tuple[nn.Module, ...] = ()
    """Closed-form candidate modules in the order the probe's forward first ran them."""


@dataclass
class LayerCapture:
    """What one closed-form layer contributed in a chunk (see ``layers.base``)."""

    layer: PlannedLayer
    a: torch.Tensor
    g: torch.Tensor


@dataclass
class Capture:
    """One chunk's captures; ``generic`` maps layout names to ``[K, n, *shape]`` gradients."""

    n: int
    layers: list[LayerCapture] = field(default_factory=list)
    generic: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _Wrapper(nn.Module):
    """Exposes ``forward(model, x)`` as a module, so ``functional_call`` can swap parameters."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model = model
        self._fn = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self.model, x)


def check_logits(logits: object, n: int, finite: bool = True) -> torch.Tensor:
    """Logits must be a ``[n, C]`` tensor with ``C >= 2`` (and finite, unless ``finite=False``)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model (or the forward option) must return logits of shape [n, C] for n = {n} "
            f"inputs, got {shape}; multi-head models should pass forward=(model, x) -> logits"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, the logits have {logits.shape[1]}")
    bad = (~torch.isfinite(logits)).any(dim=1)
    if finite and bad.any():
        raise ValueError(
            f"the model produced non-finite logits for {int(bad.sum())} of {n} inputs "
            "(a diverged model has no meaningful Fisher)"
        )
    return logits


def make_plan(model: nn.Module, forward: Forward, probe: torch.Tensor, layout: ParamLayout) -> Plan:
    """Run one input through the model and decide, per parameter, closed form or ``torch.func``.

    A module gets closed forms when its exact type has a rule, it runs at most once per forward,
    its inputs suit the rule, and none of its parameters is shared with another module.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise ValueError(
                f"BatchNorm module {name!r} has no running statistics (track_running_stats=False), "
                "so even in eval mode it normalises with batch statistics that couple the inputs: "
                "a per-input Fisher is undefined. Use running statistics or another normalisation."
            )
    name_of = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    calls: dict[nn.Module, list[tuple[torch.Tensor, ...]]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls.setdefault(module, []).append(inputs)

    candidates = [m for m in model.modules() if type(m) in RULES]
    handles = [m.register_forward_hook(record) for m in candidates]
    try:
        with torch.no_grad():
            logits = check_logits(forward(model, probe), probe.shape[0], finite=False)
    finally:
        for h in handles:
            h.remove()

    layers, claimed = [], set()
    for m in candidates:
        rule = RULES[type(m)]
        params = {
            attr: name_of[id(p)]
            for attr, p in m.named_parameters(recurse=False)
            if id(p) in name_of and owners[id(p)] == 1
        }
        seen = calls.get(m, [])
        if not params or len(seen) > 1 or (seen and rule.unsupported(m, seen[0]) is not None):
            continue
        layers.append(PlannedLayer(m, rule, params))
        claimed.update(params.values())
    generic = tuple(n for n in layout.names if n not in claimed)
    return Plan(layers, generic, int(logits.shape[1]), called=tuple(calls))


class FisherPass:
    """Per-chunk captures for one model, forward, label mode and total input count ``N``."""

    def __init__(
        self, model: nn.Module, forward: Forward, labels: LabelMode, plan: Plan, n_total: int
    ) -> None:
        self.model = model
        self.forward = forward
        self.labels = labels
        self.plan = plan
        self.scale = n_total**-0.5
        self.columns = labels.columns(plan.n_classes)

    def capture(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> Capture:
        """Forward with hooks, label factor, one batched backward; plus ``torch.func`` rows."""
        kept: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        counts: dict[int, int] = {}
        handles = []
        for i, layer in enumerate(self.plan.layers):
            handles.append(layer.module.register_forward_hook(self._hook(i, layer, kept, counts)))
        try:
            logits = check_logits(self.forward(self.model, inputs), inputs.shape[0])
        finally:
            for h in handles:
                h.remove()
        changed = [self.plan.layers[i].module for i, (a, _, v) in kept.items() if a._version != v]
        if changed:
            raise ValueError(
                f"the input of a {type(changed[0]).__name__} layer was modified in place after the "
                "layer used it; the closed forms need it unchanged (avoid in-place ops on it)"
            )
        twice = [self.plan.layers[i].module for i, c in counts.items() if c > 1]
        if twice:
            raise ValueError(
                f"{type(twice[0]).__name__} ran more than once in one forward, but ran once on "
                "the probe input; weight sharing must be visible on every input"
            )
        factor = self.labels.factor(logits.detach(), targets) * self.scale  # [K, n, C]
        cap = Capture(n=inputs.shape[0])
        order = sorted(kept)
        if order:
            outs = [kept[i][1] for i in order]
            grads = self._backward(logits, outs, factor)
            for i, g in zip(order, grads, strict=True):
                a, out, _ = kept[i]
                if g is None:
                    g = out.new_zeros((self.columns, *out.shape))
                cap.layers.append(LayerCapture(self.plan.layers[i], a, g))
        if self.plan.generic:
            with torch.no_grad():  # torch.func's own vjp still differentiates inside
                cap.generic = self._generic(inputs, factor)
        return cap

    @staticmethod
    def _hook(
        i: int,
        layer: PlannedLayer,
        kept: dict[int, tuple[torch.Tensor, torch.Tensor, int]],
        counts: dict[int, int],
    ) -> Callable[..., torch.Tensor]:
        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            counts[i] = counts.get(i, 0) + 1
            reason = layer.rule.unsupported(module, inputs)
            if reason is not None:
                raise ValueError(
                    f"{type(module).__name__} changed input form after the probe: {reason}"
                )
            a, out = layer.rule.capture(module, inputs, output)
            kept[i] = (a, out, a._version)
            # Later in-place operations (e.g. ReLU(inplace=True)) must not touch `out`.
            return out.clone()

        return hook

    def _backward(
        self, logits: torch.Tensor, outs: list[torch.Tensor], factor: torch.Tensor
    ) -> list[torch.Tensor | None]:
        """Gradients of all K columns w.r.t. each output, ``[K, n, ...]`` (None if unused)."""
        if self.columns == 1:
            grads = torch.autograd.grad(logits, outs, factor[0], allow_unused=True)
            return [None if g is None else g.unsqueeze(0) for g in grads]
        return list(
            torch.autograd.grad(logits, outs, factor, allow_unused=True, is_grads_batched=True)
        )

    def _generic(self, inputs: torch.Tensor, factor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-input, per-column gradients of the generic parameters via ``torch.func``."""
        wrapper = _Wrapper(self.model, self.forward)
        named = dict(self.model.named_parameters())
        params = {f"model.{n}": named[n].detach() for n in self.plan.generic}

        def logits_one(prm: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(wrapper, prm, (x.unsqueeze(0),)).squeeze(0)

        def rows_one(x: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
            _, pull = vjp(lambda prm: logits_one(prm, x), params)
            return vmap(pull)(s)[0]

        rows = vmap(rows_one, in_dims=(0, 1))(inputs, factor)  # name -> [n, K, *shape]
        return {n: rows[f"model.{n}"].transpose(0, 1) for n in self.plan.generic}
