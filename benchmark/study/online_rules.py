r"""How far each online KFAC rule is from the exact online sum of the tasks' Kronecker blocks.

For per-task KFAC fits :math:`F_t` (blocks :math:`G_t \otimes A_t`) and the online decay
:math:`\gamma`, the exact online curvature of a layer is :math:`S = \sum_t d_t G_t \otimes A_t`
with :math:`d_t = \gamma^{T-t}`. Each ``online_rule`` (``estimators.kfac_online``) is run as
online EWC runs it (``Curvature.add``, one task at a time) and its blocks are compared with S:

.. math::
    e_{rule} = \frac{\|S - F_{rule}\|_F}{\|S\|_F}

over the Kronecker blocks of every layer (``rule_errors``) or of each layer (``layer_errors``);
the other parameters' exact diagonals add exactly under every rule and are left out. No
:math:`P \times P` matrix is formed: a rule's block is a list of Kronecker terms
(:math:`T` for ``sum``, one otherwise), and for
:math:`D = \sum_k c_k G_k \otimes A_k` (S's terms with :math:`c_k = 1`, the rule's with
:math:`c_k = -1`, the decay folded into :math:`G_k`),

.. math::
    \|D\|_F^2 = \sum_{k, l} c_k c_l \langle G_k, G_l \rangle \langle A_k, A_l \rangle
    = c^\top (K_G \circ K_A) c,

from the Gram matrices of the factors (:math:`\langle G \otimes A, G' \otimes A' \rangle =
\langle G, G' \rangle \langle A, A' \rangle`). ``sum`` is S itself: its error is rounding
(about :math:`10^{-8}` relative, from the cancellation in :math:`\|D\|_F^2`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from estimators import Curvature, KFACCurvature
from estimators.kfac_online import with_rule
from estimators.online_sum import SumCurvature
from estimators.options import ONLINE_RULES

Terms = tuple[torch.Tensor, torch.Tensor]
"""A block's Kronecker terms: stacked ``A`` ``[K, a, a]`` and weighted ``G`` ``[K, g, g]``."""


def rule_errors(
    fits: Sequence[KFACCurvature], decay: float = 1.0, rules: Sequence[str] = ONLINE_RULES
) -> dict[str, float]:
    r"""Each rule's relative Frobenius error to the exact online sum, over all Kronecker blocks.

    Args:
        fits: one ``kfac-*`` fit per task, oldest first, all with the same blocks (any
            ``online_rule``: each rule relabels them).
        decay: the online decay :math:`\gamma` in [0, 1].
        rules: the rules to measure (``estimators.options.ONLINE_RULES`` by default).

    Raises:
        ValueError: no fits, a fit that is not KFAC, or an unknown rule (names the allowed).
    """
    per_layer = _squared_errors(fits, decay, rules)
    exact = sum(norm for norm, _ in per_layer.values())
    return {
        rule: math.sqrt(sum(errs[rule] for _, errs in per_layer.values()) / exact)
        if exact > 0
        else 0.0
        for rule in rules
    }


def layer_errors(
    fits: Sequence[KFACCurvature], decay: float = 1.0, rules: Sequence[str] = ONLINE_RULES
) -> dict[str, dict[str, float]]:
    """``rule -> layer (module name) -> relative Frobenius error`` (as ``rule_errors``)."""
    per_layer = _squared_errors(fits, decay, rules)
    return {
        rule: {
            layer: math.sqrt(errs[rule] / norm) if norm > 0 else 0.0
            for layer, (norm, errs) in per_layer.items()
        }
        for rule in rules
    }


def _squared_errors(
    fits: Sequence[KFACCurvature], decay: float, rules: Sequence[str]
) -> dict[str, tuple[float, dict[str, float]]]:
    """``layer -> (||S||_F^2, rule -> ||S - F_rule||_F^2)`` over its Kronecker block."""
    if not fits or not all(isinstance(f, KFACCurvature) for f in fits):
        raise ValueError(
            "rule_errors needs one kfac-* fit (a KFACCurvature) per task, at least one"
        )
    unknown = [r for r in rules if r not in ONLINE_RULES]
    if unknown:
        raise ValueError(f"unknown online rule(s) {unknown}; valid: {', '.join(ONLINE_RULES)}")
    weights = [decay ** (len(fits) - 1 - t) for t in range(len(fits))]
    combined = {rule: _fold([with_rule(f, rule) for f in fits], decay) for rule in rules}
    out = {}
    for b, name in enumerate(_layer_names(fits[0])):
        tasks = zip(fits, weights, strict=True)
        exact = _stack([(f.blocks[b].A, w * f.blocks[b].G) for f, w in tasks])
        errors = {rule: _difference_sq(exact, _block_terms(c, b)) for rule, c in combined.items()}
        out[name] = (_difference_sq(exact, None), errors)
    return out


def _fold(fits: Sequence[Curvature], decay: float) -> Curvature:
    """Online accumulation as ``estimators.EWC`` does it: ``old.add(new, decay)``, in order."""
    total = fits[0]
    for fit in fits[1:]:
        total = total.add(fit, decay)
    return total


def _block_terms(curvature: Curvature, b: int) -> Terms:
    """Block ``b`` of a combined curvature as Kronecker terms: T for ``sum``, else one."""
    if isinstance(curvature, SumCurvature):
        terms = zip(curvature.terms, curvature.weights, strict=True)
        return _stack([(t.blocks[b].A, w * t.blocks[b].G) for t, w in terms])
    assert isinstance(curvature, KFACCurvature)
    return _stack([(curvature.blocks[b].A, curvature.blocks[b].G)])


def _stack(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Terms:
    return torch.stack([a for a, _ in pairs]).double(), torch.stack([g for _, g in pairs]).double()


def _difference_sq(exact: Terms, rule: Terms | None) -> float:
    r""":math:`\|S - F\|_F^2 = c^\top (K_G \circ K_A) c` (module docstring).

    ``rule`` None: :math:`\|S\|_F^2`.
    """
    a, g = exact
    c = torch.ones(a.shape[0], dtype=torch.float64)
    if rule is not None:
        a, g = torch.cat([a, rule[0]]), torch.cat([g, rule[1]])
        c = torch.cat([c, -torch.ones(rule[0].shape[0], dtype=torch.float64)])
    gram = torch.einsum("sij,tij->st", a, a) * torch.einsum("sij,tij->st", g, g)
    return max(0.0, float(c @ gram @ c))


def _layer_names(fit: KFACCurvature) -> list[str]:
    """Each block's module name, read off the layout name of its weight slice."""
    by_start = {fit.layout.slice(n).start: n for n in fit.layout.names}
    return [by_start[blk.weight.start].rpartition(".")[0] for blk in fit.blocks]
