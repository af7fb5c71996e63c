r"""``kfac-*``: Kronecker-factored blocks for Linear and Conv2d layers, exact diagonal elsewhere.

For a layer with weight :math:`W \in \mathbb{R}^{d_{out} \times d_{in}}` (a Conv2d weight viewed
as ``[C_out, C_in k_h k_w]``) and bias :math:`b`, the block of F over :math:`[W \mid b]` flattened
row-major is approximated by :math:`G \otimes A` (Martens & Grosse, 2015; Grosse & Martens, 2016
for convolutions, see ``layers.conv2d``), with

.. math::
    A = \operatorname{mean}_n \bar a_n \bar a_n^\top, \quad \bar a_n = [a_n; 1], \qquad
    G = \operatorname{mean}_n \sum_k g_{nk} g_{nk}^\top,

where :math:`g_{nk}` is the gradient of the k-th weighted loss column (label mode) with respect to
the layer's output. The block is then split into the weight and bias entries of the parameter
layout. Blocks between layers are zero. Every other parameter (BatchNorm affine, layers without
closed forms) gets its exact diagonal. Quadratic forms use
:math:`\operatorname{vec}(\Delta)^\top (G \otimes A) \operatorname{vec}(\Delta) =
\langle G \Delta, \Delta A \rangle` with :math:`\Delta = [\Delta W \mid \Delta b]`.

Variants for ablations (options; every one keeps the exact diagonal outside its blocks):

- ``factors``: which parts of the Kronecker structure are kept. ``full`` (default):
  :math:`G \otimes A`; ``a-diag``: :math:`G \otimes \operatorname{diag}(A)`; ``g-diag``:
  :math:`\operatorname{diag}(G) \otimes A`; ``diag``: :math:`\operatorname{diag}(G) \otimes
  \operatorname{diag}(A)`, a diagonal curvature with entries :math:`G_{ii} A_{jj}`
  (``KFACDiagCurvature``, which adds online like any diagonal); ``a-only``: :math:`I \otimes A`,
  the feature penalty :math:`\sum_l \operatorname{tr}(\Delta_l A_l \Delta_l^\top)` without any
  output-gradient factor. Diagonal or identity factors are stored as dense matrices, so every
  closed form of ``KFACCurvature`` holds unchanged.
- ``layers``: the layers that get Kronecker blocks, by module name (``model.named_modules()``,
  e.g. ``'1'`` or ``'trunk.0'``) or by group: ``all`` (default: every Linear/Conv2d that runs once
  per forward), ``output`` (the one the forward runs last: the layer that outputs the logits),
  ``hidden`` (the others that run). Every other parameter gets its exact diagonal.

Online EWC (``online_rule``: ``sum``, ``n-weighted``, ``balanced`` or ``nearest``; see
``kfac_online``) says how the fits of successive tasks combine; without it KFAC curvatures refuse
to add (``factors = 'diag'`` adds exactly, as any diagonal, and takes no rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import NotImplementedType
from typing import Any

import torch

from .curvature import DEFAULT_MEMORY_BUDGET, Curvature
from .diag import DiagCurvature, add_diagonal
from .estimator import Accumulator
from .fitting import Capture, Plan, PlannedLayer
from .full import DenseCurvature
from .kfac_online import OnlineState, combine
from .layers.base import KroneckerSums
from .layout import ParamLayout
from .options import LAYER_GROUPS
from .registry import GridStructure

KFAC_REFUSAL = (
    "a sum of Kronecker products is not a Kronecker product; pass online_rule (sum, n-weighted, "
    "balanced or nearest) to choose how tasks combine"
)
"""Why KFAC curvatures fitted without ``online_rule`` are not accumulated online."""


@dataclass
class KroneckerBlock:
    r""":math:`G \otimes A` over ``[W | b]``; ``weight``/``bias`` are slices of the flat layout."""

    weight: slice
    bias: slice | None
    A: torch.Tensor
    G: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of the weight matrix (without the bias column)."""
        return self.G.shape[0], self.A.shape[0] - (self.bias is not None)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        r"""Flat vectors ``rows`` ``[k, P]`` as matrices :math:`[\Delta W | \Delta b]`."""
        d_out, d_in = self.shape
        k = rows.shape[0]
        w = rows[:, self.weight].reshape(k, d_out, d_in)
        if self.bias is None:
            return w
        return torch.cat([w, rows[:, self.bias].reshape(k, d_out, 1)], dim=2)

    def scatter(self, r: torch.Tensor, out: torch.Tensor) -> None:
        """Write matrices ``[k, d_out, d_in(+1)]`` back into flat vectors ``out`` ``[k, P]``."""
        d_in = self.shape[1]
        k = r.shape[0]
        out[:, self.weight] = r[:, :, :d_in].reshape(k, -1)
        if self.bias is not None:
            out[:, self.bias] = r[:, :, d_in]

    def flat_index(self) -> torch.Tensor:
        """Flat positions of the block's entries in ``[W | b]`` row-major order."""
        d_out, d_in = self.shape
        w = torch.arange(self.weight.start, self.weight.stop).reshape(d_out, d_in)
        if self.bias is None:
            return w.reshape(-1)
        b = torch.arange(self.bias.start, self.bias.stop).reshape(d_out, 1)
        return torch.cat([w, b], dim=1).reshape(-1)


class KFACCurvature(Curvature):
    """Kronecker blocks plus an exact diagonal over the remaining parameters.

    ``online_rule`` (a fit's option, see ``kfac_online``) lets it add online; ``n_inputs`` is the
    number of inputs it was fitted on and ``online_state`` what a combination of tasks keeps.
    """

    structure = "kfac"
    inner_cost = 2
    online_refusal = KFAC_REFUSAL

    def __init__(
        self,
        layout: ParamLayout,
        blocks: list[KroneckerBlock],
        rest_index: torch.Tensor,
        rest_diag: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        variant: str = "",
        online_rule: str | None = None,
        n_inputs: int | None = None,
        online_state: OnlineState | None = None,
    ) -> None:
        super().__init__(layout, memory_budget)
        self.blocks = blocks
        self.rest_index = rest_index
        self.rest_diag = rest_diag
        self.variant = variant
        """The options that made it, when not the defaults (``a-diag blocks 1,4``)."""
        self.allow_online(online_rule)
        self.n_inputs = n_inputs
        self.online_state = online_state

    @property
    def summary(self) -> str:
        """``kfac``, ``kfac <variant>`` for the ablation options, then ``online <rule>``."""
        parts = ["kfac", self.variant, f"online {self.online_rule}" if self.online_rule else ""]
        return " ".join(p for p in parts if p)

    def _matmat(self, m: torch.Tensor) -> torch.Tensor:
        rows = m.T.contiguous()  # [k, P]: each block's entries are contiguous within a row
        out = torch.empty_like(rows)
        for blk in self.blocks:
            blk.scatter(blk.G @ blk.gather(rows) @ blk.A, out)
        out[:, self.rest_index] = rows[:, self.rest_index] * self.rest_diag
        return out.T

    @classmethod
    def _stacked_matmul(
        cls, curvatures: Sequence[Curvature]
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        r"""Per block one batched :math:`G_s [\Delta W | \Delta b]_s A_s` over the S runs.

        None unless every curvature has the first one's blocks (same layers, same layout).
        """
        first = curvatures[0]
        assert isinstance(first, KFACCurvature)
        if not all(isinstance(c, KFACCurvature) and first._same_blocks(c) for c in curvatures):
            return None
        kfacs = [c for c in curvatures if isinstance(c, KFACCurvature)]
        a_s = [torch.stack([c.blocks[i].A for c in kfacs]) for i in range(len(first.blocks))]
        g_s = [torch.stack([c.blocks[i].G for c in kfacs]) for i in range(len(first.blocks))]
        rest = torch.stack([c.rest_diag for c in kfacs])
        index = first.rest_index

        def apply(rows: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(rows)
            for blk, a, g in zip(first.blocks, a_s, g_s, strict=True):
                blk.scatter(g @ blk.gather(rows) @ a, out)
            out[:, index] = rows[:, index] * rest
            return out

        return apply

    def _quadratic(self, d: torch.Tensor) -> torch.Tensor:
        row = d.unsqueeze(0)
        total = torch.dot(self.rest_diag * d[self.rest_index], d[self.rest_index])
        for blk in self.blocks:
            delta = blk.gather(row)[0]
            total = total + ((blk.G @ delta) * (delta @ blk.A)).sum()
        return total

    def diagonal_flat(self) -> torch.Tensor:
        r""":math:`\operatorname{diag}(G)\operatorname{diag}(A)^\top` per block; the rest stored."""
        out = torch.empty(1, self.numel, dtype=self.layout.dtype, device=self.layout.device)
        for blk in self.blocks:
            outer = torch.outer(blk.G.diagonal(), blk.A.diagonal())
            blk.scatter(outer.unsqueeze(0), out)
        out[0, self.rest_index] = self.rest_diag
        return out.squeeze(0)

    def _dense(self) -> torch.Tensor:
        p = self.numel
        out = torch.zeros(p, p, dtype=self.layout.dtype, device=self.layout.device)
        for blk in self.blocks:
            idx = blk.flat_index().to(out.device)
            out[idx.unsqueeze(1), idx.unsqueeze(0)] = torch.kron(blk.G, blk.A)
        out[self.rest_index, self.rest_index] = self.rest_diag
        return out

    @property
    def nbytes(self) -> int:
        """Both factors of every block, the rest's diagonal and its index (and kept factors)."""
        tensors = [t for blk in self.blocks for t in (blk.A, blk.G)]
        tensors += [self.rest_diag, self.rest_index]
        kept = self.online_state.nbytes if self.online_state is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + kept

    def _add(self, other: Curvature, decay: float) -> Curvature | NotImplementedType:
        """``decay * self + other`` by the fits' ``online_rule`` (``kfac_online.combine``)."""
        if self.online_rule is None or not isinstance(other, KFACCurvature):
            return NotImplemented
        return combine(self, other, decay)

    def frobenius_sq(self) -> float:
        r""":math:`\sum_b \|G_b\|_F^2 \|A_b\|_F^2 + \sum_{rest} f_i^2`."""
        blocks = sum(
            float(b.G.double().square().sum()) * float(b.A.double().square().sum())
            for b in self.blocks
        )
        return blocks + float(self.rest_diag.double().square().sum())

    def _inner(self, other: Curvature) -> float | NotImplementedType:
        r"""With KFAC over the same blocks, or with a dense matrix; otherwise not closed.

        Same blocks: :math:`\langle G \otimes A, G' \otimes A' \rangle = \langle G, G'
        \rangle \langle A, A' \rangle` block by block, plus the rest's diagonals.
        """
        if isinstance(other, KFACCurvature) and self._same_blocks(other):
            blocks = sum(
                float((x.G.double() * y.G.double()).sum())
                * float((x.A.double() * y.A.double()).sum())
                for x, y in zip(self.blocks, other.blocks, strict=True)
            )
            return blocks + float((self.rest_diag.double() * other.rest_diag.double()).sum())
        if isinstance(other, DenseCurvature):
            return self._dense_inner(other.matrix)
        return NotImplemented

    def _same_blocks(self, other: KFACCurvature) -> bool:
        """Same layers, same layout: then the inner product splits block by block."""
        mine = [(x.weight, x.bias) for x in self.blocks]
        if mine != [(y.weight, y.bias) for y in other.blocks]:
            return False
        return torch.equal(self.rest_index.cpu(), other.rest_index.cpu())

    def _dense_inner(self, m: torch.Tensor) -> float:
        r""":math:`\langle G \otimes A, M_{bb}\rangle = \sum G_{ac} A_{bd} M_{(a,b),(c,d)}`."""
        total = 0.0
        for blk in self.blocks:
            idx = blk.flat_index().to(m.device)
            d_out, d_a = blk.G.shape[0], blk.A.shape[0]
            sub = m[idx][:, idx].reshape(d_out, d_a, d_out, d_a).double()
            total += float(torch.einsum("ac,bd,abcd->", blk.G.double(), blk.A.double(), sub))
        rest = self.rest_index.to(m.device)
        return total + float((self.rest_diag.double() * m[rest, rest].double()).sum())


class KFACDiagCurvature(DiagCurvature):
    r""":math:`\operatorname{diag}(G) \otimes \operatorname{diag}(A)` per block, exact elsewhere."""

    structure = "kfac-diag"


def layer_name(layer: PlannedLayer) -> str:
    """A Kronecker layer's module name, read off its weight's parameter name (``trunk.0``)."""
    return layer.params["weight"].rpartition(".")[0]


def select_layers(
    plan: Plan, candidates: list[PlannedLayer], wanted: tuple[str, ...]
) -> list[PlannedLayer]:
    """The ``candidates`` the ``layers`` option names (module names or groups), in plan order.

    Groups: ``all`` is every candidate; ``output`` the one the probe's forward ran last;
    ``hidden`` the others it ran (``Plan.called``).

    Raises:
        ValueError: a name that is neither a group nor a candidate, listing both.
    """
    position = {m: i for i, m in enumerate(plan.called)}
    ran = sorted((c for c in candidates if c.module in position), key=lambda c: position[c.module])
    groups = {"all": candidates, "hidden": ran[:-1], "output": ran[-1:]}
    by_name = {layer_name(c): c for c in candidates}
    unknown = [w for w in wanted if w not in groups and w not in by_name]
    if unknown:
        raise ValueError(
            f"option 'layers': {', '.join(map(repr, unknown))} is not a Kronecker layer of this "
            "model (a Linear or Conv2d with a trainable weight that runs once per forward); its "
            f"Kronecker layers: {', '.join(map(repr, by_name)) or 'none'}; groups: "
            f"{', '.join(map(repr, LAYER_GROUPS))}"
        )
    chosen = {id(c) for w in wanted for c in groups.get(w, [by_name.get(w)])}
    return [c for c in candidates if id(c) in chosen]


def variant_factors(
    A: torch.Tensor, G: torch.Tensor, factors: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's ``(A, G)`` for the ``factors`` option (see the module docstring)."""
    if factors in ("a-diag", "diag"):
        A = torch.diag(A.diagonal())
    if factors in ("g-diag", "diag"):
        G = torch.diag(G.diagonal())
    if factors == "a-only":
        G = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return A, G


class KFACAccumulator(Accumulator):
    """Running sums of the Kronecker factors, and of the exact diagonal for the rest.

    Options ``factors`` and ``layers`` (absent for subclasses that do not declare them: the
    defaults) choose the variant.
    """

    def __init__(
        self, layout: ParamLayout, plan: Plan, columns: int, n_total: int, options: dict[str, Any]
    ) -> None:
        super().__init__(layout, plan, columns, n_total, options)
        self.flat = torch.zeros(layout.numel, dtype=layout.dtype, device=layout.device)
        self.sums: dict[int, tuple[PlannedLayer, KroneckerSums]] = {}
        self.factors = options.get("factors", "full")
        self.layers = options.get("layers", ("all",))
        candidates = [
            layer
            for layer in plan.layers
            if layer.rule.kfac_shape(layer.module) is not None and "weight" in layer.params
        ]
        for layer in select_layers(plan, candidates, self.layers):
            shape = layer.rule.kfac_shape(layer.module)
            self.sums[id(layer)] = (layer, KroneckerSums.zeros(*shape, like=self.flat))
        self.kron_names = {n for lay, _ in self.sums.values() for n in lay.params.values()}

    @classmethod
    def check_memory(
        cls, layout: ParamLayout, columns: int, n_inputs: int, options: dict[str, Any]
    ) -> None:
        """Never short of memory (nothing grows with N); refuses unknown ``layers`` names early.

        A module name must own a weight parameter of the layout (whether it is a Kronecker layer
        is known only at ``fit``), so that a sweep's preflight catches a typo before training.

        Raises:
            ValueError: naming the modules with weights.
        """
        owners = [n.rpartition(".")[0] for n in layout.names if n.rpartition(".")[2] == "weight"]
        wanted = options.get("layers", ("all",))
        unknown = [w for w in wanted if w not in LAYER_GROUPS and w not in owners]
        if unknown:
            raise ValueError(
                f"option 'layers': no module {', '.join(map(repr, unknown))} with a weight in "
                f"this model; modules with weights: {', '.join(map(repr, owners)) or 'none'}; "
                f"groups: {', '.join(map(repr, LAYER_GROUPS))}"
            )

    def update(self, cap: Capture) -> None:
        """Add the chunk's factor sums; exact diagonal for parameters outside the blocks."""
        for lc in cap.layers:
            entry = self.sums.get(id(lc.layer))
            if entry is not None:
                entry[0].rule.kfac_update(entry[0].module, lc.a, lc.g, entry[1])
        add_diagonal(self.flat, cap, self.layout, skip=self.kron_names)

    def result(self) -> KFACCurvature | KFACDiagCurvature:
        """Blocks in layer order and the diagonal of the remaining parameters.

        ``factors = 'diag'``: the blocks' diagonals :math:`G_{ii} A_{jj}` and the rest's, as one
        ``KFACDiagCurvature``.
        """
        blocks = []
        for layer, sums in self.sums.values():
            with_bias = "bias" in layer.params
            A, G = variant_factors(*sums.factors(self.n_total, with_bias), self.factors)
            bias = self.layout.slice(layer.params["bias"]) if with_bias else None
            blocks.append(KroneckerBlock(self.layout.slice(layer.params["weight"]), bias, A, G))
        budget = self.options["memory_budget"]
        if self.factors == "diag":
            flat = self.flat.clone()
            for blk in blocks:
                blk.scatter(torch.outer(blk.G.diagonal(), blk.A.diagonal())[None], flat[None])
            return KFACDiagCurvature(self.layout, flat, budget)
        rest = [self.layout.slice(n) for n in self.layout.names if n not in self.kron_names]
        index = torch.cat(
            [torch.arange(s.start, s.stop) for s in rest] or [torch.zeros(0, dtype=torch.long)]
        )
        index = index.to(self.layout.device)
        return KFACCurvature(
            self.layout,
            blocks,
            index,
            self.flat[index].clone(),
            budget,
            self._variant(),
            online_rule=self.options.get("online_rule"),
            n_inputs=self.n_total,
        )

    def _variant(self) -> str:
        """``a-diag blocks 1,4``: the options that differ from the defaults, for the summary."""
        parts = [] if self.factors == "full" else [self.factors]
        if tuple(self.layers) != ("all",):
            names = [layer_name(layer) for layer, _ in self.sums.values()]
            parts.append("blocks " + (",".join(names) or "none"))
        return " ".join(parts)


def online_rule(options: Mapping[str, Any]) -> str | None:
    """Online with an ``online_rule``, or with ``factors = 'diag'`` (a diagonal curvature)."""
    return None if options["factors"] == "diag" or options["online_rule"] else KFAC_REFUSAL


def check_options(options: Mapping[str, Any]) -> None:
    """``online_rule`` needs Kronecker factors: ``factors = 'diag'`` has none to combine.

    Raises:
        ValueError: both given, saying why and what to do.
    """
    if options["online_rule"] is not None and options["factors"] == "diag":
        raise ValueError(
            f"option 'online_rule' ({options['online_rule']!r}) combines Kronecker factors, and "
            "factors='diag' makes a diagonal curvature, which adds online exactly with no rule: "
            "leave online_rule unset, or use factors full, a-diag, g-diag or a-only"
        )


DECLARATION = GridStructure(
    "kfac",
    KFACAccumulator,
    ("exact", "mc", "empirical"),
    options=("factors", "layers", "online_rule"),
    online=online_rule,
    check=check_options,
)
"""``kfac-*``: online with an ``online_rule`` (``kfac_online``) or ``factors = 'diag'``."""
