"""The approximation study: how close each Fisher approximation is to the exact Fisher.

``run`` trains the ground-truth networks and measures every estimator against the exact Fisher
(``make study``); ``sweep_network`` is part E, every estimator the sweep ran on its main
comparison's network against that network's exact dense Fisher and the reference's own noise;
``approx`` holds the metrics (relative Frobenius, trace and penalty errors, spectra, subspace
overlap, off-block share, penalty errors along the reference's top eigen-directions), computed
from each curvature's own closed forms. STUDY.md is rendered by ``benchmark.report.study``.
"""

from .run import QUICK, StudyConfig, run_study

__all__ = ["QUICK", "StudyConfig", "run_study"]
