r"""Penalty gradients of S runs at once: each run's EWC terms applied to its row of ``[S, P]``.

Runs trained together as one stacked model (``benchmark.grouped``) each hold an ``EWC`` penalty.
Per training step run s needs

.. math::
    g_s \mathrel{+}= \lambda_s \sum_t F_{s,t} (\theta_s - \theta_{s,t}),

which, one run after the other, costs S x T rounds of small kernels. Here the runs' parameters
are one matrix :math:`\Theta` ``[S, P]`` (in the curvature layout's order) and each past task t
is one batched product over the runs that hold a term t (``Curvature._stacked_matmul``):

- diagonal: one elementwise product with the stacked diagonals ``[S, P]``;
- identity (L2): each run's scale on its row;
- KFAC: per layer, one batched :math:`G_s [\Delta W | \Delta b]_s A_s` (two ``bmm``);
- any other structure (dense, low-rank factor): one matvec per run, as alone (stacking S dense
  P x P matrices would multiply their memory, and their products are memory-bound anyway).

Merged dense terms (``EWC`` in separate mode) add their constant offset ``r`` row by row.
The stacked tensors are built once per consolidation (they are cached by the identity of the
runs' curvatures) and the result equals the per-run ``EWC.add_gradients`` up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .curvature import Curvature
from .layout import ParamLayout
from .penalty import EWC

Matmul = Callable[[torch.Tensor], torch.Tensor]


def stacked_matmul(curvatures: Sequence[Curvature]) -> Matmul:
    """``rows [S, P] -> [F_s rows_s]_s``: the structure's batched form, else one matvec each.

    Raises:
        ValueError: the curvatures are not written in one layout (names and shapes).
    """
    first = curvatures[0].layout
    for c in curvatures[1:]:
        if c.layout.names != first.names or list(c.layout.shapes) != list(first.shapes):
            raise ValueError("stacked curvatures must share one parameter layout")
    kinds = {type(c) for c in curvatures}
    batched = kinds.pop()._stacked_matmul(curvatures) if len(kinds) == 1 else None
    if batched is not None:
        return batched
    return lambda rows: torch.stack([c.matvec(r) for c, r in zip(curvatures, rows, strict=True)])


class _Term:
    """Past task t of the runs ``index`` that hold it: their anchors, lambdas and curvatures."""

    def __init__(
        self,
        index: list[int],
        terms: list[tuple[dict, Curvature]],
        offsets: list[tuple[torch.Tensor, float] | None],
        lams: list[float],
    ) -> None:
        names = terms[0][1].layout.names
        self.index = torch.tensor(index)
        self.anchors = torch.stack([torch.cat([a[n].reshape(-1) for n in names]) for a, _ in terms])
        self.lams = torch.tensor(lams, dtype=self.anchors.dtype).unsqueeze(1)
        self.matmul = stacked_matmul([c for _, c in terms])
        self.offsets = None  # the r of merged dense terms (``EWC``), zero rows for the others
        if any(o is not None for o in offsets):
            zero = torch.zeros_like(self.anchors[0])
            self.offsets = torch.stack([zero if o is None else o[0] for o in offsets])

    def add_into(self, total: torch.Tensor, theta: torch.Tensor) -> None:
        """``total[index] += lam * (F (theta[index] - anchors) + offsets)``."""
        index = self.index.to(theta.device)
        product = self.matmul(theta.index_select(0, index) - self.anchors)
        if self.offsets is not None:
            product += self.offsets
        total.index_add_(0, index, self.lams.to(theta.device) * product)


class StackedPenalty:
    """The EWC penalties of S stacked runs (``None`` for a run without one), stepped together.

    Args:
        penalties: run s's ``EWC`` (consolidated as the run goes), or None.
    """

    def __init__(self, penalties: Sequence[EWC | None]) -> None:
        self.penalties = list(penalties)
        self._key: tuple[int, ...] | None = None
        self._terms: list[_Term] = []

    def _plan(self) -> list[_Term]:
        """One ``_Term`` per past task index, rebuilt when any run consolidated since."""
        key = tuple(id(x) for p in self.penalties if p is not None for t in p.terms for x in t)
        if key != self._key:
            self._key, self._terms = key, []
            depth = max((len(p.terms) for p in self.penalties if p is not None), default=0)
            for t in range(depth):
                runs = [s for s, p in enumerate(self.penalties) if p is not None and len(p) > t]
                held = [self.penalties[s] for s in runs]
                terms = [p.terms[t] for p in held]  # type: ignore[union-attr]
                offsets = [p.offsets[t] for p in held]  # type: ignore[union-attr]
                lams = [p.lam for p in held]  # type: ignore[union-attr]
                self._terms.append(_Term(runs, terms, offsets, lams))
        return self._terms

    @torch.no_grad()
    def add_gradients(
        self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> None:
        r"""``grads[n][s] += lam_s sum_t F_{s,t} (theta_s - theta_{s,t})`` for every run s.

        ``params`` and ``grads`` map each parameter name to its stacked tensor ``[S, ...]``
        (row s is run s); ``grads`` are updated in place.
        """
        terms = self._plan()
        if not terms:
            return
        layout = self._layout()
        size = len(self.penalties)
        theta = torch.cat([params[n].detach().reshape(size, -1) for n in layout.names], dim=1)
        total = torch.zeros_like(theta)
        for term in terms:
            term.add_into(total, theta)
        sizes = [torch.Size(shape).numel() for shape in layout.shapes]
        for name, part in zip(layout.names, total.split(sizes, dim=1), strict=True):
            grads[name].view(size, -1).add_(part)

    def _layout(self) -> ParamLayout:
        """The layout of the first curvature held (every run's is the same)."""
        return next(c for p in self.penalties if p is not None for _, c in p.terms).layout
