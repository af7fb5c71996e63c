"""What a two-pass fit (``ekfac``) carries from its first pass over the inputs to its second.

EKFAC's second moments s need the KFAC eigenbases, which exist only after the first pass, so
they are accumulated in a second pass over the same chunks. That pass sees the same layer
inputs a and output gradients g as the first (same model, inputs, chunks and label columns), so:

- ``KeptCaptures`` keeps the first pass's captures of the Kronecker layers while they fit in
  ``CACHE_BYTES``, and the second pass is then a loop over them, with no forward or backward
  (on the tutorial network at N = 1,000: 12 MiB of captures). Past the budget it keeps nothing
  and the second pass recomputes them: memory stays bounded for any N.
- ``ReplayedSamples``: where the captures are recomputed, ``mc`` replays the labels it drew in
  the first pass, chunk by chunk, so both passes use the same columns and the generator advances
  exactly as one ``kfac-mc`` fit does.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from .fitting import Capture
from .labels import MonteCarlo

CACHE_BYTES = 256 * 1024**2
"""Most bytes of first-pass captures kept for the second pass (beyond: the pass recomputes).

Counted as the captured tensors' own sizes: a capture that is a view of a tensor the caller holds
anyway (a first layer's input is a view of the inputs) is counted though it costs nothing more."""


class KeptCaptures:
    """The first pass's Kronecker-layer captures, chunk by chunk, while they fit the budget."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = CACHE_BYTES if budget is None else budget
        self.nbytes = 0
        self.chunks: list[Capture] | None = []

    def keep(self, cap: Capture, layers: Collection[int]) -> None:
        """Keep ``cap``'s captures of the layers whose ``id`` is in ``layers``, or give up."""
        if self.chunks is None:
            return
        kept = [lc for lc in cap.layers if id(lc.layer) in layers]
        self.nbytes += sum(_nbytes(lc.a) + _nbytes(lc.g) for lc in kept)
        if self.nbytes > self.budget:
            self.chunks = None  # over budget: free them, the second pass recomputes
            return
        self.chunks.append(Capture(n=cap.n, layers=kept))

    @property
    def complete(self) -> bool:
        """Whether every chunk was kept (the second pass can replay them)."""
        return self.chunks is not None


def _nbytes(t: torch.Tensor) -> int:
    return t.nelement() * t.element_size()


class ReplayedSamples(MonteCarlo):
    """``mc`` labels drawn in the first pass and recorded, replayed chunk by chunk in the second."""

    def __init__(self, mode: MonteCarlo) -> None:
        super().__init__(mode.mc_samples, mode.generator)
        self.drawn: list[torch.Tensor] = []
        self.replaying: int | None = None

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """Draw and record ``[K, n]`` labels; once ``replay`` was called, return the next record."""
        if self.replaying is None:
            labels = super().sample(probs)
            self.drawn.append(labels)
            return labels
        labels = self.drawn[self.replaying]
        self.replaying += 1
        assert labels.shape[1] == probs.shape[0], "the second pass must use the same chunks"
        return labels

    def replay(self) -> None:
        """From now on, return the recorded draws in order."""
        self.replaying = 0
