r"""``diag-batched``: the legacy estimator of the source tutorial and several libraries.

.. math::
    \hat F_{ii} = \frac{1}{B} \sum_{b=1}^{B}
    \Big(\partial_i \frac{1}{|b|}\sum_{n \in b} \ell_n\Big)^2

over consecutive mini-batches b of ``batch_size`` inputs (in the given order; the last may be
smaller), with the dataset labels. Squaring a mini-batch *mean* gradient is not a Fisher: when
per-input gradients are roughly uncorrelated it is about 1/batch_size of the empirical Fisher
(plus the squared mean gradient). Kept only to measure that bias. One ordinary backward per
mini-batch; nothing loops over inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .diag import DiagCurvature
from .estimator import Estimator, check_labels
from .fitting import check_logits
from .layout import ParamLayout
from .registry import Single, always_online


class BatchedDiagEstimator(Estimator):
    """Mean over mini-batches of the squared gradient of the mini-batch-mean loss."""

    needs_targets = True

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> DiagCurvature:
        assert targets is not None
        named = dict(model.named_parameters())
        params = [named[n] for n in layout.names]
        total = torch.zeros(layout.numel, dtype=layout.dtype, device=layout.device)
        n, size = inputs.shape[0], self.options["batch_size"]
        batches = 0
        for start in range(0, n, size):
            x, y = inputs[start : start + size], targets[start : start + size]
            logits = check_logits(self.forward(model, x), x.shape[0])
            check_labels(y, logits.shape[1])
            grads = torch.autograd.grad(F.cross_entropy(logits, y), params, allow_unused=True)
            flat = torch.cat(
                [
                    torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
            total += flat.square()
            batches += 1
        return DiagCurvature(layout, total / batches, self.options["memory_budget"])


DECLARATION = Single(
    "diag-batched",
    BatchedDiagEstimator,
    ("forward", "batch_size", "memory_budget"),
    always_online,
)
"""``diag-batched``: a diagonal, so it adds online like ``diag-*``."""
