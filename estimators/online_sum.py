r"""The ``sum`` online rule: online EWC over Kronecker-factored curvatures kept as per-task terms.

A sum of Kronecker products is not a Kronecker product, so the exact online curvature of
``kfac-*`` and ``ekfac-*`` fits (``online_rule = 'sum'``) is kept as the list of its terms,

.. math::
    \tilde F_T = \sum_{t \le T} \gamma^{T - t} F_t, \qquad
    \tilde F_T v = \sum_t \gamma^{T - t} F_t v,

each term in its own closed form: for a KFAC block :math:`\sum_t \gamma^{T-t} G_t D A_t` on the
layer's :math:`D = [\Delta W \mid \Delta b]` (the penalty gradient of Ritter et al., 2018, who
keep the per-task Kronecker factors of the online Laplace posterior), for an EKFAC block
:math:`\sum_t \gamma^{T-t} Q_{G,t} (S_t \circ Q_{G,t}^\top D Q_{A,t}) Q_{A,t}^\top`. Memory and the
cost of a penalty step grow linearly with the number of tasks (as separate mode's, with one
anchor instead of T). Inner products and norms follow from bilinearity and each term's own
closed forms: :math:`\langle \sum_s w_s F_s, \sum_t w'_t F'_t \rangle = \sum_{s,t} w_s w'_t
\langle F_s, F'_t \rangle`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import NotImplementedType
from typing import Any

import torch

from .curvature import Curvature
from .registry import OnlineRule, OptionCheck

SUM_HINT = "pass online_rule='sum' to keep one term per task"
"""What a structure that takes only ``sum`` adds to its refusal."""


class SumCurvature(Curvature):
    r""":math:`\sum_t w_t F_t` over per-task curvatures of one structure and rule ``sum``.

    Args:
        terms: the per-task curvatures, oldest first, all over one layout.
        weights: :math:`w_t` (the decay products :math:`\gamma^{T-t}`), one per term.
    """

    inner_cost = 3

    def __init__(self, terms: Sequence[Curvature], weights: Sequence[float]) -> None:
        if not terms or len(terms) != len(weights):
            raise ValueError(
                f"a sum needs one weight per term and at least one term, got {len(terms)} terms "
                f"and {len(weights)} weights"
            )
        first = terms[0]
        super().__init__(first.layout, max(t.memory_budget for t in terms))
        self.terms = list(terms)
        self.weights = [float(w) for w in weights]
        self.structure = f"{first.structure}-sum"
        self.online_rule = "sum"

    @property
    def summary(self) -> str:
        """``kfac online sum of 3 tasks``."""
        return f"{self.terms[0].summary} of {len(self.terms)} tasks"

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(m)
        for w, term in zip(self.weights, self.terms, strict=True):
            out.add_(term._matmat(m), alpha=w)
        return out

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=d.dtype, device=d.device)
        for w, term in zip(self.weights, self.terms, strict=True):
            total = total + w * term._quadratic(d)
        return total

    def diagonal_flat(self) -> torch.Tensor:
        r""":math:`\sum_t w_t \operatorname{diag}(F_t)`."""
        out = torch.zeros(self.numel, dtype=self.layout.dtype, device=self.layout.device)
        for w, term in zip(self.weights, self.terms, strict=True):
            out.add_(term.diagonal_flat(), alpha=w)
        return out

    def _dense(self) -> torch.Tensor:
        p, layout = self.numel, self.layout
        out = torch.zeros(p, p, dtype=layout.dtype, device=layout.device)
        for w, term in zip(self.weights, self.terms, strict=True):
            out.add_(term._dense(), alpha=w)
        return out

    @property
    def nbytes(self) -> int:
        """Every term's tensors: memory grows with the number of tasks."""
        return sum(t.nbytes for t in self.terms)

    def frobenius_sq(self) -> float:
        r""":math:`\sum_{s,t} w_s w_t \langle F_s, F_t \rangle` (each pair in closed form)."""
        return sum(
            ws * wt * self.terms[s].inner(self.terms[t])
            for s, ws in enumerate(self.weights)
            for t, wt in enumerate(self.weights)
        )

    def _inner(self, other: Curvature) -> float | NotImplementedType:
        r""":math:`\sum_t w_t \langle F_t, G \rangle`: bilinearity, each term's own closed form."""
        return sum(w * term.inner(other) for w, term in zip(self.weights, self.terms, strict=True))

    def _add(self, other: Curvature, decay: float) -> Curvature | NotImplementedType:
        """``decay * self + other`` (``extended``)."""
        return self.extended(other, decay)

    def extended(self, other: Curvature, decay: float) -> SumCurvature:
        r"""``decay * self + other``: the weights times ``decay``, ``other``'s terms appended.

        ``other`` must be a fit of the same structure with rule ``sum`` (or such a sum). A zero
        decay forgets the old terms (their memory too).

        Raises:
            ValueError: ``other`` is of another structure or rule (names both).
        """
        new_terms = other.terms if isinstance(other, SumCurvature) else [other]
        new_weights = other.weights if isinstance(other, SumCurvature) else [1.0]
        first = self.terms[0]
        if any(type(t) is not type(first) or t.online_rule != "sum" for t in new_terms):
            raise ValueError(
                f"cannot add a {other.structure} curvature (online_rule {other.online_rule!r}) "
                f"to an online sum of {first.structure} terms: every task must be fitted by the "
                "same estimator with online_rule='sum'"
            )
        kept = [] if decay == 0 else list(zip(self.terms, self.weights, strict=True))
        terms = [t for t, _ in kept] + list(new_terms)
        weights = [decay * w for _, w in kept] + list(new_weights)
        return SumCurvature(terms, weights)


def start_sum(first: Curvature, other: Curvature, decay: float) -> SumCurvature:
    """``decay * first + other`` for two per-task fits with rule ``sum`` (the first online step)."""
    return SumCurvature([first], [1.0]).extended(other, decay)


def add_terms(first: Curvature, other: Curvature, decay: float) -> Curvature | NotImplementedType:
    """``_add`` of a structure that adds online by ``sum`` only: ``start_sum`` of two fits.

    ``NotImplemented`` unless ``first`` has rule ``sum`` and ``other`` is of its class.
    """
    if first.online_rule != "sum" or type(other) is not type(first):
        return NotImplemented
    return start_sum(first, other, decay)


def sum_only_online(refusal: str) -> OnlineRule:
    """Registry online rule: online with ``online_rule = 'sum'``, else ``refusal`` and the hint."""

    def rule(options: Mapping[str, Any]) -> str | None:
        return None if options["online_rule"] == "sum" else f"{refusal}; {SUM_HINT}"

    return rule


def sum_only_check(structure: str, why: str) -> OptionCheck:
    """Registry option check: ``online_rule`` other than ``sum`` is refused, saying ``why``."""

    def check(options: Mapping[str, Any]) -> None:
        rule = options["online_rule"]
        if rule not in (None, "sum"):
            raise ValueError(
                f"option 'online_rule' {rule!r} is not defined for {structure}: {why}, so the "
                f"rules that average, balance or re-fit factors do not apply; {structure} takes "
                "online_rule 'sum' (one term per task) only"
            )

    return check
