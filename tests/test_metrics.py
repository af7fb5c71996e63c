"""benchmark.metrics against accuracy matrices worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmark import metrics
from benchmark.metrics import (
    accuracy_after_each_task,
    average_accuracy,
    backward_transfer,
    forgetting,
    mean_ci,
    paired_test,
)

# Each case: the matrix and the four metrics, computed by hand.
CASES = {
    # R = [[0.8, 0.1, 0.1], [0.9, 0.95, 0.2], [0.6, 0.85, 0.9]]  (T = 3)
    # average: (0.6 + 0.85 + 0.9) / 3 = 2.35 / 3 = 0.78333...
    # forgetting: j=0: max(R00, R10) - R20 = max(0.8, 0.9) - 0.6 = 0.3
    #             j=1: max(R11) - R21 = 0.95 - 0.85 = 0.1        -> (0.3 + 0.1) / 2 = 0.2
    # BWT: j=0: R20 - R00 = 0.6 - 0.8 = -0.2; j=1: R21 - R11 = 0.85 - 0.95 = -0.1 -> -0.15
    #   (forgetting and -BWT differ because task 0 peaked after task 1, not right after task 0)
    # after each task: [0.8, (0.9 + 0.95) / 2 = 0.925, 2.35 / 3]
    "three-tasks": (
        [[0.8, 0.1, 0.1], [0.9, 0.95, 0.2], [0.6, 0.85, 0.9]],
        2.35 / 3,
        0.2,
        -0.15,
        [0.8, 0.925, 2.35 / 3],
    ),
    # Perfect retention: [[1, 0.1], [1, 1]]: forgetting 1 - 1 = 0, BWT 1 - 1 = 0, average 1.
    "perfect-retention": ([[1.0, 0.1], [1.0, 1.0]], 1.0, 0.0, 0.0, [1.0, 1.0]),
    # Total forgetting: [[1, 0.1], [0, 1]]: forgetting 1 - 0 = 1, BWT 0 - 1 = -1, average 0.5.
    "total-forgetting": ([[1.0, 0.1], [0.0, 1.0]], 0.5, 1.0, -1.0, [1.0, 0.5]),
    # Positive backward transfer: [[0.5, 0.1], [0.7, 0.9]]:
    # forgetting 0.5 - 0.7 = -0.2, BWT 0.7 - 0.5 = +0.2, average (0.7 + 0.9) / 2 = 0.8.
    "positive-transfer": ([[0.5, 0.1], [0.7, 0.9]], 0.8, -0.2, 0.2, [0.5, 0.8]),
    # The tutorial's published runs (one task pair): EWC [[0.9772, .], [0.9717, 0.8312]]:
    # average (0.9717 + 0.8312) / 2 = 0.90145; forgetting 0.9772 - 0.9717 = 0.0055; BWT -0.0055.
    "tutorial-ewc": (
        [[0.9772, 0.1], [0.9717, 0.8312]],
        0.90145,
        0.0055,
        -0.0055,
        [0.9772, 0.90145],
    ),
    # One task: average is R00, forgetting and BWT are undefined.
    "one-task": ([[0.97]], 0.97, None, None, [0.97]),
    # Joint run, one row over 2 tasks: average (0.98 + 0.88) / 2 = 0.93; no forgetting/BWT;
    # it has seen every task, so its one "after each task" entry is the mean of the row.
    "joint-row": ([[0.98, 0.88]], 0.93, None, None, [0.93]),
    # Diverged during task 2: last row None -> everything that needs it is None.
    "diverged": ([[0.97, 0.1], [None, None]], None, None, None, [0.97, None]),
    # A None where no metric looks (R01, accuracy on task 1 before learning it):
    # average (0.5 + 0.8) / 2 = 0.65; forgetting 0.9 - 0.5 = 0.4; BWT -0.4.
    "unneeded-none": ([[0.9, None], [0.5, 0.8]], 0.65, 0.4, -0.4, [0.9, 0.65]),
    # A None on the diagonal of an earlier task: forgetting (needs R00) and BWT are None,
    # the average (last row only) is still defined: (0.5 + 0.8) / 2.
    "none-on-diagonal": ([[None, 0.1], [0.5, 0.8]], 0.65, None, None, [None, 0.65]),
}


def _approx(expected):
    if expected is None:
        return None
    if isinstance(expected, list):
        return [None if v is None else pytest.approx(v, abs=1e-12) for v in expected]
    return pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("name"), list(CASES))
def test_metrics_match_hand_computation(name):
    R, avg, forget, bwt, after_each = CASES[name]
    assert average_accuracy(R) == _approx(avg)
    assert forgetting(R) == _approx(forget)
    assert backward_transfer(R) == _approx(bwt)
    assert accuracy_after_each_task(R) == _approx(after_each)


@pytest.mark.parametrize(("name"), ["three-tasks", "diverged", "joint-row"])
def test_numpy_input_with_nan_for_none(name):
    R, avg, forget, bwt, after_each = CASES[name]
    array = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    assert average_accuracy(array) == _approx(avg)
    assert forgetting(array) == _approx(forget)
    assert backward_transfer(array) == _approx(bwt)
    assert accuracy_after_each_task(array) == _approx(after_each)


def test_results_are_plain_floats():
    R = np.array([[0.9, 0.1], [0.8, 0.7]], dtype=np.float32)
    for value in (average_accuracy(R), forgetting(R), backward_transfer(R)):
        assert type(value) is float
    assert all(type(v) is float for v in accuracy_after_each_task(R))


def test_input_is_not_modified():
    R = [[0.9, None], [0.8, 0.7]]
    forgetting(R)
    accuracy_after_each_task(R)
    assert R == [[0.9, None], [0.8, 0.7]]


@pytest.mark.parametrize(
    ("R", "message"),
    [
        ([], "non-empty"),
        ([[]], "at least one column"),
        ([[0.9], [0.8, 0.7]], "ragged"),
        ([[0.9, 0.1, 0.1], [0.8, 0.7, 0.1]], "square"),
        ([[0.9], [0.8]], "square"),
        ([[1.2, 0.1], [0.8, 0.7]], r"R\[0\]\[0\] = 1.2 is outside \[0, 1\]"),
        ([[0.9, 0.1], [0.8, -0.01]], r"R\[1\]\[1\] = -0.01 is outside"),
        ([[0.9, "x"], [0.8, 0.7]], "not a number"),
        ([[True]], "not a number"),
        ("abc", "non-empty list of rows"),
        ([0.9, 0.8], "row 0 .* is not a list"),
        (np.zeros((2, 2, 2)), "2-D"),
    ],
    ids=[
        "empty",
        "empty-row",
        "ragged",
        "2x3",
        "2x1",
        "above-1",
        "below-0",
        "string-cell",
        "bool-cell",
        "string",
        "flat-list",
        "3-d",
    ],
)
@pytest.mark.parametrize(
    "fn", [average_accuracy, forgetting, backward_transfer, accuracy_after_each_task]
)
def test_malformed_matrices_raise(fn, R, message):
    with pytest.raises(ValueError, match=message):
        fn(R)


# -- mean_ci -----------------------------------------------------------------------------------


def test_mean_ci_by_hand():
    # values 0.90, 0.92, 0.94: mean 0.92; deviations -0.02, 0, 0.02;
    # s^2 = (0.0004 + 0 + 0.0004) / (3 - 1) = 0.0004, s = 0.02; s / sqrt(3) = 0.0115470;
    # t quantile with 2 degrees of freedom in closed form: t_p = (2p - 1) / sqrt(2 p (1 - p));
    # p = 0.975: 0.95 / sqrt(2 * 0.975 * 0.025) = 0.95 / sqrt(0.04875) = 4.3026527 (tables: 4.303)
    # half-width = 4.3026527 * 0.02 / sqrt(3) = 0.0496828
    t_quantile = 0.95 / math.sqrt(0.04875)
    mean, half, n = mean_ci([0.90, 0.92, 0.94])
    assert n == 3
    assert mean == pytest.approx(0.92, abs=1e-12)
    assert half == pytest.approx(t_quantile * 0.02 / math.sqrt(3), rel=1e-9)
    assert half == pytest.approx(0.0496828, abs=1e-7)
    assert stats.t.ppf(0.975, 2) == pytest.approx(t_quantile, rel=1e-12)


def test_mean_ci_other_confidence():
    # 90%: t_{0.95, 2} = 0.9 / sqrt(2 * 0.95 * 0.05) = 2.9199856 -> 2.9199856 * 0.02 / sqrt 3
    # = 0.0337171
    _, half, _ = mean_ci([0.90, 0.92, 0.94], confidence=0.90)
    assert half == pytest.approx(0.0337171, abs=1e-7)


def test_mean_ci_drops_missing_and_small_n():
    assert mean_ci([]) == (None, None, 0)
    assert mean_ci([None, float("nan")]) == (None, None, 0)
    assert mean_ci([0.5, None]) == (0.5, None, 1)
    # two values 0.4, 0.6: mean 0.5, s = sqrt(2 * 0.01 / 1) = 0.141421, s / sqrt 2 = 0.1;
    # 1 degree of freedom (Cauchy): t_p = tan(pi (p - 1/2)), t_{0.975} = tan(0.475 pi)
    # = 12.7062047 -> half-width 12.7062047 * 0.1 = 1.2706205
    mean, half, n = mean_ci([0.4, None, 0.6])
    assert (mean, n) == (pytest.approx(0.5), 2)
    assert half == pytest.approx(math.tan(0.475 * math.pi) * 0.1, rel=1e-9)


def test_mean_ci_identical_values_have_zero_width():
    mean, half, n = mean_ci([0.7, 0.7, 0.7])
    assert (mean, n) == (pytest.approx(0.7), 3)
    assert half == pytest.approx(0.0, abs=1e-12)


def test_mean_ci_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([0.1, 0.2], confidence=1.0)


# -- paired_test -------------------------------------------------------------------------------


def test_paired_test_by_hand():
    # d = a - b = [0.05, 0.0, 0.1]; mean 0.05; s_d^2 = (0 + 0.0025 + 0.0025) / 2 = 0.0025,
    # s_d = 0.05; t = 0.05 / (0.05 / sqrt 3) = sqrt 3 = 1.7320508.
    # df = 2: the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    # p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(3) / sqrt(5) = 0.2254033.
    result = paired_test([0.9, 0.8, 0.7], [0.85, 0.8, 0.6])
    assert result["n"] == 3
    assert result["mean_diff"] == pytest.approx(0.05, abs=1e-12)
    assert result["t_statistic"] == pytest.approx(math.sqrt(3), rel=1e-9)
    assert result["t_pvalue"] == pytest.approx(1 - math.sqrt(3 / 5), rel=1e-9)
    assert result["wilcoxon_pvalue"] is None  # n < 6


def test_paired_test_wilcoxon_by_hand():
    # d = [0.01, 0.02, ..., 0.06]: all positive, so W- = 0; of the 2^6 = 64 equally likely sign
    # patterns only "all +" gives W- = 0, and only "all -" gives W+ = 0 -> two-sided p = 2/64.
    b = [0.5, 0.6, 0.7, 0.5, 0.6, 0.7]
    a = [x + d for x, d in zip(b, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06])]
    result = paired_test(a, b)
    assert result["n"] == 6
    assert result["mean_diff"] == pytest.approx(0.035, abs=1e-12)
    assert result["wilcoxon_pvalue"] == pytest.approx(2 / 64, rel=1e-9)
    assert result["t_pvalue"] is not None
    assert result["t_pvalue"] < 0.01


def test_paired_test_identical_values_are_undefined():
    result = paired_test([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert result == {
        "n": 6,
        "mean_diff": 0.0,
        "sd_diff": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "effect_size": None,
        "t_statistic": None,
        "t_pvalue": None,
        "wilcoxon_pvalue": None,
    }


def test_paired_test_constant_difference_is_undefined():
    # d = [0.5, 0.5]: zero variance, t = 0.5 / 0 is not a test result.
    result = paired_test([1.0, 0.75], [0.5, 0.25])
    assert result["mean_diff"] == pytest.approx(0.5)
    assert result["t_pvalue"] is None


def test_paired_test_drops_incomplete_pairs():
    # pairs (0.9, 0.85), (None, 0.8) dropped, (0.7, 0.6), (0.8, 0.8) -> same as the hand example.
    result = paired_test([0.9, None, 0.7, 0.8], [0.85, 0.8, 0.6, 0.8])
    assert result["n"] == 3
    assert result["t_pvalue"] == pytest.approx(1 - math.sqrt(3 / 5), rel=1e-9)


def test_paired_test_small_n():
    assert paired_test([], [])["mean_diff"] is None
    one = paired_test([0.9], [0.8])
    assert one["n"] == 1
    assert one["mean_diff"] == pytest.approx(0.1)
    assert one["t_pvalue"] is None


def test_paired_test_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([0.1, 0.2], [0.1])


def test_wilcoxon_threshold_is_documented():
    assert metrics.WILCOXON_MIN_N == 6
