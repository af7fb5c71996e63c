"""Sweeps: sequence x methods x lambda grid x seeds, lambda chosen on validation, resumable.

An experiment (a TOML file, see ``benchmark/experiments/``) expands in two phases:

1. selection: every (study, bn, method) group over its lambda grid, on the selection seed;
2. final: each group at the lambda chosen on the validation split (``selection``), on every seed
   (paired: the same seeds, hence the same tasks, inits and data orders, for every method).

Each run is keyed by the hash of its config and written atomically to ``<results>/runs``; a run
whose record exists is skipped, so an interrupted sweep resumes where it stopped and redoes
nothing. Runs go through a ``concurrent.futures.Executor``: in-process for ``jobs = 1``, a local
process pool for ``jobs > 1`` (another engine can be plugged in the same way).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import provenance
from .config import FIELD_HELP, RunConfig
from .records import RunRecord, read_records, record_path, write_record
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


def parse_method(label: str) -> dict[str, Any]:
    """``'ewc kfac-mc'`` -> method/estimator/mode fields; ``baseline``, ``joint``, ``l2``."""
    parts = label.split()
    if len(parts) == 1 and parts[0] in ("baseline", "joint", "l2"):
        return {"method": parts[0], "estimator": None, "mode": "separate"}
    if len(parts) == 2 and parts[0] in ("ewc", "ewc-online"):
        mode = "online" if parts[0] == "ewc-online" else "separate"
        return {"method": "ewc", "estimator": parts[1], "mode": mode}
    raise ValueError(
        f"unknown method {label!r}; use baseline, joint, l2, 'ewc <estimator>' or "
        "'ewc-online <estimator>'"
    )


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
            if lam == grid[-1]:
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


def _grid(label: str, *tables: dict[str, Any]) -> tuple[float, ...]:
    """The lambda grid of a method: most specific table first, 'default' last."""
    method = parse_method(label)["method"]
    if method in ("baseline", "joint"):
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
    defaults = {**data.get("defaults", {}), **(overrides or {})}
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
        for bn in bns if isinstance(bns, list) else [bns]:
            for label in study["methods"]:
                per_method = {
                    **data.get("method_settings", {}).get(label, {}),
                    **study.get("method_settings", {}).get(label, {}),
                }
                _check_keys(f"method_settings for {label!r}", per_method, FIELD_HELP)
                fields = {**settings, **per_method, **parse_method(label), "bn": bn}
                base = RunConfig.from_dict({**fields, "lam": 0.0, "seed": selection_seed})
                grid = _grid(label, study.get("lambdas", {}), data.get("lambdas", {}))
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


class InlineExecutor(Executor):
    """Runs each submitted call at once, in this process (``jobs = 1``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` now; return a finished future."""
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # KeyboardInterrupt included: stop the sweep
            if not isinstance(err, Exception):
                raise
            future.set_exception(err)
        return future


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def make_executor(jobs: int) -> Executor:
    """In-process for one job; a spawn-based process pool for several, threads split evenly."""
    if jobs <= 1:
        return InlineExecutor()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    )


def execute(
    config: dict[str, Any], results: str, root: str | None, download: bool
) -> tuple[str, str]:
    """Run one config unless its record exists; an error is recorded as a failed run."""
    from .harness import run  # imported here: workers import torch once, lazily

    cfg = RunConfig.from_dict(config)
    if record_path(Path(results), cfg.run_id).exists():
        return cfg.run_id, "skipped"
    try:
        record = run(cfg, root=root, download=download)
    except Exception as err:  # the sweep goes on; the record says why
        tail = "".join(traceback.format_exception_only(type(err), err)).strip()
        record = RunRecord(run_id=cfg.run_id, config=cfg.to_dict(), status="failed", message=tail)
        record.provenance = {"git_sha": provenance.git_sha(), "finished": provenance.now()}
    write_record(Path(results), record)
    return cfg.run_id, record.status


def clean_partial(results: Path) -> int:
    """Remove temporary files left by an interrupted write; returns how many."""
    folder = results / "runs"
    stale = list(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def run_configs(
    configs: list[RunConfig],
    results: Path,
    executor: Executor,
    *,
    root: str | None = None,
    download: bool = False,
    retry_failed: bool = False,
    desc: str = "runs",
) -> dict[str, int]:
    """Run every config not done yet; returns counts per status (``skipped`` for done ones)."""
    unique = {c.run_id: c for c in configs}
    todo = []
    counts = {"ok": 0, "diverged": 0, "failed": 0, "skipped": 0}
    for run_id, cfg in unique.items():
        path = record_path(results, run_id)
        if (
            path.exists()
            and retry_failed
            and json.loads(path.read_text()).get("status") == "failed"
        ):
            path.unlink()
        if path.exists():
            counts["skipped"] += 1
        else:
            todo.append(cfg)
    bar = tqdm(total=len(todo), desc=desc, unit="run", disable=not todo)
    futures = {executor.submit(execute, c.to_dict(), str(results), root, download): c for c in todo}
    for future in as_completed(futures):
        _, status = future.result()
        counts[status] += 1
        bar.set_postfix_str(f"{futures[future].sequence} {futures[future].label}", refresh=False)
        bar.update(1)
    bar.close()
    return counts


def run_sweep(
    experiment: Experiment,
    results: Path,
    *,
    jobs: int = 1,
    root: str | None = None,
    download: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Both phases; writes ``<results>/sweep.json`` (experiment, command, machine, durations)."""
    results.mkdir(parents=True, exist_ok=True)
    clean_partial(results)
    provenance.pin_git_sha()
    if device is not None:
        for g in experiment.groups:
            g.base = g.base.replace(device=device)
    started, t0 = provenance.now(), time.perf_counter()
    executor = make_executor(jobs)
    try:
        sel = experiment.selection_configs()
        c1 = run_configs(
            sel,
            results,
            executor,
            root=root,
            download=download,
            retry_failed=retry_failed,
            desc="lambda selection",
        )
        for round_ in range(experiment.extend):
            ids = {c.run_id for c in sel}
            more = experiment.extend_grids([r for r in read_records(results) if r.run_id in ids])
            if not more:
                break
            sel += more
            run_configs(
                more,
                results,
                executor,
                root=root,
                download=download,
                retry_failed=retry_failed,
                desc=f"lambda grid extension {round_ + 1}",
            )
        ids = {c.run_id for c in sel}
        chosen = choose_lambdas(
            [r for r in read_records(results) if r.run_id in ids], experiment.selection_seed
        )
        final = experiment.final_configs(chosen)
        c2 = run_configs(
            final,
            results,
            executor,
            root=root,
            download=download,
            retry_failed=retry_failed,
            desc="final seeds",
        )
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    runs = [r for r in read_records(results) if r.run_id in ids | {c.run_id for c in final}]
    meta = {
        "experiment": experiment.name,
        "description": experiment.description,
        "notes": experiment.notes,
        "seeds": experiment.seeds,
        "selection_seed": experiment.selection_seed,
        "source": experiment.source,
        "command": provenance.command_line(),
        "provenance": {**provenance.machine(device or "cpu"), "git_sha": provenance.git_sha()},
        "started": started,
        "finished": provenance.now(),
        "duration_seconds": time.perf_counter() - t0,
        "compute_seconds": sum(r.total_seconds for r in runs),
        "runs": len(runs),
        "counts": {"selection": c1, "final": c2},
        "grids": {
            f"{g.base.sequence} bn={g.base.bn} {g.base.label}": list(g.lambdas)
            for g in experiment.groups
        },
    }
    (results / "sweep.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    print(f"sweep {experiment.name}: {len(runs)} runs in {results}", file=sys.stderr)
    return meta
