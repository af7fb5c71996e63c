r"""The libraries users already know, timed beside ours and checked against ours.

Optional extra: ``pip install -e '.[compare]'`` (backpack-for-pytorch, nngeometry,
curvlinops-for-pytorch). Without it, ``measure_compare`` returns the rows as skipped, saying which
package is missing.

Network: the tutorial network **without BatchNorm** (MLP 784-100-100-10, ReLU): BackPACK's
second-order extensions, nngeometry's layer collection and curvlinops' KFAC (Linear and Conv2d
only) do not support BatchNorm in eval mode the way our estimators do (ours replace it by its
elementwise affine map), so every row of this table, ours included, runs on the plain MLP.

What is compared (F is the mean over the N inputs of per-input Fisher matrices, as in ours):

================================  ==============  ================================================
theirs                            ours            conversion
================================  ==============  ================================================
BackPACK SumGradSquared           diag-empirical  x N (BackPACK's loss is the batch mean, so its
                                                  individual gradients carry a 1/N)
BackPACK DiagGGNExact             diag-exact      none (GGN = Fisher for softmax cross-entropy)
BackPACK DiagGGNMC (1)            diag-mc         none; sampled, compared against diag-exact
BackPACK KFLR                     kfac-exact      diag(G) x diag(A) per layer, bias from G
BackPACK KFAC (1 sample)          kfac-mc         as KFLR; sampled, compared against kfac-exact
nngeometry FIM PMatDiag           diag-exact      none
nngeometry FIM PMatKFAC           kfac-exact      ``get_diag()``
nngeometry FIM PMatEKFAC          ekfac-exact     ``update_diag`` (the eigenvalue correction) in
                                                  the fit; diagonal Q_G^2 S (Q_A^2)^T per layer
curvlinops KFAC type-2            kfac-exact      mean loss with ``num_data = N``,
                                                  ``separate_weight_and_bias=False`` (bias as the
                                                  input column of A, our layout): factors equal
curvlinops KFAC mc (1 sample)     kfac-mc         as type-2; sampled, compared against kfac-exact
curvlinops KFAC empirical         kfac-empirical  as type-2
curvlinops EKFAC type-2           ekfac-exact     as KFAC; diagonal Q_G^2 S (Q_A^2)^T per layer
================================  ==============  ================================================

(curvlinops' settings and why: ``costs.compare_curvlinops``; the diagonal conversions:
``costs.compare_common``.) What is timed is each library's whole fit, nothing deferred; for the
Kronecker and eigenbasis rows of nngeometry's EKFAC and curvlinops the diagonal is read outside
the timed call, as for ours.

Agreement is the relative difference of the diagonals, :math:`\|d - d_{ours}\| / \|d_{ours}\|`
(for the KFAC rows, the diagonal of the Kronecker approximation: a check of both factors and their
normalisation, not of the off-diagonal entries; for EKFAC, the diagonal of the eigen-corrected
matrix, a check of basis and corrected eigenvalues together). Sampled rows are compared against
the exact quantity they estimate, so they differ by sampling noise, O(1/sqrt(N)).

This module measures only; its table in timing.md is ``benchmark.report.timing.compare_section``.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
from torch import nn

import estimators

from ..device import synchronizer
from ..models import mlp
from ..timing_record import LIBRARIES, ratios
from .compare_common import External, eigen_block_diagonal, layer_diagonals
from .compare_curvlinops import curvlinops_methods
from .measure import Progress, TimedCall, interleaved_rounds
from .workloads import estimator_call, floor_pass, seeded

EXACT_OF = {
    "diag-mc": "diag-exact",
    "kfac-mc": "kfac-exact",
}
"""The ours-row a sampled row is checked against (default: the row's own ``ours``)."""


def versions() -> dict[str, str | None]:
    """The installed version of each library, None when it is missing."""
    out: dict[str, str | None] = {}
    for module, distribution in LIBRARIES.items():
        try:
            importlib.import_module(module)
            out[module] = metadata.version(distribution)
        except ImportError:
            out[module] = None
        except metadata.PackageNotFoundError:  # importable without its metadata (a checkout)
            out[module] = "unknown version"
    return out


def plain_network(device: str) -> nn.Module:
    """MLP 784-100-100-10 without BatchNorm, seeded, eval mode."""
    return seeded(lambda: mlp(hidden=100, depth=2), device)


# -- BackPACK ----------------------------------------------------------------------------------


def _backpack(extension: Callable[[], Any], field: str, scale_by_n: bool = False) -> Callable:
    """A fit function: one backward with a BackPACK extension; the flat diagonal."""

    def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from backpack import backpack, extend

        net = extend(copy.deepcopy(model))
        loss = extend(nn.CrossEntropyLoss())(net(x), y)
        with backpack(extension()):
            loss.backward()
        parts = [getattr(p, field) for p in net.parameters()]
        if field in ("kflr", "kfac"):
            parts = [
                kron_diagonal(f, p.shape) for f, p in zip(parts, net.parameters(), strict=True)
            ]
        flat = torch.cat([t.reshape(-1) for t in parts])
        return flat * x.shape[0] if scale_by_n else flat

    return fit


def kron_diagonal(factors: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Diagonal of BackPACK's Kronecker factors: ``[G, A]`` (weight) or ``[G]`` (bias)."""
    if len(factors) == 1:
        return torch.diagonal(factors[0])
    g, a = factors
    return (torch.diagonal(g)[:, None] * torch.diagonal(a)[None, :]).reshape(shape)


def backpack_methods() -> list[External]:
    """BackPACK's equivalents of our diag and KFAC estimators."""
    from backpack import extensions as ext

    return [
        External(
            "backpack",
            "SumGradSquared",
            "diag-empirical",
            False,
            _backpack(ext.SumGradSquared, "sum_grad_squared", True),
        ),
        External(
            "backpack",
            "DiagGGNExact",
            "diag-exact",
            False,
            _backpack(ext.DiagGGNExact, "diag_ggn_exact"),
        ),
        External(
            "backpack",
            "DiagGGNMC (1 sample)",
            "diag-mc",
            True,
            _backpack(lambda: ext.DiagGGNMC(mc_samples=1), "diag_ggn_mc"),
        ),
        External("backpack", "KFLR", "kfac-exact", False, _backpack(ext.KFLR, "kflr")),
        External(
            "backpack",
            "KFAC (1 sample)",
            "kfac-mc",
            True,
            _backpack(lambda: ext.KFAC(mc_samples=1), "kfac"),
        ),
    ]


# -- nngeometry --------------------------------------------------------------------------------


def nngeometry_fim(model: nn.Module, x: torch.Tensor, representation: str, corrected: bool) -> Any:
    """The nngeometry closed-form classification FIM of ``model`` on ``x`` as ``representation``.

    ``corrected`` (PMatEKFAC): also ``update_diag``, the second pass that replaces the KFAC
    eigenvalues by the eigenvalue correction; without it a PMatEKFAC is KFAC in its eigenbasis.
    """
    from nngeometry import object as objects
    from nngeometry.metrics import FIM
    from torch.utils.data import DataLoader, TensorDataset

    net = copy.deepcopy(model)  # nngeometry leaves hooks on the model it is given
    loader = DataLoader(TensorDataset(x), batch_size=min(len(x), 500))  # closed form: no labels
    fim = FIM(
        net,
        loader,
        getattr(objects, representation),
        variant="classif_logits",
        device=str(x.device),
    )
    if corrected:
        fim.update_diag(loader)
    return fim


def _nngeometry(representation: str) -> Callable:
    """A fit function: nngeometry's FIM as ``representation``; the flat diagonal."""

    def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nngeometry_fim(model, x, representation, corrected=False).get_diag()

    return fit


def _nngeometry_ekfac(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    """A fit function: nngeometry's eigenvalue-corrected PMatEKFAC (it has no ``get_diag``)."""
    return nngeometry_fim(model, x, "PMatEKFAC", corrected=True)


def nngeometry_ekfac_diagonal(fim: Any, model: nn.Module) -> torch.Tensor:
    r"""The flat diagonal of a PMatEKFAC: per layer :math:`(Q_G \circ Q_G) S (Q_A \circ Q_A)^\top`.

    ``fim.data`` is ``(evecs, diags)``: per layer id (the module name) ``(Q_A, Q_G)`` and S flat,
    row-major over ``[d_out, d_in + 1]`` (bias last, as ours).
    """
    evecs, diags = fim.data
    blocks = {name: eigen_block_diagonal(qg, diags[name], qa) for name, (qa, qg) in evecs.items()}
    return layer_diagonals(model, blocks)


def nngeometry_methods() -> list[External]:
    """The nngeometry equivalents of our diag-exact, kfac-exact and ekfac-exact."""
    return [
        External("nngeometry", "FIM PMatDiag", "diag-exact", False, _nngeometry("PMatDiag")),
        External("nngeometry", "FIM PMatKFAC", "kfac-exact", False, _nngeometry("PMatKFAC")),
        External(
            "nngeometry",
            "FIM PMatEKFAC",
            "ekfac-exact",
            False,
            _nngeometry_ekfac,
            nngeometry_ekfac_diagonal,
        ),
    ]


def external_methods(available: dict[str, str | None]) -> list[External]:
    """Every external method whose library is installed."""
    methods: list[External] = []
    if available.get("backpack"):
        methods += backpack_methods()
    if available.get("nngeometry"):
        methods += nngeometry_methods()
    if available.get("curvlinops"):
        methods += curvlinops_methods()
    return methods


# -- agreement ---------------------------------------------------------------------------------


def our_diagonal(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The flat diagonal of our estimator ``name`` (layout: ``named_parameters`` order)."""
    curvature = estimators.make(name).fit(model, x, y)
    return torch.cat([d.reshape(-1) for d in curvature.diagonal().values()])


def relative_difference(theirs: torch.Tensor, ours: torch.Tensor) -> float:
    r""":math:`\|d - d_{ours}\| / \|d_{ours}\|` in float64."""
    theirs, ours = theirs.double().flatten(), ours.double().flatten()
    if theirs.shape != ours.shape:
        raise ValueError(f"diagonals differ in size: {theirs.numel()} vs {ours.numel()}")
    return float((theirs - ours).norm() / ours.norm())


def agreement(
    method: External, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cache: dict
) -> dict[str, Any]:
    """The relative difference of ``method``'s diagonal from ours (or the error it raised)."""
    against = EXACT_OF.get(method.ours, method.ours)
    if against not in cache:
        cache[against] = our_diagonal(against, model, x, y)
    try:
        theirs = method.diagonal(method.fit(model, x, y), model)
        return {"against": against, "rel_diff": relative_difference(theirs, cache[against])}
    except Exception as err:  # a disagreement or failure is a finding, not a crash
        return {"against": against, "rel_diff": None, "error": f"{type(err).__name__}: {err}"}


def missing_note(available: dict[str, str | None]) -> str | None:
    """What to install for the missing libraries, or None when all are there."""
    missing = [LIBRARIES[m] for m, v in available.items() if v is None]
    if not missing:
        return None
    return (
        f"not installed: {', '.join(missing)}; their rows are skipped "
        "(install with `pip install -e '.[compare]'`)"
    )


# -- timed in the timing run -------------------------------------------------------------------

OURS = (
    "diag-empirical",
    "diag-exact",
    "diag-mc",
    "kfac-exact",
    "kfac-mc",
    "kfac-empirical",
    "ekfac-exact",
)
"""Our rows: every estimator some library shares (the ``ours`` of ``external_methods``)."""


def time_interleaved(
    calls: list[TimedCall], floor: TimedCall, repeats: int, sync: Callable[[], None], n: int
) -> None:
    """Warm up every call and the floor once, then time them in interleaved rounds."""
    bar = Progress(len(calls), f"N={n:,} vs other libraries")
    floor.warm_up(repeats, sync)
    for call in calls:
        call.warm_up(repeats, sync)
        bar.tick(call.name)
    bar.grow(sum(c.repeats for c in calls))
    interleaved_rounds(calls, floor, sync, bar.tick)
    bar.close()


def measure_compare(
    n: int, inputs: torch.Tensor, targets: torch.Tensor, repeats: int, device: str
) -> dict[str, Any]:
    """Ours and theirs on the plain MLP at N = ``n``: interleaved times, ratios, agreement."""
    available = versions()
    model = plain_network(device)
    x, y = inputs[:n], targets[:n]
    methods = external_methods(available)
    floor = TimedCall("floor", lambda: floor_pass(model, x, y), adaptive=False)
    ours = [estimator_call(name, model, x, y) for name in OURS]
    theirs = [
        TimedCall(f"{m.library} {m.label}", lambda m=m: m.fit(model, x, y), lambda _: {})
        for m in methods
    ]
    time_interleaved(ours + theirs, floor, repeats, synchronizer(device), n)
    floor_row = floor.finish()
    rows = []
    cache: dict[str, torch.Tensor] = {}
    for call, method in [(c, None) for c in ours] + list(zip(theirs, methods, strict=True)):
        row = call.finish()
        row.update(ratios(row, floor_row.get("median_s"), None))
        row.pop("naive_over_time", None)
        if method is None:
            row.update(library="ewc-bench", method=row["name"], ours=row["name"])
        else:
            row.update(library=method.library, method=method.label, ours=method.ours)
            row["sampled"] = method.sampled
            if row.get("status") == "ok":
                row.update(agreement(method, model, x, y, cache))
        rows.append(row)
    return {
        "n": n,
        "model": "mlp 784-100-100-10 (no BatchNorm)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": available,
        "missing": missing_note(available),
        "floor": floor_row,
        "rows": rows,
    }
