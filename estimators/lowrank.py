r"""``lowrank-*``: the top-k eigenpairs of the Fisher plus its exact diagonal remainder.

With the rows :math:`u_{nk}/\sqrt{N}` of ``full-*`` (R = N K rows, see ``labels``),
:math:`F = U^\top U` and

.. math::
    \hat F = V_k \operatorname{diag}(\lambda_k) V_k^\top + D, \qquad
    D = \operatorname{diag}(F) - \operatorname{diag}(V_k \operatorname{diag}(\lambda_k) V_k^\top),

where :math:`(\lambda_k, V_k)` are the k largest eigenpairs of F (option ``rank``): the diagonal
is exact and directions outside :math:`V_k` stay penalised by D. Memory k P + P; a penalty product
costs about 2 k P, like a k-row factor, but along the best rank-k directions.

Two paths (``plan_fit``, which refuses with the bytes needed when the budget is short):

- R <= k: one pass keeps U (at most k P), and :math:`U U^\top = W \Lambda W^\top` gives
  :math:`V = U^\top W \Lambda^{-1/2}`: every non-zero eigenpair, so :math:`\hat F = F`, D = 0.
- R > k: U is never held; :math:`F M = \sum_c U_c^\top (U_c M)` is one pass over the inputs,
  chunk by chunk (``Passes``), and a Nyström sketch (``nystrom``) of l = k + ``oversample``
  columns after q = ``power_iterations`` passes, :math:`Q_{i+1} = \operatorname{orth}(F Q_i)`,
  keeps the top k eigenpairs of :math:`Y (Q_q^\top Y)^+ Y^\top`, :math:`Y = F Q_q`: q + 1 passes.
  The sketch never exceeds F (Loewner order), so D >= 0. diag(F) comes from the first pass.

Each pass's rows come from ``FisherPass`` (nothing loops over inputs). Linear weights keep the
Kronecker form of their rows, :math:`u_{nk} = g_{nk} \otimes a_n`, so that :math:`U M` and
:math:`U^\top Z` cost N P flops per column instead of N K P; only the other parameters' rows are
written (``fill_rows``). Holding U would cost K times a pass's flops, so it is recomputed. The
label factor S of each chunk is computed in the first pass and replayed (``Replayed``): ``mc``
labels are drawn once, chunk by chunk with ``generator``, like ``full-mc`` draws them (the same
labels where both take the same chunks). The test matrix is seeded (``SEED``): fits repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .curvature import CHUNK, DEFAULT_MEMORY_BUDGET, Curvature
from .diag import add_diagonal
from .errors import FisherMemoryError, format_bytes
from .estimator import Accumulator, GridEstimator, check_labels
from .fitting import Capture, FisherPass, LayerCapture, Plan, PlannedLayer, make_plan
from .full import WORK_BYTES, fill_rows
from .labels import LabelMode
from .layers.linear import LinearRule
from .layout import ParamLayout
from .linalg import eigh
from .registry import GridStructure, never_online

LOWRANK_REFUSAL = (
    "low-rank + diagonal curvatures do not add into one of the same rank (the ranks add, and "
    "truncating the sum again would drop the older task's directions)"
)
"""Why low-rank + diagonal curvatures are not accumulated online."""

SEED = 0
"""Seed of the sketch's Gaussian test matrix."""

SHIFT_TRIES = 20
"""Nyström shifts tried (each 10 times the last) before the core matrix is declared not PSD."""


class LowRankDiagCurvature(Curvature):
    r""":math:`\hat F = B^\top \operatorname{diag}(\lambda) B + \operatorname{diag}(d)`.

    ``basis`` B ``[k, P]`` (rows: eigenvectors), ``values`` :math:`\lambda` ``[k]``, ``diag`` d
    ``[P]`` (the remainder that makes the diagonal exact).
    """

    structure = "lowrank"
    inner_cost = 1
    online_refusal = LOWRANK_REFUSAL

    def __init__(
        self,
        layout: ParamLayout,
        basis: torch.Tensor,
        values: torch.Tensor,
        diag: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__(layout, memory_budget)
        self.basis, self.values, self.diag = basis, values, diag

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        low = self.basis.T @ (self.values.unsqueeze(1) * (self.basis @ m))
        return low + self.diag.unsqueeze(1) * m

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        return torch.dot(self.values, (self.basis @ d).square()) + torch.dot(self.diag * d, d)

    def diagonal_flat(self) -> torch.Tensor:
        r""":math:`\sum_j \lambda_j b_j^2 + d`: diag(F) of the fit, up to rounding."""
        return self.values @ self.basis.square() + self.diag

    def _dense(self) -> torch.Tensor:
        return self.basis.T @ (self.values.unsqueeze(1) * self.basis) + torch.diag(self.diag)

    @property
    def nbytes(self) -> int:
        """The basis, eigenvalues and remainder: k P + k + P scalars."""
        return sum(t.numel() * t.element_size() for t in (self.basis, self.values, self.diag))

    def frobenius_sq(self) -> float:
        r""":math:`\sum_{ij} \lambda_i \lambda_j (b_i^\top b_j)^2 + 2 \lambda^\top B^2 d + \|d\|^2`.

        No orthonormality of B is assumed; float64.
        """
        return self._frobenius_sq(self.basis, self.diag)

    def _block_frobenius_sq(self, index: torch.Tensor) -> float:
        r""":math:`\|\hat F_{II}\|_F^2`: the same closed form on the columns I of B and d."""
        idx = index.to(self.basis.device)
        return self._frobenius_sq(self.basis[:, idx], self.diag[idx])

    def _frobenius_sq(self, basis: torch.Tensor, diag: torch.Tensor) -> float:
        b, lam, d = basis.double(), self.values.double(), diag.double()
        low = float((lam.unsqueeze(1) * (b @ b.T).square() * lam.unsqueeze(0)).sum())
        return low + 2 * float(lam @ (b.square() @ d)) + float(d.square().sum())

    def _inner(self, other: Curvature) -> float:
        r""":math:`\sum_j \lambda_j b_j^\top G b_j + \sum_i d_i G_{ii}`, for any G.

        ``CHUNK`` basis vectors at a time through ``other.matmat``: k products with G.
        """
        total = float((self.diag.double() * other.diagonal_flat().double()).sum())
        for start in range(0, self.values.numel(), CHUNK):
            rows = self.basis[start : start + CHUNK]
            quad = (other.matmat(rows.T.contiguous()).double() * rows.T.double()).sum(0)
            total += float(quad @ self.values[start : start + CHUNK].double())
        return total

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Two ``bmm`` over the bases ``[S, k, P]`` (fewer vectors: zero-padded) and remainders."""
        mine = [c for c in curvatures if isinstance(c, LowRankDiagCurvature)]
        k = max(c.values.numel() for c in mine)
        basis = torch.stack([F.pad(c.basis, (0, 0, 0, k - c.values.numel())) for c in mine])
        values = torch.stack([F.pad(c.values, (0, k - c.values.numel())) for c in mine])
        diag = torch.stack([c.diag for c in mine])

        def apply(rows: torch.Tensor) -> torch.Tensor:
            coeff = torch.bmm(basis, rows.unsqueeze(2)) * values.unsqueeze(2)
            return torch.bmm(basis.transpose(1, 2), coeff).squeeze(2) + diag * rows

        return apply


# -- sizes, memory and the choice of path -------------------------------------------------------
def sketch_width(p: int, options: dict[str, Any]) -> int:
    """The sketch's columns: rank + oversample, at most P."""
    return min(options["rank"] + options["oversample"], p)


def plan_fit(layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]) -> bool:
    """True for the exact path (R <= rank: U kept), False for the sketch; refuses bad sizes.

    Bytes counted: the result (k P + k + P); the exact path adds U (R P) and its Gram matrix
    (R^2 float64); the sketch adds l P four times in the layout's dtype (Q, F Q, the Linear
    blocks' permuted copies and sums) and three times in float64 (the Nyström step).

    Raises:
        ValueError: rank >= P (no truncation: that is ``full-*``).
        FisherMemoryError: with the bytes needed and what they are for.
    """
    p, item, budget, k = layout.numel, layout.itemsize, options["memory_budget"], options["rank"]
    if k >= p:
        raise ValueError(
            f"option 'rank' must be below P = {p:,}, the model's trainable parameters; got {k} "
            "(rank >= P truncates nothing: use full-* for the whole Fisher)"
        )
    rows, stored = columns * n_inputs, (k * p + k + p) * item
    if rows <= k:
        needed, work = stored + rows * p * item + rows * rows * 8, f"the factor ({rows:,} x P)"
    else:
        width = sketch_width(p, options)
        needed, work = stored + width * p * (4 * item + 24), f"the sketch ({width:,} columns)"
    if needed > budget:
        hint = (
            f"P = {p:,} parameters, rank {k:,}: the curvature takes {format_bytes(stored)}, "
            f"and {work} more while fitting. Lower rank or raise memory_budget."
        )
        raise FisherMemoryError(f"the rank-{k} + diagonal Fisher", needed, budget, hint)
    return rows <= k


# -- passes over the inputs ----------------------------------------------------------------------
class Replayed(LabelMode):
    """A label mode whose factor S per chunk is computed in the first pass, then replayed."""

    def __init__(self, mode: LabelMode) -> None:
        self.mode, self.name, self.needs_targets = mode, mode.name, mode.needs_targets
        self.recorded: list[torch.Tensor] = []
        self.cursor: int | None = None  # None: recording; set to 0 to replay

    def columns(self, n_classes: int) -> int:
        """The wrapped mode's."""
        return self.mode.columns(n_classes)

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Recorded in the first pass, replayed in chunk order afterwards."""
        if self.cursor is None:
            self.recorded.append(self.mode.factor(logits, targets))
            return self.recorded[-1]
        factor = self.recorded[self.cursor]
        assert factor.shape[1] == logits.shape[0], "every pass must take the same chunks"
        self.cursor += 1
        return factor


def sweep(
    fisher_pass: FisherPass,
    data: tuple[torch.Tensor, torch.Tensor | None],
    step: int,
    consume: Callable[[Capture], None],
) -> None:
    """One pass over ``data`` (inputs, targets), ``step`` inputs at a time, into ``consume``."""
    inputs, targets = data
    n = inputs.shape[0]
    for start in range(0, n, step):
        chunk = slice(start, min(n, start + step))
        consume(fisher_pass.capture(inputs[chunk], None if targets is None else targets[chunk]))


class Passes:
    r"""``M -> F M`` for ``M`` ``[P, l]``: one pass over the inputs per call, U never held.

    A planned Linear layer's weight ``[d_out, d_in]`` is a block (``blocks``: layer id -> its
    slice, d_out, d_in): :math:`(U M)_{nk} = \sum_i g_{nk,i} (a_n^\top M_{i,:,:})` and
    :math:`(U^\top Z)_{i,:,:} = \sum_n a_n (\sum_k g_{nk,i} Z_{nk})`. Every other parameter
    (biases included) has its rows written, ``[K n, P_rest]`` in ``rest_layout``. The first call
    also accumulates diag(F) (``diag``) and records the label factors; later calls replay them.
    """

    def __init__(
        self, fisher_pass: FisherPass, plan: Plan, layout: ParamLayout, options: dict[str, Any]
    ) -> None:
        self.fisher_pass, self.layout = fisher_pass, layout
        self.blocks: dict[int, tuple[slice, int, int]] = {}
        self.rest: dict[int, PlannedLayer] = {}
        for layer in plan.layers:
            params = dict(layer.params)
            if isinstance(layer.rule, LinearRule) and "weight" in params:
                name = params.pop("weight")
                self.blocks[id(layer)] = (layout.slice(name), *layout.shapes[layout.index(name)])
            if params:
                self.rest[id(layer)] = PlannedLayer(layer.module, layer.rule, params)
        taken = {layer.params["weight"] for layer in plan.layers if id(layer) in self.blocks}
        names = tuple(n for n in layout.names if n not in taken)
        shapes = tuple(layout.shapes[layout.index(n)] for n in names)
        offsets = tuple(sum(s.numel() for s in shapes[:i]) for i in range(len(names)))
        self.rest_layout = ParamLayout(names, shapes, offsets, layout.dtype, layout.device)
        parts = [torch.arange(layout.slice(n).start, layout.slice(n).stop) for n in names]
        self.rest_index = torch.cat([*parts, torch.zeros(0, dtype=torch.long)]).to(layout.device)
        width = sketch_width(layout.numel, options)
        per_input = fisher_pass.columns * len(self.rest_index)
        per_input += 2 * width * sum(d_out for _, d_out, _ in self.blocks.values())
        self.step = max(1, min(options["chunk_size"], WORK_BYTES // (per_input * layout.itemsize)))
        self.diag: torch.Tensor | None = None

    def __call__(
        self, m: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        """F m, in one pass over ``data`` (inputs, targets)."""
        first = self.diag is None
        if first:
            self.diag = m.new_zeros(self.layout.numel)
        else:
            self.fisher_pass.labels.cursor = 0  # a Replayed mode
        blocks = {key: _to_block(m, *blk) for key, blk in self.blocks.items()}
        sums = {key: torch.zeros_like(w) for key, w in blocks.items()}
        rest_m = m[self.rest_index]
        rest_out = torch.zeros_like(rest_m)

        def consume(cap: Capture) -> None:
            z, rows = self._times(cap, blocks, rest_m)
            for lc in cap.layers:
                if id(lc.layer) in sums:
                    h = torch.bmm(lc.g.permute(1, 2, 0), z)  # [n, d_out, l]
                    sums[id(lc.layer)].addmm_(lc.a.T, h.view(cap.n, -1))
            if rows is not None:
                rest_out.addmm_(rows.T, z.transpose(0, 1).reshape(rows.shape[0], -1))
            if first:
                add_diagonal(self.diag, cap, self.layout, skip=set())

        sweep(self.fisher_pass, data, self.step, consume)
        out = torch.empty_like(m)
        for key, (at, d_out, d_in) in self.blocks.items():
            out[at] = sums[key].view(d_in, d_out, -1).permute(1, 0, 2).reshape(d_out * d_in, -1)
        out[self.rest_index] = rest_out
        return out

    def _times(
        self, cap: Capture, blocks: dict[int, torch.Tensor], rest_m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk's rows times m, ``[n, K, l]``, and the written rows ``[K n, P_rest]``."""
        k, n, width = self.fisher_pass.columns, cap.n, rest_m.shape[1]
        z = rest_m.new_zeros(n, k, width)
        for lc in cap.layers:
            if id(lc.layer) in blocks:
                t = (lc.a @ blocks[id(lc.layer)]).view(n, -1, width)  # [n, d_out, l]
                z.baddbmm_(lc.g.transpose(0, 1), t)
        if not self.rest_index.numel():
            return z, None
        rows = rest_m.new_empty(k * n, rest_m.shape[0])
        layers = [
            LayerCapture(self.rest[id(c.layer)], c.a, c.g)
            for c in cap.layers
            if id(c.layer) in self.rest
        ]
        rest = Capture(n, layers, cap.generic)
        fill_rows(rows, rest, self.rest_layout, k)
        z += (rows @ rest_m).view(k, n, width).transpose(0, 1)
        return z, rows


def _to_block(m: torch.Tensor, at: slice, d_out: int, d_in: int) -> torch.Tensor:
    """A weight block's rows of ``m`` ``[P, l]`` as ``[d_in, d_out l]`` (one copy per pass)."""
    return m[at].reshape(d_out, d_in, -1).permute(1, 0, 2).reshape(d_in, -1)


# -- eigenpairs ----------------------------------------------------------------------------------
def gram_top(u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Top-k eigenpairs of :math:`U^\top U` through :math:`U U^\top` (float64 ``eigh``).

    Eigenvalues at or below 10 eps of the largest (zeros, rounded) are dropped. Returns values
    ``[k']`` (float64, descending) and vectors ``[P, k']`` in U's dtype.
    """
    vals, w = torch.linalg.eigh((u @ u.T).double())
    vals, w = vals.flip(0)[:k], w.flip(1)[:, :k]
    keep = vals > 10 * torch.finfo(u.dtype).eps * vals[:1].clamp_min(0)
    vals, w = vals[keep], w[:, keep]
    return vals, u.T @ (w / vals.sqrt()).to(u.dtype)


def nystrom_top(
    product: Callable[[torch.Tensor], torch.Tensor], layout: ParamLayout, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` eigenpairs from ``power_iterations + 1`` products with F (``nystrom``)."""
    gen = torch.Generator(device=layout.device).manual_seed(SEED)
    shape = (layout.numel, sketch_width(layout.numel, options))
    omega = torch.randn(shape, generator=gen, dtype=layout.dtype, device=layout.device)
    q = orthonormalise(omega)
    for _ in range(options["power_iterations"]):
        q = orthonormalise(product(q))
    return nystrom(q, product(q), options["rank"])


def orthonormalise(y: torch.Tensor) -> torch.Tensor:
    r"""Orthonormal columns spanning ``y`` ``[P, l]`` (CholeskyQR2, float64).

    Two rounds of :math:`Q \leftarrow Q C^{-\top}` with :math:`Q^\top Q = C C^\top`: about
    ten times faster than LAPACK's QR on these tall, thin matrices; LAPACK's QR when the Gram
    matrix is too ill-conditioned for Cholesky.
    """
    q = y.double()
    for _ in range(2):
        chol, info = torch.linalg.cholesky_ex(q.T @ q)
        if info != 0:
            return torch.linalg.qr(y)[0]
        q = torch.linalg.solve_triangular(chol.T, q, upper=True, left=False)
    return q.to(y.dtype)


def nystrom(q: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Top-k eigenpairs of :math:`Y (Q^\top Y)^+ Y^\top` for :math:`Y = F Q` (float64).

    Stable form (Tropp, Yurtsever, Udell & Cevher, 2017, Alg. 3): :math:`Y_\nu = Y + \nu Q`,
    :math:`Q^\top Y_\nu = C C^\top`, :math:`E = Y_\nu C^{-\top} = W \Sigma Z^\top` (from the
    eigenpairs of the small :math:`E^\top E`), eigenpairs
    :math:`(\max(\sigma^2 - \nu, 0), W)`. :math:`\nu` starts at eps (of Y's dtype) times
    :math:`\|Y\|_F` and grows tenfold until the Cholesky factorisation succeeds. Zero
    eigenvalues are dropped; Q ``[P, l]`` must have orthonormal columns.
    """
    nu = torch.finfo(y.dtype).eps * float(torch.linalg.matrix_norm(y.double()))
    q, y = q.double(), y.double()
    if nu == 0:
        return y.new_zeros(0), y.new_zeros(y.shape[0], 0)
    for _ in range(SHIFT_TRIES):
        shifted = y + nu * q
        core = q.T @ shifted
        chol, info = torch.linalg.cholesky_ex((core + core.T) / 2)
        if info == 0:
            break
        nu *= 10
    else:
        raise RuntimeError("the Nyström core Q^T F Q is not positive semi-definite")
    e = torch.linalg.solve_triangular(chol.T, shifted, upper=True, left=False)
    sq, z = eigh(e.T @ e)  # E^T E = Z S^2 Z^T: W = E Z / S (no tall SVD)
    sq, z = sq.flip(0)[:k], z.flip(1)[:, :k]
    vals = (sq - nu).clamp_min(0)
    keep = vals > 0
    return vals[keep], e @ (z[:, keep] / sq[keep].sqrt())


def assemble(
    layout: ParamLayout, vals: torch.Tensor, vecs: torch.Tensor, diag: torch.Tensor, budget: int
) -> LowRankDiagCurvature:
    r"""The curvature with :math:`d = \max(\operatorname{diag}(F) - \sum_j \lambda_j v_j^2, 0)`.

    The clamp removes rounding only (what the top-k part, or the sketch, leaves of F is PSD), so
    the result stays PSD.
    """
    basis, values = vecs.T.to(layout.dtype).contiguous(), vals.to(layout.dtype)
    rest = (diag.double() - (values @ basis.square()).double()).clamp_min(0).to(layout.dtype)
    return LowRankDiagCurvature(layout, basis, values, rest, budget)


# -- the estimator -------------------------------------------------------------------------------
class LowRankAccumulator(Accumulator):
    """The exact path (R <= rank): every row kept, then the Gram matrix's eigenpairs."""

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        super().__init__(layout, plan, columns, n_total, options)
        kw = {"dtype": layout.dtype, "device": layout.device}
        self.factor = torch.empty(columns * n_total, layout.numel, **kw)
        self.next_row = 0

    @classmethod
    def check_memory(
        cls, layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]
    ) -> None:
        """Refuses as ``fit`` would (``plan_fit``), before computing anything."""
        plan_fit(layout, columns, n_inputs, options)

    def update(self, cap: Capture) -> None:
        """Write the chunk's rows into the factor."""
        rows = self.factor[self.next_row : self.next_row + self.columns * cap.n]
        self.next_row += rows.shape[0]
        fill_rows(rows, cap, self.layout, self.columns)

    def result(self) -> LowRankDiagCurvature:
        """Every non-zero eigenpair (R <= rank): F itself, with a zero remainder."""
        vals, vecs = gram_top(self.factor, self.options["rank"])
        diag = self.factor.square().sum(0)
        return assemble(self.layout, vals, vecs, diag, self.options["memory_budget"])


class LowRankEstimator(GridEstimator):
    """``lowrank-<mode>``: one pass when R <= rank, else ``power_iterations + 1`` passes."""

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> Curvature:
        n, data = inputs.shape[0], (inputs, targets)
        plan = make_plan(model, self.forward, inputs[:1], layout)
        check_labels(targets, plan.n_classes)
        columns = self.labels.columns(plan.n_classes)
        exact = plan_fit(layout, columns, n, self.options)
        fisher_pass = FisherPass(model, self.forward, Replayed(self.labels), plan, n)
        passes = Passes(fisher_pass, plan, layout, self.options)  # chunks as the sketch takes them
        if exact:
            acc = LowRankAccumulator(layout, plan, columns, n, self.options)
            sweep(fisher_pass, data, passes.step, acc.update)
            return acc.result()
        vals, vecs = nystrom_top(partial(passes, data=data), layout, self.options)
        assert passes.diag is not None
        return assemble(layout, vals, vecs, passes.diag, self.options["memory_budget"])


DECLARATION = GridStructure(
    "lowrank",
    LowRankAccumulator,
    ("exact", "mc", "empirical"),
    options=("rank", "oversample", "power_iterations"),
    online=never_online(LOWRANK_REFUSAL),
    estimator=LowRankEstimator,
)
"""``lowrank-*``: top-k eigenpairs plus the diagonal remainder; never online."""
