"""Sweeps: sequence x methods x lambda grid x seeds, lambda chosen on validation, resumable.

An experiment (a TOML file, see ``benchmark/experiments/``) expands in two phases, on two
disjoint sets of root seeds (nested selection):

1. selection: every penalised (study, bn, method) group over its lambda grid, on each selection
   seed; a grid whose best lambda (mean validation score over the selection seeds, ``selection``)
   sits at an edge grows by one lattice point past it, round after round, up to ``extend``
   rounds (the cap: a choice still at an edge is flagged in every table);
2. test: each group at its chosen lambda on every test seed (paired: the same seeds, hence the
   same tasks, inits and data orders, for every method). Selection runs are never test runs.

Each run is keyed by the hash of its config; its record is written atomically to
``<results>/runs`` by the driver, and a finished run is skipped, so an interrupted sweep resumes
where it stopped and redoes nothing (runs that failed for a reason outside themselves are tried
again; see ``execution``). Before any run, a preflight checks everything that can be known up
front (``preflight``), and the results folder is locked for the sweep (``lock``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import provenance
from .config import FIELD_HELP, FLOAT32_MAX, PENALISED, RunConfig, device_kind
from .distributed import DaskPool, executor_choice, failure_workers
from .execution import Pool, Tally, phase_summary, run_configs, sigterm_as_interrupt
from .lock import FolderLock
from .methods import METHODS, parse_label
from .records import RunRecord, clean_partial, read_records, write_json_atomic
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
STUDY_KEYS = ("sequence", "bn", "methods", "settings", "lambdas", "method_settings", "seeds")
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
}
"""Run settings that ``--set`` refuses, and why: the experiment's structure decides them."""


def parse_method(label: str) -> dict[str, Any]:
    """``'ewc kfac-mc'`` -> method/estimator/mode fields (``benchmark.methods.parse_label``)."""
    return parse_label(label)


@dataclass
class Group:
    """One (study, bn, method) group: a base config, its lambda grid and its test seeds."""

    base: RunConfig
    lambdas: tuple[float, ...]
    seeds: tuple[int, ...] = ()

    @property
    def penalised(self) -> bool:
        """Whether lambda matters (else the group has the one lambda 0 and no selection)."""
        return self.base.method in PENALISED


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
        """Phase 1: every penalised group over its lambda grid on every selection seed."""
        return [
            g.base.replace(seed=s, lam=lam)
            for g in self.groups
            if g.penalised
            for lam in g.lambdas
            for s in self.selection_seeds
        ]

    def extend_grids(self, records: Iterable[RunRecord]) -> list[RunConfig]:
        """Grow each grid whose best lambda (mean validation over selection seeds) is an edge.

        One lattice point (``selection.lattice``) per winning edge; returns the new selection
        configs (none: every optimum is interior, or no grid can grow). A pure function of the
        records, so a resumed sweep makes the same decisions.
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
        """Phase 2: every group at its chosen lambda on its test seeds (none chosen: no run)."""
        out = []
        for g in self.groups:
            lam = 0.0 if not g.penalised else chosen.get(group_key(g.base.to_dict()))
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
    groups = []
    for i, study in enumerate(data.get("studies", [])):
        _check_keys(f"studies[{i}]", study, STUDY_KEYS)
        if "sequence" not in study or "methods" not in study:
            raise ValueError(f"studies[{i}] needs a sequence and a list of methods")
        settings = {**defaults, **study.get("settings", {}), "sequence": study["sequence"]}
        study_seeds = tuple(_seed_list(study.get("seeds", seeds), f"studies[{i}].seeds"))
        _check_disjoint(selection_seeds, study_seeds, f"studies[{i}]")
        _check_keys(f"studies[{i}].settings", settings, FIELD_HELP)
        bns = study.get("bn", [settings.get("bn", "freeze")])
        bns = [overrides["bn"]] if "bn" in overrides else bns
        for bn in bns if isinstance(bns, list) else [bns]:
            for label in study["methods"]:
                per_method = {
                    **data.get("method_settings", {}).get(label, {}),
                    **study.get("method_settings", {}).get(label, {}),
                }
                _check_keys(f"method_settings for {label!r}", per_method, FIELD_HELP)
                known = {**settings, **per_method}.get("estimator_options", {})
                from_label = parse_label(label, known)
                fields = {**settings, **per_method, **overrides, **from_label, "bn": bn}
                base = RunConfig.from_dict({**fields, "lam": 0.0, "seed": study_seeds[0]})
                grid = _lambda_grid(label, study.get("lambdas", {}), data.get("lambdas", {}))
                if all(g.base != base for g in groups):  # --set bn can merge two groups
                    groups.append(Group(base, grid, study_seeds))
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


# -- execution ---------------------------------------------------------------------------------


FINAL = "test seeds"
"""The final phase's name (progress bar and tallies)."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C or SIGTERM; finished runs are kept and a rerun resumes."""


def run_sweep(
    experiment: Experiment,
    results: Path,
    *,
    jobs: int | str = 1,
    threads: int | None = None,
    group_size: int = 1,
    root: str | None = None,
    download: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
    wait: bool = False,
    out: Path | None = None,
    executor: str = "process",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Both phases; writes ``<results>/sweep.json`` (experiment, command, machine, outcomes).

    ``jobs`` runs at once (``auto``: one per available core), each with ``threads`` torch
    threads (default: the cores shared evenly; with one job, torch's own default). With
    ``group_size`` > 1, runs that differ only in lambda and seed train together, up to that many
    per process (``benchmark.grouped``); each still gets its own record. ``executor = "dask"``
    sends them to a Dask cluster instead (``scheduler``: ``tcp://HOST:PORT`` or ``local:N``; see
    ``benchmark.distributed``), where workers check their own data and devices.

    Before any run: the preflight (data, device, writable ``results`` and ``out`` folders,
    memory budgets; ``PreflightError``), then the folder's lock (``FolderInUseError``, or wait).
    ``meta["counts"]`` holds each phase's outcomes (``ok``/``diverged``/``failed``, how many ran
    now and how many were reused, the failed runs with their reasons).

    Raises:
        PreflightError: problems found before training; nothing was written (under Dask the
            workers check once the folder is locked: it may exist, empty).
        FolderInUseError: another live sweep holds ``results``.
        SweepInterrupted: Ctrl-C or SIGTERM; workers were stopped, finished records kept.
    """
    choice = executor_choice(executor, scheduler, jobs)
    if device is not None:
        resolved = device_kind(device)  # auto: what this machine has
        for g in experiment.groups:
            g.base = g.base.replace(device=resolved)
    bases = [g.base for g in experiment.groups]
    folders = {"--results": results, "--out": out}
    choice.preflight(bases, root=root, download=download, folders=folders)
    results.mkdir(parents=True, exist_ok=True)
    with FolderLock(results, wait=wait), sigterm_as_interrupt():
        pool = choice.open(threads, group_size, bases, (root, download))
        return _run_phases(experiment, results, pool, root, retry_failed)


def _run_phases(
    experiment: Experiment,
    results: Path,
    pool: Pool | DaskPool,
    root: str | None,
    retry_failed: bool,
) -> dict[str, Any]:
    """Selection (with grid extensions), then the test seeds; then ``sweep.json``."""
    clean_partial(results)
    provenance.pin_git_sha()
    started, t0 = provenance.now(), time.perf_counter()
    ran: dict[str, Tally] = {}
    kill = True
    try:
        sel, final = _phases(experiment, results, pool, root, retry_failed, ran)
        kill = False
    except KeyboardInterrupt as err:
        done = sum(sum(t.ran.values()) for t in ran.values())
        raise SweepInterrupted(f"{done} runs finished in the phases completed before it") from err
    finally:
        pool.close(kill=kill)
    meta = _meta(experiment, results, sel, final, ran)
    meta.update(
        started=started, finished=provenance.now(), duration_seconds=time.perf_counter() - t0
    )
    meta["parallel"] = pool.describe()
    meta["invocations"] = [*earlier_invocations(results, experiment.name), invocation(meta)]
    write_json_atomic(results / "sweep.json", meta)
    return meta


INVOCATION_KEYS = ("started", "finished", "duration_seconds", "ran_now", "command")


def invocation(meta: dict[str, Any]) -> dict[str, Any]:
    """One invocation of a sweep, as ``sweep.json`` keeps it: when, how long, how many runs, how."""
    entry = {k: meta.get(k) for k in INVOCATION_KEYS}
    entry["git_sha"] = (meta.get("provenance") or {}).get("git_sha")
    if entry["ran_now"] is None:  # written before sweeps counted: it ran what it reports
        entry["ran_now"] = meta.get("runs")
    return entry


def earlier_invocations(results: Path, name: str) -> list[dict[str, Any]]:
    """The invocations an existing ``sweep.json`` of the same experiment recorded (else none).

    A resumed or extended sweep keeps them, so the report can state the wall time of every
    invocation that made its records, not only the last one's.
    """
    try:
        old = json.loads((results / "sweep.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("experiment") != name:
        return []
    entries = old.get("invocations")
    return list(entries) if isinstance(entries, list) else [invocation(old)]


def _phases(
    experiment: Experiment,
    results: Path,
    pool: Pool | DaskPool,
    root: str | None,
    retry_failed: bool,
    ran: dict[str, Tally],
) -> tuple[list[RunConfig], list[RunConfig]]:
    """Run both phases; ``ran`` collects each phase's tally. Returns (selection, final) configs."""

    def phase(configs: list[RunConfig], desc: str) -> None:
        ran[desc] = run_configs(
            configs, results, pool, root=root, retry_failed=retry_failed, desc=desc
        )

    def records_of(configs: list[RunConfig]) -> list[RunRecord]:
        ids = {c.run_id for c in configs}
        return [r for r in read_records(results) if r.run_id in ids]

    sel = experiment.selection_configs()
    phase(sel, "lambda selection")
    for round_ in range(experiment.extend):
        more = experiment.extend_grids(records_of(sel))
        if not more:
            break
        sel += more
        phase(more, f"lambda grid extension {round_ + 1}")
    final = experiment.final_configs(choose_lambdas(records_of(sel), experiment.selection_seeds))
    phase(final, FINAL)
    return sel, final


def _meta(
    experiment: Experiment,
    results: Path,
    sel: list[RunConfig],
    final: list[RunConfig],
    ran: dict[str, Tally],
) -> dict[str, Any]:
    """What ``sweep.json`` says about a sweep (times are added by the caller)."""
    ids = {"selection": sorted({c.run_id for c in sel}), "final": sorted({c.run_id for c in final})}
    wanted = set(ids["selection"]) | set(ids["final"])
    runs = [r for r in read_records(results) if r.run_id in wanted]
    counts = {"selection": phase_summary(sel, results), "final": phase_summary(final, results)}
    for key, tallies in (
        ("selection", [t for d, t in ran.items() if d != FINAL]),
        ("final", [ran[FINAL]]),
    ):
        counts[key]["ran"] = sum(sum(t.ran.values()) for t in tallies)
        counts[key]["reused"] = sum(t.reused for t in tallies)
    return {
        "experiment": experiment.name,
        "description": experiment.description,
        "notes": experiment.notes,
        "seeds": experiment.all_test_seeds(),
        "selection_seeds": experiment.selection_seeds,
        "source": experiment.source,
        "command": provenance.command_line(),
        "provenance": {
            **provenance.machine(experiment.groups[0].base.device),
            "git_sha": provenance.git_sha(),
        },
        "compute_seconds": sum(r.total_seconds for r in runs),
        "runs": len(runs),
        "ran_now": sum(sum(t.ran.values()) for t in ran.values()),
        "run_ids": ids,
        "counts": counts,
        "grids": {
            f"{g.base.sequence} bn={g.base.bn} {g.base.label}": list(g.lambdas)
            for g in experiment.groups
        },
    }


def failed_runs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed run of a sweep's ``meta`` (selection and final)."""
    counts = meta.get("counts", {})
    return [
        f for phase in ("selection", "final") for f in counts.get(phase, {}).get("failed_runs", [])
    ]


def summary_lines(meta: dict[str, Any], limit: int = 10) -> list[str]:
    """What a sweep did, per phase, and its failed runs (at most ``limit``) with their reasons."""
    lines = []
    for phase, name in (("selection", "lambda selection"), ("final", "test seeds")):
        c = meta.get("counts", {}).get(phase, {})
        lines.append(
            f"{name}: {c.get('runs', 0)} runs: {c.get('ok', 0)} finished, "
            f"{c.get('diverged', 0)} diverged, {c.get('failed', 0)} failed "
            f"({c.get('ran', 0)} run now, {c.get('reused', 0)} reused from earlier)"
        )
    failed = failed_runs(meta)
    for f in failed[:limit]:
        lines.append(f"  failed [{f['failure']}] {f['run_id']} {f['what']}: {f['message']}")
    if workers := failure_workers(failed):
        lines.append(f"  workers that ran the failed runs: {workers}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (runs.csv lists every run)")
    return lines
