"""Experiments: a TOML file parsed into groups, lambda grids and seed lists (``sweep`` runs it).

An experiment names its studies (sequence, BatchNorm modes, methods, settings, and optionally
``lrs``: learning rates chosen with lambda on the selection seeds), its lambda grids
(per method label, with a ``default``), its test ``seeds`` and its ``selection_seeds`` (disjoint:
nested selection; a study may set its own test seeds), and how grids grow (``extend`` rounds at
most, along a lattice of ``per_decade`` values per decade). ``parse_experiment`` validates all of
it before any training: unknown keys, bad values and renamed keys fail with what is allowed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .config import FIELD_HELP, FLOAT32_MAX, PENALISED, RunConfig
from .methods import METHODS, parse_label
from .outcomes import setting_text
from .records import RunRecord
from .selection import DEFAULT_SELECTION_SEEDS, choose_lambdas, group_key, lattice

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXPERIMENT_KEYS = {
    "name": "experiment name (also the default results folder name)",
    "description": "one paragraph for the report",
    "notes": "protocol notes (list of strings) for the report",
    "seeds": "root seeds of the test runs (paired across methods)",
    "selection_seeds": "root seeds of the lambda-selection runs (disjoint from every test seed)",
    "defaults": "run settings for every run (RunConfig fields)",
    "lambdas": "lambda grids: a table keyed by method label, with 'default'",
    "method_settings": "run settings per method label (e.g. fisher_samples for full-exact)",
    "studies": "list of studies: sequence, bn, methods, settings, lambdas, method_settings",
    "extend": "cap on the rounds in which a grid grows one value past a winning edge (default 0)",
    "per_decade": "grid lattice: values 10^(i / per_decade) a grid grows along (default 1)",
}
STUDY_KEYS = (
    "sequence",
    "bn",
    "methods",
    "settings",
    "lambdas",
    "method_settings",
    "seeds",
    "lrs",
)
RENAMED_KEYS = {
    "selection_seed": "selection_seed was replaced by selection_seeds, a list of seeds disjoint "
    "from the test seeds (lambda is chosen on their mean validation score)",
    "extend_factor": "extend_factor was replaced by per_decade (grids grow along 10^(i / "
    "per_decade); per_decade = 1 is the old factor 10)",
}
FIXED_BY_EXPERIMENT = {
    "lam": "lambda comes from the experiment's grids ([lambdas], chosen on validation); "
    "edit the grid in a copy of the experiment's TOML, or use `run --lam`",
    "seed": "seeds come from the experiment's seed lists; use --seeds for the test seeds",
    "sequence": "each study names its sequence; edit [[studies]] in a copy of the experiment",
    "method": "methods come from each study's list; edit [[studies]] in a copy of the experiment",
    "estimator": "estimators come from each study's method list ('ewc <estimator>')",
    "mode": "the mode comes from each study's method list ('ewc' or 'ewc-online')",
    "estimator_options": "estimator options differ per method: set them in [method_settings]",
    "lr_grid": "a study's lrs set it (the learning rates chosen with lambda)",
}
"""Run settings that ``--set`` refuses, and why: the experiment's structure decides them."""


def parse_method(label: str) -> dict[str, Any]:
    """``'ewc kfac-mc'`` -> method/estimator/mode fields (``benchmark.methods.parse_label``)."""
    return parse_label(label)


@dataclass
class Group:
    """One (study, bn, method, lr) group: a base config, its lambda grid and its test seeds.

    A group whose config has an ``lr_grid`` (its study's ``lrs``) is one of several that differ
    only in lr: it runs on the selection seeds even without a penalty (``selection.choose``).
    """

    base: RunConfig
    lambdas: tuple[float, ...]
    seeds: tuple[int, ...] = ()

    @property
    def penalised(self) -> bool:
        """Whether lambda matters (else the group has the one lambda 0)."""
        return self.base.method in PENALISED

    @property
    def tunes_lr(self) -> bool:
        """Whether the group's lr is chosen among its ``lr_grid`` on the selection seeds."""
        return bool(self.base.lr_grid)

    @property
    def selects(self) -> bool:
        """Whether the group runs on the selection seeds (a lambda or an lr to choose)."""
        return self.penalised or self.tunes_lr


NAME_IGNORE = ("lam", "seed", "device", "sequence", "bn")


def group_names(groups: list[Group]) -> list[str]:
    """``sequence bn=... label`` per group, made unique by a suffix where groups share it.

    The suffix names the settings that differ among the groups that share the text
    (``(lr=0.01, lr_grid=[0.01,0.1])``), as report labels do.
    """
    plain = [f"{g.base.sequence} bn={g.base.bn} {g.base.label}" for g in groups]
    configs = [g.base.to_dict() for g in groups]
    names = []
    for i, text in enumerate(plain):
        same = [configs[j] for j, other in enumerate(plain) if other == text]
        fields = sorted(
            k
            for k in configs[i]
            if k not in NAME_IGNORE and len({setting_text(c.get(k)) for c in same}) > 1
        )
        suffix = ", ".join(f"{k}={setting_text(configs[i].get(k))}" for k in fields)
        names.append(f"{text} ({suffix})" if suffix else text)
    return names


@dataclass
class Experiment:
    """A parsed, validated experiment."""

    name: str
    description: str
    notes: list[str]
    seeds: list[int]
    selection_seeds: list[int]
    groups: list[Group]
    source: dict[str, Any] = field(default_factory=dict)
    extend: int = 0
    per_decade: int = 1

    def selection_configs(self) -> list[RunConfig]:
        """Phase 1: every group that chooses (``Group.selects``), its grid x selection seeds."""
        return [
            g.base.replace(seed=s, lam=lam)
            for g in self.groups
            if g.selects
            for lam in g.lambdas
            for s in self.selection_seeds
        ]

    def extend_grids(self, records: Iterable[RunRecord]) -> list[RunConfig]:
        """Grow each grid whose best lambda (mean validation over selection seeds) is an edge.

        One lattice point (``selection.lattice``) per winning edge; returns the new selection
        configs (none: every optimum is interior, or no grid can grow). It grows the groups'
        grids in place (call it once per round); its decisions depend on the records alone, so a
        resumed sweep makes the same ones.
        """
        chosen = choose_lambdas(records, self.selection_seeds)
        added = []
        for g in self.groups:
            lam = chosen.get(group_key(g.base.to_dict()))
            grid = sorted(g.lambdas)
            if lam is None or not g.penalised:
                continue
            new = []
            up = lattice(grid[-1], 1, self.per_decade) if grid[-1] > 0 else None
            if lam == grid[-1] and up is not None and up <= FLOAT32_MAX:
                new.append(up)
            if lam == grid[0] and grid[0] > 0:
                new.append(lattice(grid[0], -1, self.per_decade))
            g.lambdas = tuple(sorted(set(grid) | set(new)))
            added += [g.base.replace(seed=s, lam=v) for v in new for s in self.selection_seeds]
        return added

    def final_configs(self, chosen: dict[str, float | None]) -> list[RunConfig]:
        """Phase 2: every group at its chosen lambda on its test seeds (none chosen: no run).

        ``chosen``: ``selection.choose`` (a group whose lr lost its family chose nothing).
        """
        out = []
        for g in self.groups:
            lam = chosen.get(group_key(g.base.to_dict())) if g.selects else 0.0
            if lam is not None:
                out += [g.base.replace(seed=s, lam=lam) for s in g.seeds or self.seeds]
        return out

    def set_test_seeds(self, seeds: list[int]) -> None:
        """Replace every group's test seeds (``--seeds``); they must miss the selection seeds."""
        self.seeds = _seed_list(list(seeds), "--seeds")
        _check_disjoint(self.selection_seeds, self.seeds, "--seeds")
        for g in self.groups:
            g.seeds = tuple(self.seeds)

    def all_test_seeds(self) -> list[int]:
        """Every test seed of any group, sorted."""
        return sorted({s for g in self.groups for s in (g.seeds or self.seeds)})


def _check_keys(where: str, table: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"valid keys: {', '.join(allowed)}"
        )


def _lambda_grid(label: str, *tables: dict[str, Any]) -> tuple[float, ...]:
    """The lambda grid of a method: most specific table first, 'default' last."""
    if not METHODS[parse_label(label)["method"]].penalised:
        return (0.0,)
    for key in (label, "default"):
        for table in tables:
            if key in table:
                grid = table[key]
                if not isinstance(grid, list) or not grid:
                    raise ValueError(f"lambda grid for {key!r} must be a non-empty list")
                return tuple(float(v) for v in grid)
    raise ValueError(f"no lambda grid for {label!r}: add it (or 'default') to [lambdas]")


def parse_experiment(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> Experiment:
    """Validate an experiment table and expand it into groups; errors name what is allowed."""
    for key, why in RENAMED_KEYS.items():
        if key in data:
            raise ValueError(f"{key!r} in the experiment: {why}")
    _check_keys("the experiment", data, EXPERIMENT_KEYS)
    overrides = dict(overrides or {})
    _check_keys("--set", overrides, FIELD_HELP)
    for key in overrides:
        if key in FIXED_BY_EXPERIMENT:
            raise ValueError(f"--set {key}=... is refused: {FIXED_BY_EXPERIMENT[key]}")
    defaults = dict(data.get("defaults", {}))
    _check_keys("[defaults]", defaults, FIELD_HELP)
    seeds = _seed_list(data.get("seeds", [0]), "seeds")
    selection_seeds = _seed_list(
        data.get("selection_seeds", list(DEFAULT_SELECTION_SEEDS)), "selection_seeds"
    )
    groups: list[Group] = []
    for i, study in enumerate(data.get("studies", [])):
        _check_keys(f"studies[{i}]", study, STUDY_KEYS)
        if "sequence" not in study or "methods" not in study:
            raise ValueError(f"studies[{i}] needs a sequence and a list of methods")
        study_seeds = tuple(_seed_list(study.get("seeds", seeds), f"studies[{i}].seeds"))
        _check_disjoint(selection_seeds, study_seeds, f"studies[{i}]")
        for group in _study_groups(data, i, defaults, overrides, study_seeds):
            if all(g.base != group.base for g in groups):  # --set bn can merge two groups
                groups.append(group)
    if not groups:
        raise ValueError("the experiment has no studies: add at least one [[studies]] table")
    for g in groups:  # every config validates before any training
        for lam in g.lambdas:
            g.base.replace(lam=lam)
    return Experiment(
        name=data.get("name", "experiment"),
        description=data.get("description", ""),
        notes=list(data.get("notes", [])),
        seeds=seeds,
        selection_seeds=selection_seeds,
        groups=groups,
        source=data,
        extend=_non_negative_int(data.get("extend", 0), "extend"),
        per_decade=_positive_int(data.get("per_decade", 1), "per_decade"),
    )


def _study_groups(
    data: dict[str, Any],
    i: int,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    seeds: tuple[int, ...],
) -> list[Group]:
    """The groups of ``data["studies"][i]``: one per BatchNorm mode, method and lr."""
    study = data["studies"][i]
    settings = {**defaults, **study.get("settings", {}), "sequence": study["sequence"]}
    _check_keys(f"studies[{i}].settings", settings, FIELD_HELP)
    bns = study.get("bn", [settings.get("bn", "freeze")])
    bns = [overrides["bn"]] if "bn" in overrides else bns
    lrs = _lr_grid(study, i)
    groups = []
    for bn in bns if isinstance(bns, list) else [bns]:
        for label in study["methods"]:
            per_method = {
                **data.get("method_settings", {}).get(label, {}),
                **study.get("method_settings", {}).get(label, {}),
            }
            _check_keys(f"method_settings for {label!r}", per_method, FIELD_HELP)
            known = {**settings, **per_method}.get("estimator_options", {})
            from_label = parse_label(label, known)
            grid = _lambda_grid(label, study.get("lambdas", {}), data.get("lambdas", {}))
            for lr in lrs:
                tuned = _lr(lr, lrs if "lr" not in overrides else [])
                fields = {**settings, **per_method, **tuned, **overrides, **from_label, "bn": bn}
                base = RunConfig.from_dict({**fields, "lam": 0.0, "seed": seeds[0]})
                groups.append(Group(base, grid, seeds))
    return groups


def _lr(lr: float | None, lrs: list[float | None]) -> dict[str, Any]:
    """The settings of one lr of a study: ``lr`` and, where several compete, ``lr_grid``."""
    if lr is None:
        return {}
    return {"lr": lr, "lr_grid": [float(v) for v in lrs if v is not None] if len(lrs) > 1 else []}


def _lr_grid(study: dict[str, Any], i: int) -> list[float | None]:
    """A study's ``lrs`` (chosen with lambda), or ``[None]``: the settings' one lr."""
    if "lrs" not in study:
        return [None]
    lrs = study["lrs"]
    if (
        not isinstance(lrs, list)
        or not lrs
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lrs)
        or not all(0 < v < float("inf") for v in lrs)
        or len(set(lrs)) != len(lrs)
    ):
        raise ValueError(
            f"studies[{i}].lrs must be a non-empty list of distinct positive numbers (the "
            f"learning rates chosen with lambda on the selection seeds), got {lrs!r}"
        )
    if "lr" in study.get("settings", {}):
        raise ValueError(
            f"studies[{i}] sets both lr (in settings) and lrs: give one lr, or a list of them "
            "to choose from"
        )
    return [float(v) for v in lrs]


def _seed_list(seeds: Any, name: str) -> list[int]:
    """A non-empty list of distinct integers >= 0, or a ValueError naming ``name``."""
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(
            f"{name} must be a non-empty list of distinct integers >= 0, got {seeds!r}"
        )
    return list(seeds)


def _check_disjoint(selection: list[int], test: Iterable[int], where: str) -> None:
    """Selection and test seeds must not meet: a selection run is never a test run."""
    both = sorted(set(selection) & set(test))
    if both:
        raise ValueError(
            f"seed(s) {both} of {where} are also selection seeds {selection}: lambda would be "
            "chosen on runs that are then reported as test runs; make the lists disjoint"
        )


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def builtin_experiments() -> list[str]:
    """Names of the experiments shipped in ``benchmark/experiments``."""
    folder = resources.files("benchmark") / "experiments"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_experiment(name_or_path: str, overrides: dict[str, Any] | None = None) -> Experiment:
    """A built-in experiment by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ValueError(f"experiment file {path} does not exist")
        text = path.read_text()
    elif name_or_path in builtin_experiments():
        text = (resources.files("benchmark") / "experiments" / f"{name_or_path}.toml").read_text()
    else:
        raise ValueError(
            f"unknown experiment {name_or_path!r}; built-in: {', '.join(builtin_experiments())}, "
            "or give the path of a .toml file"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"experiment {name_or_path!r} is not valid TOML: {err}") from None
    return parse_experiment(data, overrides)
