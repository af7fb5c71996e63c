r"""curvlinops (``curvlinops-for-pytorch``) KFAC and EKFAC, timed and checked beside ours.

``KFACLinearOperator`` and ``EKFACLinearOperator`` (curvlinops 3.x) are built with the settings
under which they approximate the same matrix as our ``kfac-*`` / ``ekfac-*``, block for block:

- ``CrossEntropyLoss(reduction='mean')`` on the batch of N inputs with ``num_data = N`` and
  ``num_per_example_loss_terms = 1``: curvlinops rescales the output gradients of the mean loss
  (which carry :math:`1/N`) by :math:`N^2 / N`, so that :math:`G = \frac1N \sum_n \sum_k g_{nk}
  g_{nk}^\top` with unscaled per-input gradients, and :math:`A = \frac1N \sum_n \bar a_n \bar
  a_n^\top`: our means, so :math:`G \otimes A` is our block (and the factors are ours one by one).
- ``separate_weight_and_bias=False``: the bias is the extra input column of A, our
  :math:`[W \mid b]` layout (the default ``True`` would drop the weight-bias cross terms and give
  the bias block :math:`G` alone; the diagonal would not change, the matrix would).
- ``fisher_type``: ``type-2`` (the loss Hessian's square root columns: our ``exact``), ``mc`` with
  ``mc_samples=1`` (one sampled label per input: our ``mc``, from its own seeded generator) and
  ``empirical`` (the observed labels: our ``empirical``).
- ``kfac_approx='expand'``: for ``nn.Linear`` on ``[N, d]`` inputs there is no weight-sharing
  dimension, so ``expand`` and ``reduce`` give the same factors.

With ``check_deterministic=False`` the operators compute nothing at construction (the default
``True`` runs two loss and gradient passes and two products, the first of which computes the
factors as a side effect of the check), and the factors are computed lazily at the first product.
The timed fit therefore constructs the operator and calls ``compute_kronecker_factors()`` (and, for
EKFAC, ``compute_eigenvalue_correction()``, which takes the factors' eigenvectors and makes the
second pass over the data), so that nothing is deferred past the timed call (a test replaces both
methods after the fit and multiplies). The diagonal is read from ``state_dict()`` outside it:
KFAC's ``input_covariances`` / ``gradient_covariances`` (:math:`A`, :math:`G`), EKFAC's
eigenvectors and ``corrected_eigenvalues`` (:math:`Q_A`, :math:`Q_G`, :math:`S` as
``[d_out, d_in + 1]``), all keyed by module name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .compare_common import External, eigen_block_diagonal, kron_block_diagonal, layer_diagonals

FISHER_TYPE = {"exact": "type-2", "mc": "mc", "empirical": "empirical"}
"""Our label mode -> curvlinops' ``fisher_type``."""


def curvlinops_operator(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, eigen: bool = False
) -> Any:
    """The KFAC (or, with ``eigen``, EKFAC) operator of ``model`` on ``(x, y)``, fully computed."""
    from curvlinops import EKFACLinearOperator, KFACLinearOperator

    operator_class = EKFACLinearOperator if eigen else KFACLinearOperator
    operator = operator_class(
        model,
        nn.CrossEntropyLoss(reduction="mean"),
        list(model.parameters()),
        [(x, y)],
        check_deterministic=False,
        fisher_type=FISHER_TYPE[mode],
        mc_samples=1,
        kfac_approx="expand",
        num_per_example_loss_terms=1,
        separate_weight_and_bias=False,
        num_data=x.shape[0],
    )
    operator.compute_kronecker_factors()
    if eigen:
        operator.compute_eigenvalue_correction()
    return operator


def kfac_diagonal(operator: Any, model: nn.Module) -> torch.Tensor:
    r"""The flat diagonal of a computed ``KFACLinearOperator``: per layer diag(G) diag(A)^T."""
    state = operator.state_dict()
    a, g = state["input_covariances"], state["gradient_covariances"]
    return layer_diagonals(model, {name: kron_block_diagonal(g[name], a[name]) for name in g})


def ekfac_diagonal(operator: Any, model: nn.Module) -> torch.Tensor:
    r"""The flat diagonal of a computed ``EKFACLinearOperator``: per layer Q_G^2 S (Q_A^2)^T."""
    state = operator.state_dict()
    qa = state["input_covariances_eigenvectors"]
    qg = state["gradient_covariances_eigenvectors"]
    s = state["corrected_eigenvalues"]
    blocks = {name: eigen_block_diagonal(qg[name], s[name], qa[name]) for name in qg}
    return layer_diagonals(model, blocks)


def _fit(mode: str, eigen: bool = False) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]:
    """A timed fit: the operator with its factors (and eigenvalue correction) computed."""

    def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        return curvlinops_operator(model, x, y, mode, eigen)

    return fit


def curvlinops_methods() -> list[External]:
    """The curvlinops equivalents of our kfac-exact, kfac-mc, kfac-empirical and ekfac-exact."""
    return [
        External("curvlinops", "KFAC type-2", "kfac-exact", False, _fit("exact"), kfac_diagonal),
        External("curvlinops", "KFAC mc (1 sample)", "kfac-mc", True, _fit("mc"), kfac_diagonal),
        External(
            "curvlinops",
            "KFAC empirical",
            "kfac-empirical",
            False,
            _fit("empirical"),
            kfac_diagonal,
        ),
        External(
            "curvlinops",
            "EKFAC type-2",
            "ekfac-exact",
            False,
            _fit("exact", True),
            ekfac_diagonal,
        ),
    ]
