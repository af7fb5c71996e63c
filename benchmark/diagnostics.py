r"""Per-run diagnostics of stability and plasticity (opt-in: the run setting ``diagnostics``).

After the last task T of a sequential run, with :math:`\theta_{end}` the final parameters and
:math:`\theta^*_t` those right after task t was trained (its EWC anchor), every old task t < T
is measured on a fixed subset X_t of its test inputs (``INPUTS`` of them, drawn with
``generator(seed, "diagnostics", t)``; in eval mode, as ``harness.accuracy`` evaluates):

- ``drift_quadratic``: with :math:`d = \theta_{end} - \theta^*_t` restricted to one layer l
  (an ``nn.Linear`` or ``nn.Conv*`` module, weight and bias together, named by module name)
  or to all of them (``total``), the exact Fisher quadratic

  .. math::
      d^\top F_t d = \frac{1}{|X_t|} \sum_{x \in X_t} u^\top (\mathrm{diag}(p) - p p^\top) u,
      \qquad u = J_x d,\ p = \mathrm{softmax}(f(\theta^*_t, x)),

  with :math:`F_t = E_x[J^\top (\mathrm{diag}(p) - p p^\top) J]` the true (label-expectation)
  Fisher of the logits' Jacobian J at :math:`\theta^*_t`. It is computed matrix-free:
  :math:`u_l = J_l d_l` from one ``torch.func.jvp`` per layer over the whole batch of inputs,
  and :math:`u = \sum_l u_l` for the total (so the total has the cross-layer terms, the per-layer
  values only the diagonal blocks). ``used``: :math:`d^\top \hat F_t d` of the curvature the run
  fitted after task t (``Curvature.quadratic``; ewc runs only, before any online accumulation or
  dense merge), the same restrictions; ``ratio`` = used / exact; ``norm_sq`` = :math:`d^\top d`.
  The runs' convention: both F are means over inputs, and the EWC penalty is
  :math:`\frac{\lambda}{2} d^\top \hat F d`. With BatchNorm, d is over the Linear / Conv
  parameters only (BatchNorm's affine parameters count in neither quadratic).
- ``feature_drift``: per hidden layer (every Linear / Conv module but the output layers, its
  output taken after the activation that follows it), the relative drift
  :math:`\|H(\theta_{end}) - H(\theta^*_t)\|_F / \|H(\theta^*_t)\|_F` of the features H
  ``[|X_t|, ...]`` of X_t.
- ``swapped_output_accuracy``: task t's accuracy on X_t (its own head, argmax of the logits, as
  ``harness.accuracy``) of :math:`\theta_{end}` (``end``) and of :math:`\theta_{end}` with task
  t's output layer put back to :math:`\theta^*_t` (``swapped``), and the mean margin (correct
  logit minus the largest other logit) of both (``end_margin``, ``swapped_margin``).

Per run: ``plasticity`` (the last task's test accuracy after training, R[T][T]) and
``stability`` (the mean test accuracy of the old tasks after training, mean of R[T][t < T]).

Cost to the run: a copy of each task's state (memory) and, for a dense curvature, a copy of it
(memory, and its copy time falls inside ``estimate_seconds``; the other structures are kept by
reference). The measurement itself runs after the run's clock and peak memory are read. Runs
trained as one stacked group (``benchmark.grouped``) refuse diagnostics; joint runs have none.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, jvp

import estimators

from .methods import METHODS
from .methods.ewc import CurvatureRegulariser
from .models import MultiHead
from .seeds import generator

if TYPE_CHECKING:
    from .config import RunConfig
    from .records import RunRecord
    from .tasks import Task, TaskSequence

INPUTS = 1000
"""Test inputs per old task that the diagnostics measure on (fewer when the task has fewer)."""
CHUNK = 1000
"""Inputs per batched forward / jvp."""
TOTAL = "total"
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)
State = dict[str, torch.Tensor]
Deltas = dict[str, State]
"""Layer (module) name -> its parameters' drift by parameter name."""


@dataclass
class Kept:
    """What a run keeps for its diagnostics while it trains.

    Attributes:
        anchors: per task but the last, the model's state (parameters and buffers) right after
            the task was trained.
        curvatures: per task but the last, the curvature fitted after it (ewc runs), else empty.
    """

    anchors: list[State] = field(default_factory=list)
    curvatures: list[estimators.Curvature] = field(default_factory=list)

    def watch(self, config: RunConfig, regulariser: object) -> None:
        """Collect the curvatures an ewc run fits (``CurvatureRegulariser.fitted``)."""
        if METHODS[config.method].takes_estimator and isinstance(regulariser, CurvatureRegulariser):
            regulariser.fitted = self.curvatures

    def keep(self, model: nn.Module) -> None:
        """Keep a copy of the model's state as the next task's anchor."""
        self.anchors.append({k: v.detach().clone() for k, v in model.state_dict().items()})


# -- the network's structure -------------------------------------------------------------------


def layers(model: nn.Module) -> dict[str, list[str]]:
    """Linear / Conv module name -> the names of its trainable parameters (weight, bias)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LAYERS):
            params = [f"{name}.{n}" for n, p in module.named_parameters() if p.requires_grad]
            if params:
                out[name] = params
    return out


def output_layers(model: nn.Module) -> list[str]:
    """The output layers: every head of a ``MultiHead``, else the last Linear / Conv module."""
    if isinstance(model, MultiHead):
        return [f"heads.{i}" for i in range(model.n_heads)]
    return list(layers(model))[-1:]


def output_layer(model: nn.Module, head: int) -> str:
    """The output layer that task head ``head`` uses."""
    return f"heads.{head}" if isinstance(model, MultiHead) else output_layers(model)[0]


def hidden_features(model: nn.Module) -> dict[str, nn.Module]:
    """Hidden layer name -> the module whose output is its features.

    Hidden layers are the Linear / Conv modules that are not output layers; the features are
    the output of the activation right after the layer in its ``nn.Sequential`` (``ACTIVATIONS``),
    else the layer's own output.
    """
    named = dict(model.named_modules())
    outputs = set(output_layers(model))
    points = {n: named[n] for n in layers(model) if n not in outputs}
    for parent_name, parent in named.items():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (child, _), (_, after) in itertools.pairwise(children):
            full = f"{parent_name}.{child}" if parent_name else child
            if full in points and isinstance(after, ACTIVATIONS):
                points[full] = after
    return points


def _call(model: nn.Module, state: State, x: torch.Tensor, head: int) -> torch.Tensor:
    """Logits of ``model`` with parameters and buffers ``state`` through head ``head``."""
    kwargs = {"head": head} if isinstance(model, MultiHead) else {}
    return functional_call(model, state, (x,), kwargs)


def _chunks(x: torch.Tensor, *more: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    for start in range(0, len(x), CHUNK):
        yield tuple(t[start : start + CHUNK] for t in (x, *more))


# -- the quadratics ----------------------------------------------------------------------------


def _fisher_form(p: torch.Tensor, u: torch.Tensor) -> float:
    r""":math:`\sum_x u^\top (\mathrm{diag}(p) - p p^\top) u` over a batch (float64)."""
    p, u = p.double(), u.double()
    return float((p * u.square()).sum() - (p * u).sum(-1).square().sum())


def exact_quadratics(
    model: nn.Module, anchor: State, deltas: Deltas, x: torch.Tensor, head: int = 0
) -> dict[str, float]:
    r"""Per layer and ``total``: :math:`d^\top F d` of the exact Fisher at ``anchor`` (module doc).

    ``deltas`` maps layer names to their parameters' drift; the total is over all of them
    together (the Fisher's cross-layer blocks included). Batched over ``x``: one
    ``torch.func.jvp`` per layer and chunk, nothing P x P.

    Raises:
        ValueError: no inputs, or a drift whose parameter the state lacks.
    """
    if len(x) == 0:
        raise ValueError("the exact Fisher quadratic needs at least one input")
    missing = [n for d in deltas.values() for n in d if n not in anchor]
    if missing:
        raise ValueError(f"drift of parameter(s) {missing} that the anchor state lacks")
    sums = dict.fromkeys([*deltas, TOTAL], 0.0)
    for (xs,) in _chunks(x):
        logits, us = None, []
        for d in deltas.values():

            def f(params: State, xs: torch.Tensor = xs) -> torch.Tensor:
                return _call(model, {**anchor, **params}, xs, head)

            logits, u = jvp(f, ({n: anchor[n] for n in d},), (d,))
            us.append(u)
        if logits is None:
            break
        p = torch.softmax(logits.detach().double(), dim=-1)
        for name, u in zip(deltas, us, strict=True):
            sums[name] += _fisher_form(p, u)
        sums[TOTAL] += _fisher_form(p, torch.stack(us).sum(0))
    return {k: v / len(x) for k, v in sums.items()}


def used_quadratics(curvature: estimators.Curvature, deltas: Deltas) -> dict[str, float]:
    r"""Per layer and ``total``: :math:`d^\top \hat F d` of a fitted curvature (zeros elsewhere).

    Raises:
        ValueError: a drift of a parameter the curvature does not cover.
    """
    layout = curvature.layout
    extra = [n for d in deltas.values() for n in d if n not in layout.names]
    if extra:
        raise ValueError(f"the curvature does not cover parameter(s) {extra}")
    zeros = {
        n: torch.zeros(s, dtype=layout.dtype, device=layout.device)
        for n, s in zip(layout.names, layout.shapes, strict=True)
    }
    out = {name: float(curvature.quadratic({**zeros, **d})) for name, d in deltas.items()}
    everything = {n: t for d in deltas.values() for n, t in d.items()}
    out[TOTAL] = float(curvature.quadratic({**zeros, **everything}))
    return out


# -- features and outputs ----------------------------------------------------------------------


@torch.no_grad()
def feature_drift(
    model: nn.Module, end: State, anchor: State, x: torch.Tensor, head: int = 0
) -> dict[str, float | None]:
    """Per hidden layer: ||H(end) - H(anchor)||_F / ||H(anchor)||_F over ``x`` (module doc).

    None where the anchor's features are all zero (the ratio is undefined).
    """
    points = hidden_features(model)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().clone())
        )
        for name, module in points.items()
    ]
    diff, base = dict.fromkeys(points, 0.0), dict.fromkeys(points, 0.0)
    try:
        for (xs,) in _chunks(x):
            _call(model, anchor, xs, head)
            before = dict(seen)
            _call(model, end, xs, head)
            for name in points:
                diff[name] += float((seen[name] - before[name]).double().square().sum())
                base[name] += float(before[name].double().square().sum())
    finally:
        for h in handles:
            h.remove()
    return {n: math.sqrt(diff[n] / base[n]) if base[n] > 0 else None for n in points}


@torch.no_grad()
def accuracy_margin(
    model: nn.Module, state: State, x: torch.Tensor, y: torch.Tensor, head: int = 0
) -> tuple[float | None, float | None]:
    """Top-1 accuracy and mean margin (correct logit - largest other) on ``x``; None if non-finite.

    Raises:
        ValueError: no inputs.
    """
    if len(x) == 0:
        raise ValueError("accuracy needs at least one input")
    correct, margin = 0, 0.0
    for xs, ys in _chunks(x, y):
        logits = _call(model, state, xs, head)
        if not bool(torch.isfinite(logits).all()):
            return None, None
        right = logits.gather(1, ys[:, None]).squeeze(1)
        others = logits.scatter(1, ys[:, None], -math.inf).amax(1)
        correct += int((logits.argmax(-1) == ys).sum())
        margin += float((right - others).double().sum())
    return correct / len(x), margin / len(x)


def swapped_output(
    model: nn.Module, end: State, anchor: State, x: torch.Tensor, y: torch.Tensor, head: int = 0
) -> dict[str, float | None]:
    """Accuracy and margin of ``end``, and of ``end`` with head ``head``'s output layer put back.

    The output layer's parameters come from ``anchor``, everything else from ``end``; keys
    ``end``, ``swapped``, ``end_margin``, ``swapped_margin`` (``accuracy_margin``).
    """
    prefix = output_layer(model, head) + "."
    swapped = {**end, **{k: v for k, v in anchor.items() if k.startswith(prefix)}}
    acc_end, margin_end = accuracy_margin(model, end, x, y, head)
    acc_swapped, margin_swapped = accuracy_margin(model, swapped, x, y, head)
    return {
        "end": acc_end,
        "swapped": acc_swapped,
        "end_margin": margin_end,
        "swapped_margin": margin_swapped,
    }


# -- one run -----------------------------------------------------------------------------------


def subset(task: Task, seed: int, index: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The fixed test inputs (and labels) of task ``index`` the diagnostics use (seeded)."""
    n = min(INPUTS, len(task.test))
    pick = torch.randperm(len(task.test), generator=generator(seed, "diagnostics", index))[:n]
    pick = pick.sort().values
    return task.test.float_inputs(pick).to(device), task.test.targets[pick].to(device)


def _ratio(used: dict[str, float], exact: dict[str, float]) -> dict[str, float | None]:
    return {k: used[k] / exact[k] if exact[k] > 0 else None for k in exact}


def task_diagnostics(
    model: nn.Module, end: State, kept: Kept, t: int, task: Task, seed: int
) -> dict[str, Any]:
    """Every diagnostic of old task ``t`` (module doc), the model in eval mode."""
    device = next(iter(end.values())).device
    x, y = subset(task, seed, t, device)
    anchor = kept.anchors[t]
    deltas = {
        name: {n: end[n] - anchor[n] for n in params} for name, params in layers(model).items()
    }
    exact = exact_quadratics(model, anchor, deltas, x, task.head)
    quadratic: dict[str, Any] = {"exact": exact}
    if t < len(kept.curvatures):
        used = used_quadratics(kept.curvatures[t], deltas)
        quadratic.update(used=used, ratio=_ratio(used, exact))
    norms = {
        k: float(sum(v.double().square().sum() for v in d.values())) for k, d in deltas.items()
    }
    quadratic["norm_sq"] = {**norms, TOTAL: sum(norms.values())}
    return {
        "inputs": len(x),
        "drift_quadratic": quadratic,
        "feature_drift": feature_drift(model, end, anchor, x, task.head),
        "swapped_output_accuracy": swapped_output(model, end, anchor, x, y, task.head),
    }


def measure(
    model: nn.Module, sequence: TaskSequence, kept: Kept, record: RunRecord, seed: int
) -> dict[str, Any]:
    """The run's diagnostics (JSON: task indices and layer names as keys); restores the mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        end = {k: v.detach() for k, v in model.state_dict().items()}
        tasks = {
            str(t): task_diagnostics(model, end, kept, t, sequence.tasks[t], seed)
            for t in range(len(kept.anchors))
        }
    finally:
        for m, training in modes:
            m.training = training
    last = record.acc_test[-1] if record.acc_test else []
    old = [a for a in last[:-1] if a is not None]
    return {
        "layers": list(layers(model)),
        "hidden": list(hidden_features(model)),
        "plasticity": last[-1] if last else None,
        "stability": sum(old) / len(old) if old else None,
        "tasks": tasks,
    }
