"""Every colour decision of every report figure: one fixed colour per method or estimator label.

The rule: a label's structure (diag, kfac, ekfac, lowrank, full; identity for l2; mas) picks a
hue family, and its label mode (exact, mc, empirical, batched, argmax) the shade within it; a
low-rank label's rank (``rank=20``) picks the shade on a fixed 1-2-5 ladder instead. A label
therefore has the same colour in every figure of every report (REPORT.md, STUDY.md, scaling.md),
whatever else a figure shows. Shades of one family are far apart in lightness or hue (no pair
that looks alike, none near white): ``tests/test_figures.py`` checks that the labels of each
experiment are at least ``MIN_DELTA_E`` apart in CIELAB.

``ewc <name>``, ``ewc-online <name>``, ``<name> (setting=...)`` and ``<name>`` share a colour;
``line_style`` and ``marker`` tell the online mode apart. Neutral colours (grids, bands, the
reference line at zero, missing cells) are named here too, so that no other module of
``benchmark.report`` spells a colour. matplotlib is not imported here.
"""

from __future__ import annotations

import math
import zlib

SHADES = {
    "diag": ("#08306b", "#2b7bba", "#8cc4ec", "#3b4cc0", "#1aa3b8"),
    "kfac": ("#2ca25f", "#00441b", "#93c83e"),
    "ekfac": ("#016c59", "#3fb8a8", "#9ad8d0"),
    "lowrank": ("#d94801", "#7f2704", "#fdae6b", "#b2182b", "#e6ab02"),
    "full": ("#3f007d", "#9e5fd0", "#d4b9f0"),
}
"""Per structure, a hue family, one shade per label mode (``LABEL_MODES`` order).

diag: navy, mid blue, light blue, indigo, cyan; kfac: greens; ekfac: teals; lowrank: orange,
brown, light orange, dark red, gold; full: purples.
"""
LABEL_MODES = ("exact", "mc", "empirical", "batched", "argmax")
"""The shade of a label mode within its structure's family (``SHADES`` order)."""
FIXED_COLOURS = {
    "floor": "#000000",
    "joint": "#404040",
    "baseline": "#8c8c8c",
    "identity": "#8c6d31",
    "l2": "#8c6d31",
    "mas": "#c51b7d",
}
"""Labels outside the structure x label-mode grid (l2 is the identity curvature's penalty)."""
FAMILY_OF_FIXED = {"identity": "l2", "l2": "l2", "mas": "mas"}
"""The family (lambda-curve panel) of the penalised labels outside the grid."""
FAMILY_ORDER = ("diag", "kfac", "ekfac", "lowrank", "full", "l2", "mas")
"""The order of the families' panels (unknown families after, alphabetically)."""
OTHER_COLOUR = "#bdbdbd"
"""Any label the palette does not know (light grey)."""
MIN_DELTA_E = 20.0
"""Smallest CIELAB distance (CIE76) between two labels of one experiment: about nine times the
just-noticeable difference (2.3), so that two lines or dots are told apart at a glance."""

RANK_LADDER_SHIFT = 1
"""Shifts the rank ladder so that ``rank=20`` gets the family's first shade, ``rank=200`` its
fourth (the default experiment's two ranks: orange and dark red)."""

# Neutral colours: not methods.
REFERENCE = "#000000"
"""The exact reference in a study figure, the zero line of a forest plot."""
GUIDE = "#7f7f7f"
"""Guide lines (1/b, budgets' limits drawn dotted), medians of per-seed dots."""
ALERT = "#d62728"
"""A limit or a refusal (the memory budget, a dense Fisher that did not fit)."""
MISSING_CELL = "#e0e0e0"
"""Heatmap cells without a value (not yet learnt, or no run)."""
GRID_ALPHA = 0.3
PART_COLOURS = ("#d9d9d9", "#252525", "#737373", "#ffffff")
"""The parts of a run's time split (training, penalty, estimation, evaluation): greys, so that no
part reads as a method; the long training part light, the short penalty and estimation parts
dark enough to show, evaluation white (bars have a black edge)."""
SEQUENTIAL_CMAP = "viridis"
"""Accuracy matrices."""
TASK_CMAP = "plasma"
"""Tasks of a sequence, dark (first) to light (last): an order, never a method's hue family."""
TASK_CMAP_TOP = 0.85
"""Where the task colours stop on ``TASK_CMAP`` (its last shades are near white)."""
DIVERGING_CMAP = "RdBu_r"
"""Signed values around zero (Fisher entries)."""
TEXT_DARK = "#000000"
TEXT_LIGHT = "#ffffff"
ONLINE_PREFIX = "ewc-online "


def estimator_of(label: str) -> str:
    """The estimator (or method) of a label: ``ewc-online kfac-mc (gamma=0.9)`` -> ``kfac-mc``.

    Label options stay: ``ewc lowrank-exact rank=20`` -> ``lowrank-exact rank=20``; a mode
    suffix goes: ``mas-online`` -> ``mas``.
    """
    base = label.partition(" (")[0]
    for prefix in (ONLINE_PREFIX, "ewc "):
        if base.startswith(prefix):
            base = base[len(prefix) :]
            break
    return base.removesuffix("-online")


def _options(name: str) -> tuple[str, dict[str, str]]:
    """``lowrank-exact rank=20`` -> (``lowrank-exact``, ``{rank: "20"}``): the label options."""
    head, *tokens = name.split()
    options = {}
    for token in tokens:
        key, _, value = token.partition("=")
        if value:
            options[key] = value
    return head, options


def family(label: str) -> str:
    """The hue family of a label (one lambda-curve panel each).

    A structure (``diag``, ..., ``full``), ``l2``, ``mas``, or else the label's own name
    (``baseline``, ``joint``, unknown labels).
    """
    name, _ = _options(estimator_of(label))
    if name in FAMILY_OF_FIXED:
        return FAMILY_OF_FIXED[name]
    structure = name.partition("-")[0]
    return structure if structure in SHADES else name


def family_sort_key(name: str) -> tuple[int, str]:
    """Panels in ``FAMILY_ORDER``, others after it by name."""
    order = list(FAMILY_ORDER)
    return (order.index(name) if name in order else len(order), name)


def rank_step(rank: int) -> int:
    """A rank's step on the 1-2-5 ladder: 10 -> 3, 20 -> 4, 50 -> 5, 100 -> 6, 200 -> 7."""
    return round(3 * math.log10(max(rank, 1)))


VARIANT_COLOURS = {
    "factors=a-diag": "#ff1744",
    "factors=g-diag": "#b86c08",
    "factors=diag": "#fb8072",
    "factors=a-only": "#f781bf",
    "layers=hidden": "#9a9a00",
    "layers=output": "#67001f",
    "output_curvature=mean": "#ff7f00",
}
"""The Kronecker ablation's variants (issue 13) appear side by side, more of them than one hue
family has shades far enough apart: each gets its own hue, outside the families of the
structures they are shown with (their labels name the structure they vary)."""


ONLINE_RULE_COLOURS = {
    ("kfac", "sum"): "#2ca02c",
    ("kfac", "n-weighted"): "#637939",
    ("kfac", "balanced"): "#8c564b",
    ("kfac", "nearest"): "#7b4173",
    ("ekfac", "sum"): "#756bb1",
}
"""Online Kronecker-factored EWC with each ``online_rule`` (issue 12): the rules appear side by
side in the ``full`` experiment, beside their structure's own shades; each gets a hue at least
``MIN_DELTA_E`` from every colour of the experiments (tested)."""


def colour(label: str) -> str:
    """The fixed colour of a method or estimator label, the same in every figure of every report.

    ``ewc <name>``, ``ewc-online <name>``, ``<name> (setting=...)`` and ``<name>`` share the
    colour of ``<name>``. A ``rank=K`` option moves the shade along its family by ``K``'s step on
    the 1-2-5 ladder (``rank_step``), cycling through the family's shades; any other label option
    (a structure's variant, ``factors=a-diag``) moves it by a fixed step from the option's text
    (CRC-32: never zero, the same in every process).
    """
    name, options = _options(estimator_of(label))
    if name in FIXED_COLOURS:
        return FIXED_COLOURS[name]
    structure, _, mode = name.partition("-")
    shades = SHADES.get(structure)
    if shades is None:
        return OTHER_COLOUR
    index = LABEL_MODES.index(mode) if mode in LABEL_MODES else len(shades) - 1
    rule = options.pop("online_rule", None)
    if (structure, rule) in ONLINE_RULE_COLOURS:
        return ONLINE_RULE_COLOURS[(structure, rule)]
    rank = options.pop("rank", "")
    if rank.isdigit():
        index += rank_step(int(rank)) + RANK_LADDER_SHIFT
    if options:  # another variant of the structure (kfac factors=..., layers=...)
        text = " ".join(f"{k}={v}" for k, v in sorted(options.items()))
        if text in VARIANT_COLOURS:
            return VARIANT_COLOURS[text]
        index += 1 + zlib.crc32(text.encode()) % (len(shades) - 1)
    return shades[index % len(shades)]


def line_style(label: str) -> str:
    """``--`` for the online mode and the floor (a reference), ``-`` otherwise."""
    online = label.startswith(ONLINE_PREFIX) or label.partition(" ")[0].endswith("-online")
    return "--" if online or label == "floor" else "-"


def marker(label: str) -> str:
    """``s`` for the online mode, ``D`` for joint, ``X`` for baseline, ``o`` otherwise."""
    if label.startswith(ONLINE_PREFIX) or label.partition(" ")[0].endswith("-online"):
        return "s"
    return {"joint": "D", "baseline": "X"}.get(label, "o")


def text_colour(shade: float) -> str:
    """Dark text on a light cell, light text on a dark one.

    ``shade`` is the cell's position on the colormap (0-1), viridis being light at the top.
    """
    return TEXT_DARK if shade > 0.6 else TEXT_LIGHT
