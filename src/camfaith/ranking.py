"""Comparing more than two methods at once: the Friedman test and the Nemenyi critical difference.

:mod:`camfaith.paired` compares two methods per test, and with a dozen methods a cell asks for 66
paired tests. The approach of Demšar (2006) looks at all methods together. In each cell (dataset ×
model × metric setting), each image ranks the methods: rank 1 is the most faithful, and tied scores
share the average rank. The **Friedman test** asks whether the methods' mean ranks differ by more
than chance would allow when no method is better than another. If it rejects, the **Nemenyi
post-hoc test** says which methods differ: two methods are significantly different when their mean
ranks differ by at least the critical difference (CD). The CD diagram (:func:`camfaith.plots.critical_difference`)
draws the mean ranks on one axis and joins with a bar each group of methods whose ranks lie closer
together than the CD.

Read the Nemenyi result only when the Friedman p-value is below ``alpha``. Without a significant
Friedman test, the post-hoc differences have no family-wise protection, and bars that seem to
separate methods mean nothing.

Images are the blocks: every method is scored on the same images (the same noise for every
method), and only images with a finite score for every method of the cell count (complete cases).
SciPy does the ranking, the test and the studentized-range quantile. This module chooses the
procedure, handles the degenerate cells and keeps the books.

Reference: J. Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1–30, 2006.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05

# the columns friedman_table adds to the cell columns, in order
COLUMNS = ["method", "n_images", "n_blocks", "k_methods", "mean_rank", "friedman_statistic", "friedman_p", "critical_difference", "indistinguishable_from"]


def _matrix(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a finite float64 ``[n, k]`` matrix. Raises ValueError when it is not one."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_images, k_methods], got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite: keep only images with a finite score for every method (complete cases)")
    return scores


def average_ranks(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Mean rank of each method over images.

    ``scores [n_images, k_methods]`` are finite and complete. Each image (row) ranks the methods,
    with rank 1 for the best score (the highest when ``higher_is_better``, else the lowest). Tied
    scores share the average of the ranks they span (``scipy.stats.rankdata``, ``method="average"``).
    Returns ``[k]`` mean ranks in [1, k], which sum to k(k+1)/2. All NaN when ``n_images`` is 0.
    """
    scores = _matrix(scores)
    if scores.shape[0] == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = stats.rankdata(-scores if higher_is_better else scores, method="average", axis=1)
    return ranks.mean(axis=0)


def friedman(scores: np.ndarray) -> tuple[float, float]:
    """Friedman chi-square statistic and its p-value (chi-square with k − 1 degrees of freedom)
    for ``scores [n_images, k_methods]`` (finite, complete), by ``scipy.stats.friedmanchisquare``.

    The statistic does not depend on whether higher scores are better: reversing every row's ranks
    leaves it unchanged. SciPy corrects it for tied ranks within rows. Returns ``(nan, nan)`` where
    the test is undefined: fewer than 3 methods (SciPy refuses them), fewer than 2 images, or every
    row constant (every rank tied, so the tie correction divides by zero).
    """
    scores = _matrix(scores)
    n, k = scores.shape
    if k < 3 or n < 2 or np.all(scores == scores[:, :1]):
        return float("nan"), float("nan")
    result = stats.friedmanchisquare(*scores.T)
    return float(result.statistic), float(result.pvalue)


def nemenyi_critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Critical difference of mean ranks in the Nemenyi test (Demšar 2006, section 3.2.2).

    ``CD = q_α · sqrt(k (k + 1) / (6 n))``, where ``k`` is the number of methods, ``n`` the number of
    images (blocks), and ``q_α = Q_{1−α}(k, ∞) / √2``, with ``Q`` the studentized range distribution
    (``scipy.stats.studentized_range``). For α = 0.05, q_α is 1.960, 2.343, 2.569, … for k = 2, 3, 4, …
    (Demšar's Table 5a). Two mean ranks that differ by at least the CD are significantly different.
    The unit is ranks. Read the result only after a significant Friedman test.

    J. Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1–30, 2006.
    """
    if k < 2 or n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need k >= 2 methods, n >= 1 images and 0 < alpha < 1; got k={k}, n={n}, alpha={alpha}")
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def cliques(ranks: np.ndarray, cd: float) -> list[tuple[int, ...]]:
    """The groups of methods that a CD diagram joins with a bar.

    ``ranks [k]`` are mean ranks and ``cd`` is the critical difference, in rank units. A group holds
    methods whose ranks span less than ``cd``, so no two of them differ significantly. Only maximal
    groups of 2 or more methods are returned, and no group lies inside another. Each group is a
    tuple of method indices in rank order (ties broken by index), and the groups come in order of
    their best rank. Returns an empty list when ``cd`` is NaN.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if not np.isfinite(cd) or len(ranks) < 2 or not np.all(np.isfinite(ranks)):
        return []
    order = np.lexsort((np.arange(len(ranks)), ranks))
    sorted_ranks = ranks[order]
    groups, reach = [], -1
    for start in range(len(order)):
        # the last method (in rank order) closer than cd to the one at `start` (the same test as friedman_table's)
        end = int(np.flatnonzero(sorted_ranks - sorted_ranks[start] < cd).max())
        if end > start and end > reach:  # a group that ends no later than the previous one lies inside it
            groups.append(tuple(int(i) for i in order[start : end + 1]))
            reach = end
    return groups


def friedman_table(scores: pd.DataFrame, cell: list[str], direction: dict[str, tuple[str, bool]], alpha: float = ALPHA,
                   groups: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Mean ranks, Friedman test and Nemenyi CD per cell, with one row per cell and method.

    ``scores`` is the long score table (docs/formats.md §8), with columns ``cell + ["method",
    "image_id", "quantity", "value"]``. ``cell`` must include ``"metric"``. ``direction`` maps a
    metric to its per-image quantity and whether higher is better, e.g. ``{"aopc": ("aopc", True),
    "max_sensitivity": ("max_sensitivity", False)}``. Metrics missing from ``direction`` are ignored,
    and so are rows without an ``image_id`` (dataset-level rows such as HAAS's ratio).

    Cells are grouped with ``dropna=False``, so ``parameter_value`` may be NaN. In each cell the
    quantity is pivoted to image_id × method. Only images with a finite value for every method of
    the cell are kept, so a method that has no finite value leaves the cell with no images.

    ``groups`` (``(dataset, image_id) → group``, e.g. the patient): where a cell's images share groups,
    the blocks of the test are the groups (each method's mean over a group's images), so a patient
    with many images counts once, as in the paired tests; otherwise each image is a block.

    Columns: ``cell``, then ``method``, ``n_images`` (complete images), ``n_blocks`` (the test's
    blocks: groups or images), ``k_methods``, ``mean_rank``
    (1 = best), ``friedman_statistic``, ``friedman_p``, ``critical_difference`` (Nemenyi at
    ``alpha``, in ranks) and ``indistinguishable_from``: the other methods, sorted and separated by
    commas, whose mean rank differs from this one by less than the CD. That column is ``""`` when no
    method qualifies or the CD is NaN.
    Cells with fewer than 3 methods or fewer than 2 images get NaN statistics and CD, but they still
    have rows. Rows are in cell order, then by mean rank (best first). Read the CD and
    ``indistinguishable_from`` only where ``friedman_p < alpha``.
    """
    if "metric" not in cell:
        raise ValueError(f"cell must include 'metric' (each cell needs a single direction), got {cell}")
    if scores.empty:
        return pd.DataFrame(columns=cell + COLUMNS)
    wanted = np.zeros(len(scores), dtype=bool)
    for name, (per_image_quantity, _) in direction.items():  # isin: a missing metric or quantity is simply not wanted
        wanted |= (scores["metric"].isin([name]) & scores["quantity"].isin([per_image_quantity])).to_numpy()
    rows = scores[wanted & scores["image_id"].notna().to_numpy()]
    out = []
    for key, group in rows.groupby(cell, dropna=False, observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        identity = dict(zip(cell, key))
        higher_is_better = direction[identity["metric"]][1]
        if group.duplicated(["image_id", "method"]).any():
            raise ValueError(f"cell {identity} has more than one {group['quantity'].iloc[0]!r} value for an image and method; "
                             "add the column that tells them apart (e.g. protocol) to the cell")
        wide = group.pivot_table(index="image_id", columns="method", values="value", aggfunc="first", dropna=False, observed=True)
        wide = wide.replace([np.inf, -np.inf], np.nan).dropna()
        images = len(wide)
        if groups and "dataset" in identity:
            labels = np.array([groups.get((identity["dataset"], str(i)), f"image:{i}") for i in wide.index])
            if len(set(labels)) < len(labels):  # images share groups: rank group means
                wide = wide.groupby(labels).mean()
        methods = [str(m) for m in wide.columns]
        matrix = wide.to_numpy(dtype=np.float64)
        n, k = matrix.shape
        ranks = average_ranks(matrix, higher_is_better)
        statistic, p_value = friedman(matrix)
        cd = nemenyi_critical_difference(k, n, alpha) if k >= 3 and n >= 2 else float("nan")
        for j in np.lexsort((np.arange(k), ranks)):
            near = sorted(m for i, m in enumerate(methods) if i != j and abs(ranks[i] - ranks[j]) < cd)
            out.append({**identity, "method": methods[j], "n_images": images, "n_blocks": n, "k_methods": k, "mean_rank": float(ranks[j]),
                        "friedman_statistic": statistic, "friedman_p": p_value, "critical_difference": cd,
                        "indistinguishable_from": ",".join(near)})
    return pd.DataFrame(out, columns=cell + COLUMNS)
