"""The rows of the timing tables: estimator names and variants, labelled as method labels are.

A row is an estimator name (``diag-exact``) or a *variant*: a name with the estimator options that
change the structure itself (``benchmark.methods``' ``LABEL_OPTIONS``), labelled exactly as an
experiment's method label without ``ewc `` (``kfac-exact factors=a-diag``; the label is
``benchmark.methods.label_of``'s and is read back with ``benchmark.methods.parse_label``).
``VARIANTS`` are timed by default beside every plain name (the ablation variants of README's
"Ablation options"); ``--names`` takes any valid label, e.g. ``--names "kfac-exact
factors=a-diag,diag-exact"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import estimators
from estimators.options import LAYER_GROUPS

from ..methods import LABEL_VALUES, label_of, parse_label
from ..methods.base import LABEL_OPTIONS
from ..models import make_model
from .measure import SetupError
from .workloads import MODEL

VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("kfac-exact", {"factors": "a-diag"}),
    ("kfac-exact", {"factors": "g-diag"}),
    ("kfac-exact", {"factors": "diag"}),
    ("kfac-exact", {"factors": "a-only"}),
    ("kfac-exact", {"layers": ["hidden"]}),
    ("kfac-exact", {"layers": ["output"]}),
    ("full-exact", {"output_curvature": "mean"}),
)
"""The variant rows timed by default, each ``(estimator name, structural options)``: KFAC's
``factors`` and ``layers`` ablations and the exact Fisher's averaged output curvature."""


LIST_OPTION = "layers="
"""The label option whose value is a comma-separated list (``benchmark.methods``)."""


def variant_label(name: str, options: Mapping[str, Any] | None = None) -> str:
    """``kfac-exact factors=a-diag``: the method label of ``ewc NAME`` with ``options``, minus ewc.

    Without options it is the name itself.
    """
    config = {"method": "ewc", "mode": "separate", "estimator": name}
    if options:
        config["estimator_options"] = dict(options)
    return label_of(config).removeprefix("ewc ")


def default_labels() -> tuple[str, ...]:
    """Every estimator name and every ``VARIANTS`` label, in table order (``order_labels``)."""
    plain = [(name, {}) for name in estimators.names()]
    return order_labels([*plain, *VARIANTS])


def order_labels(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[str, ...]:
    """Labels in table order, without duplicates.

    Names in ``estimators.names()`` order, each name's variants right after it: those of
    ``VARIANTS`` in its order, then others in the order given.
    """
    names = estimators.names()
    known = [variant_label(name, options) for name, options in VARIANTS]
    labels = [(name, variant_label(name, options)) for name, options in rows]

    def key(item: tuple[int, tuple[str, str]]) -> tuple[int, int, int]:
        given, (name, label) = item
        rank = known.index(label) if label in known else len(known) + given
        return names.index(name), -1 if label == name else rank, given

    return tuple(dict.fromkeys(label for _, (_, label) in sorted(enumerate(labels), key=key)))


def split_names(text: str) -> tuple[str, ...]:
    """Comma-separated labels, each stripped, its words single-spaced.

    A piece that does not start with an estimator name, after a label that ends in ``layers=``
    (the one option whose value is a list), continues that list: ``kfac-exact
    layers=1,4,diag-exact`` is two labels.

    Raises:
        SetupError: nothing given.
    """
    names = set(estimators.names())
    labels: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if (
            labels
            and labels[-1].split()[-1].startswith(LIST_OPTION)
            and piece.split()[0] not in names
        ):
            labels[-1] += "," + piece
        else:
            labels.append(" ".join(piece.split()))
    if not labels:
        raise SetupError(f"no estimator names given; {allowed_text()}")
    return tuple(labels)


def options_text() -> str:
    """What a variant's options may be, for error messages."""
    takes = ", ".join(f"{k} ({LABEL_VALUES[k][1]})" for k in LABEL_OPTIONS)
    examples = ", ".join(repr(variant_label(n, o)) for n, o in VARIANTS)
    return (
        f"a variant is an estimator name followed by key=value options of {takes}, e.g. {examples}"
    )


def allowed_text() -> str:
    """What a row label may be, for error messages."""
    return f"valid names: {', '.join(estimators.names())}; {options_text()}"


def check_names(labels: Sequence[str]) -> tuple[str, ...]:
    """Validate row labels (names or variants); table order (``order_labels``), no duplicates.

    Raises:
        SetupError: for unknown names (all of them named) or a bad variant, saying what is
            allowed.
    """
    valid = estimators.names()
    unknown = [label for label in labels if (label.split() or [""])[0] not in valid]
    if unknown:
        raise SetupError(
            f"unknown estimator name(s) {', '.join(map(repr, unknown))}; {allowed_text()}"
        )
    return order_labels([parse_variant(label) for label in labels])


def parse_variant(label: str) -> tuple[str, dict[str, Any]]:
    """``'kfac-exact factors=a-diag'`` -> ``('kfac-exact', {'factors': 'a-diag'})``, validated.

    Raises:
        SetupError: an unknown name, a malformed label or an option the estimator refuses, naming
            what is allowed.
    """
    words = label.split()
    if not words or words[0] not in estimators.names():
        shown = words[0] if words else label
        raise SetupError(f"unknown estimator name {shown!r} in {label!r}; {allowed_text()}")
    try:
        fields = parse_label(f"ewc {label}")
    except ValueError:
        bad = [w for w in words[1:] if not well_formed(w)]
        what = ", ".join(map(repr, bad)) or "an option"
        raise SetupError(
            f"bad variant {label!r}: {what} not understood; {options_text()}"
        ) from None
    name, options = fields["estimator"], dict(fields.get("estimator_options", {}))
    try:
        estimators.make(name, **options)
        check_layers(options.get("layers", ()))
    except ValueError as err:
        raise SetupError(f"bad variant {label!r}: {err}") from None
    return name, options


def well_formed(word: str) -> bool:
    """Whether ``word`` is ``key=value`` with a label option's key and a value of its form."""
    key, eq, text = word.partition("=")
    return bool(eq) and key in LABEL_OPTIONS and LABEL_VALUES[key][0](text) is not None


def check_layers(layers: Sequence[str]) -> None:
    """``layers`` words must be groups or Linear/Conv2d module names of the timed network.

    Raises:
        ValueError: another word, listing the groups and the layer names.
    """
    if all(w in LAYER_GROUPS for w in layers):
        return
    with torch.device("meta"):  # module names only: no memory, no draw from the global seed
        model = make_model(MODEL)
    kronecker = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    unknown = [w for w in layers if w not in LAYER_GROUPS and w not in kronecker]
    if unknown:
        raise ValueError(
            f"option 'layers': {', '.join(map(repr, unknown))} is not a layer of {MODEL}; "
            f"groups: {', '.join(map(repr, LAYER_GROUPS))}; its Linear layers: "
            f"{', '.join(map(repr, kronecker))}"
        )
