"""Sweeps: sequence x methods x lambda grid x seeds, lambda chosen on validation, resumable.

An experiment (a TOML file, see ``benchmark/experiments/``) expands in two phases:

1. selection: every (study, bn, method) group over its lambda grid, on the selection seed;
2. final: each group at the lambda chosen on the validation split (``selection``), on every seed
   (paired: the same seeds, hence the same tasks, inits and data orders, for every method).

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
from .config import FIELD_HELP, FLOAT32_MAX, RunConfig, device_kind
from .distributed import DaskPool, executor_choice, failure_workers
from .execution import Pool, Tally, phase_summary, run_configs, sigterm_as_interrupt
from .lock import FolderLock
from .methods import METHODS, parse_label
from .records import RunRecord, clean_partial, read_records, write_json_atomic
from .selection import choose_lambdas, group_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXPERIMENT_KEYS = {
    "name": "experiment name (also the default results folder name)",
    "description": "one paragraph for the report",
    "notes": "protocol notes (list of strings) for the report",
    "seeds": "root seeds of the final runs (paired across methods)",
    "selection_seed": "seed of the lambda-selection runs (one of the seeds)",
    "defaults": "run settings for every run (RunConfig fields)",
    "lambdas": "lambda grids: a table keyed by method label, with 'default'",
    "method_settings": "run settings per method label (e.g. fisher_samples for full-exact)",
    "studies": "list of studies: sequence, bn, methods, settings, lambdas, method_settings",
    "extend": "rounds in which a grid grows by one value past a winning edge (default 0)",
    "extend_factor": "the factor between an edge and the value added past it (default 10)",
}
STUDY_KEYS = ("sequence", "bn", "methods", "settings", "lambdas", "method_settings")
FIXED_BY_EXPERIMENT = {
    "lam": "lambda comes from the experiment's grids ([lambdas], chosen on validation); "
    "edit the grid in a copy of the experiment's TOML, or use `run --lam`",
    "seed": "seeds come from the experiment's seed list; use --seeds",
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
    """One (study, bn, method) group: a base config and its lambda grid."""

    base: RunConfig
    lambdas: tuple[float, ...]


@dataclass
class Experiment:
    """A parsed, validated experiment."""

    name: str
    description: str
    notes: list[str]
    seeds: list[int]
    selection_seed: int
    groups: list[Group]
    source: dict[str, Any] = field(default_factory=dict)
    extend: int = 0
    extend_factor: float = 10.0

    def selection_configs(self) -> list[RunConfig]:
        """Phase 1: every group over its lambda grid on the selection seed."""
        return [
            g.base.replace(seed=self.selection_seed, lam=lam)
            for g in self.groups
            for lam in g.lambdas
        ]

    def extend_grids(self, records: Iterable[RunRecord]) -> list[RunConfig]:
        """Grow each grid whose best lambda (validation, selection seed) sits at an edge.

        One value per winning edge, ``extend_factor`` beyond it; returns the new selection
        configs (none: every optimum is interior, or no grid can grow). A pure function of the
        records, so a resumed sweep makes the same decisions.
        """
        chosen = choose_lambdas(records, self.selection_seed)
        added = []
        for g in self.groups:
            lam = chosen.get(group_key(g.base.to_dict()))
            grid = sorted(g.lambdas)
            if lam is None or grid == [0.0]:
                continue
            new = []
            if lam == grid[-1] and grid[-1] * self.extend_factor <= FLOAT32_MAX:
                new.append(grid[-1] * self.extend_factor)
            if lam == grid[0] and grid[0] > 0:
                new.append(grid[0] / self.extend_factor)
            g.lambdas = tuple(sorted(set(grid) | set(new)))
            added += [g.base.replace(seed=self.selection_seed, lam=v) for v in new]
        return added

    def final_configs(self, chosen: dict[str, float | None]) -> list[RunConfig]:
        """Phase 2: every group at its chosen lambda, on every seed (groups without one: none)."""
        out = []
        for g in self.groups:
            lam = chosen.get(group_key(g.base.to_dict()))
            if lam is not None:
                out += [g.base.replace(seed=s, lam=lam) for s in self.seeds]
        return out


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
    _check_keys("the experiment", data, EXPERIMENT_KEYS)
    overrides = dict(overrides or {})
    _check_keys("--set", overrides, FIELD_HELP)
    for key in overrides:
        if key in FIXED_BY_EXPERIMENT:
            raise ValueError(f"--set {key}=... is refused: {FIXED_BY_EXPERIMENT[key]}")
    defaults = dict(data.get("defaults", {}))
    _check_keys("[defaults]", defaults, FIELD_HELP)
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and s >= 0 for s in seeds)
    ):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    selection_seed = data.get("selection_seed", seeds[0])
    if selection_seed not in seeds:
        raise ValueError(f"selection_seed {selection_seed} must be one of the seeds {seeds}")
    groups = []
    for i, study in enumerate(data.get("studies", [])):
        _check_keys(f"studies[{i}]", study, STUDY_KEYS)
        if "sequence" not in study or "methods" not in study:
            raise ValueError(f"studies[{i}] needs a sequence and a list of methods")
        settings = {**defaults, **study.get("settings", {}), "sequence": study["sequence"]}
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
                base = RunConfig.from_dict({**fields, "lam": 0.0, "seed": selection_seed})
                grid = _lambda_grid(label, study.get("lambdas", {}), data.get("lambdas", {}))
                if all(g.base != base for g in groups):  # --set bn can merge two groups
                    groups.append(Group(base, grid))
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
        selection_seed=selection_seed,
        groups=groups,
        source=data,
        extend=_non_negative_int(data.get("extend", 0), "extend"),
        extend_factor=_factor(data.get("extend_factor", 10.0)),
    )


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
        raise ValueError(f"extend_factor must be a number > 1, got {value!r}")
    return float(value)


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


FINAL = "final seeds"
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
    """Selection (with grid extensions), then the final seeds; then ``sweep.json``."""
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
    final = experiment.final_configs(choose_lambdas(records_of(sel), experiment.selection_seed))
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
        "seeds": experiment.seeds,
        "selection_seed": experiment.selection_seed,
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
    for phase, name in (("selection", "lambda selection"), ("final", "final seeds")):
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
