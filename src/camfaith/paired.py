"""Paired statistics for comparing two methods on the same images (docs/statistics.md).

Every function takes the per-image differences ``d = score(a) − score(b)`` of one cell (dataset ×
model × metric setting), paired by image id; non-finite differences must be removed first (they are
counted by the caller). SciPy does the tests; what is ours is the choice of procedure and the
bookkeeping: Pratt's treatment of zero differences, the cluster bootstrap over groups, the effect
size and Holm's correction over a family of tests.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05


def wilcoxon_pratt(differences: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of ``differences [n]`` with Pratt's zero
    handling: zero differences are ranked with the others and then dropped, so ties at zero (common
    when scores are rounded) shrink the evidence instead of being discarded before ranking, which
    can overstate it. NaN when fewer than 2 differences or all are zero (no test is possible)."""
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2 or not np.any(differences != 0):
        return float("nan")
    return float(stats.wilcoxon(differences, zero_method="pratt").pvalue)


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of ``differences [n]`` (Kerby 2014), in [−1, 1]:
    ``(R₊ − R₋) / (R₊ + R₋)`` with ``R₊``/``R₋`` the sums of the ranks of ``|d|`` of the positive and
    negative differences, zeros ranked with the others and then left out (as in Pratt's test).
    +1: every non-zero difference favours ``a``. NaN when all differences are zero."""
    differences = np.asarray(differences, dtype=np.float64)
    ranks = stats.rankdata(np.abs(differences))
    positive, negative = ranks[differences > 0].sum(), ranks[differences < 0].sum()
    total = positive + negative
    return float((positive - negative) / total) if total > 0 else float("nan")


def bootstrap_difference_interval(differences: np.ndarray, groups: np.ndarray | None = None, seed: int = 0,
                                  resamples: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences [n]``. With ``groups [n]`` (patient
    or lesion ids) whole groups are resampled (a cluster bootstrap: images of one patient are not
    independent), and the statistic is the mean over the images of the drawn groups. With one
    unit (image or group) or all differences equal, the interval collapses to the mean."""
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) == 0:
        return float("nan"), float("nan")
    labels = np.arange(len(differences)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    units = int(labels.max()) + 1
    if units < 2 or np.ptp(differences) == 0:
        mean = float(differences.mean())
        return mean, mean
    sums = np.bincount(labels, weights=differences, minlength=units)
    counts = np.bincount(labels, minlength=units).astype(np.float64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, units, size=(resamples, units))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of ``values [n]`` per group of ``groups [n]`` (in sorted group order): ``[g]``."""
    labels = np.unique(np.asarray(groups), return_inverse=True)[1]
    return np.bincount(labels, weights=np.asarray(values, dtype=np.float64)) / np.bincount(labels)


def has_clusters(groups: np.ndarray | None) -> bool:
    """Whether ``groups [n]`` put two or more images in one group (else every image is its own unit)."""
    return groups is not None and len(groups) > 0 and len(np.unique(np.asarray(groups))) < len(groups)


def bootstrap_ratio_interval(numerator: np.ndarray, denominator: np.ndarray, groups: np.ndarray | None = None, seed: int = 0,
                             resamples: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``Σ numerator / Σ denominator`` over units of ``[n]`` arrays
    (HAAS with plain accuracy: correct HA images over correct originals), resampling whole
    ``groups`` when given. Resamples whose denominator is 0 are left out; NaN with fewer than 2 units."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    labels = np.arange(len(numerator)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    units = int(labels.max()) + 1 if len(labels) else 0
    if units < 2:
        return float("nan"), float("nan")
    top = np.bincount(labels, weights=numerator, minlength=units)
    bottom = np.bincount(labels, weights=denominator, minlength=units)
    drawn = np.random.default_rng(seed).integers(0, units, size=(resamples, units))
    sums_top, sums_bottom = top[drawn].sum(axis=1), bottom[drawn].sum(axis=1)
    ratios = sums_top[sums_bottom > 0] / sums_bottom[sums_bottom > 0]
    if len(ratios) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired per-image correctness ``a_correct, b_correct [n]``
    (0/1): a binomial test of the discordant pairs (a right and b wrong against a wrong and b right)
    with p = 1/2. NaN without discordant pairs (nothing to test)."""
    a_correct, b_correct = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    only_a, only_b = int((a_correct & ~b_correct).sum()), int((~a_correct & b_correct).sum())
    if only_a + only_b == 0:
        return float("nan")
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values [m]`` (one family of tests): the k-th smallest is
    multiplied by ``m − k + 1``, made monotone and capped at 1. NaN entries (tests that could not be
    made) are kept as NaN and do not count towards ``m``."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p_values, np.nan)
    valid = np.flatnonzero(np.isfinite(p_values))
    if len(valid) == 0:
        return adjusted
    order = valid[np.argsort(p_values[valid], kind="stable")]
    m = len(order)
    scaled = p_values[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def verdict(mean_difference: float, p_holm: float, higher_is_better: bool, alpha: float = ALPHA) -> str:
    """``a`` (method a is better), ``b``, or ``no difference``: a side only when Holm's corrected
    p-value is below ``alpha``; the side follows the mean difference and the metric's direction."""
    if not (np.isfinite(p_holm) and p_holm < alpha) or mean_difference == 0 or not np.isfinite(mean_difference):
        return "no difference"
    return "a" if (mean_difference > 0) == higher_is_better else "b"
