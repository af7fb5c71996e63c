r"""Online EWC with Kronecker-factored curvatures: the ``online_rule`` option of ``kfac-*``.

Online EWC (Schwarz et al., 2018) keeps one running curvature :math:`\tilde F_T = \gamma
\tilde F_{T-1} + F_T` and one anchor. For KFAC the exact target is, per layer block,

.. math::
    S_T = \sum_{t \le T} d_t \, G_t \otimes A_t, \qquad d_t = \gamma^{T-t},

which is not a Kronecker product. ``online_rule`` chooses how tasks combine (the non-Kronecker
parameters' exact diagonals always add exactly, :math:`\gamma r_{T-1} + r_T`):

``sum``
    :math:`S_T` itself, kept as per-task terms (``online_sum.SumCurvature``; Ritter et al., 2018,
    "Online structured Laplace approximations for overcoming catastrophic forgetting"): a
    penalty step costs :math:`\sum_t d_t G_t D A_t`, memory grows with T.
``n-weighted``
    Both factors averaged with the discounted sample counts :math:`c_t = d_t n_t` (:math:`n_t`
    the inputs task t's curvature was fitted on) and scaled by the discounted task count,

    .. math::
        \bar A = \frac{\sum_t c_t A_t}{\sum_t c_t}, \quad
        \bar G = \frac{\sum_t c_t G_t}{\sum_t c_t}, \qquad
        F = \Big(\sum_t d_t\Big) \bar G \otimes \bar A.

    This is laplace-torch's ``KronLaplace.fit(override=False)`` (Immer, Daxberger et al.: the
    old and new factors are rescaled by :math:`n_{old} / (n_{old} + n_{new})` and
    :math:`n_{new} / (n_{old} + n_{new})` and added) with its total moved from a sum over data
    points, :math:`(\sum_t n_t) \bar G \otimes \bar A \approx \sum_t n_t F_t`, to this benchmark's
    sum over tasks of per-task mean Fishers. Recursively: :math:`m_T = \gamma m_{T-1} + n_T`,
    :math:`\bar A_T = (\gamma m_{T-1} \bar A_{T-1} + n_T A_T) / m_T` (and :math:`\bar G`),
    :math:`s_T = \gamma s_{T-1} + 1`; the block stores :math:`\bar A_T` and :math:`s_T \bar G_T`.
``balanced``
    The :math:`\pi`-balanced factor sum of Natural Continual Learning (Kao et al., 2021; van de
    Ven's continual-learning repository, ``models/utils/ncl.py::additive_nearest_kf``), with the
    decayed old term :math:`(\gamma A_o) \otimes G_o` and the new one :math:`A_n \otimes G_n`:

    .. math::
        \pi = \sqrt{\frac{\operatorname{tr} G_o \operatorname{tr} A_n}
                         {\operatorname{tr} G_n \operatorname{tr} (\gamma A_o)}}, \quad
        A = \gamma A_o + A_n / \pi, \quad G = G_o + \pi G_n,

    i.e. the new term rescaled (:math:`A_n/\pi \otimes \pi G_n` is the same matrix) so that its
    factors have the old term's trace ratio, as Martens & Grosse (2015, section 6.3) balance the
    factored Tikhonov term :math:`(A + \pi\sqrt\lambda I) \otimes (G + \sqrt\lambda/\pi I)`.
    The factor sum adds the cross terms :math:`A_o \otimes G_n / \pi` and :math:`\pi A_n
    \otimes G_o` (two equal tasks give :math:`4 A \otimes G`, twice the exact sum), so here it
    is rescaled by :math:`c = (\operatorname{tr}(\gamma A_o) \operatorname{tr} G_o +
    \operatorname{tr} A_n \operatorname{tr} G_n) / (\operatorname{tr} A \operatorname{tr} G)`
    (:math:`\sqrt c` on each factor): :math:`\operatorname{tr} F` equals the exact running
    sum's trace, and equal factors give the exact sum. A term with a zero factor (e.g. a head
    the task never ran) leaves the other term unchanged, as in NCL.
``nearest``
    The Frobenius-nearest Kronecker product of :math:`S_T` (Van Loan & Pitsianis, 1993): with the
    rearrangement :math:`\mathcal R(G \otimes A) = \operatorname{vec} G \operatorname{vec}
    A^\top`, :math:`\|S_T - G \otimes A\|_F = \|\mathcal R(S_T) - \operatorname{vec} G
    \operatorname{vec} A^\top\|_F` is minimised by the top singular pair of
    :math:`\mathcal R(S_T) = V^\top U` (rows :math:`\operatorname{vec}(d_t G_t)` of V and
    :math:`\operatorname{vec} A_t` of U). It is found without forming :math:`\mathcal R`
    (``nearest_kronecker``): from the T x T Grams :math:`K_U = U U^\top = E_U \Lambda_U
    E_U^\top` and :math:`K_V`, :math:`\mathcal R = Q_V (\Lambda_V^{1/2} E_V^\top E_U
    \Lambda_U^{1/2}) Q_U^\top` with orthonormal :math:`Q_U = U^\top E_U \Lambda_U^{-1/2}`, so
    the top singular pair :math:`(\sigma, y, x)` of the small middle matrix gives
    :math:`A = \sqrt\sigma \sum_t \alpha_t A_t`, :math:`\alpha = E_U \Lambda_U^{-1/2} x` (and G
    with :math:`\beta = E_V \Lambda_V^{-1/2} y`), signs chosen so that :math:`\operatorname{tr}
    A \ge 0`. Cost :math:`O(T^2 (a^2 + g^2))` per layer. The penalty is one Kronecker product per
    layer, but the refit needs every task's factors, which the curvature keeps (``OnlineState``;
    memory grows with T as ``sum``'s does).

Every rule equals :math:`S_T` when all tasks have equal factors (:math:`A_t = A`, :math:`G_t = G`),
and ``nearest`` is never further from :math:`S_T` in Frobenius norm than the other single
products. EKFAC takes ``sum`` only (``ekfac``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .curvature import Curvature
from .linalg import eigh
from .online_sum import start_sum
from .options import ONLINE_RULES

KFACCurvature = Curvature
"""The annotation of this module's KFAC arguments (``kfac.KFACCurvature``, a ``Curvature``):
kfac builds on this module (``KFACCurvature._add``), so it cannot import kfac back."""


@dataclass(frozen=True)
class OnlineState:
    r"""What a combined KFAC curvature needs to take the next task.

    Attributes:
        scale: :math:`s_T = \sum_t d_t`, the discounted number of tasks (``n-weighted``).
        mass: :math:`m_T = \sum_t d_t n_t`, the discounted number of inputs (``n-weighted``).
        history: per block, the stacked :math:`(A_t, d_t G_t)` of every task, ``[T, a, a]`` and
            ``[T, g, g]`` (``nearest``; empty for the other rules).
    """

    scale: float = 1.0
    mass: float = 0.0
    history: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of the kept factors."""
        return sum(t.numel() * t.element_size() for pair in self.history for t in pair)


# -- the rules on one layer's factors --------------------------------------------------------------
def n_weighted(
    old: tuple[torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor],
    state: OnlineState,
    n_new: int,
    decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n-weighted``: the block's new :math:`(\bar A_T, s_T \bar G_T)`.

    From the stored :math:`(\bar A_{T-1}, s_{T-1} \bar G_{T-1})`, ``state`` (:math:`s_{T-1},
    m_{T-1}`) and the new fit (module docstring).
    """
    (a_old, g_old), (a_new, g_new) = old, new
    old_mass = decay * state.mass
    mass, scale = old_mass + n_new, decay * state.scale + 1.0
    a = (old_mass * a_old + n_new * a_new) / mass
    g = (old_mass * g_old / state.scale + n_new * g_new) / mass
    return a, scale * g


def balanced(
    old: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``balanced``: NCL's :math:`\pi`-balanced factor sum, trace-matched.

    Of :math:`\gamma A_o \otimes G_o` and :math:`A_n \otimes G_n` (module docstring).
    """
    (a_old, g_old), (a_new, g_new) = old, new
    a_old = decay * a_old
    t_ao, t_go = float(a_old.trace()), float(g_old.trace())
    t_an, t_gn = float(a_new.trace()), float(g_new.trace())
    if t_ao * t_go <= 0:  # the old term is zero: the sum is the new one
        return a_new.clone(), g_new.clone()
    if t_an * t_gn <= 0:
        return a_old, g_old.clone()
    pi = math.sqrt(t_go * t_an / (t_gn * t_ao))
    a, g = a_old + a_new / pi, g_old + pi * g_new
    root_c = math.sqrt((t_ao * t_go + t_an * t_gn) / (float(a.trace()) * float(g.trace())))
    return root_c * a, root_c * g


def nearest_kronecker(
    a_terms: torch.Tensor, g_terms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(A, G)`` minimising :math:`\|\sum_t G_t \otimes A_t - G \otimes A\|_F`.

    ``a_terms`` ``[T, a, a]`` and ``g_terms`` ``[T, g, g]`` (weights folded in); through the
    T x T Grams only (module docstring), never the ``[g^2, a^2]`` rearranged matrix.
    """
    u, v = a_terms.reshape(a_terms.shape[0], -1), g_terms.reshape(g_terms.shape[0], -1)
    vec_u, root_u = _gram_basis(u @ u.T)
    vec_v, root_v = _gram_basis(v @ v.T)
    if root_u.numel() == 0 or root_v.numel() == 0:  # every term is zero
        return torch.zeros_like(a_terms[0]), torch.zeros_like(g_terms[0])
    middle = root_u.unsqueeze(1) * (vec_u.T @ vec_v) * root_v.unsqueeze(0)
    x, sigma, yt = torch.linalg.svd(middle)
    coef_u, coef_v = vec_u / root_u, vec_v / root_v
    alpha, beta = coef_u @ x[:, 0], coef_v @ yt[0]  # Q_U x = U^T alpha, Q_V y = V^T beta
    a = torch.einsum("t,tij->ij", alpha, a_terms)
    g = torch.einsum("t,tij->ij", beta, g_terms)
    sign = -1.0 if float(a.trace()) < 0 else 1.0
    root = math.sqrt(float(sigma[0]))
    return sign * root * a, sign * root * g


def _gram_basis(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""For :math:`K = U U^\top`: ``(E, Lambda^{1/2})`` over its nonzero eigenvalues.

    Then :math:`Q = U^\top E \Lambda^{-1/2}` has orthonormal columns and :math:`U^\top = Q
    \Lambda^{1/2} E^\top` (the dropped directions e have :math:`U^\top e = 0`).
    """
    values, vectors = eigh(gram)
    floor = float(values.abs().max()) * gram.shape[0] * torch.finfo(gram.dtype).eps
    keep = values > floor
    return vectors[:, keep], values[keep].sqrt()


# -- whole curvatures ------------------------------------------------------------------------------
def combine(old: KFACCurvature, new: KFACCurvature, decay: float) -> Curvature:
    """``decay * old + new`` by their rule; ``old`` is a fit or a combination, ``new`` a fit.

    Raises:
        ValueError: different rules or Kronecker blocks, or ``n-weighted`` without sample counts.
    """
    rule = _check_pair(old, new)
    if rule == "sum":
        return start_sum(old, new, decay)
    state = old.online_state or _first_state(old, rule)
    blocks, history = [], []
    for i, (x, y) in enumerate(zip(old.blocks, new.blocks, strict=True)):
        if rule == "n-weighted":
            n_new = int(new.n_inputs or 0)
            a, g = n_weighted((x.A, x.G), (y.A, y.G), state, n_new, decay)
        elif rule == "balanced":
            a, g = balanced((x.A, x.G), (y.A, y.G), decay)
        else:  # nearest: refit to every task's factors, kept in the state
            kept_a, kept_g = state.history[i] if decay != 0 else (x.A[None][:0], x.G[None][:0])
            terms = (torch.cat([kept_a, y.A[None]]), torch.cat([decay * kept_g, y.G[None]]))
            a, g = nearest_kronecker(*terms)
            history.append(terms)
        blocks.append(replace(x, A=a, G=g))
    n_new = float(new.n_inputs or 0)
    next_state = OnlineState(
        scale=decay * state.scale + 1.0, mass=decay * state.mass + n_new, history=tuple(history)
    )
    return type(old)(
        old.layout,
        blocks,
        old.rest_index,
        decay * old.rest_diag + new.rest_diag,
        max(old.memory_budget, new.memory_budget),
        old.variant,
        online_rule=rule,
        online_state=next_state,
    )


def _first_state(fit: KFACCurvature, rule: str) -> OnlineState:
    """The state of one task's fit: one task, its inputs, its own factors as the history."""
    history = tuple((b.A[None], b.G[None]) for b in fit.blocks) if rule == "nearest" else ()
    return OnlineState(scale=1.0, mass=float(fit.n_inputs or 0), history=history)


def _check_pair(old: KFACCurvature, new: KFACCurvature) -> str:
    """The common rule of ``old`` and ``new``.

    Raises:
        ValueError: another rule, other blocks, or a missing sample count (says which).
    """
    if new.online_rule != old.online_rule or new.online_state is not None:
        raise ValueError(
            f"online KFAC adds one task's fit at a time to a running curvature of rule "
            f"{old.online_rule!r}; got a curvature of rule {new.online_rule!r}"
            + (" that is itself a combination" if new.online_state is not None else "")
        )
    if not old._same_blocks(new):
        raise ValueError(
            "online KFAC needs every task's Kronecker blocks on the same layers (the same "
            "'layers' option and model); these two curvatures have different blocks"
        )
    unknown = new.n_inputs is None or (old.online_state is None and old.n_inputs is None)
    if old.online_rule == "n-weighted" and unknown:
        raise ValueError(
            "online_rule 'n-weighted' weights tasks by their sample counts, and a curvature has "
            "none (KFACCurvature.n_inputs: set by fit, None when built by hand)"
        )
    rule = old.online_rule
    if rule not in ONLINE_RULES:
        raise ValueError(f"unknown online_rule {rule!r}; valid: {', '.join(ONLINE_RULES)}")
    return rule


def with_rule(curvature: KFACCurvature, rule: str) -> KFACCurvature:
    """A per-task fit relabelled with ``rule`` (the tensors are shared, not copied).

    Raises:
        ValueError: an unknown rule (names the valid ones).
    """
    if rule not in ONLINE_RULES:
        raise ValueError(f"unknown online_rule {rule!r}; valid: {', '.join(ONLINE_RULES)}")
    return type(curvature)(
        curvature.layout,
        curvature.blocks,
        curvature.rest_index,
        curvature.rest_diag,
        curvature.memory_budget,
        curvature.variant,
        online_rule=rule,
        n_inputs=curvature.n_inputs,
    )
