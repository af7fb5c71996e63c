r"""The EWC penalty, for every estimator: a quadratic form on curvature objects.

Separate mode (Kirkpatrick et al., 2017) keeps one term per past task t,

.. math::
    \Omega(\theta) = \frac{\lambda}{2} \sum_t (\theta - \theta_t)^\top F_t (\theta - \theta_t),

online mode (Schwarz et al., 2018) keeps one term whose curvature is decayed and accumulated,
:math:`\tilde F_t = \gamma \tilde F_{t-1} + F_t`, anchored at the latest :math:`\theta_t`.
``l2`` is the same penalty with :math:`F = I`. Because every estimator's F is the mean of
per-input Fisher matrices, one lambda means the same thing for all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from estimators import Curvature


class EWCPenalty:
    """Anchors and curvatures of past tasks; calling it gives the penalty (a 0-dim tensor)."""

    def __init__(self, lam: float, mode: str = "separate", gamma: float = 1.0) -> None:
        self.lam = lam
        self.mode = mode
        self.gamma = gamma
        self.terms: list[tuple[dict[str, torch.Tensor], Curvature]] = []

    def __bool__(self) -> bool:
        return bool(self.terms)

    def consolidate(self, model: nn.Module, curvature: Curvature) -> None:
        """Add the task just learned: anchor at the current parameters, with ``curvature``."""
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if self.mode == "online" and self.terms:
            curvature = self.terms[0][1].add(curvature, self.gamma)
            self.terms = [(anchor, curvature)]
        else:
            self.terms.append((anchor, curvature))

    def __call__(self, model: nn.Module) -> torch.Tensor:
        r""":math:`\frac{\lambda}{2}\sum_t (\theta-\theta_t)^\top F_t (\theta-\theta_t)`."""
        params = dict(model.named_parameters())
        total = None
        for anchor, curvature in self.terms:
            q = curvature.quadratic({n: params[n] - a for n, a in anchor.items()})
            total = q if total is None else total + q
        if total is None:
            return torch.zeros((), device=next(model.parameters()).device)
        return 0.5 * self.lam * total

    def add_gradients(self, model: nn.Module) -> None:
        r"""Add the penalty's gradient :math:`\lambda \sum_t F_t (\theta - \theta_t)` to ``.grad``.

        Call after the loss's ``backward()``: the same gradient as differentiating ``self(model)``,
        without recording the quadratic forms (``Curvature.accumulate_penalty_grad``). Trainable
        parameters without a gradient yet get one.
        """
        params = dict(model.named_parameters())
        with torch.no_grad():
            for anchor, curvature in self.terms:
                names = curvature.layout.names
                ps = [params[n] for n in names]
                for p in ps:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                curvature.accumulate_penalty_grad(
                    [p.detach() for p in ps],
                    [anchor[n] for n in names],
                    [p.grad for p in ps],
                    self.lam,
                )

    @property
    def nbytes(self) -> int:
        """Bytes held by all curvature terms."""
        return sum(c.nbytes for _, c in self.terms)
