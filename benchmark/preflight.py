"""Preflight: everything a command can know before training anything, checked first.

A sweep (and ``run``, ``reproduce``, ``study``, ``timing``) first checks, for every run it will
make: the data files of every sequence (present, sizes and IDX headers right, MD5 of the
published files; downloaded here, once, when allowed), the device, that the results and output
folders are writable folders, and that each run's curvature fits its memory budget. Values
(finite, in range, float32 for lambda) are checked when a ``RunConfig`` is built. A failed
preflight raises ``PreflightError`` holding one line per problem; the command line prints them
and exits with status 2, and no record has been written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

import estimators

from .config import RunConfig, resolve_device
from .data import DataError, ensure_dataset
from .errors import UserError, one_line
from .models import make_model
from .tasks import datasets_of, heads_of


class PreflightError(UserError):
    """One or more problems found before training; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [one_line(p) for p in problems]
        super().__init__("; ".join(self.problems))


def check_folder(path: str | os.PathLike[str], flag: str) -> list[str]:
    """Problems with using ``path`` as a folder to write into (created later if absent).

    The folder, or its nearest existing parent when it does not exist yet, must be a folder
    this process can create files in (tried for real: permission bits do not tell for root, nor
    on a read-only mount).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return [f"{flag} {path} is a file, not a folder"]
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return [f"{flag} {path} cannot be created: {probe} is a file, not a folder"]
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".ewc-bench-write-check-"):
            pass
    except OSError as err:
        why = err.strerror or str(err)
        if err.errno == errno.EROFS:
            why = "read-only file system"
        where = "" if probe == path else f" (its parent {probe} exists)"
        return [f"{flag} {path} is not writable{where}: {why}"]
    return []


def check_folders(folders: Mapping[str, str | os.PathLike[str] | None]) -> list[str]:
    """``check_folder`` for each ``flag -> path`` (None: not used)."""
    return [
        p for flag, path in folders.items() if path is not None for p in check_folder(path, flag)
    ]


def require_folders(folders: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """``check_folders``, raising ``PreflightError`` on any problem."""
    problems = check_folders(folders)
    if problems:
        raise PreflightError(problems)


def check_devices(configs: Iterable[RunConfig]) -> list[str]:
    """One problem per device asked for that is not there."""
    problems = []
    for device in sorted({c.device for c in configs}):
        try:
            resolve_device(device)
        except UserError as err:
            problems.append(str(err))
    return problems


def check_data(
    configs: Iterable[RunConfig], root: str | os.PathLike[str] | None, download: bool
) -> list[str]:
    """The datasets of every real-data sequence: verified, or downloaded when allowed."""
    needed: list[str] = []
    for c in configs:
        if c.data == "real":
            needed += [d for d in datasets_of(c.sequence) if d not in needed]
    problems = []
    for name in needed:
        try:
            ensure_dataset(name, root, download=download)
        except DataError as err:
            problems.append(str(err))
    return problems


def model_text(c: RunConfig) -> str:
    """``mlp`` or ``mlp hidden=16``: the model and its options."""
    return " ".join([c.model, *(f"{k}={v}" for k, v in sorted(c.model_options.items()))])


def check_memory(configs: Iterable[RunConfig]) -> list[str]:
    """Each run's curvature against its memory budget, before any training.

    The model is built on the CPU for its parameter layout; N is ``fisher_samples`` (an upper
    bound: a task never uses more inputs than it has).
    """
    problems, seen = [], set()
    for c in configs:
        name = "identity" if c.method == "l2" else c.estimator
        if c.method not in ("l2", "ewc") or name is None:
            continue
        options = (c.model_options, c.estimator_options)
        key = (c.sequence, c.n_tasks, c.model, name, c.fisher_samples, repr(options))
        if key in seen:
            continue
        seen.add(key)
        n_heads, n_outputs = heads_of(c.sequence, c.n_tasks)
        with torch.device("cpu"):
            model = make_model(c.model, n_outputs, n_heads, c.model_options)
        try:
            estimators.make(name, **c.estimator_options).check_memory(
                model, c.fisher_samples, n_outputs
            )
        except estimators.FisherMemoryError as err:
            problems.append(
                f"{c.sequence} {c.label} ({model_text(c)}, fisher_samples = {c.fisher_samples}): "
                f"{err}"
            )
    return problems


def preflight(
    configs: Iterable[RunConfig],
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """Check folders, devices, memory and data for ``configs``; data last (it may download).

    Raises:
        PreflightError: with every problem found, one line each.
    """
    configs = list(configs)
    problems = check_folders(folders or {}) + check_devices(configs) + check_memory(configs)
    if not (problems and download):  # nothing downloads for runs that cannot start anyway
        problems += check_data(configs, root, download)
    if problems:
        raise PreflightError(problems)
