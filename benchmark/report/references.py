"""Which runs each method is compared with: its *reference*, an ``ewc diag-exact`` label.

Runs of one method label that differ in a setting get a suffix (``outcomes.display_labels``):
``ewc diag-exact (fisher_samples=20)``, ``ewc kfac-exact (fisher_samples=20)``. In a report
section and BatchNorm mode, the reference of a method label L is

- ``ewc diag-exact`` itself when no label there has the suffix of a variant of it (the plain
  label, whether or not it ran: every report without variants pairs as it always did);
- else the variant ``ewc diag-exact (s_1=v_1, ...)`` whose runs' configs agree with L's runs'
  on every setting :math:`s_i` its suffix names (``setting_text(config[s_i])`` equal): the
  variants differ in exactly those settings, so at most one agrees;
- None when variants ran but none agrees (L is then not compared).

A reference variant is its own reference. So ``ewc kfac-exact (fisher_samples=20)`` is paired
with ``ewc diag-exact (fisher_samples=20)``, and an unsuffixed ``ewc lowrank-exact rank=200``
whose runs used ``fisher_samples = 1000`` with ``ewc diag-exact (fisher_samples=1000)``. The
verdict, the results tables and the forest plot all pair through ``references``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..outcomes import Run, bn_modes, method_labels, sequences, setting_text

REFERENCE = "ewc diag-exact"
"""The reference method: the diagonal Fisher with exact labels, the common EWC default."""
SUFFIX_FIELD = re.compile(r"(?:^|, )([A-Za-z_]\w*)=")
"""A setting's name in a label suffix ``(name=value, name=value)``."""


def base_label(label: str) -> str:
    """The label without its variant suffix: ``ewc kfac-exact (fisher_samples=20)`` -> ..."""
    return label.partition(" (")[0]


def suffix_fields(label: str) -> list[str]:
    """The settings a label's variant suffix names (``[]`` without a suffix)."""
    _, sep, rest = label.partition(" (")
    return SUFFIX_FIELD.findall(rest.removesuffix(")")) if sep else []


def is_reference(label: str, reference: str = REFERENCE) -> bool:
    """Whether the label is the reference method (default ``REFERENCE``) or one of its variants."""
    return base_label(label) == reference


def label_config(runs: Iterable[Run], sequence: str, bn: str, label: str) -> dict[str, Any]:
    """The config of the label's first run in the section and mode (``{}`` when none ran)."""
    for r in runs:
        if r.sequence == sequence and r.bn == bn and r.label == label:
            return r.record.config
    return {}


def references(
    runs: Sequence[Run],
    sequence: str,
    bn: str,
    reference: str = REFERENCE,
    ignore: tuple[str, ...] = (),
) -> dict[str, str | None]:
    """``label -> its reference`` for every method label of the section and mode.

    ``reference``: the method every other is paired with (default the diagonal; the full-Fisher
    section pairs with ``ewc full-exact`` by the same rules). ``ignore``: suffix settings that
    do not have to agree (the full Fisher's ``estimator_options``, which no structure shares).
    """
    labels = method_labels(runs, sequence, bn)
    variants = [lab for lab in labels if is_reference(lab, reference) and lab != reference]
    if not variants:
        return {lab: reference for lab in labels}
    configs = {lab: label_config(runs, sequence, bn, lab) for lab in labels}
    out: dict[str, str | None] = {}
    for lab in labels:
        mine = configs[lab]
        out[lab] = next(
            (
                ref
                for ref in variants
                if all(
                    setting_text(mine.get(f)) == setting_text(configs[ref].get(f))
                    for f in suffix_fields(ref)
                    if f not in ignore
                )
            ),
            None,
        )
    return out


def reference_of(runs: Sequence[Run], sequence: str, bn: str, label: str) -> str | None:
    """The reference of one label (``references``)."""
    return references(runs, sequence, bn).get(label)


def compared(refs: dict[str, str | None]) -> dict[str, str]:
    """``label -> reference`` of the labels paired with a reference other than themselves."""
    return {lab: ref for lab, ref in refs.items() if ref is not None and ref != lab}


def reference_text(refs: Iterable[str | None]) -> str:
    """The one reference used, or ``its ewc diag-exact variant`` when they differ."""
    used = {ref for ref in refs if ref is not None}
    return next(iter(used)) if len(used) == 1 else f"its {REFERENCE} variant"


def variant_fields(refs: Iterable[str | None]) -> list[str]:
    """The settings named by the suffixes of the references used (``[]``: plain reference)."""
    return sorted({f for ref in refs if ref is not None for f in suffix_fields(ref)})


def any_variant_reference(runs: Sequence[Run]) -> bool:
    """Whether some section and mode of the runs pairs against a suffixed reference."""
    return any(
        variant_fields(references(runs, seq, bn).values())
        for seq in sequences(runs)
        for bn in bn_modes(runs, seq)
    )
