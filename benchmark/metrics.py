"""Continual-learning metrics: pure functions of an accuracy matrix, plus seed statistics.

An accuracy matrix ``R`` (a list of lists or a numpy array) has ``R[i][j]`` = accuracy on task
``j`` after training on task ``i``: ``T`` rows and ``T`` columns for a sequence of ``T`` tasks.
A ``joint`` run (one training run on all tasks at once) has a single row of ``T`` columns.
Entries after a divergence are ``None`` (``NaN`` in a float array counts as ``None``).

Definitions follow

- Chaudhry, Dokania, Ajanthan and Torr, *Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence*, ECCV 2018 (forgetting), and
- Lopez-Paz and Ranzato, *Gradient Episodic Memory for Continual Learning*, NeurIPS 2017
  (backward transfer).

Every metric returns ``None`` where it is undefined (a single task, a one-row joint matrix for
forgetting and backward transfer, a ``None`` in a cell it needs) and raises ``ValueError`` for a
malformed matrix (empty, ragged, neither square nor one row, a value outside [0, 1]).

``mean_ci`` and ``paired_test`` summarise one number per seed (Student's t interval; paired t
and Wilcoxon signed-rank tests from ``scipy.stats``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from numbers import Real
from typing import Any

import numpy as np
from scipy import stats

Matrix = Sequence[Sequence[float | None]] | np.ndarray
"""An accuracy matrix: rows = after task i, columns = task j."""

WILCOXON_MIN_N = 6
"""The Wilcoxon signed-rank p-value is reported from this many pairs on (below, it cannot reach
0.05 two-sided)."""


# -- validation --------------------------------------------------------------------------------


def _cell(value: Any, i: int, j: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.number)):
        raise ValueError(f"accuracy R[{i}][{j}] = {value!r} is not a number or None")
    x = float(value)
    if math.isnan(x):
        return None
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"accuracy R[{i}][{j}] = {x!r} is outside [0, 1]")
    return x


def check_matrix(R: Matrix) -> list[list[float | None]]:
    """Validate an accuracy matrix and return it as a list of lists of float or None.

    Args:
        R: ``T x T`` (rows = after task i, columns = task j) or ``1 x T`` (a joint run).

    Returns:
        The matrix with plain floats, ``NaN`` turned into ``None``.

    Raises:
        ValueError: empty, ragged, neither square nor one row, or a value outside [0, 1].
    """
    if isinstance(R, np.ndarray):
        if R.ndim != 2:
            raise ValueError(f"an accuracy matrix must be 2-D, got an array of shape {R.shape}")
        R = R.tolist()
    if isinstance(R, (str, bytes)) or not isinstance(R, Sequence) or len(R) == 0:
        raise ValueError("an accuracy matrix must be a non-empty list of rows")
    rows: list[list[float | None]] = []
    for i, row in enumerate(R):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
            raise ValueError(f"row {i} of the accuracy matrix is not a list: {row!r}")
        rows.append([_cell(v, i, j) for j, v in enumerate(row)])
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise ValueError(f"ragged accuracy matrix: row lengths {[len(r) for r in rows]}")
    width = widths.pop()
    if width == 0:
        raise ValueError("an accuracy matrix needs at least one column")
    if len(rows) != 1 and len(rows) != width:
        raise ValueError(
            f"an accuracy matrix must be square (T x T) or one row (a joint run), "
            f"got {len(rows)} rows x {width} columns"
        )
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return float(sum(values) / len(values))  # type: ignore[arg-type]


# -- accuracy-matrix metrics -------------------------------------------------------------------


def average_accuracy(R: Matrix) -> float | None:
    r"""Average accuracy after the last task: the mean of the last row.

    .. math:: A = \frac{1}{T} \sum_{j=0}^{T-1} R_{T-1,j}

    Defined for one task (``R[0][0]``) and for a one-row joint matrix (the mean of its row).

    Args:
        R: accuracy matrix (``T x T`` or ``1 x T``).

    Returns:
        The average accuracy, or None if the last row has a None.

    Raises:
        ValueError: malformed matrix (see ``check_matrix``).
    """
    return _mean(check_matrix(R)[-1])


def forgetting(R: Matrix) -> float | None:
    r"""Average forgetting (Chaudhry et al. 2018).

    .. math:: F = \frac{1}{T-1} \sum_{j=0}^{T-2}
              \Big( \max_{l \in \{j, \dots, T-2\}} R_{l,j} - R_{T-1,j} \Big)

    The best accuracy task ``j`` ever had after it was learnt, minus its final accuracy, averaged
    over every task but the last. 0 for perfect retention; at most 1.

    Args:
        R: accuracy matrix (``T x T``).

    Returns:
        The forgetting, or None for a single task, a one-row joint matrix, or a None among the
        cells it needs (``R[l][j]`` for ``j <= l <= T-1``, ``j < T-1``).

    Raises:
        ValueError: malformed matrix (see ``check_matrix``).
    """
    rows = check_matrix(R)
    T = len(rows)
    if T < 2:
        return None
    terms: list[float] = []
    for j in range(T - 1):
        column = [rows[k][j] for k in range(j, T)]
        if any(v is None for v in column):
            return None
        terms.append(max(column[:-1]) - column[-1])  # type: ignore[type-var, operator]
    return float(sum(terms) / len(terms))


def backward_transfer(R: Matrix) -> float | None:
    r"""Backward transfer (Lopez-Paz and Ranzato 2017).

    .. math:: \mathrm{BWT} = \frac{1}{T-1} \sum_{j=0}^{T-2} \big( R_{T-1,j} - R_{j,j} \big)

    Final accuracy on task ``j`` minus its accuracy right after it was learnt, averaged over every
    task but the last: negative when learning later tasks hurts earlier ones.

    Args:
        R: accuracy matrix (``T x T``).

    Returns:
        The backward transfer, or None for a single task, a one-row joint matrix, or a None in
        ``R[j][j]`` or ``R[T-1][j]`` for some ``j < T-1``.

    Raises:
        ValueError: malformed matrix (see ``check_matrix``).
    """
    rows = check_matrix(R)
    T = len(rows)
    if T < 2:
        return None
    terms: list[float] = []
    for j in range(T - 1):
        last, learnt = rows[T - 1][j], rows[j][j]
        if last is None or learnt is None:
            return None
        terms.append(last - learnt)
    return float(sum(terms) / len(terms))


def accuracy_after_each_task(R: Matrix) -> list[float | None]:
    r"""Accuracy on the tasks seen so far, after each task.

    .. math:: a_i = \frac{1}{i+1} \sum_{j=0}^{i} R_{i,j}, \qquad i = 0, \dots, T-1

    A one-row joint matrix has seen every task: its one entry is the mean of its row.

    Args:
        R: accuracy matrix (``T x T`` or ``1 x T``).

    Returns:
        One value per row; None for a row with a None among the cells it needs.

    Raises:
        ValueError: malformed matrix (see ``check_matrix``).
    """
    rows = check_matrix(R)
    if len(rows) == 1:
        return [_mean(rows[0])]
    return [_mean(row[: i + 1]) for i, row in enumerate(rows)]


# -- statistics over seeds ---------------------------------------------------------------------


def _finite(values: Iterable[float | None]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        x = float(v)
        if not math.isnan(x):
            out.append(x)
    return out


def mean_ci(
    values: Iterable[float | None], confidence: float = 0.95
) -> tuple[float | None, float | None, int]:
    r"""Mean and Student's t confidence-interval half-width.

    .. math:: \bar x \pm t_{(1+c)/2,\, n-1} \, \frac{s}{\sqrt n},
              \qquad s^2 = \frac{1}{n-1} \sum_k (x_k - \bar x)^2

    Args:
        values: one number per seed; None and NaN (missing, e.g. a diverged run) are dropped.
        confidence: the interval's coverage ``c``, in (0, 1).

    Returns:
        ``(mean, half_width, n)``; mean None for n = 0, half-width None for n < 2.

    Raises:
        ValueError: ``confidence`` outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = float(np.mean(xs))
    if n < 2:
        return mean, None, n
    sem = float(np.std(xs, ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * sem
    return mean, half, n


def _none_if_nan(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


PAIRED_KEYS = (
    "n", "mean_diff", "sd_diff", "ci_low", "ci_high", "effect_size", "t_statistic", "t_pvalue",
    "wilcoxon_pvalue",
)  # fmt: skip
"""What ``paired_test`` returns."""


def _difference_interval(diff: np.ndarray, confidence: float) -> dict[str, float | None]:
    """``sd_diff``, ``ci_low``/``ci_high`` (Student t), ``effect_size`` (d_z); n >= 2."""
    mean, half, _ = mean_ci(diff.tolist(), confidence)
    sd = float(np.std(diff, ddof=1))
    return {
        "sd_diff": sd,
        "ci_low": mean - half,  # type: ignore[operator]
        "ci_high": mean + half,  # type: ignore[operator]
        "effect_size": mean / sd if sd > 0 else None,  # type: ignore[operator]
    }


def paired_test(
    a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95
) -> dict[str, float | int | None]:
    r"""Paired comparison of two methods over the same seeds (``a[k]`` and ``b[k]``: seed k).

    Differences :math:`d_k = a_k - b_k`; the paired t-test (``scipy.stats.ttest_rel``) tests
    :math:`E[d] = 0` with :math:`t = \bar d / (s_d / \sqrt n)`, ``n - 1`` degrees of freedom; the
    Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped) is reported
    from ``WILCOXON_MIN_N`` pairs on. Also the mean difference's Student-t interval
    :math:`\bar d \pm t_{(1+c)/2, n-1} s_d/\sqrt n` (``ci_low``, ``ci_high``) and the paired
    effect size :math:`d_z = \bar d / s_d` (``effect_size``).

    Args:
        a: one value per seed for the first method; None (missing) drops the pair.
        b: the same seeds, in the same order, for the second method.
        confidence: the interval's coverage ``c``, in (0, 1).

    Returns:
        ``PAIRED_KEYS``: ``n`` complete pairs, the mean of ``a - b`` (None for n = 0), and None
        wherever a quantity is undefined (n < 2, all differences equal, or all zero for Wilcoxon).

    Raises:
        ValueError: ``a`` and ``b`` have different lengths.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, got {len(a)} and {len(b)}")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))
    ]
    n = len(pairs)
    result: dict[str, float | int | None] = {**dict.fromkeys(PAIRED_KEYS), "n": n}
    if n == 0:
        return result
    xs = np.array([p[0] for p in pairs])
    ys = np.array([p[1] for p in pairs])
    diff = xs - ys
    result["mean_diff"] = float(np.mean(diff))
    if n >= 2:
        result.update(_difference_interval(diff, confidence))
    if n < 2 or np.all(diff == diff[0]):
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_rel(xs, ys)
    result["t_statistic"] = _none_if_nan(t.statistic)
    result["t_pvalue"] = _none_if_nan(t.pvalue)
    if n >= WILCOXON_MIN_N and np.any(diff != 0):
        result["wilcoxon_pvalue"] = _wilcoxon_p(xs, ys)
    return result


def _wilcoxon_p(xs: np.ndarray, ys: np.ndarray) -> float | None:
    """The Wilcoxon signed-rank test's p-value (zero differences dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _none_if_nan(stats.wilcoxon(xs, ys).pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    r"""Holm's step-down adjustment of ``m`` p-values for a family of comparisons.

    Sorted ascending, :math:`p_{(1)} \le \dots \le p_{(m)}`, the adjusted values are

    .. math:: \tilde p_{(i)} = \max_{j \le i} \min\bigl(1, (m - j + 1)\, p_{(j)}\bigr),

    which controls the family-wise error rate at any level without assuming independence
    (Holm 1979). None (an undefined test) stays None and does not count in ``m``.
    """
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


UNIFORM_BIMODALITY = 5 / 9
"""Sarle's bimodality coefficient of the uniform distribution: above it, possibly bimodal."""


def bimodality_coefficient(values: Iterable[float | None]) -> float | None:
    r"""Sarle's bimodality coefficient of a sample (one number per seed).

    .. math:: b = \frac{g^2 + 1}{k + \frac{3 (n-1)^2}{(n-2)(n-3)}}

    with :math:`g` the bias-corrected sample skewness and :math:`k` the bias-corrected sample
    excess kurtosis (``scipy.stats.skew`` / ``kurtosis`` with ``bias=False``). b lies in (0, 1];
    the uniform distribution has 5/9 (``UNIFORM_BIMODALITY``), a normal one 1/3, and a sample
    split between two separated values tends to 1: b above 5/9 flags a possibly bimodal sample.

    Returns:
        b, or None for fewer than 4 values (None and NaN dropped) or zero variance.
    """
    xs = np.array(_finite(values))
    n = len(xs)
    if n < 4 or np.all(xs == xs[0]):
        return None
    g = float(stats.skew(xs, bias=False))
    k = float(stats.kurtosis(xs, fisher=True, bias=False))
    return (g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
