"""The curvature protocol: what every estimator returns and the harness uses.

A curvature object represents a symmetric positive semi-definite matrix F over the flat
parameter layout (see ``layout``). Subclasses implement four things: ``_matmat`` (F M),
``_quadratic`` (d^T F d, differentiable), ``diagonal_flat`` and ``nbytes``. Everything else
(``matvec``, ``quadratic`` on a parameter dict, ``dense``, the scipy view, ``trace``) is derived
here once.

The closed forms the approximation metrics and online EWC need are methods with a generic default
here, which a structure overrides in its own file where it knows better:
``frobenius_sq``, ``inner`` (double dispatch through ``_inner``), ``top_eigen``,
``block_frobenius_sq`` and ``add`` (online accumulation, dispatched through ``_add``/``_radd``).

Convention: F is the mean over N inputs of per-input Fisher matrices, and the EWC penalty is
``(lambda / 2) * sum_t quadratic(theta - theta_t)``; one lambda means the same for every estimator.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import NotImplementedType
from typing import ClassVar

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from .errors import FisherMemoryError
from .layout import ParamLayout

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Default memory budget for dense matrices and low-rank factors: 2 GiB."""

CHUNK = 256
"""Columns (or factor rows) per product in the float64 sums of the closed forms."""

GENERIC_BLOCK_MAX = 20_000
"""Largest P for which ``block_frobenius_sq`` falls back to products with identity columns."""


class Curvature(ABC):
    """A curvature matrix F (P x P).

    Implement ``_matmat``, ``_quadratic``, ``diagonal_flat`` and ``nbytes``; override the closed
    forms (``frobenius_sq``, ``_inner``, ``_top_eigen``, ``_block_frobenius_sq``, ``_add``,
    ``_radd``) where the structure has them.

    Attributes:
        layout: the parameter layout F is written in.
        memory_budget: bytes ``dense()`` may allocate.
        structure: short name of the representation (``identity``, ``diag``, ``kfac``, ...).
        is_diagonal: F is diagonal, so ``diagonal_flat()`` describes it entirely.
        inner_cost: rank of the structure's ``_inner`` closed form, cheapest first; ``inner``
            asks the cheaper side first.
        online_refusal: why curvatures of this structure never add (online EWC), or None.
        online_rule: how this curvature combines with later tasks' in online EWC (the
            ``online_rule`` option of ``kfac-*``/``ekfac-*``, see ``kfac_online``), or None:
            structures that add exactly need none, and ``EWC`` refuses one in separate mode.
    """

    structure: str = ""
    is_diagonal: ClassVar[bool] = False
    inner_cost: ClassVar[int] = 100
    online_refusal: ClassVar[str | None] = None
    online_rule: str | None = None

    def __init__(self, layout: ParamLayout, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.layout = layout
        self.memory_budget = memory_budget

    def allow_online(self, rule: str | None) -> None:
        """Record the fit's ``online_rule``; with one, this curvature adds online (no refusal)."""
        self.online_rule = rule
        if rule is not None:
            self.online_refusal = None  # type: ignore[misc] (the structure's default, per object)

    # -- what a representation implements ---------------------------------------------------
    @abstractmethod
    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        """F @ m for ``m`` of shape ``[P, k]`` in the layout's dtype and device."""

    @abstractmethod
    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        """d^T F d for a flat ``d`` of shape ``[P]``; differentiable in ``d``."""

    @abstractmethod
    def diagonal_flat(self) -> torch.Tensor:
        """The diagonal of F as a flat ``[P]`` tensor."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the representation's tensors."""

    # -- derived once ---------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        """P, the number of trainable parameters."""
        return self.layout.numel

    def quadratic(self, delta: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\delta^\top F \delta` for ``delta`` mapping parameter names to tensors.

        Returns a 0-dim tensor, differentiable in ``delta`` (the EWC penalty's core).
        """
        return self._quadratic(self.layout.flatten(delta).to(self.layout.dtype))

    def accumulate_penalty_grad(
        self,
        params: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        scale: float,
    ) -> None:
        r"""``grads += scale * F (theta - theta*)`` in place, with no autograd graph.

        This is the gradient of :math:`\frac{s}{2} (\theta - \theta^*)^\top F
        (\theta - \theta^*)`, the EWC penalty with :math:`s = \lambda`, added after the loss's
        own backward: one matrix-vector product instead of a recorded quadratic form and its
        backward. ``params``, ``anchors`` and ``grads`` are lists in the layout's order
        (``layout.names``), or mappings by parameter name (as ``quadratic`` takes); ``params``
        are read, not differentiated. Diagonal and identity curvatures act elementwise
        (``_apply_elementwise_``): three foreach kernels in all. ``estimators.EWC`` does the
        bookkeeping (anchors, terms, names) for a training loop.
        """
        params, anchors, grads = (
            self._in_layout_order(values, what)
            for values, what in ((params, "params"), (anchors, "anchors"), (grads, "grads"))
        )
        self._check_triples(params, anchors, grads)
        if self._same_dtype_device(params, anchors, grads):
            delta = torch._foreach_sub(list(params), list(anchors))
            if self._apply_elementwise_(delta):
                torch._foreach_add_(list(grads), delta, alpha=scale)
                return
        else:
            delta = [p - a for p, a in zip(params, anchors, strict=True)]
        flat = torch.cat([d.reshape(-1) for d in delta]).to(self.layout.dtype)
        product = self.matvec(flat)
        for g, f in zip(grads, self.layout.unflatten(product).values(), strict=True):
            g.add_(f.to(g.dtype), alpha=scale)

    def _in_layout_order(
        self, values: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], what: str
    ) -> Sequence[torch.Tensor]:
        """A list in ``layout.names`` order, from a list or a mapping by name.

        Raises:
            ValueError: a mapping that lacks some of the layout's names (names them).
            TypeError: anything but a sequence of tensors or a mapping of them.
        """
        if isinstance(values, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in values):
            return values  # the training loop's case, checked first
        if isinstance(values, Mapping):
            missing = [n for n in self.layout.names if n not in values]
            if missing:
                raise ValueError(
                    f"{what} lacks parameter(s) {', '.join(map(repr, missing))} of the "
                    f"curvature's layout ({', '.join(self.layout.names)})"
                )
            return [values[n] for n in self.layout.names]
        raise TypeError(
            f"{what} must be a list of tensors in the layout's order "
            f"({', '.join(self.layout.names)}) or a mapping from those names to tensors"
        )

    @property
    def summary(self) -> str:
        """The representation in a few words, for records and reports (default: ``structure``)."""
        return self.structure

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Closed form of ``rows -> [F_s rows_s]_s`` for S curvatures of this class (``stacking``).

        ``rows`` is ``[S, P]``, row s multiplied by ``curvatures[s]``, all of one layout. None
        (the default) means no batched form: ``stacking`` then takes one matvec per curvature.
        """
        return None

    def _apply_elementwise_(self, delta: list[torch.Tensor]) -> bool:
        """Where F acts elementwise (diagonal, identity): ``delta <- F delta`` in place, True.

        Other structures return False and the caller uses ``matvec``.
        """
        return False

    def _check_triples(
        self,
        params: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
    ) -> None:
        """One parameter, anchor and gradient per layout entry, each of the layout's shape."""
        n = len(self.layout.names)
        if not len(params) == len(anchors) == len(grads) == n:
            raise ValueError(
                f"expected {n} parameters, anchors and gradients (layout order: "
                f"{', '.join(self.layout.names)}), got {len(params)}, {len(anchors)} and "
                f"{len(grads)}"
            )
        for name, shape, *ts in zip(
            self.layout.names, self.layout.shapes, params, anchors, grads, strict=True
        ):
            if any(tuple(t.shape) != tuple(shape) for t in ts):
                raise ValueError(
                    f"parameter {name!r}: expected shape {tuple(shape)} for the parameter, its "
                    f"anchor and its gradient, got {[tuple(t.shape) for t in ts]}"
                )

    def _same_dtype_device(self, *lists: Sequence[torch.Tensor]) -> bool:
        """Whether every tensor has the layout's dtype and device (the foreach paths' condition)."""
        dtype, device = self.layout.dtype, self.layout.device
        return all(t.dtype == dtype and t.device == device for ts in lists for t in ts)

    def quadratic_flat(self, d: torch.Tensor) -> torch.Tensor:
        r""":math:`d^\top F d` for a flat vector ``d`` of shape ``[P]``."""
        return self._quadratic(self.layout.check_vector(d))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F v for a flat ``v`` of shape ``[P]``."""
        return self._matmat(self.layout.check_vector(v).unsqueeze(1)).squeeze(1)

    def matmat(self, m: torch.Tensor) -> torch.Tensor:
        """F M for ``M`` of shape ``[P, k]``."""
        if m.dim() != 2 or m.shape[0] != self.numel:
            raise ValueError(f"expected a matrix of shape [{self.numel}, k], got {tuple(m.shape)}")
        return self._matmat(m.to(device=self.layout.device, dtype=self.layout.dtype))

    def diagonal(self) -> dict[str, torch.Tensor]:
        """The diagonal of F as ``parameter name -> tensor`` of the parameter's shape."""
        return self.layout.unflatten(self.diagonal_flat())

    def trace(self) -> torch.Tensor:
        """The trace of F."""
        return self.diagonal_flat().sum()

    def dense_nbytes(self) -> int:
        """Bytes a dense P x P copy would need."""
        return self.numel**2 * self.layout.itemsize

    def dense(self) -> torch.Tensor:
        """F as a dense ``[P, P]`` tensor.

        Raises:
            FisherMemoryError: when P^2 entries exceed ``memory_budget`` (says how many bytes).
        """
        needed = self.dense_nbytes()
        if needed > self.memory_budget:
            raise FisherMemoryError(
                f"dense() of this {self.structure} curvature (P = {self.numel:,} parameters)",
                needed,
                self.memory_budget,
                "Use matvec/quadratic/as_linear_operator instead, or raise memory_budget.",
            )
        return self._dense()

    def _dense(self) -> torch.Tensor:
        """F @ I, a block of columns at a time; representations override this when cheaper."""
        p = self.numel
        out = torch.empty(p, p, dtype=self.layout.dtype, device=self.layout.device)
        step = max(1, min(p, (64 * 1024**2) // max(1, p * self.layout.itemsize)))
        for start in range(0, p, step):
            stop = min(p, start + step)
            out[:, start:stop] = self._matmat(identity_columns(self.layout, start, stop))
        return out

    def as_linear_operator(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` of shape (P, P) (e.g. for ``eigsh``)."""
        np_dtype = np.float64 if self.layout.dtype == torch.float64 else np.float32
        layout = self.layout

        def mm(x: np.ndarray) -> np.ndarray:
            m = torch.as_tensor(np.asarray(x).reshape(layout.numel, -1))
            m = m.to(device=layout.device, dtype=layout.dtype)
            return self._matmat(m).detach().cpu().numpy().astype(np_dtype, copy=False)

        def mv(x: np.ndarray) -> np.ndarray:
            return mm(x).reshape(-1)

        p = self.numel
        return LinearOperator((p, p), matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np_dtype)

    def _columns(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start:stop`` of F, ``[P, stop - start]``: F times identity columns."""
        return self.matmat(identity_columns(self.layout, start, stop))

    # -- closed forms: a structure overrides what it can do cheaply ----------------------------
    def frobenius_sq(self) -> float:
        r""":math:`\|F\|_F^2 = \sum_{ij} F_{ij}^2`, accumulated in float64.

        Generic: :math:`\langle F, F \rangle` through ``inner``.
        """
        return self.inner(self)

    def inner(self, other: Curvature) -> float:
        r""":math:`\langle F, G \rangle_F = \operatorname{tr}(F G) = \sum_{ij} F_{ij} G_{ij}`.

        For symmetric F (``self``) and G (``other``), accumulated in float64. Double dispatch:
        the side whose closed form is cheaper (lower ``inner_cost``; ``other`` on a tie) is asked
        first through ``_inner``, then the other side; when neither has a closed form for the
        pair, :math:`\sum_j \langle F e_j, G e_j \rangle` over blocks of identity columns
        (P matrix-vector products with each: for models whose P x P fits anyway).

        Raises:
            ValueError: the two curvatures are over different parameter layouts.
        """
        if not self._same_layout(other):
            raise ValueError("cannot take the inner product of curvatures over different layouts")
        first, second = (self, other) if self.inner_cost < other.inner_cost else (other, self)
        for x, y in ((first, second), (second, first)):
            value = x._inner(y)
            if value is not NotImplemented:
                return value
        return self._generic_inner(other)

    def _inner(self, other: Curvature) -> float | NotImplementedType:
        r""":math:`\langle F, G \rangle` in closed form for this pair, or ``NotImplemented``."""
        return NotImplemented

    def _generic_inner(self, other: Curvature) -> float:
        r""":math:`\sum_j \langle F e_j, G e_j \rangle`, ``CHUNK`` columns at a time."""
        total, p = 0.0, self.numel
        for start in range(0, p, CHUNK):
            stop = min(p, start + CHUNK)
            block = self._columns(start, stop) * other._columns(start, stop)
            total += float(block.sum(dtype=torch.float64))
        return total

    def top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` largest eigenvalues (descending, float64) and their eigenvectors ``[P, k]``.

        ``k`` is capped at P - 1. Eigenvectors are None where F distinguishes none (identity).
        Generic: ``eigsh`` on ``as_linear_operator()``.
        """
        return self._top_eigen(min(k, self.numel - 1))

    def _top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``eigsh`` (Lanczos) on the operator, sorted in descending order."""
        vals, vecs = eigsh(self.as_linear_operator(), k=k, which="LA")
        order = np.argsort(vals)[::-1]
        return vals[order].astype(np.float64), vecs[:, order].astype(np.float64)

    def block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`\|F_{II}\|_F^2` for the flat index set I (a 1-d integer tensor), in float64.

        Generic (when P <= ``GENERIC_BLOCK_MAX``): the columns :math:`F e_i, i \in I`, ``CHUNK``
        at a time, restricted to the rows I.

        Raises:
            NotImplementedError: no closed form and P over ``GENERIC_BLOCK_MAX``.
        """
        return self._block_frobenius_sq(torch.as_tensor(index, dtype=torch.long).reshape(-1))

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        """Through matrix products with identity columns; refused for large P."""
        p = self.numel
        if p > GENERIC_BLOCK_MAX:
            raise NotImplementedError(
                f"no closed form for a diagonal block of {self.structure} curvature, and "
                f"P = {p:,} parameters is over the {GENERIC_BLOCK_MAX:,} the generic path "
                "(one product with F per index) allows; use a dense or low-rank factor curvature"
            )
        rows = index.to(self.layout.device)
        total = 0.0
        for start in range(0, rows.numel(), CHUNK):
            cols = rows[start : start + CHUNK]
            eye = torch.zeros(p, cols.numel(), dtype=self.layout.dtype, device=self.layout.device)
            eye[cols, torch.arange(cols.numel(), device=self.layout.device)] = 1
            total += float(self.matmat(eye)[rows].double().square().sum())
        return total

    # -- online accumulation --------------------------------------------------------------------
    def add(self, other: Curvature, decay: float = 1.0) -> Curvature:
        """Online accumulation: a new curvature equal to ``decay * self + other``.

        Inputs are not modified. Dispatch: ``self._add(other, decay)``, then
        ``other._radd(self, decay)``; the richer structure holds the sum (identity < diag <
        dense full). Structures with an ``online_refusal`` (KFAC, low-rank factors) say why not.

        Raises:
            ValueError: different parameter layouts, or a decay that is not a finite number >= 0.
            NotImplementedError: a structure without a closed online sum.
        """
        check_decay(decay)
        if not self._same_layout(other):
            raise ValueError("cannot add curvatures over different parameter layouts")
        for c in (self, other):
            if c.online_refusal is not None:
                raise NotImplementedError(
                    f"online accumulation is not defined for {c.structure} curvature: "
                    f"{c.online_refusal}; use separate mode (one penalty per task) instead"
                )
        result = self._add(other, decay)
        if result is NotImplemented:
            result = other._radd(self, decay)
        if result is NotImplemented:
            raise NotImplementedError(
                f"online accumulation is not defined for {self.structure} and {other.structure} "
                "curvature: neither structure holds their sum; use separate mode (one penalty "
                "per task) instead"
            )
        return result

    def _add(self, other: Curvature, decay: float) -> Curvature | NotImplementedType:
        """``decay * self + other`` when this structure holds it, else ``NotImplemented``."""
        return NotImplemented

    def _radd(self, other: Curvature, decay: float) -> Curvature | NotImplementedType:
        """``decay * other + self`` when this structure holds it, else ``NotImplemented``."""
        return NotImplemented

    def _same_layout(self, other: Curvature) -> bool:
        """Same parameter names and shapes."""
        return self.layout.names == other.layout.names and self.layout.shapes == other.layout.shapes

    def _budget_with(self, other: Curvature) -> int:
        """The memory budget of a sum: the larger of the two."""
        return max(self.memory_budget, other.memory_budget)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.numel}, nbytes={self.nbytes})"


def identity_columns(layout: ParamLayout, start: int, stop: int) -> torch.Tensor:
    """Columns ``start:stop`` of the P x P identity, in the layout's dtype and device."""
    p = layout.numel
    cols = torch.zeros(p, stop - start, dtype=layout.dtype, device=layout.device)
    cols[torch.arange(start, stop), torch.arange(stop - start)] = 1
    return cols


def check_decay(decay: object) -> None:
    """An online decay must be a finite number >= 0 (not a bool).

    Raises:
        ValueError: naming the value.
    """
    if (
        isinstance(decay, bool)
        or not isinstance(decay, (int, float))
        or not math.isfinite(decay)
        or decay < 0
    ):
        raise ValueError(f"decay must be a finite number >= 0, got {decay!r}")
