r"""The exact Fisher with the softmax output curvature averaged over the inputs (a control).

The exact Fisher is :math:`F = \operatorname{mean}_n J_n^\top H_n J_n` with
:math:`H_n = \operatorname{diag}(p_n) - p_n p_n^\top` the output curvature of input n and
:math:`J_n = \partial z_n / \partial \theta` the Jacobian of its logits. This control replaces
each :math:`H_n` by their mean:

.. math::
    F_{avg} = \operatorname{mean}_n J_n^\top \bar H J_n, \qquad
    \bar H = \operatorname{mean}_n \big(\operatorname{diag}(p_n) - p_n p_n^\top\big),

the assumption KFAC makes about the output factor (the output curvature independent of the
input), without its Kronecker structure: comparing ``full-exact``, this control and ``kfac-exact``
separates the effect of that independence from the effect of the Kronecker structure.

It is reached as ``full-exact`` with the option ``output_curvature = 'mean'`` (label
``ewc full-exact output_curvature=mean``; the default ``'per-input'`` is the Fisher itself), so
it keeps the ``full`` structure's representations, memory checks and online rule: with
:math:`\bar H = L L^\top` (``eigh``, :math:`L = V \Lambda^{1/2}`, tiny negative eigenvalues clamped
to zero), the rows :math:`L^\top J_n / \sqrt{N}` (C per input) give :math:`F_{avg} = R^\top R`,
stored as a dense P x P matrix or as the factor R (``representation``, see ``full``). The fit
takes two passes in the same chunks: a forward-only pass for :math:`\bar H` (accumulated from the
stable factor of the ``exact`` label mode, :math:`\bar H = \operatorname{mean}_n S_n S_n^\top`),
then one ``FisherPass`` whose label factor is the constant :math:`L` instead of each input's own
:math:`S_n`. Defined for the exact label mode only.
"""

from __future__ import annotations

import torch
from torch import nn

from .curvature import Curvature
from .estimator import GridEstimator, check_labels
from .fitting import FisherPass, Forward, check_logits, make_plan
from .labels import Exact, LabelMode
from .layout import ParamLayout


class SharedFactor(LabelMode):
    r"""One factor :math:`L` ``[C, K]`` for every input: :math:`S_n = L` (``SS^\top = LL^\top``)."""

    name = "exact"

    def __init__(self, factor: torch.Tensor) -> None:
        self.shared = factor

    def columns(self, n_classes: int) -> int:
        """The factor's K columns."""
        return self.shared.shape[1]

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        r""":math:`L^\top` for each of the n inputs, as ``[K, n, C]``."""
        n = logits.shape[0]
        return self.shared.T.unsqueeze(1).expand(-1, n, -1).to(logits.dtype)


def mean_output_curvature(
    model: nn.Module, forward: Forward, inputs: torch.Tensor, step: int
) -> torch.Tensor:
    r""":math:`\bar H = \operatorname{mean}_n (\operatorname{diag}(p_n) - p_n p_n^\top)` ``[C, C]``.

    From the ``exact`` mode's factor (:math:`S_n S_n^\top = H_n`, no cancellation for confident
    predictions), ``step`` inputs per forward, no graph.
    """
    n = inputs.shape[0]
    total = None
    with torch.no_grad():
        for start in range(0, n, step):
            chunk = inputs[start : start + step]
            logits = check_logits(forward(model, chunk), chunk.shape[0])
            s = Exact().factor(logits, None)  # [C, n, C]
            part = torch.einsum("knc,knd->cd", s, s)
            total = part if total is None else total + part
    assert total is not None
    return total / n


def symmetric_root(h: torch.Tensor) -> torch.Tensor:
    r""":math:`L = V \max(\Lambda, 0)^{1/2}` for :math:`h = V \Lambda V^\top`.

    :math:`L L^\top = h` up to the clamped (rounding-sized) negative eigenvalues.
    """
    vals, vecs = torch.linalg.eigh((h + h.T) / 2)
    return vecs * vals.clamp_min(0).sqrt()


def fit_mean_output(
    estimator: GridEstimator,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    layout: ParamLayout,
) -> Curvature:
    r""":math:`F_{avg}` with ``estimator``'s accumulator, forward and options (module docstring).

    Refuses for memory (the accumulator's ``check_memory``) before computing anything.
    """
    n = inputs.shape[0]
    plan = make_plan(model, estimator.forward, inputs[:1], layout)
    check_labels(targets, plan.n_classes)
    options = estimator.options
    estimator.accumulator.check_memory(layout, plan.n_classes, n, options)
    h_bar = mean_output_curvature(model, estimator.forward, inputs, options["chunk_size"])
    fisher_pass = FisherPass(model, estimator.forward, SharedFactor(symmetric_root(h_bar)), plan, n)
    acc = estimator.accumulator(layout, plan, fisher_pass.columns, n, options)
    step = acc.chunk_size()
    for start in range(0, n, step):
        acc.update(fisher_pass.capture(inputs[start : start + step], None))
    return acc.result()
