"""Seeds keyed by role: every random choice in the data pipeline comes from here.

A random choice is named by its *role* and the root seed, e.g. ``(seed, "permutation", 3)`` for
the pixel permutation of task 3, and gets its own generator seeded with a hash of that name (the
idea of DomainBed's ``misc.seed_hash``). Choices therefore do not share a random stream: the
permutation of task 3 is the same whether or not tasks 0-2, a validation split or anything else
were drawn first, and whatever else ran in the process. The data pipeline never uses torch's
global generator; the harness seeds it once per run, with ``seed_hash(seed, "init")``, just
before building the model, whose layers draw their initial weights from it.
"""

from __future__ import annotations

import hashlib
import numbers

import torch

SEED_BITS = 31
"""Seeds are in [0, 2**31): valid for torch, numpy and Python's ``random`` alike."""


def seed_hash(*parts: object) -> int:
    """A deterministic 31-bit seed from the ``repr`` of ``parts``.

    ``seed = int(md5(repr(parts)).hexdigest(), 16) mod 2**31``. The value depends only on the
    parts' reprs, so it is stable across processes, platforms and Python's hash randomisation.
    Use plain values (ints, strings, tuples of them) as parts: their reprs are stable. Integer
    and real scalars of other types (numpy, ...) count as the equal Python ``int`` / ``float``.

    Args:
        *parts: the root seed and the names of the role, e.g. ``(0, "permutation", 3)``.

    Returns:
        An integer in ``[0, 2**31)``.
    """
    digest = hashlib.md5(repr(tuple(map(_plain, parts))).encode("utf-8"), usedforsecurity=False)
    return int(digest.hexdigest(), 16) % (2**SEED_BITS)


def _plain(part: object) -> object:
    """Integers and reals as Python ``int`` / ``float`` (``np.int64(3)`` hashes like ``3``)."""
    if isinstance(part, bool) or not isinstance(part, numbers.Real):
        return part
    return int(part) if isinstance(part, numbers.Integral) else float(part)


def generator(*parts: object) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed_hash(*parts)``."""
    return torch.Generator().manual_seed(seed_hash(*parts))
