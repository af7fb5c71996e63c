"""Check the MNIST / FashionMNIST IDX files before any training: one line per problem.

Standard library only (no torch, numpy or torchvision), so ``python3 -m benchmark.datacheck``
runs with a bare Python before the virtual environment exists::

    python3 -m benchmark.datacheck [--data-root R] [--datasets mnist,fmnist] [--download]
                                   [--no-checksums]

It prints one ``error: ...`` line on stderr per problem and exits with status 2; missing files
with ``--download`` give one line saying where they will be downloaded (status 0); all files
good give one short line on stdout (status 0).

This module is the single source of truth for the published files and the data root:

- datasets ``mnist`` (folder ``MNIST``) and ``fmnist`` (folder ``FashionMNIST``), each four
  uncompressed IDX files under ``ROOT/<Folder>/raw`` (torchvision's layout): ``FILES``;
- their published sizes (``PUBLISHED_SIZES``, the same for both datasets) and ``PUBLISHED_MD5``:
  the MD5 of each *uncompressed* file of the published archives (torchvision verifies the
  archives themselves against the ``.gz`` MD5s it lists in ``MNIST.resources`` and
  ``FashionMNIST.resources``);
- the root: an explicit ``root`` (``--data-root``), else ``$EWC_BENCH_DATA``, else ``./data``
  (``resolve_root``).

Rules per file (``check_dataset``): shorter than its IDX header -> truncated; the magic number
must be 0x00000803 for images and 0x00000801 for labels; images must be 28 x 28; the size must
be the header plus count x item size exactly (else truncated, or trailing bytes); labels must be
0..9; the images and labels of a split must have the same count. A file of the published size
must have the published MD5 (else it is a corrupt copy). A file of another, self-consistent size
is taken as a custom subset and is not MD5-checked. MD5s are read in chunks and cached per
process by ``(path, size, mtime_ns)``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import struct
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "EWC_BENCH_DATA"
DEFAULT_ROOT = "data"
FOLDERS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
"""Dataset name -> folder under the root (torchvision's class name)."""
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The uncompressed IDX files of each dataset, in torchvision's ``resources`` order."""
SPLITS = ("train", "t10k")

IMAGE_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension
IMAGE_HEADER = 16  # magic, count, rows, columns (big-endian uint32)
LABEL_HEADER = 8  # magic, count
IMAGE_SIDE = 28
N_CLASSES = 10

PUBLISHED_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
"""Bytes of each published uncompressed file (60,000 train / 10,000 test inputs)."""
PUBLISHED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fmnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
"""MD5 of each uncompressed file of the published archives, per dataset."""

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fmnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
"""Where torchvision downloads each dataset from (``MNIST.mirrors``, ``FashionMNIST.mirrors``)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a mirror to accept a connection before calling it unreachable."""

DEBIAN_HINT = {
    "fmnist": " On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs the gzipped "
    "files under /usr/share/datasets/fashion-mnist/; decompress them into that folder.",
}
HASH_CHUNK = 1 << 20
"""Bytes read at a time when hashing."""

_MD5_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class DatasetCheck:
    """The outcome of ``check_dataset``.

    Attributes:
        name: the dataset (``mnist`` or ``fmnist``).
        folder: the absolute folder looked in (``ROOT/<Folder>/raw``).
        missing: names of the files absent from ``folder``.
        problems: one line per file that exists but is wrong (or per inconsistent split).
    """

    name: str
    folder: Path
    missing: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every file is present and good."""
        return not self.missing and not self.problems

    @property
    def label(self) -> str:
        """The dataset's folder name (``MNIST`` or ``FashionMNIST``), as used in messages."""
        return FOLDERS[self.name]


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$EWC_BENCH_DATA``, else ``./data``."""
    if root is not None and str(root) != "":
        return Path(root)
    env = os.environ.get(ENV_VAR, "")
    return Path(env) if env else Path(DEFAULT_ROOT)


def check_name(name: str) -> str:
    """``name`` if it is a known dataset.

    Raises:
        ValueError: unknown dataset name (the message lists the valid ones).
    """
    if name not in FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(FOLDERS))}")
    return name


def raw_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset ``name``'s uncompressed IDX files are looked for: ``ROOT/<Folder>/raw``."""
    return resolve_root(root) / FOLDERS[check_name(name)] / "raw"


def check_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, checksums: bool = True
) -> DatasetCheck:
    """Check dataset ``name``'s four IDX files under ``raw_folder(name, root)``.

    Args:
        name: ``mnist`` or ``fmnist``.
        root: the data root; None resolves as ``resolve_root``.
        checksums: also compare files of the published size with their published MD5.

    Returns:
        The missing files and one line per problem (see the module docstring for the rules).

    Raises:
        ValueError: unknown dataset name.
    """
    folder = raw_folder(name, root).resolve()
    missing: list[str] = []
    problems: list[str] = []
    counts: dict[str, int | None] = {}
    for file in FILES:
        path = folder / file
        if not path.exists():
            missing.append(file)
            continue
        count, problem = _check_file(name, path, checksums)
        counts[file] = count
        if problem:
            problems.append(problem)
    for split in SPLITS:
        images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        n_images, n_labels = counts.get(images), counts.get(labels)
        if n_images is not None and n_labels is not None and n_images != n_labels:
            problems.append(
                f"{folder / images} holds {n_images:,} images but {folder / labels} holds "
                f"{n_labels:,} labels: the {split} images and labels must match, replace them"
            )
    return DatasetCheck(name, folder, tuple(missing), tuple(problems))


def missing_message(check: DatasetCheck, reason: str = "", *, tried: bool = False) -> str:
    """One line naming ``check``'s missing files, the folder looked in and how to fix it.

    Args:
        check: a check with missing files.
        reason: an optional sentence put after the facts (e.g. why nothing was downloaded).
        tried: a download was tried (or found impossible): do not suggest allowing one.
    """
    label = check.label
    reason = f" {reason}" if reason else ""
    download = (
        ""
        if tried
        else "; or allow the download (`make reproduce` downloads unless DOWNLOAD=0; "
        "the CLI takes --download)"
    )
    return (
        f"{label} not found: missing {', '.join(check.missing)} in {check.folder}.{reason} "
        f"Provide the uncompressed IDX files there; or point DATA_ROOT=... (make), --data-root "
        f"or ${ENV_VAR} at a folder holding {label}/raw/{download}."
        + DEBIAN_HINT.get(check.name, "")
    )


def file_md5(path: str | os.PathLike[str]) -> str:
    """The MD5 of the file at ``path`` (read in chunks; cached by path, size and mtime)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                digest.update(chunk)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def _check_file(name: str, path: Path, checksums: bool) -> tuple[int | None, str | None]:
    """``(count, None)`` for a good file, ``(None, one-line problem)`` otherwise."""
    images = "-images-" in path.name
    header, magic_expected = (IMAGE_HEADER, IMAGE_MAGIC) if images else (LABEL_HEADER, LABEL_MAGIC)
    what = "images" if images else "labels"
    if not path.is_file():
        return None, f"{path} is not a regular file: replace it with the IDX {what} file"
    try:
        size = path.stat().st_size
        if size < header:
            return None, (
                f"{path} is truncated: {size:,} bytes, shorter than its {header}-byte IDX header"
            )
        with open(path, "rb") as f:
            fields = struct.unpack(f">{header // 4}I", f.read(header))
            magic, count = fields[0], fields[1]
            if magic != magic_expected:
                return None, _magic_problem(path, magic, magic_expected)
            if images and fields[2:] != (IMAGE_SIDE, IMAGE_SIDE):
                rows, cols = fields[2:]
                return None, (
                    f"{path} holds {rows} x {cols} images, expected {IMAGE_SIDE} x {IMAGE_SIDE}"
                )
            item = IMAGE_SIDE * IMAGE_SIDE if images else 1
            expected = header + count * item
            if size != expected:
                kind = "truncated" if size < expected else f"{size - expected:,} trailing bytes"
                return None, (
                    f"{path}: {kind}: header says {count:,} {what} ({expected:,} bytes), "
                    f"the file has {size:,} bytes"
                )
            if not images:
                top = max(f.read(), default=0)
                if top >= N_CLASSES:
                    return None, f"{path} holds label {top}: labels must be 0..{N_CLASSES - 1}"
        published = PUBLISHED_MD5[name][path.name]
        if checksums and size == PUBLISHED_SIZES[path.name]:
            md5 = file_md5(path)
            if md5 != published:
                return None, (
                    f"{path} differs from the published file (MD5 {md5}, expected {published}): "
                    "a corrupt copy, replace it"
                )
    except OSError as err:
        return None, f"{path} cannot be read: {err.strerror or err}"
    return count, None


def _magic_problem(path: Path, magic: int, expected: int) -> str:
    kind = "images" if expected == IMAGE_MAGIC else "labels"
    hint = ""
    if magic >> 16 == 0x1F8B:
        hint = " (a gzip archive: decompress it)"
    elif magic in (IMAGE_MAGIC, LABEL_MAGIC):
        hint = f" (an IDX {'images' if magic == IMAGE_MAGIC else 'labels'} file: swapped names?)"
    return (
        f"{path} is not an IDX {kind} file: magic number 0x{magic:08X}, "
        f"expected 0x{expected:08X}{hint}"
    )


def _unreachable(name: str) -> str | None:
    """None when a download mirror of ``name`` accepts a connection, else why none does."""
    reasons = []
    for url in MIRRORS[name]:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as err:
            reasons.append(f"{parsed.hostname}: {err.strerror or err}")
        else:
            return None
    return "; ".join(reasons)


def _writable(folder: Path) -> bool:
    """Whether ``folder`` can be created and written to (tested on its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _missing_problem(check: DatasetCheck, download: bool) -> str | None:
    """Why missing files are a problem (None: they will be downloaded, said on stderr)."""
    if not download:
        return missing_message(check)
    if not _writable(check.folder):
        return (
            f"{check.label} is missing {', '.join(check.missing)} in {check.folder} and "
            "cannot be downloaded there: the folder is not writable. Pass --data-root "
            f"pointing at a writable folder, or provide the files there."
        )
    unreachable = _unreachable(check.name)
    if unreachable:
        reason = f"It cannot be downloaded: no mirror answers ({unreachable})."
        return missing_message(check, reason, tried=True)
    print(
        f"{check.label} will be downloaded into {check.folder} "
        f"(missing there: {', '.join(check.missing)})",
        file=sys.stderr,
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Check the datasets; return 0 (good, or missing with ``--download``) or 2 (problems)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmark.datacheck",
        description="Check the MNIST / FashionMNIST IDX files under the data root "
        "(ROOT/MNIST/raw, ROOT/FashionMNIST/raw): presence, headers, sizes and published MD5s.",
    )
    parser.add_argument(
        "--data-root", default=None, help=f"datasets root; default ${ENV_VAR}, else ./data"
    )
    parser.add_argument(
        "--datasets",
        default=",".join(FOLDERS),
        help="comma-separated datasets to check (default: mnist,fmnist)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="missing files are fine: they will be downloaded (only corrupt files are errors)",
    )
    parser.add_argument(
        "--no-checksums", action="store_true", help="skip the MD5s (headers and sizes only)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names:
        parser.error("--datasets: name at least one of " + ", ".join(FOLDERS))
    for name in names:
        if name not in FOLDERS:
            parser.error(f"--datasets: unknown dataset {name!r}; valid: {', '.join(FOLDERS)}")

    errors: list[str] = []
    good: list[str] = []
    for name in dict.fromkeys(names):
        check = check_dataset(name, args.data_root, checksums=not args.no_checksums)
        errors.extend(check.problems)
        problem = _missing_problem(check, args.download) if check.missing else None
        if problem:
            errors.append(problem)
        elif not check.problems and not check.missing:
            good.append(check.label)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return 2
    if good:
        checked = "headers and sizes" if args.no_checksums else "headers, sizes and MD5s"
        root = resolve_root(args.data_root).resolve()
        print(f"data ok: {', '.join(good)} under {root} ({checked} checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
