"""What things cost: the timing, scaling, library-comparison and input-pipeline measurements.

Measuring only; the reports are rendered from the records by ``benchmark.report`` (never
imported here).

- ``measure``: timed calls in interleaved seeded-order rounds, peak memory, a measurement's
  environment;
- ``workloads``: what is timed: synthetic inputs, the tutorial network, the floor and naive
  references, and ``Variant``, one training step (the harness's ``training.train_step``) plain or
  with the EWC penalty ``estimators.EWC``;
- ``timing`` (``python -m benchmark timing``), with ``variants`` (its rows: estimator names and
  variants such as ``kfac-exact factors=a-diag``), ``child`` (one fit's extra peak memory in a
  fresh process, ``python -m benchmark.costs --child``) and ``compare`` (BackPACK, nngeometry);
- ``scaling`` (``python -m benchmark scaling``);
- ``pipeline``: one training epoch through the tutorial's DataLoader vs in-memory tensors;
- ``bench_baseline``: ``make bench-compare``'s check for a saved baseline.
"""

from __future__ import annotations

from .measure import SetupError
from .pipeline import measure as measure_pipeline
from .scaling import ScalingConfig, ScalingError, quick_config, run_scaling
from .timing import TimingConfig, make_config, run_timing
from .workloads import Variant, make_variant

__all__ = [
    "ScalingConfig",
    "ScalingError",
    "SetupError",
    "TimingConfig",
    "Variant",
    "make_config",
    "make_variant",
    "measure_pipeline",
    "quick_config",
    "run_scaling",
    "run_timing",
]
