"""The estimator registry, built from the declaration each structure makes in its own file.

A structure's file ends with a ``DECLARATION``: its name, its label modes, its extra options and
its online rule. ``GridStructure`` crosses an ``Accumulator`` with label modes (names
``structure-mode``, each a ``GridEstimator``); ``Single`` is one estimator under one name
(``identity``, the legacy ``diag-batched``). A ``Registry`` turns declarations into names, option
lists and factories; ``estimators`` holds the package's one registry.

An online rule maps an estimator's resolved options (defaults filled in) to None when its
curvatures can be accumulated online (``decay * old + new`` in the same structure), else to the
reason why not.

>>> DECLARATION = GridStructure(
...     "diag", DiagAccumulator, ("exact", "mc", "empirical", "argmax"), online=always_online
... )  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .estimator import Accumulator, Estimator, GridEstimator
from .labels import MODES, LabelMode
from .options import OPTIONS, resolve

OnlineRule = Callable[[Mapping[str, Any]], "str | None"]
"""Resolved options -> None when online accumulation is defined, else the reason why not."""

OptionCheck = Callable[[Mapping[str, Any]], None]
"""Resolved options -> None, or a ValueError for a combination of options the structure refuses."""

Factory = Callable[[str, dict[str, Any]], Estimator]
"""``(name, resolved options) -> Estimator``."""

BASE_OPTIONS = ("forward", "chunk_size", "memory_budget")
"""Options of every grid estimator, before the label mode's own and the structure's extras."""


def always_online(options: Mapping[str, Any]) -> str | None:
    """Online rule of structures whose curvatures always add (identity, diagonal)."""
    return None


def never_online(reason: str) -> OnlineRule:
    """Online rule of a structure whose curvatures never add, for ``reason``."""

    def rule(options: Mapping[str, Any]) -> str | None:
        return reason

    return rule


@dataclass(frozen=True)
class Entry:
    """One estimator name: its factory, the options it takes (in order) and its online rule."""

    factory: Factory
    options: tuple[str, ...]
    online: OnlineRule
    check: OptionCheck | None = None


@dataclass(frozen=True)
class GridStructure:
    """A structure crossed with label modes: names ``{name}-{mode}``.

    Attributes:
        name: the structure's name (the prefix of its estimator names).
        accumulator: running sums over chunks that produce the curvature.
        modes: label modes (keys of ``labels.MODES``), in declaration order.
        options: options beyond ``BASE_OPTIONS`` and the label mode's own, appended last.
        online: the online rule.
        estimator: the ``GridEstimator`` class that fits it (a subclass for structures that
            need more than one pass over the inputs: EKFAC, low-rank).
        check: refuses combinations of valid options (``make`` and ``online_refusal`` call it
            after each option was validated alone), or None.
    """

    name: str
    accumulator: type[Accumulator]
    modes: tuple[str, ...]
    options: tuple[str, ...] = ()
    online: OnlineRule = always_online
    estimator: type[GridEstimator] = GridEstimator
    check: OptionCheck | None = None

    def entries(self) -> dict[str, Entry]:
        """``structure-mode`` for each mode, with options base + mode's + structure's.

        Raises:
            ValueError: a mode that is not in ``labels.MODES``.
        """
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(
                f"structure {self.name!r} declares unknown label mode(s) {unknown}; "
                f"valid modes: {', '.join(MODES)}"
            )
        return {f"{self.name}-{mode}": self._entry(MODES[mode]) for mode in self.modes}

    def _entry(self, mode: type[LabelMode]) -> Entry:
        allowed = BASE_OPTIONS + mode.options + self.options
        build = partial(_grid_estimator, self.estimator, self.accumulator, mode)
        return Entry(build, allowed, self.online, self.check)


def _grid_estimator(
    estimator: type[GridEstimator],
    accumulator: type[Accumulator],
    mode: type[LabelMode],
    name: str,
    options: dict[str, Any],
) -> Estimator:
    return estimator(name, accumulator, mode.from_options(options), options)


@dataclass(frozen=True)
class Single:
    """One estimator under one name.

    Attributes:
        name: the estimator's name.
        estimator: ``(name, resolved options) -> Estimator`` (an ``Estimator`` class will do).
        options: every option it takes, in order.
        online: the online rule.
    """

    name: str
    estimator: Factory
    options: tuple[str, ...]
    online: OnlineRule = always_online

    def entries(self) -> dict[str, Entry]:
        """The one name."""
        return {self.name: Entry(self.estimator, self.options, self.online)}


Declaration = GridStructure | Single


class Registry:
    """Estimator names, their options, factories and online rules, from declarations."""

    def __init__(self, *declarations: Declaration) -> None:
        self._entries: dict[str, Entry] = {}
        for declaration in declarations:
            self.declare(declaration)

    def declare(self, declaration: Declaration) -> None:
        """Add a declaration's names.

        Raises:
            ValueError: a name is already declared, or an option or label mode is unknown.
        """
        entries = declaration.entries()
        taken = sorted(set(entries) & set(self._entries))
        if taken:
            raise ValueError(f"estimator name(s) already declared: {', '.join(taken)}")
        for name, entry in entries.items():
            unknown = [k for k in entry.options if k not in OPTIONS]
            if unknown:
                raise ValueError(f"estimator {name!r} declares unknown option(s) {unknown}")
        self._entries.update(entries)

    def copy(self) -> Registry:
        """An independent registry with the same names (to declare more without side effects)."""
        clone = Registry()
        clone._entries = dict(self._entries)
        return clone

    def names(self) -> list[str]:
        """Every declared estimator name, sorted."""
        return sorted(self._entries)

    def options(self, name: str) -> dict[str, str]:
        """The options ``name`` accepts, in order, with their meaning."""
        return {k: OPTIONS[k].doc for k in self._entry(name).options}

    def make(self, name: str, **opts: Any) -> Estimator:
        """The estimator called ``name``, configured by ``opts``."""
        entry = self._entry(name)
        return entry.factory(name, self._resolve(name, entry, opts))

    def online_refusal(self, name: str, **opts: Any) -> str | None:
        """Why ``name`` with ``opts`` cannot be accumulated online, or None when it can."""
        entry = self._entry(name)
        return entry.online(self._resolve(name, entry, opts))

    @staticmethod
    def _resolve(name: str, entry: Entry, opts: dict[str, Any]) -> dict[str, Any]:
        """Each option validated (``options.resolve``), then their combination (``check``)."""
        resolved = resolve(name, entry.options, opts)
        if entry.check is not None:
            entry.check(resolved)
        return resolved

    def _entry(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name fails listing the valid ones."""
        if name not in self._entries:
            raise ValueError(f"unknown estimator {name!r}; valid names: {', '.join(self.names())}")
        return self._entries[name]
