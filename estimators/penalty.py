r"""The EWC penalty for any training loop: consolidate tasks, then add its gradient or its loss.

Separate mode (Kirkpatrick et al., 2017) keeps one term per consolidated task t,

.. math::
    \Omega(\theta) = \frac{\lambda}{2} \sum_t (\theta - \theta_t)^\top F_t (\theta - \theta_t),

online mode (Schwarz et al., 2018) keeps one term whose curvature is decayed and accumulated,
:math:`\tilde F_t = \gamma \tilde F_{t-1} + F_t`, anchored at the latest :math:`\theta_t` (for the
structures that can add: identity, diagonal, dense). With the identity curvature it is the L2
penalty to the old weights. Every estimator's F is the mean of per-input Fisher matrices, so one
lambda means the same thing for all of them.

Separate mode with dense curvatures keeps one merged term whatever the number of tasks, exactly:
with :math:`M = \sum_t F_t`, the latest anchor :math:`\theta_T`,
:math:`r = \sum_t F_t (\theta_T - \theta_t)` and
:math:`c = \sum_t (\theta_T - \theta_t)^\top F_t (\theta_T - \theta_t)`,

.. math::
    \sum_t (\theta - \theta_t)^\top F_t (\theta - \theta_t)
    = (\theta - \theta_T)^\top M (\theta - \theta_T) + 2 r^\top (\theta - \theta_T) + c,

so memory is one P x P matrix and a training step one matvec, instead of T of each (the dense
matrix of a later task is added in place: ``consolidate`` takes ownership of it).

Two ways to train with it, the same step up to rounding:

>>> ewc = EWC(lam=1000.0)                                  # doctest: +SKIP
>>> ewc.consolidate(model, curvature)                      # after a task  # doctest: +SKIP
>>> loss = F.cross_entropy(model(x), y) + ewc.loss(model)  # differentiable  # doctest: +SKIP
>>> loss.backward()                                        # doctest: +SKIP

or, cheaper (no autograd graph through the quadratic form), the closed-form gradient
:math:`\lambda \sum_t F_t (\theta - \theta_t)` added after the loss's own backward:

>>> F.cross_entropy(model(x), y).backward()                # doctest: +SKIP
>>> ewc.add_gradients(model)                               # doctest: +SKIP
>>> optimizer.step()                                       # doctest: +SKIP

``model`` may be an ``nn.Module`` or its ``named_parameters()`` (or any mapping or iterable of
``(name, tensor)`` pairs); the curvature's parameter names and shapes are checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .curvature import Curvature
from .full import DenseCurvature

Parameters = nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
MODES = ("separate", "online")


class EWC:
    """Anchors and curvatures of consolidated tasks; the penalty as a loss or as a gradient.

    Args:
        lam: penalty strength lambda >= 0 (finite).
        mode: ``separate`` (one term per task) or ``online`` (one decayed, accumulated term).
        gamma: online decay of the old curvature, in [0, 1].

    Raises:
        ValueError: a bad ``lam``, ``mode`` or ``gamma`` (says what is allowed).
    """

    def __init__(self, lam: float, mode: str = "separate", gamma: float = 1.0) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        self.lam = float(lam)
        self.mode = mode
        self.gamma = float(gamma)
        self.terms: list[tuple[dict[str, torch.Tensor], Curvature]] = []
        self.offsets: list[tuple[torch.Tensor, float] | None] = []
        """Per term, ``(r, c)`` of merged dense terms (module docstring), else None."""

    def __bool__(self) -> bool:
        return bool(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def consolidate(self, model: Parameters, curvature: Curvature) -> None:
        """Add the task just learned: anchor at the current parameters, with ``curvature``.

        In online mode the new curvature is added to the decayed old one
        (``old.add(new, gamma)``) and the anchor moves to the current parameters.

        Raises:
            ValueError: the curvature's parameters are not the model's (names or shapes), or
                separate mode with a curvature fitted with an ``online_rule``.
            NotImplementedError: online mode with a structure that cannot be added (KFAC or
                EKFAC without ``online_rule``, low-rank factors), saying why.
        """
        params = _named(model)
        _check(params, curvature)
        if self.mode == "separate" and curvature.online_rule is not None:
            raise ValueError(
                f"the curvature was fitted with online_rule={curvature.online_rule!r}, which says "
                "how online mode combines tasks; separate mode keeps one term per task: use "
                "mode='online', or fit without online_rule"
            )
        anchor = {n: params[n].detach().clone() for n in curvature.layout.names}
        if self.mode == "online" and self.terms:
            curvature = self.terms[0][1].add(curvature, self.gamma)
            self.terms = [(anchor, curvature)]
        elif self._merges(curvature):
            self._merge_dense(anchor, curvature)
        else:
            self.terms.append((anchor, curvature))
            self.offsets.append(None)

    def _merges(self, curvature: Curvature) -> bool:
        """Separate mode, a dense curvature after a dense term: fold it in (module docstring)."""
        return (
            self.mode == "separate"
            and isinstance(curvature, DenseCurvature)
            and len(self.terms) == 1
            and type(self.terms[0][1]) is DenseCurvature
            and curvature.layout == self.terms[0][1].layout
        )

    def _merge_dense(self, anchor: dict[str, torch.Tensor], curvature: DenseCurvature) -> None:
        r"""``M += F_T``, ``r += M_old \Delta``, ``c += 2 r_old^T \Delta + \Delta^T M_old \Delta``.

        :math:`\Delta = \theta_T - \theta_{T-1}` is the move of the anchor.
        """
        old_anchor, merged = self.terms[0]
        layout = merged.layout
        delta = layout.flatten(anchor) - layout.flatten(old_anchor)
        r, c = self.offsets[0] or (torch.zeros_like(delta), 0.0)
        moved = merged.matvec(delta)
        c = c + float(2.0 * torch.dot(r, delta) + torch.dot(delta, moved))
        curvature.matrix.add_(merged.matrix)  # the new task's matrix becomes M (in place)
        self.terms[0] = (anchor, curvature)
        self.offsets[0] = (r + moved, c)

    def loss(self, model: Parameters) -> torch.Tensor:
        r"""The penalty as a differentiable 0-dim tensor (zero before the first consolidation).

        :math:`\frac{\lambda}{2}\sum_t (\theta-\theta_t)^\top F_t (\theta-\theta_t)`.
        """
        named = _named(model)  # once: ``model`` may be a one-shot iterator
        total = None
        for (anchor, curvature), offset in zip(self.terms, self.offsets, strict=True):
            _check(named, curvature)
            delta = {n: named[n] - a for n, a in anchor.items()}
            q = curvature.quadratic(delta)
            if offset is not None:
                flat = torch.cat([delta[n].reshape(-1) for n in curvature.layout.names])
                q = q + 2.0 * torch.dot(offset[0], flat) + offset[1]
            total = q if total is None else total + q
        if total is None:
            first = next(iter(named.values()), None)
            return torch.zeros((), device=None if first is None else first.device)
        return 0.5 * self.lam * total

    __call__ = loss

    @torch.no_grad()
    def add_gradients(
        self, model: Parameters, grads: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        r"""Add the penalty's gradient :math:`\lambda \sum_t F_t (\theta - \theta_t)` to ``.grad``.

        Call after the loss's ``backward()``: the same gradient as differentiating
        ``self.loss(model)``, without recording the quadratic forms
        (``Curvature.accumulate_penalty_grad``: elementwise for diagonal and identity curvatures,
        one matrix-vector product otherwise). Parameters without a gradient yet get one.
        ``grads`` (name -> tensor) receives the gradient instead of the parameters' ``.grad``,
        e.g. views into the gradients of several runs stacked in one tensor.
        """
        named = _named(model)
        for (anchor, curvature), offset in zip(self.terms, self.offsets, strict=True):
            names = curvature.layout.names
            try:
                ps = [named[n] for n in names]
                gs = None if grads is None else [grads[n] for n in names]
            except KeyError:  # say which and why (the shapes are checked per call below)
                _check(named, curvature)
                if grads is not None:
                    _check(grads, curvature)
                raise
            if gs is None:
                for p in ps:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                gs = [p.grad for p in ps]
            curvature.accumulate_penalty_grad(
                [p.detach() for p in ps], [anchor[n] for n in names], gs, self.lam
            )
            if offset is not None:
                parts = curvature.layout.unflatten(offset[0]).values()
                torch._foreach_add_(gs, list(parts), alpha=self.lam)

    @property
    def nbytes(self) -> int:
        """Bytes held by all curvature terms and merged offsets (anchors not counted)."""
        offsets = sum(o[0].numel() * o[0].element_size() for o in self.offsets if o is not None)
        return sum(c.nbytes for _, c in self.terms) + offsets


def _named(model: Parameters) -> dict[str, torch.Tensor]:
    """``name -> tensor`` from a module, a mapping or an iterable of pairs."""
    if isinstance(model, nn.Module):
        return dict(model.named_parameters())
    return dict(model.items() if isinstance(model, Mapping) else model)


def _check(params: Mapping[str, torch.Tensor], curvature: Curvature) -> None:
    """Every parameter of the curvature's layout is in ``params``, with its shape.

    Raises:
        ValueError: naming the missing parameters, or the one whose shape differs.
    """
    layout = curvature.layout
    missing = [n for n in layout.names if n not in params]
    if missing:
        raise ValueError(
            f"the curvature covers parameter(s) {', '.join(map(repr, missing))} that the "
            f"given parameters lack (they have: {', '.join(map(repr, params)) or 'none'}); "
            "pass the model the curvature was fitted on, or its named_parameters()"
        )
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        got = tuple(params[name].shape)
        if got != tuple(shape):
            raise ValueError(
                f"parameter {name!r} has shape {got}, but the curvature was fitted with "
                f"shape {tuple(shape)}"
            )
