r"""``ekfac-*``: eigenvalue-corrected KFAC (George et al., 2018) for Linear and Conv2d layers.

For a layer with KFAC factors :math:`A = Q_A \Lambda_A Q_A^\top` and :math:`G = Q_G \Lambda_G
Q_G^\top` over :math:`[W \mid b]` (see ``kfac``), KFAC is diagonal in the Kronecker eigenbasis
:math:`Q = Q_G \otimes Q_A` with eigenvalues :math:`\lambda_{G,p} \lambda_{A,q}`. EKFAC keeps the
basis and replaces the eigenvalues by the best diagonal in that basis, the second moments of the
projected per-input gradients:

.. math::
    s_{pq} = \operatorname{mean}_n \sum_k \big(Q_G^\top D_{nk} Q_A\big)_{pq}^2
    = \big(Q^\top F_{layer} Q\big)_{(p,q),(p,q)}, \qquad
    F_{ekfac} = Q \operatorname{diag}(s) Q^\top,

with :math:`D_{nk} = \nabla_{[W|b]}` of the k-th weighted loss column (label mode) of input n.
Since :math:`\|F - Q \operatorname{diag}(d) Q^\top\|_F` is minimised over d by :math:`d = s`
and KFAC is one such d, :math:`\|F_{bb} - EKFAC_{bb}\|_F \le \|F_{bb} - KFAC_{bb}\|_F` on every
layer block. Every other parameter (BatchNorm affine, layers without closed forms) gets its exact
diagonal, as in KFAC; blocks between layers are zero.

The s of each layer rule (closed forms for ``nn.Linear`` and ``nn.Conv2d``) and the blocks
are in ``eigen_scales``.

Fitting takes two passes over the inputs, in the same chunks (``second_pass``). The first is one
batched forward and backward per chunk (``fitting.FisherPass``) and accumulates the KFAC factor
sums and the rest's exact diagonal (``KFACAccumulator``). Then each factor is eigendecomposed,
its exactly-zero rows split off first (``linalg.eigh_deflated``: input features that are zero on
every fitted input, such as MNIST's blank border pixels, and output units whose gradient always
is, such as ReLU units that never fire, cost nothing; their s is exactly zero, so Linear and
Conv2d layers project onto the other eigenvectors only, ``LiveBlock``). The second pass
accumulates s from the Kronecker layers' captures: those the first pass kept, while
they fit in ``second_pass.CACHE_BYTES`` (no forward or backward), else recomputed by
backpropagating to those layers only (no rest diagonal, no ``torch.func`` rows). Both passes
use the same label columns: ``exact`` and ``empirical`` are deterministic, and ``mc`` records
the labels it draws in the first pass (``mc_samples`` integers per input) and replays them in a
recomputed second pass, so the generator (or the global RNG) advances exactly as one
``kfac-mc`` fit does.

Online EWC takes ``online_rule = 'sum'`` only (per-task terms, ``online_sum``): the other rules
of ``kfac_online`` combine factors, and s belongs to one task's eigenbasis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from types import NotImplementedType
from typing import Any

import numpy as np
import torch
from torch import nn

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .eigen_scales import EigenBlock, LiveBlock, layer_scales
from .estimator import GridEstimator, check_labels
from .fitting import Capture, FisherPass, Plan, PlannedLayer, make_plan
from .full import DenseCurvature
from .kfac import KFACAccumulator, KFACCurvature
from .labels import MonteCarlo
from .layout import ParamLayout
from .linalg import eigh_deflated
from .online_sum import add_terms, sum_only_check, sum_only_online
from .registry import GridStructure
from .second_pass import KeptCaptures, ReplayedSamples

EKFAC_REFUSAL = "fits in different eigenbases do not sum to one eigen-corrected Kronecker product"
"""Why EKFAC curvatures are not accumulated online without ``online_rule = 'sum'``."""


def _same_positions(x: EKFACCurvature, y: EKFACCurvature | KFACCurvature) -> bool:
    """Same layers in the same layout positions: then closed forms split block by block."""
    if [(b.weight, b.bias) for b in x.blocks] != [(b.weight, b.bias) for b in y.blocks]:
        return False
    return torch.equal(x.rest_index.cpu(), y.rest_index.cpu())


class EKFACCurvature(Curvature):
    """Eigen-corrected Kronecker blocks plus an exact diagonal over the remaining parameters."""

    structure = "ekfac"
    inner_cost = 2
    online_refusal = EKFAC_REFUSAL

    def __init__(
        self,
        layout: ParamLayout,
        blocks: list[EigenBlock],
        rest_index: torch.Tensor,
        rest_diag: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        online_rule: str | None = None,
    ) -> None:
        super().__init__(layout, memory_budget)
        self.blocks = blocks
        self.rest_index = rest_index
        self.rest_diag = rest_diag
        self.allow_online(online_rule)

    def _add(self, other: Curvature, decay: float) -> Curvature | NotImplementedType:
        """With ``online_rule = 'sum'``: both fits as terms of a sum (``online_sum.add_terms``)."""
        return add_terms(self, other, decay)

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        rows = m.T.contiguous()  # [k, P]: each block's entries are contiguous within a row
        out = torch.empty_like(rows)
        for blk in self.blocks:
            frame = blk.frame
            frame.scatter(blk.apply(frame.gather(rows)), out)
        out[:, self.rest_index] = rows[:, self.rest_index] * self.rest_diag
        return out.T

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        r"""Per block, batched over the S runs: rotate in, scale by :math:`s`, rotate back.

        :math:`Q_{G,s} (S_s \circ Q_{G,s}^\top X_s Q_{A,s}) Q_{A,s}^\top` as four ``bmm``. None
        unless every curvature has the first one's blocks (same layers, same layout).
        """
        first = curvatures[0]
        assert isinstance(first, EKFACCurvature)
        if not all(isinstance(c, EKFACCurvature) and _same_positions(first, c) for c in curvatures):
            return None
        runs = [c for c in curvatures if isinstance(c, EKFACCurvature)]
        stacked = [
            EigenBlock(
                blk.weight,
                blk.bias,
                torch.stack([c.blocks[i].QA for c in runs]),
                torch.stack([c.blocks[i].QG for c in runs]),
                torch.stack([c.blocks[i].S for c in runs]),
            )
            for i, blk in enumerate(first.blocks)
        ]
        rest = torch.stack([c.rest_diag for c in runs])
        index = first.rest_index

        def apply(rows: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(rows)
            for blk in stacked:
                frame = blk.frame
                frame.scatter(blk.apply(frame.gather(rows)), out)
            out[:, index] = rows[:, index] * rest
            return out

        return apply

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_b \langle S_b, (Q_G^\top \Delta_b Q_A)^{2} \rangle` plus the rest."""
        row = d.unsqueeze(0)
        total = torch.dot(self.rest_diag * d[self.rest_index], d[self.rest_index])
        for blk in self.blocks:
            y = blk.rotate(blk.frame.gather(row)[0])
            total = total + (blk.S * y * y).sum()
        return total

    def diagonal_flat(self) -> torch.Tensor:
        r"""Per block :math:`Q_G^{2} S (Q_A^{2})^\top` (elementwise squares); the rest stored.

        :math:`F_{(o,i),(o,i)} = \sum_{pq} Q_{G,op}^2 S_{pq} Q_{A,iq}^2`.
        """
        out = torch.empty(1, self.numel, dtype=self.layout.dtype, device=self.layout.device)
        for blk in self.blocks:
            diag = (blk.QG * blk.QG) @ blk.S @ (blk.QA * blk.QA).T
            blk.frame.scatter(diag.unsqueeze(0), out)
        out[0, self.rest_index] = self.rest_diag
        return out.squeeze(0)

    def _dense(self) -> torch.Tensor:
        p = self.numel
        out = torch.zeros(p, p, dtype=self.layout.dtype, device=self.layout.device)
        for blk in self.blocks:
            idx = blk.frame.flat_index().to(out.device)
            q = torch.kron(blk.QG, blk.QA)
            out[idx.unsqueeze(1), idx.unsqueeze(0)] = (q * blk.S.reshape(1, -1)) @ q.T
        out[self.rest_index, self.rest_index] = self.rest_diag
        return out

    @property
    def nbytes(self) -> int:
        """Both eigenbases and the eigenvalues of every block, the rest's diagonal and index."""
        tensors = [t for blk in self.blocks for t in (blk.QA, blk.QG, blk.S)]
        tensors += [self.rest_diag, self.rest_index]
        return sum(t.numel() * t.element_size() for t in tensors)

    def frobenius_sq(self) -> float:
        r""":math:`\sum_b \|S_b\|_F^2 + \sum_{rest} f_i^2` (orthonormal eigenbases)."""
        blocks = sum(float(b.S.double().square().sum()) for b in self.blocks)
        return blocks + float(self.rest_diag.double().square().sum())

    def _inner(self, other: Curvature) -> float | NotImplementedType:
        r"""With EKFAC or KFAC over the same blocks, or with a dense matrix; otherwise not closed.

        EKFAC: :math:`\sum_{ij} s_i s'_j (q_i^\top q'_j)^2 = \langle S, M_G S' M_A^\top \rangle`
        with :math:`M_G = (Q_G^\top Q'_G)^{2}`, :math:`M_A = (Q_A^\top Q'_A)^{2}` (elementwise).
        KFAC: :math:`\sum_i s_i q_i^\top (G \otimes A) q_i = \langle S, \operatorname{diag}(Q_G^\top
        G Q_G) \operatorname{diag}(Q_A^\top A Q_A)^\top \rangle`. Dense: ``_dense_inner``.
        """
        if isinstance(other, (EKFACCurvature, KFACCurvature)) and _same_positions(self, other):
            total = float((self.rest_diag.double() * other.rest_diag.double()).sum())
            for x, y in zip(self.blocks, other.blocks, strict=True):
                qg, qa, s = x.QG.double(), x.QA.double(), x.S.double()
                if isinstance(y, EigenBlock):
                    mg = (qg.T @ y.QG.double()).square()
                    ma = (qa.T @ y.QA.double()).square()
                    total += float((s * (mg @ y.S.double() @ ma.T)).sum())
                else:
                    dg = ((qg.T @ y.G.double()) * qg.T).sum(1)
                    da = ((qa.T @ y.A.double()) * qa.T).sum(1)
                    total += float((s * torch.outer(dg, da)).sum())
            return total
        if isinstance(other, DenseCurvature):
            return self._dense_inner(other.matrix)
        return NotImplemented

    def _dense_inner(self, m: torch.Tensor) -> float:
        r""":math:`\sum_{pq} S_{pq} q_{pq}^\top M_{bb} q_{pq}`, one factor contracted at a time."""
        total = 0.0
        for blk in self.blocks:
            idx = blk.frame.flat_index().to(m.device)
            d_out, d_a = blk.S.shape
            sub = m[idx][:, idx].reshape(d_out, d_a, d_out, d_a).double()
            qg, qa = blk.QG.double(), blk.QA.double()
            left = torch.einsum("ap,abcd->pbcd", qg, sub)
            mid = torch.einsum("pbcd,cp->pbd", left, qg)  # [p, b, d]
            diag = ((mid @ qa) * qa.unsqueeze(0)).sum(1)  # [p, q]
            total += float((blk.S.double() * diag).sum())
        rest = self.rest_index.to(m.device)
        return total + float((self.rest_diag.double() * m[rest, rest].double()).sum())

    def _top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        r"""The k largest of the explicit eigenpairs, descending.

        :math:`(s_{pq}, Q_{G,:p} \otimes Q_{A,:q})` per block, :math:`(f_i, e_i)` for the rest.
        """
        values = torch.cat(
            [b.S.reshape(-1).double().cpu() for b in self.blocks] + [self.rest_diag.double().cpu()]
        )
        chosen = torch.argsort(values, descending=True)[:k]
        vecs = torch.zeros(self.numel, chosen.numel(), dtype=torch.float64)
        start = 0
        for blk in self.blocks:
            d_out, d_a = blk.S.shape
            hit = ((chosen >= start) & (chosen < start + d_out * d_a)).nonzero().squeeze(1)
            if hit.numel() == 0:  # none of this block's eigenpairs is among the k largest
                start += d_out * d_a
                continue
            p, q = (chosen[hit] - start) // d_a, (chosen[hit] - start) % d_a
            qg, qa = blk.QG.double().cpu()[:, p], blk.QA.double().cpu()[:, q]
            rows = blk.frame.flat_index().cpu()
            vecs[rows.unsqueeze(1), hit] = (qg.unsqueeze(1) * qa.unsqueeze(0)).reshape(-1, len(hit))
            start += d_out * d_a
        hit = (chosen >= start).nonzero().squeeze(1)
        vecs[self.rest_index.cpu()[chosen[hit] - start], hit] = 1.0
        return values[chosen].numpy(), vecs.numpy()


# -- fitting ---------------------------------------------------------------------------------------
class EKFACAccumulator(KFACAccumulator):
    """KFAC's running sums (first pass), then the second moments s in their eigenbases.

    What it holds does not grow with N (two factors and s per layer, the rest's diagonal), so,
    like KFAC, it never refuses a fit for memory (``check_memory``: the budget is the stored
    curvature's). The fit's own work memory is bounded too: the s pass's work tensors by the
    chunk size and ``WORK_BYTES``, and the first pass's captures kept for it by
    ``second_pass.CACHE_BYTES`` (timing.md's extra peak memory shows them, e.g. about 120 MiB
    more than KFAC on the tutorial network at N = 10,000).
    """

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        super().__init__(layout, plan, columns, n_total, options)
        self.eigen: dict[int, tuple[PlannedLayer, EigenBlock]] = {}
        self.live: dict[int, LiveBlock] = {}

    def rotate(self) -> None:
        """Eigendecompose each layer's KFAC factors (then dropped); s starts at zero."""
        for key, (layer, sums) in self.sums.items():
            with_bias = "bias" in layer.params
            A, G = sums.factors(self.n_total, with_bias)
            eig_a, eig_g = eigh_deflated(A), eigh_deflated(G)  # row-major, as torch.kron needs
            bias = self.layout.slice(layer.params["bias"]) if with_bias else None
            S = A.new_zeros(G.shape[0], A.shape[0])
            blk = EigenBlock(
                self.layout.slice(layer.params["weight"]), bias, eig_a.vectors, eig_g.vectors, S
            )
            self.eigen[key] = (layer, blk)
            self.live[key] = LiveBlock.of(layer, blk, eig_g.live, eig_a.live)
        self.sums = {}

    def scale_layers(self) -> list[PlannedLayer]:
        """The layers the second pass backpropagates to: the Kronecker ones only."""
        return [layer for layer, _ in self.eigen.values()]

    def update_scales(self, cap: Capture) -> None:
        """Add the chunk's projected squared gradients to each layer's s."""
        for lc in cap.layers:
            layer, live = self.eigen[id(lc.layer)][0], self.live[id(lc.layer)].block
            live.S += layer_scales(layer, lc.a, lc.g, live)

    def result(self) -> EKFACCurvature:  # type: ignore[override]
        """Blocks in layer order and the exact diagonal of the remaining parameters."""
        for key, (_, blk) in self.eigen.items():
            self.live[key].scatter(blk)
        self.live = {}  # the sub-blocks' copies of the bases
        blocks = [blk for _, blk in self.eigen.values()]
        rest = [self.layout.slice(n) for n in self.layout.names if n not in self.kron_names]
        index = torch.cat(
            [torch.arange(s.start, s.stop) for s in rest] or [torch.zeros(0, dtype=torch.long)]
        ).to(self.layout.device)
        budget = self.options["memory_budget"]
        rest, rule = self.flat[index].clone(), self.options.get("online_rule")
        return EKFACCurvature(self.layout, blocks, index, rest, budget, rule)


class EKFACEstimator(GridEstimator):
    """Two passes over the inputs in the same chunks: KFAC factors, then s (module docstring)."""

    def _fit(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        layout: ParamLayout,
    ) -> EKFACCurvature:
        n = inputs.shape[0]
        plan = make_plan(model, self.forward, inputs[:1], layout)
        check_labels(targets, plan.n_classes)
        labels = (
            ReplayedSamples(self.labels) if isinstance(self.labels, MonteCarlo) else self.labels
        )
        factors = FisherPass(model, self.forward, labels, plan, n)
        acc = EKFACAccumulator(layout, plan, factors.columns, n, self.options)
        kept = KeptCaptures()

        def first(cap: Capture) -> None:
            acc.update(cap)
            kept.keep(cap, acc.sums)

        self._sweep(factors, inputs, targets, acc.chunk_size(), first)
        acc.rotate()
        if acc.eigen and kept.chunks is not None:
            for cap in kept.chunks:
                acc.update_scales(cap)
        elif acc.eigen:
            if isinstance(labels, ReplayedSamples):
                labels.replay()
            kronecker = replace(plan, layers=acc.scale_layers(), generic=())
            scales = FisherPass(model, self.forward, labels, kronecker, n)
            self._sweep(scales, inputs, targets, acc.chunk_size(), acc.update_scales)
        return acc.result()

    @staticmethod
    def _sweep(
        fisher_pass: FisherPass,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        step: int,
        update: Callable[[Capture], None],
    ) -> None:
        """``update`` with the capture of each chunk of ``step`` inputs, in order."""
        n = inputs.shape[0]
        for start in range(0, n, step):
            chunk = slice(start, min(n, start + step))
            update(fisher_pass.capture(inputs[chunk], None if targets is None else targets[chunk]))


DECLARATION = GridStructure(
    "ekfac",
    EKFACAccumulator,
    ("exact", "mc", "empirical"),
    options=("online_rule",),
    online=sum_only_online(EKFAC_REFUSAL),
    estimator=EKFACEstimator,
    check=sum_only_check("ekfac", "its diagonal s lives in each task's own eigenbasis Q_G (x) Q_A"),
)
"""``ekfac-*``: the label modes of KFAC; online with ``online_rule = 'sum'`` only."""
