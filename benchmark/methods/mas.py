r"""MAS, Memory Aware Synapses (Aljundi et al., ECCV 2018): importance from output sensitivity.

The importance of parameter i after a task is the mean, over the task's inputs, of the absolute
gradient of the squared L2 norm of the network's output (the logits of the task's head):

.. math::
    \Omega_i = \frac{1}{N} \sum_n
    \left| \frac{\partial \, \|f(x_n; \theta)\|_2^2}{\partial \theta_i} \right|,

computed per input (``torch.func``: ``vmap`` of ``grad`` over chunks of inputs, no Python loop
over inputs), with the model in eval mode and its modes restored. No labels are used. The penalty
is the EWC penalty with :math:`F = \operatorname{diag}(\Omega)`: ``mas`` keeps one term per task,
``mas-online`` one term whose importances add up (gamma = 1) anchored at the latest weights,
which is Aljundi et al.'s accumulation. The benchmark's convention :math:`\frac{\lambda}{2}
\sum_i \Omega_i (\theta_i - \theta^*_i)^2` puts a factor 1/2 in front of the paper's
:math:`\lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2`: our lambda is twice theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import estimators
from estimators import DiagCurvature, ParamLayout

from ..models import Forward, task_forward
from .ewc import CurvatureRegulariser, fit_inputs

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..tasks import Task

CHUNK = 256
"""Inputs per vmapped pass (bounds the per-input gradients held at once to CHUNK x P)."""


class _Forward(nn.Module):
    """``forward(model, x)`` as a module, so that ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model = model
        self.fn = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the wrapped model's head."""
        return self.fn(self.model, x)


def mas_importance(
    model: nn.Module, forward: Forward, inputs: torch.Tensor, chunk: int = CHUNK
) -> DiagCurvature:
    r""":math:`\Omega = \operatorname{mean}_n |\nabla_\theta \|f(x_n)\|^2|`, trainable parameters.

    Args:
        model: the network; its trainable parameters define the layout (as the estimators').
        forward: ``(model, x) -> logits`` (a task's head).
        inputs: ``[N, ...]`` inputs, on the model's device.
        chunk: inputs per vmapped pass.

    Returns:
        The importances as a ``DiagCurvature`` over ``ParamLayout.of(model)``.
    """
    layout = ParamLayout.of(model)
    wrapper = _Forward(model, forward)
    named = dict(model.named_parameters())
    names = ["model." + n for n in layout.names]
    params = {"model." + n: named[n].detach() for n in layout.names}
    fixed = {"model." + n: b for n, b in model.named_buffers()}
    fixed.update(
        {"model." + n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    )

    def squared_norm(ps: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(wrapper, {**fixed, **ps}, (x.unsqueeze(0),))
        return out.square().sum()

    per_input = vmap(grad(squared_norm), in_dims=(None, 0))
    total = torch.zeros(layout.numel, dtype=layout.dtype, device=layout.device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for start in range(0, inputs.shape[0], chunk):
            grads = per_input(params, inputs[start : start + chunk].to(layout.dtype))
            total += torch.cat([grads[w].abs().sum(0).reshape(-1) for w in names])
    finally:
        for m, training in modes:
            m.training = training
    return DiagCurvature(layout, total / inputs.shape[0])


def fit_mas(
    config: RunConfig, model: nn.Module, task: Task, index: int, device: torch.device
) -> estimators.Curvature:
    """MAS importances of task ``index`` on the same seeded inputs as the Fisher estimators."""
    x, _ = fit_inputs(config, task, index, device)
    return mas_importance(model, task_forward(model, task.head), x)


def mas_regulariser(config: RunConfig) -> CurvatureRegulariser:
    """The MAS regulariser of a run: importances per task, the EWC penalty over them."""
    return CurvatureRegulariser(config, fit_mas)
