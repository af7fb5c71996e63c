"""Named, seeded task sequences built from MNIST / FashionMNIST (or their synthetic stand-ins).

Sequences (``build_sequence(name, ...)``):

- ``mnist-fmnist`` (the source tutorial's): task A = MNIST, task B = FashionMNIST, one shared
  10-way head, labels as given. ``fmnist-mnist``: the reverse order. Exactly 2 tasks.
- ``permuted-mnist`` (default 10 tasks): task ``t`` is MNIST with its own pixel permutation
  ``randperm(784)`` drawn from ``generator(seed, "permutation", t)`` (task 0 is permuted too);
  shared 10-way head. Names ``permuted-0``, ``permuted-1``, ...
- ``rotated-mnist`` (default 5 tasks): MNIST rotated counter-clockwise by the angles
  ``180 * t / n`` degrees, ``t = 0..n-1`` (0, 36, 72, 108, 144 for n = 5), in an order shuffled
  with ``generator(seed, "rotation-order")``; bilinear, zeros outside, stored back as uint8;
  shared 10-way head. Names ``rotated-36`` etc.
- ``split-mnist`` (task-incremental, default and at most 5 tasks): the digits 0..9 shuffled with
  ``generator(seed, "split-classes")`` and taken in consecutive pairs; each task holds the inputs
  of one pair, with labels remapped to 0 (smaller digit) and 1 (larger digit); one 2-way head per
  task (``n_heads = n_tasks``, ``task.head = t``). ``split-mnist-class`` (class-incremental):
  the same pairs with the original labels and one shared 10-way head. Names ``split-3/7``.

Per task, in this order: the source dataset's training set is divided into train and validation
(``val_fraction`` of it, seeded with ``seed_hash(seed, "val", dataset)``, so every task built on
MNIST shares one division); split sequences keep their pair's classes; ``train_limit`` keeps a
seeded subset of at most that many training inputs, ``eval_limit`` at most that many validation
and test inputs (``seed_hash(seed, "limit", task_name, part)``); then the task's transform
(permutation, rotation, relabelling) is applied once, to whole tensors, staying uint8.

Every random choice is keyed by the root ``seed`` and its role (``benchmark.seeds``): the same
arguments give identical tensors in any process, whatever ran before. Whole sequences are cached
per process (a sweep runs many configurations over the same sequence); the cache holds
``SEQUENCE_CACHE_SIZE`` of them, as a 10-task permuted MNIST takes about 550 MB, and the source
splits of ``SOURCE_CACHE_SIZE`` (dataset, seed) pairs. Both are small because a sweep's
consecutive runs rarely share a seed (a sequence's tasks depend on it), while each cached entry
stays resident in every worker: at 2 each, the workers of the default sweep peaked at 1.5 GiB each
(proportional set size), at 1 each rebuilding costs about 2 s per run on 2 cores.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import (
    N_CLASSES,
    Split,
    limit_split,
    load_split,
    resolve_root,
    synthetic_split,
    train_val_split,
)
from .seeds import generator, seed_hash

DATA_KINDS = ("real", "synthetic")
SYNTHETIC_DATA_SEED = 0
"""The synthetic stand-ins are fixed datasets (like the real files): their seed is not the run's."""
SEQUENCE_CACHE_SIZE = 1
SOURCE_CACHE_SIZE = 2
ROTATION_RANGE = 180.0
ROTATION_CHUNK = 8192
"""Images rotated per batched ``grid_sample`` call (bounds the float32 temporary to ~25 MB)."""
IMAGE_SIDE = 28


@dataclass(frozen=True, eq=False)
class Task:
    """One task: its splits (uint8 inputs, long labels), its output head, its class count.

    Attributes:
        name: e.g. ``mnist``, ``permuted-3``, ``rotated-36``, ``split-3/7``.
        train: training inputs (after the validation split and ``train_limit``).
        val: validation inputs, carved from the source training set (for lambda selection).
        test: test inputs.
        head: the output head this task uses (``t`` for split-mnist, else 0).
        n_classes: the number of classes present in the task (2 for split sequences, else 10).
    """

    name: str
    train: Split
    val: Split
    test: Split
    head: int
    n_classes: int


@dataclass(frozen=True, eq=False)
class TaskSequence:
    """Tasks in training order and the output layout the model needs.

    Attributes:
        name: the sequence name (one of ``SEQUENCES``).
        tasks: the tasks, in order.
        n_heads: output heads the model needs (``n_tasks`` for split-mnist, else 1).
        n_outputs: width of each head (2 for split-mnist, else 10).
    """

    name: str
    tasks: tuple[Task, ...]
    n_heads: int
    n_outputs: int

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]

    @property
    def names(self) -> tuple[str, ...]:
        """The task names, in order."""
        return tuple(t.name for t in self.tasks)


# -- public entry point --------------------------------------------------------------------------


def build_sequence(
    name: str,
    *,
    n_tasks: int | None = None,
    seed: int = 0,
    data: str = "real",
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    download: bool = False,
) -> TaskSequence:
    """Build (or fetch from the per-process cache) the task sequence ``name``.

    Args:
        name: one of ``SEQUENCES``.
        n_tasks: number of tasks; None for the default (2 / 10 / 5 / 5, see ``DEFAULT_TASKS``).
        seed: root seed of every random choice (permutations, angle order, class pairs,
            validation split, limits).
        data: ``real`` (files under the data root) or ``synthetic`` (``data.synthetic_split``).
        root: data root for real data (see ``data.resolve_root``).
        val_fraction: share of each source training set held out for validation, in (0, 1).
        train_limit: keep at most this many training inputs per task; None for all.
        eval_limit: keep at most this many validation and test inputs per task; None for all.
        download: download missing real datasets into the root.

    Raises:
        ValueError: unknown name or data kind, or an invalid ``n_tasks``, seed or limit (the
            message says what is allowed).
        DataNotFoundError: real data requested and missing.
    """
    n = check_n_tasks(name, n_tasks)
    if data not in DATA_KINDS:
        raise ValueError(f"unknown data kind {data!r}; choose one of {', '.join(DATA_KINDS)}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, not {seed!r}")
    for label, value in (("train_limit", train_limit), ("eval_limit", eval_limit)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{label} must be a positive integer or None, not {value!r}")
    root_key = None
    if data == "real":
        root_key = str(resolve_root(root).resolve())
        for dataset in datasets_of(name):  # fail (or download) before touching the cache
            load_split(dataset, True, root_key, download=download)
    return _build_cached(name, n, seed, data, root_key, val_fraction, train_limit, eval_limit)


def check_n_tasks(name: str, n_tasks: int | None) -> int:
    """The number of tasks of sequence ``name``: ``n_tasks``, or its default when None.

    Raises:
        ValueError: unknown sequence, or ``n_tasks`` not allowed for it (says what is).
    """
    spec = sequence_spec(name)
    if n_tasks is None:
        return spec.default_tasks
    low, high = spec.min_tasks, spec.max_tasks
    if not _is_int(n_tasks) or n_tasks < low or (high is not None and n_tasks > high):
        if low == high:
            allowed = f"exactly {low}"
        elif high is not None:
            allowed = f"{low} to {high} (2 classes each)"
        else:
            allowed = f"any integer >= {low}"
        raise ValueError(f"n_tasks = {n_tasks!r} is invalid for {name}: it takes {allowed} tasks")
    return n_tasks


def clear_cache() -> None:
    """Forget the sequences (and their source splits) built in this process."""
    _build_cached.cache_clear()
    _source_splits.cache_clear()


# -- seeded choices ------------------------------------------------------------------------------


def permutation(seed: int, task: int) -> torch.Tensor:
    """The pixel permutation of permuted-MNIST task ``task``: ``randperm(784)``, long."""
    return torch.randperm(IMAGE_SIDE * IMAGE_SIDE, generator=generator(seed, "permutation", task))


def rotation_angles(n_tasks: int, seed: int) -> tuple[float, ...]:
    """Angles ``180 * t / n_tasks`` degrees for ``t = 0..n_tasks-1``, in a seeded order."""
    order = torch.randperm(n_tasks, generator=generator(seed, "rotation-order")).tolist()
    return tuple(ROTATION_RANGE * t / n_tasks for t in order)


def class_pairs(seed: int) -> tuple[tuple[int, int], ...]:
    """Five disjoint digit pairs: a seeded shuffle of 0..9 in consecutive pairs, each sorted."""
    digits = torch.randperm(N_CLASSES, generator=generator(seed, "split-classes")).tolist()
    pairs = (tuple(sorted(digits[i : i + 2])) for i in range(0, N_CLASSES, 2))
    return tuple((a, b) for a, b in pairs)


# -- transforms (whole tensors, uint8 in, uint8 out) ---------------------------------------------


def permute_pixels(images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Images ``[N, 1, 28, 28]`` with pixels reordered: ``out.flat[:, i] = x.flat[:, perm[i]]``."""
    return images.flatten(1)[:, perm].view(images.shape)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images ``[N, C, H, W]`` counter-clockwise by ``degrees`` about their centre.

    Bilinear interpolation, zeros outside (``affine_grid`` + ``grid_sample``, ``align_corners=
    False``), in chunks of ``ROTATION_CHUNK`` images. The output pixel at centred coordinates
    ``p`` reads the input at ``R(-degrees) p``; with cos and sin rounded to 12 decimals, 0 degrees
    is the identity and 90 degrees is exactly ``torch.rot90(images, 1, (-2, -1))`` (transpose,
    then flip the rows). uint8 inputs are rounded back to uint8; float inputs stay float.
    """
    radians = math.radians(degrees)
    cos, sin = round(math.cos(radians), 12), round(math.sin(radians), 12)
    if (cos == 1.0 and sin == 0.0) or images.shape[0] == 0:
        return images.clone()
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    chunks = [_rotate_chunk(chunk, theta) for chunk in images.split(ROTATION_CHUNK)]
    return torch.cat(chunks)


def _rotate_chunk(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float32)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)


# -- building ------------------------------------------------------------------------------------

Transform = Callable[[Split], Split]


def datasets_of(sequence_name: str) -> tuple[str, ...]:
    """The datasets sequence ``sequence_name`` is built from, in task order (no repeats).

    Raises:
        ValueError: unknown sequence.
    """
    return sequence_spec(sequence_name).datasets


def heads_of(sequence_name: str, n_tasks: int | None = None) -> tuple[int, int]:
    """``(n_heads, n_outputs)`` of a sequence's model, known without loading any data.

    A multi-head sequence (``split-mnist``) has one head per task; the others one shared head.
    """
    spec = sequence_spec(sequence_name)
    n = check_n_tasks(sequence_name, n_tasks)
    return (n if spec.multi_head else 1), spec.outputs


@functools.lru_cache(maxsize=SEQUENCE_CACHE_SIZE)
def _build_cached(
    name: str,
    n_tasks: int,
    seed: int,
    data: str,
    root: str | None,
    val_fraction: float,
    train_limit: int | None,
    eval_limit: int | None,
) -> TaskSequence:
    def source(dataset: str) -> tuple[Split, Split, Split]:
        return _source_splits(dataset, seed, data, root, val_fraction)

    def task(
        name_: str,
        dataset: str,
        transform: Transform,
        head: int,
        n_classes: int,
        select: Transform | None = None,
    ) -> Task:
        pick = select or _identity  # class selection comes before the limits
        train, val, test = (pick(s) for s in source(dataset))
        limited = [
            limit_split(split, limit, seed_hash(seed, "limit", name_, part))
            for split, limit, part in (
                (train, train_limit, "train"),
                (val, eval_limit, "val"),
                (test, eval_limit, "test"),
            )
        ]
        train, val, test = (transform(s) for s in limited)
        return Task(name_, train, val, test, head=head, n_classes=n_classes)

    n_heads, n_outputs = heads_of(name, n_tasks)
    tasks = SPECS[name].build(task, n_tasks, seed)
    return TaskSequence(name, tuple(tasks), n_heads=n_heads, n_outputs=n_outputs)


@functools.lru_cache(maxsize=SOURCE_CACHE_SIZE)
def _source_splits(
    dataset: str, seed: int, data: str, root: str | None, val_fraction: float
) -> tuple[Split, Split, Split]:
    """``(train, val, test)`` of a source dataset, the validation part seeded by dataset name."""
    if data == "synthetic":
        full, test = (synthetic_split(dataset, t, SYNTHETIC_DATA_SEED) for t in (True, False))
    else:
        full, test = (load_split(dataset, t, root) for t in (True, False))
    train, val = train_val_split(full, val_fraction, seed_hash(seed, "val", dataset))
    return train, val, test


def _identity(split: Split) -> Split:
    return split


def _permuter(perm: torch.Tensor) -> Transform:
    return lambda s: Split(permute_pixels(s.inputs, perm), s.targets)


def _rotator(angle: float) -> Transform:
    return lambda s: Split(rotate(s.inputs, angle), s.targets)


def _pair_filter(pair: tuple[int, int], relabel: bool) -> Transform:
    """Keep the inputs of the two classes; relabel to 0 (``pair[0]``) / 1 (``pair[1]``) if asked."""

    def apply(split: Split) -> Split:
        kept = split.subset(torch.isin(split.targets, torch.tensor(pair)))
        if not relabel:
            return kept
        return Split(kept.inputs, (kept.targets == pair[1]).to(torch.long))

    return apply


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the sequences, one spec each ------------------------------------------------------------------

TaskFactory = Callable[..., Task]
"""``task(name, dataset, transform, head, n_classes, select=None) -> Task`` (``_build_cached``)."""


@dataclass(frozen=True)
class SequenceSpec:
    """One named sequence: where its tasks come from and how they are built.

    Attributes:
        name: the ``sequence`` setting.
        summary: one line for help texts and reports.
        datasets: the source datasets, in task order (what the data check looks for).
        default_tasks: ``n_tasks`` when not given.
        min_tasks, max_tasks: the range ``n_tasks`` may take (``max_tasks`` None: unbounded).
        multi_head: one output head per task (task-incremental), else one shared head.
        outputs: the width of each head.
        build: ``build(task, n_tasks, seed) -> [Task, ...]`` with ``task`` a ``TaskFactory``.
    """

    name: str
    summary: str
    datasets: tuple[str, ...]
    default_tasks: int
    build: Callable[[TaskFactory, int, int], list[Task]]
    min_tasks: int = 1
    max_tasks: int | None = None
    multi_head: bool = False
    outputs: int = N_CLASSES


def _pair(order: tuple[str, ...]) -> Callable[[TaskFactory, int, int], list[Task]]:
    return lambda task, n, seed: [task(d, d, _identity, 0, N_CLASSES) for d in order]


def _permuted(task: TaskFactory, n: int, seed: int) -> list[Task]:
    return [
        task(f"permuted-{t}", "mnist", _permuter(permutation(seed, t)), 0, N_CLASSES)
        for t in range(n)
    ]


def _rotated(task: TaskFactory, n: int, seed: int) -> list[Task]:
    return [
        task(f"rotated-{angle:g}", "mnist", _rotator(angle), 0, N_CLASSES)
        for angle in rotation_angles(n, seed)
    ]


def _split(multi: bool) -> Callable[[TaskFactory, int, int], list[Task]]:
    def build(task: TaskFactory, n: int, seed: int) -> list[Task]:
        return [
            task(
                f"split-{pair[0]}/{pair[1]}",
                "mnist",
                _identity,
                t if multi else 0,
                2,
                select=_pair_filter(pair, relabel=multi),
            )
            for t, pair in enumerate(class_pairs(seed)[:n])
        ]

    return build


SPECS: dict[str, SequenceSpec] = {
    s.name: s
    for s in (
        SequenceSpec(
            "mnist-fmnist",
            "MNIST then FashionMNIST, one shared head (the source tutorial's)",
            ("mnist", "fmnist"),
            2,
            _pair(("mnist", "fmnist")),
            min_tasks=2,
            max_tasks=2,
        ),
        SequenceSpec(
            "fmnist-mnist",
            "FashionMNIST then MNIST, one shared head",
            ("fmnist", "mnist"),
            2,
            _pair(("fmnist", "mnist")),
            min_tasks=2,
            max_tasks=2,
        ),
        SequenceSpec(
            "permuted-mnist",
            "MNIST under a seeded pixel permutation per task",
            ("mnist",),
            10,
            _permuted,
        ),
        SequenceSpec(
            "rotated-mnist",
            "MNIST rotated by 180 t / n degrees, seeded order",
            ("mnist",),
            5,
            _rotated,
        ),
        SequenceSpec(
            "split-mnist",
            "digit pairs, one 2-way head per task (task-incremental)",
            ("mnist",),
            5,
            _split(multi=True),
            max_tasks=5,
            multi_head=True,
            outputs=2,
        ),
        SequenceSpec(
            "split-mnist-class",
            "digit pairs, one shared 10-way head (class-incremental)",
            ("mnist",),
            5,
            _split(multi=False),
            max_tasks=5,
        ),
    )
}
SEQUENCES = tuple(SPECS)
"""Every sequence name, in report order."""


def sequence_spec(name: str) -> SequenceSpec:
    """The spec of sequence ``name``.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if name not in SPECS:
        raise ValueError(f"unknown sequence {name!r}; valid names: {', '.join(SPECS)}")
    return SPECS[name]
