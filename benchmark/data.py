"""Datasets as in-memory tensors: MNIST and FashionMNIST through torchvision.

Each split is read once from the data root (torchvision layout: ``ROOT/MNIST/raw/*``,
``ROOT/FashionMNIST/raw/*``) and converted to a float tensor ``[N, 1, 28, 28]`` in [0, 1] (what
``ToTensor`` gives, without per-item transforms) and long labels ``[N]``. The root may be
read-only: nothing is written there unless a download was asked for.

Root resolution: an explicit ``root`` argument (``--data-root``), else the ``EWC_BENCH_DATA``
environment variable, else ``./data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

ENV_VAR = "EWC_BENCH_DATA"
DATASETS: dict[str, type[datasets.MNIST]] = {
    "mnist": datasets.MNIST,
    "fmnist": datasets.FashionMNIST,
}
DEBIAN_HINT = {
    "fmnist": " On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs the gzipped "
    "files under /usr/share/datasets/fashion-mnist/; decompress them into that folder.",
}


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing and downloading was not allowed (or failed)."""


@dataclass(frozen=True)
class Split:
    """One split in memory: inputs ``[N, 1, 28, 28]`` float32 in [0, 1], labels ``[N]`` long."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$EWC_BENCH_DATA``, else ``./data``."""
    if root is not None and str(root) != "":
        return Path(root)
    env = os.environ.get(ENV_VAR, "")
    return Path(env) if env else Path("data")


def load_split(
    name: str, train: bool, root: str | os.PathLike[str] | None = None, download: bool = False
) -> Split:
    """Load ``name`` (``mnist`` or ``fmnist``), train or test split, as tensors.

    Raises:
        ValueError: unknown dataset name.
        DataNotFoundError: files missing (says where it looked and how to provide them).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    cls = DATASETS[name]
    base = resolve_root(root)
    try:
        ds = cls(str(base), train=train, download=download)
    except RuntimeError as err:
        raw = base / cls.__name__ / "raw"
        files = ", ".join(Path(url).stem for url, _ in cls.resources)
        how = "Downloading failed: " + str(err) if download else "Downloading was not allowed."
        raise DataNotFoundError(
            f"{cls.__name__} not found: looked for {files} in {raw.resolve()}. {how} "
            f"Provide the uncompressed IDX files there, or point --data-root / ${ENV_VAR} at a "
            f"folder holding {cls.__name__}/raw/." + DEBIAN_HINT.get(name, "")
        ) from None
    inputs = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return Split(inputs=inputs, targets=ds.targets.to(torch.long))
