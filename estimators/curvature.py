"""The curvature protocol: what every estimator returns and the harness uses.

A curvature object represents a symmetric positive semi-definite matrix F over the flat
parameter layout (see ``layout``). Subclasses implement four things: ``_matmat`` (F M),
``_quadratic`` (d^T F d, differentiable), ``diagonal_flat`` and ``nbytes``. Everything else
(``matvec``, ``quadratic`` on a parameter dict, ``dense``, the scipy view, ``trace``, online
accumulation) is derived here once.

Convention: F is the mean over N inputs of per-input Fisher matrices, and the EWC penalty is
``(lambda / 2) * sum_t quadratic(theta - theta_t)``; one lambda means the same for every estimator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .errors import FisherMemoryError
from .layout import ParamLayout

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Default memory budget for dense matrices and low-rank factors: 2 GiB."""


class Curvature(ABC):
    """A curvature matrix F (P x P).

    Implement ``_matmat``, ``_quadratic``, ``diagonal_flat`` and ``nbytes``.

    Attributes:
        layout: the parameter layout F is written in.
        memory_budget: bytes ``dense()`` may allocate.
        structure: short name of the representation (``identity``, ``diag``, ``kfac``, ...).
    """

    structure: str = ""

    def __init__(self, layout: ParamLayout, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.layout = layout
        self.memory_budget = memory_budget

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
        (``layout.names``); ``params`` are read, not differentiated. Diagonal and identity
        curvatures act elementwise (``_apply_elementwise_``): three foreach kernels in all.
        """
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
            cols = torch.zeros(p, stop - start, dtype=self.layout.dtype, device=self.layout.device)
            cols[torch.arange(start, stop), torch.arange(stop - start)] = 1
            out[:, start:stop] = self._matmat(cols)
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

    def add(self, other: Curvature, decay: float = 1.0) -> Curvature:
        """Online accumulation: a new curvature equal to ``decay * self + other``.

        Defined where the sum keeps the structure (identity, diag, dense full, and mixtures of
        them); KFAC and low-rank factors raise ``NotImplementedError`` saying why.
        """
        from .online import accumulate

        return accumulate(self, other, decay)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.numel}, nbytes={self.nbytes})"
