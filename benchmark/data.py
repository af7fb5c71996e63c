"""Datasets as in-memory tensors: MNIST and FashionMNIST through torchvision, or tiny stand-ins.

Each split is read once per process from the data root (torchvision layout: ``ROOT/MNIST/raw/*``,
``ROOT/FashionMNIST/raw/*``, uncompressed IDX files) and kept as it is stored: inputs uint8
``[N, 1, 28, 28]`` (0..255) and long labels ``[N]``. uint8 keeps a 10-task permuted MNIST at
about 550 MB instead of 2.2 GB in float32. ``Split.float_inputs(index)`` converts one batch to
float32 in [0, 1] with one batched op, exactly what torchvision's ``ToTensor`` gives
(``x / 255``), without per-item transforms.

The root may be read-only: nothing is written there unless files are missing and a download was
allowed. Root resolution: an explicit ``root`` argument (``--data-root``), else the
``EWC_BENCH_DATA`` environment variable, else ``./data`` (``benchmark.datacheck.resolve_root``).

Bad or missing files are diagnosed before torchvision reads them, in one line
(``benchmark.datacheck`` holds the published files, sizes and MD5s and the rules):
``load_split`` checks headers and sizes (not MD5s) and raises ``CorruptDataError`` naming the
file, or ``DataNotFoundError`` naming the missing files, the folder and the fixes;
``verify_dataset`` and ``ensure_dataset`` also compare MD5s.

Randomness (validation splits, subsets, synthetic data) comes from ``benchmark.seeds``, keyed
by role, never from torch's global generator.

``synthetic_split`` gives tiny deterministic stand-ins for ``mnist`` and ``fmnist`` (1,200 train /
300 test inputs, 10 classes, class prototypes plus noise) so that tests and quick runs need no
files.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets

from . import datacheck
from .datacheck import resolve_root
from .errors import UserError
from .seeds import generator

ENV_VAR = datacheck.ENV_VAR
DEBIAN_HINT = datacheck.DEBIAN_HINT
DATASETS: dict[str, type[datasets.MNIST]] = {
    "mnist": datasets.MNIST,
    "fmnist": datasets.FashionMNIST,
}
IMAGE_SHAPE = (1, 28, 28)
PIXEL_MAX = 255.0
N_CLASSES = 10

SYNTHETIC_SIZES = {True: 1200, False: 300}
"""Synthetic split sizes: ``{train: 1200, test: 300}`` (120 / 30 inputs per class)."""
SYNTHETIC_NOISE = 0.15
"""Standard deviation of the Gaussian pixel noise of synthetic inputs (pixel scale [0, 1])."""
SYNTHETIC_MNIST_BLACK = 0.25
"""Synthetic ``mnist`` pixels below this are set to 0 (black background)."""


class DataError(UserError):
    """A dataset's files are missing or wrong; the message is one line saying what and how."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are missing and downloading was not allowed (or failed)."""


class CorruptDataError(DataError, ValueError):
    """A dataset's files exist but are wrong (truncated, bad header, wrong size or MD5)."""


@dataclass(frozen=True, eq=False)
class Split:
    """One split in memory: inputs ``[N, 1, 28, 28]`` uint8 (0..255), labels ``[N]`` long.

    Splits returned by the loaders are cached and shared: treat their tensors as read-only.
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]

    def float_inputs(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs ``index`` (all if None) as float32 in [0, 1]: ``x / 255``, one batched op.

        Args:
            index: long indices or a boolean mask of the inputs to convert, or None for all.

        Returns:
            A new float32 tensor ``[len(index), 1, 28, 28]`` on the inputs' device.
        """
        raw = self.inputs if index is None else self.inputs[index]
        return raw.to(torch.float32).div_(PIXEL_MAX)

    def subset(self, index: torch.Tensor) -> Split:
        """The inputs and labels at ``index`` (long indices or a boolean mask), as a new Split."""
        return Split(inputs=self.inputs[index], targets=self.targets[index])


# -- real datasets -------------------------------------------------------------------------------


def raw_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset ``name``'s uncompressed IDX files are looked for: ``ROOT/<Class>/raw``."""
    return datacheck.raw_folder(name, root)


def raw_files(name: str) -> tuple[str, ...]:
    """The uncompressed IDX files dataset ``name`` needs (train and test, images and labels)."""
    datacheck.check_name(name)
    return datacheck.FILES


def files_present(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether all of dataset ``name``'s IDX files are under ``raw_folder(name, root)``."""
    folder = raw_folder(name, root)
    return all((folder / f).is_file() for f in raw_files(name))


def verify_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, checksums: bool = True
) -> None:
    """Check dataset ``name``'s files (``benchmark.datacheck.check_dataset``); raise if bad.

    Args:
        name: ``mnist`` or ``fmnist``.
        root: the data root; None resolves as ``resolve_root``.
        checksums: also compare files of the published size with their published MD5.

    Raises:
        ValueError: unknown dataset name.
        CorruptDataError: a file exists but is wrong (every problem, joined by ``"; "``).
        DataNotFoundError: files are missing (names them, the folder and the fixes).
    """
    _raise_if_bad(datacheck.check_dataset(name, root, checksums=checksums))


def ensure_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, download: bool = False
) -> bool:
    """Verify dataset ``name`` (MD5s included); download it first if missing and allowed.

    The download goes through torchvision (which checks the archives' MD5s) into ``root``, with
    one line on stderr first and torchvision's progress bars; the files are verified again after.

    Args:
        name: ``mnist`` or ``fmnist``.
        root: the data root; None resolves as ``resolve_root``.
        download: download missing files.

    Returns:
        Whether it downloaded.

    Raises:
        ValueError: unknown dataset name.
        CorruptDataError: a file exists but is wrong.
        DataNotFoundError: files missing and downloading not allowed, or the download failed.
    """
    base = resolve_root(root).resolve()
    check = datacheck.check_dataset(name, base, checksums=True)
    if not (check.missing and download):
        _raise_if_bad(check, "Downloading was not allowed.")
        return False
    print(
        f"downloading {check.label} into {check.folder} through torchvision "
        "(archive MD5s verified) ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        _download(name, base)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataNotFoundError(
            datacheck.missing_message(check, f"Downloading failed: {reason}.", tried=True)
        ) from None
    _raise_if_bad(
        datacheck.check_dataset(name, base, checksums=True),
        "The download did not provide them.",
        tried=True,
    )
    return True


def load_split(
    name: str, train: bool, root: str | os.PathLike[str] | None = None, download: bool = False
) -> Split:
    """Load ``name`` (``mnist`` or ``fmnist``), train or test split, as uint8 tensors.

    Checks the files' headers and sizes first (not their MD5s: see ``verify_dataset``).
    Downloads (through torchvision, into the root; see ``ensure_dataset``) only when files are
    missing and ``download`` is true. Cached per process: loading the same split from the same
    root again returns the same ``Split`` (treat it as read-only).

    Raises:
        ValueError: unknown dataset name.
        CorruptDataError: a file exists but is wrong (names it and what is wrong).
        DataNotFoundError: files missing and not downloadable (says where it looked and how to
            provide them).
    """
    _dataset_class(name)
    base = resolve_root(root).resolve()
    check = datacheck.check_dataset(name, base, checksums=False)
    if check.missing and download:
        ensure_dataset(name, base, download=True)
    else:
        _raise_if_bad(check, "Downloading was not allowed.")
    return _load_cached(name, bool(train), str(base))


def clear_cache() -> None:
    """Forget every split loaded or generated in this process."""
    _load_cached.cache_clear()
    synthetic_split.cache_clear()


def _download(name: str, base: Path) -> None:
    """Download dataset ``name`` into ``base`` through torchvision (both splits)."""
    cls = _dataset_class(name)
    for train in (True, False):
        cls(str(base), train=train, download=True)


def _dataset_class(name: str) -> type[datasets.MNIST]:
    return DATASETS[datacheck.check_name(name)]


def _raise_if_bad(check: datacheck.DatasetCheck, reason: str = "", tried: bool = False) -> None:
    """Raise ``CorruptDataError`` for problems, else ``DataNotFoundError`` for missing files."""
    if check.problems:
        also = f"; also missing in {check.folder}: {', '.join(check.missing)}"
        raise CorruptDataError("; ".join(check.problems) + (also if check.missing else ""))
    if check.missing:
        raise DataNotFoundError(datacheck.missing_message(check, reason, tried=tried))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, train: bool, root: str) -> Split:
    """Read one split's IDX files (they exist) into uint8 ``[N, 1, 28, 28]`` and long labels."""
    try:
        ds = _dataset_class(name)(root, train=train, download=False)
    except (RuntimeError, AssertionError, ValueError, OSError):  # changed since it was checked
        _raise_if_bad(datacheck.check_dataset(name, root, checksums=False))
        raise
    inputs = ds.data.to(torch.uint8).unsqueeze(1).contiguous()
    return Split(inputs=inputs, targets=ds.targets.to(torch.long))


# -- validation split ----------------------------------------------------------------------------


def train_val_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a seeded validation set of ``round(fraction * N)`` inputs out of ``split``.

    A uniformly random subset (not stratified), drawn with ``generator(seed, "train-val-split")``.
    Both parts keep the original order of their inputs, and they are disjoint and cover ``split``.

    Args:
        split: the training split to divide.
        fraction: the share held out for validation, in (0, 1).
        seed: the seed of this split (e.g. ``seed_hash(root_seed, "val", dataset_name)``).

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: ``fraction`` not in (0, 1), or one part would be empty.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be strictly between 0 and 1, not {fraction}")
    n = len(split)
    n_val = round(fraction * n)
    if not 0 < n_val < n:
        raise ValueError(
            f"validation fraction {fraction} of {n} inputs leaves an empty part "
            f"({n - n_val} train / {n_val} validation)"
        )
    order = torch.randperm(n, generator=generator(seed, "train-val-split"))
    val_idx, _ = order[:n_val].sort()
    train_idx, _ = order[n_val:].sort()
    return split.subset(train_idx), split.subset(val_idx)


def limit_split(split: Split, limit: int | None, seed: int) -> Split:
    """A seeded random subset of at most ``limit`` inputs (in original order); all if None.

    Args:
        split: the split to subsample.
        limit: the most inputs to keep (>= 1), or None to keep everything.
        seed: the seed of this subset; drawn with ``generator(seed, "limit-split")``.
    """
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise ValueError(f"limit must be a positive integer or None, not {limit}")
    order = torch.randperm(len(split), generator=generator(seed, "limit-split"))
    index, _ = order[:limit].sort()
    return split.subset(index)


# -- synthetic stand-ins -------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def synthetic_split(name: str, train: bool, seed: int = 0) -> Split:
    """A tiny deterministic stand-in for ``mnist`` or ``fmnist``: 1,200 train / 300 test inputs.

    Ten classes, 10% of the inputs each (in a seeded order). Each class has a prototype image
    ``p_c`` in [0, 1]^(28x28), drawn once per ``(seed, name)`` and shared by both splits; an input
    of class ``c`` is ``clamp(a * p_c + 0.15 * noise, 0, 1)`` with a per-input intensity
    ``a ~ U(0.6, 1)`` and standard Gaussian noise, stored as uint8 (``round(255 x)``). The two
    "datasets" look different:

    - ``mnist``: sparse smooth strokes on a black background (a 7x7 binary mask with about 30%
      of cells on, bilinearly upsampled; pixels below 0.25 set to 0);
    - ``fmnist``: dense blocky silhouettes with textured grey levels (about 65% of 7x7 cells on,
      each at a level in [0.4, 1], nearest-neighbour upsampled).

    The classes are far apart, so a small MLP learns either one to > 80% test accuracy within one
    epoch; the labels mean different things in the two datasets, so training on one after the
    other forgets, as with the real pair.

    Args:
        name: ``mnist`` or ``fmnist``.
        train: the training split (1,200 inputs) or the test split (300).
        seed: the seed of the stand-in datasets; the same seed gives identical tensors.

    Raises:
        ValueError: unknown dataset name.
    """
    _dataset_class(name)
    prototypes = _synthetic_prototypes(name, seed)
    n = SYNTHETIC_SIZES[bool(train)]
    gen = generator(seed, "synthetic", name, "train" if train else "test")
    targets = (torch.arange(n) % N_CLASSES)[torch.randperm(n, generator=gen)]
    intensity = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.0, generator=gen)
    noise = torch.randn(n, *IMAGE_SHAPE, generator=gen)
    images = (intensity * prototypes[targets] + SYNTHETIC_NOISE * noise).clamp_(0.0, 1.0)
    if name == "mnist":  # a black background, as in MNIST
        images[images < SYNTHETIC_MNIST_BLACK] = 0.0
    inputs = images.mul_(PIXEL_MAX).round_().to(torch.uint8)
    return Split(inputs=inputs, targets=targets)


def _synthetic_prototypes(name: str, seed: int) -> torch.Tensor:
    """Ten class prototypes ``[10, 1, 28, 28]`` in [0, 1] (see ``synthetic_split``)."""
    gen = generator(seed, "synthetic", name, "prototypes")
    cells = torch.rand(N_CLASSES, 1, 7, 7, generator=gen)
    levels = torch.rand(N_CLASSES, 1, 7, 7, generator=gen)
    if name == "mnist":
        mask = (cells > 0.7).to(torch.float32)
        return F.interpolate(mask, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)
    blocks = (cells > 0.35).to(torch.float32) * (0.4 + 0.6 * levels)
    return F.interpolate(blocks, size=IMAGE_SHAPE[1:], mode="nearest")
