"""A tiny, learnable data root in torchvision's IDX layout, for tests that need ``data = "real"``.

``write_fake_root(root)`` writes ``root/MNIST/raw`` and ``root/FashionMNIST/raw`` from
``benchmark.data.synthetic_split`` (1,200 train / 300 test inputs each, uncompressed IDX files
with the right headers). Their sizes are not the published ones, so no MD5 is checked: the
benchmark reads them as a custom subset.
"""

from __future__ import annotations

import struct
from pathlib import Path

from benchmark.data import synthetic_split
from benchmark.datacheck import FOLDERS, IMAGE_MAGIC, LABEL_MAGIC

DATASETS = tuple(FOLDERS)
"""``mnist`` and ``fmnist``."""


def write_dataset(root: Path, name: str) -> Path:
    """Write dataset ``name``'s four IDX files under ``root/<Folder>/raw``; return that folder."""
    raw = Path(root) / FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, train in (("train", True), ("t10k", False)):
        split = synthetic_split(name, train)
        n = len(split)
        images = split.inputs.reshape(n, 28 * 28).contiguous().numpy().tobytes()
        labels = split.targets.to(dtype=split.inputs.dtype).numpy().tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", IMAGE_MAGIC, n, 28, 28) + images
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", LABEL_MAGIC, n) + labels
        )
    return raw


def write_fake_root(root: Path, names: tuple[str, ...] = DATASETS) -> Path:
    """A data root holding ``names`` (default both datasets); returns ``root``."""
    for name in names:
        write_dataset(root, name)
    return Path(root)
