"""Friedman test, Nemenyi critical difference and CD diagrams (camfaith.ranking, camfaith.plots) on hand cases."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from camfaith import plots, ranking

CELL = ["dataset", "model", "metric", "parameter", "parameter_value"]
DIRECTION = {"aopc": ("aopc", True), "max_sensitivity": ("max_sensitivity", False)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_average_ranks_share_ties_and_follow_the_direction():
    scores = np.array([[3.0, 1.0, 1.0], [2.0, 2.0, 5.0]])
    # higher is better: row 1 ranks 1, 2.5, 2.5; row 2 ranks 2.5, 2.5, 1
    np.testing.assert_allclose(ranking.average_ranks(scores, higher_is_better=True), [1.75, 2.5, 1.75])
    # lower is better: row 1 ranks 3, 1.5, 1.5; row 2 ranks 1.5, 1.5, 3
    np.testing.assert_allclose(ranking.average_ranks(scores, higher_is_better=False), [2.25, 1.5, 2.25])
    ranks = ranking.average_ranks(np.random.default_rng(0).normal(size=(20, 5)), higher_is_better=True)
    assert ranks.sum() == pytest.approx(5 * 6 / 2)
    assert np.all(np.isnan(ranking.average_ranks(np.empty((0, 3)), higher_is_better=True)))
    with pytest.raises(ValueError, match="finite"):
        ranking.average_ranks(np.array([[1.0, np.nan, 2.0]]), higher_is_better=True)


def test_friedman_matches_the_textbook_formula_without_ties():
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.3, 0.4], [0.7, 0.6, 0.2], [0.2, 0.9, 0.1]])
    n, k = scores.shape
    # ranks within rows (1 = smallest; the statistic is the same either way): [3,2,1], [3,1,2], [3,2,1], [2,3,1]
    rank_sums = np.array([3 + 3 + 3 + 2, 2 + 1 + 2 + 3, 1 + 2 + 1 + 1])
    chi2 = 12 / (n * k * (k + 1)) * np.sum(rank_sums**2) - 3 * n * (k + 1)
    assert chi2 == pytest.approx(4.5)
    statistic, p = ranking.friedman(scores)
    assert statistic == pytest.approx(chi2)
    assert p == pytest.approx(stats.chi2.sf(chi2, k - 1))
    assert ranking.friedman(-scores) == pytest.approx((statistic, p))  # the direction does not matter


def test_friedman_corrects_for_ties_within_rows():
    scores = np.array([[1.0, 1.0, 3.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    n, k = scores.shape
    # ranks: [1.5,1.5,3], [1,2,3], [3,1,2], [1,2,3]; one tie of 2 in row 1
    rank_sums = np.array([1.5 + 1 + 3 + 1, 1.5 + 2 + 1 + 2, 3 + 3 + 2 + 3])
    chi2 = 12 / (n * k * (k + 1)) * np.sum(rank_sums**2) - 3 * n * (k + 1)
    correction = 1 - (2**3 - 2) / (n * k * (k**2 - 1))
    assert ranking.friedman(scores)[0] == pytest.approx(chi2 / correction)


def test_friedman_is_nan_where_undefined_without_warnings():
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scores in (rng.normal(size=(10, 2)), rng.normal(size=(1, 4)), np.ones((6, 3)), np.tile([[1.0], [2.0]], (1, 4))):
            assert all(np.isnan(ranking.friedman(scores)))
    with pytest.raises(ValueError, match="finite"):
        ranking.friedman(np.array([[1.0, 2.0, np.inf], [1.0, 2.0, 3.0]]))


# Demšar (2006), Table 5a: q_0.05 of the Nemenyi test for k = 2..10 methods
DEMSAR_Q005 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


@pytest.mark.parametrize(("k", "q"), list(zip(range(2, 11), DEMSAR_Q005)))
def test_nemenyi_q_matches_demsar_table_5(k, q):
    n = 17
    cd = ranking.nemenyi_critical_difference(k, n, alpha=0.05)
    # the table's 3 decimals were rounded from a 3-decimal studentized range (k = 7: 4.170 / √2 = 2.949, SciPy 2.9483)
    assert cd / np.sqrt(k * (k + 1) / (6 * n)) == pytest.approx(q, abs=1e-3)


def test_nemenyi_critical_difference_of_demsar_worked_example_and_bad_arguments():
    # Demšar section 3.2.2: four algorithms on 14 data sets, CD = 2.569 · sqrt(4·5 / (6·14)) = 1.25
    assert ranking.nemenyi_critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
    assert ranking.nemenyi_critical_difference(4, 14, alpha=0.10) < ranking.nemenyi_critical_difference(4, 14)
    for k, n, alpha in ((1, 10, 0.05), (3, 0, 0.05), (3, 10, 0.0), (3, 10, 1.0)):
        with pytest.raises(ValueError):
            ranking.nemenyi_critical_difference(k, n, alpha)


def test_cliques_are_maximal_groups_closer_than_the_cd():
    ranks = np.array([1.0, 1.5, 3.0, 3.2, 5.0])
    assert ranking.cliques(ranks, 1.0) == [(0, 1), (2, 3)]
    # (3, 4) lies inside (2, 3, 4) and is left out; 3.0 − 1.0 = 2.0 < 2.1 joins the first three
    assert ranking.cliques(ranks, 2.1) == [(0, 1, 2), (1, 2, 3), (2, 3, 4)]
    assert ranking.cliques(ranks, 10.0) == [(0, 1, 2, 3, 4)]
    # indices of the input order, listed in rank order
    assert ranking.cliques(np.array([3.2, 1.0, 5.0, 1.5, 3.0]), 1.0) == [(1, 3), (4, 0)]
    assert ranking.cliques(np.array([1.0, 2.0]), 1.0) == []  # a difference of exactly the CD is significant
    assert ranking.cliques(ranks, float("nan")) == []


def _long_table(cells: list[tuple[str, str, float, dict]]) -> pd.DataFrame:
    """Score rows of ``(metric, parameter, parameter_value, {method: values [n]})`` cells on dataset d / model m."""
    rows = []
    for metric, parameter, value, methods in cells:
        for method, values in methods.items():
            for i, v in enumerate(values):
                rows.append(dict(dataset="d", model="m", metric=metric, parameter=parameter, parameter_value=value, method=method,
                                 image_id=f"img{i:02d}", quantity=metric, step=pd.NA, value=float(v)))
    return pd.DataFrame(rows)


def _three_methods(n: int = 30, best_offset: float = 10.0) -> dict[str, np.ndarray]:
    """gradcam far ahead; hirescam and gradcampp take turns in second place, so they tie at mean rank 2.5."""
    turns = np.arange(n) % 2
    return {"gradcam": best_offset + turns, "hirescam": turns.astype(float), "gradcampp": 1.0 - turns}


def test_friedman_table_finds_the_best_method():
    scores = _long_table([("aopc", "region_px", 8.0, _three_methods())])
    table = ranking.friedman_table(scores, CELL, DIRECTION)
    assert list(table.columns) == CELL + ranking.COLUMNS
    assert list(table["method"]) == ["gradcam", "gradcampp", "hirescam"]  # best first, ties by name
    row = table.set_index("method")
    assert row.loc["gradcam", "mean_rank"] == 1.0 and row.loc["hirescam", "mean_rank"] == 2.5
    assert (table["n_images"] == 30).all() and (table["k_methods"] == 3).all()
    # ranks always 1 for gradcam, 2 and 3 in turn for the others: 12/(30·3·4)(30² + 2·75²) − 3·30·4 = 45
    assert row.loc["gradcam", "friedman_statistic"] == pytest.approx(45.0)
    assert row.loc["gradcam", "friedman_p"] < 1e-9
    assert row.loc["gradcam", "critical_difference"] == pytest.approx(ranking.nemenyi_critical_difference(3, 30))
    assert row.loc["gradcam", "indistinguishable_from"] == ""
    assert row.loc["hirescam", "indistinguishable_from"] == "gradcampp"
    assert row.loc["gradcampp", "indistinguishable_from"] == "hirescam"


def test_friedman_table_direction_complete_cases_and_small_cells():
    lower = {name: -values for name, values in _three_methods().items()}  # lower is better: gradcam is lowest
    lower["hirescam"][3] = np.nan  # image 3 drops out of the cell
    lower["gradcampp"][4] = np.inf  # and so does image 4
    scores = _long_table([
        ("max_sensitivity", "radius", 0.1, lower),
        ("aopc", "none", np.nan, {"gradcam": np.arange(30.0), "hirescam": np.arange(30.0) - 1}),  # two methods only, NaN value
        ("haas", "none", np.nan, _three_methods()),  # not in DIRECTION: ignored
    ])
    table = ranking.friedman_table(scores, CELL, DIRECTION)
    assert set(table["metric"]) == {"max_sensitivity", "aopc"}
    sensitivity = table[table["metric"] == "max_sensitivity"].set_index("method")
    assert sensitivity.loc["gradcam", "mean_rank"] == 1.0 and sensitivity.loc["gradcam", "friedman_p"] < 1e-9
    assert (sensitivity["n_images"] == 28).all()
    pair = table[table["metric"] == "aopc"]
    assert len(pair) == 2 and pair["parameter_value"].isna().all()
    assert (pair["k_methods"] == 2).all() and list(pair["mean_rank"]) == [1.0, 2.0]
    assert pair[["friedman_statistic", "friedman_p", "critical_difference"]].isna().all().all()
    assert (pair["indistinguishable_from"] == "").all()


def test_friedman_table_refuses_ambiguous_input_and_handles_empty():
    scores = _long_table([("aopc", "region_px", 8.0, _three_methods())])
    with pytest.raises(ValueError, match="metric"):
        ranking.friedman_table(scores, ["dataset", "model"], DIRECTION)
    with pytest.raises(ValueError, match="more than one"):
        ranking.friedman_table(pd.concat([scores, scores]), CELL, DIRECTION)
    empty = ranking.friedman_table(scores.iloc[:0], CELL, DIRECTION)
    assert empty.empty and list(empty.columns) == CELL + ranking.COLUMNS


def test_friedman_table_agrees_with_cliques():
    rng = np.random.default_rng(3)
    methods = {m: rng.normal(size=40) + shift for m, shift in zip(["gradcam", "hirescam", "gradcampp", "xgradcam", "layercam"], [0, 0.2, 0.4, 0.8, 1.2])}
    table = ranking.friedman_table(_long_table([("aopc", "region_px", 8.0, methods)]), CELL, DIRECTION)
    names, ranks = list(table["method"]), table["mean_rank"].to_numpy()
    together = {frozenset((a, b)) for group in ranking.cliques(ranks, table["critical_difference"].iloc[0]) for a in group for b in group if a != b}
    listed = {frozenset((names[i], other)) for i, text in enumerate(table["indistinguishable_from"]) for other in text.split(",") if other}
    assert listed == {frozenset((names[a], names[b])) for a, b in map(tuple, together)}


def test_critical_difference_figure_has_a_panel_per_cell():
    scores = _long_table([
        ("aopc", "region_px", 8.0, _three_methods()),
        ("max_sensitivity", "radius", 0.1, {name: -values for name, values in _three_methods().items()}),
        ("aopc", "none", np.nan, {"gradcam": np.arange(30.0), "hirescam": np.arange(30.0) - 1}),
    ])
    table = ranking.friedman_table(scores, CELL, DIRECTION)
    figure = plots.critical_difference(table, labels={"gradcampp": "GC++"})
    assert isinstance(figure, plt.Figure)
    titled = {ax.get_title().split("\n")[0]: ax for ax in figure.axes if ax.get_title()}
    assert sorted(titled) == ["d / m · aopc", "d / m · aopc region_px=8", "d / m · max_sensitivity radius=0.1"]
    aopc = titled["d / m · aopc region_px=8"]
    assert aopc.get_title().split("\n")[1].startswith("Friedman p = ")
    texts = [t.get_text() for t in aopc.texts]
    assert "CD" in texts and "Grad-CAM (1.00)" in texts and "GC++ (2.50)" in texts and "HiResCAM (2.50)" in texts
    pair = titled["d / m · aopc"]
    assert "undefined" in pair.get_title() and "CD" not in [t.get_text() for t in pair.texts]
    assert len(plots.critical_difference(table.iloc[:0]).axes) == 1  # the "no Friedman tests" placeholder


def test_friedman_blocks_are_patients_where_images_share_them():
    rng = np.random.default_rng(3)
    per_patient = {m: rng.normal(size=8) + offset for m, offset in (("gradcam", 0.8), ("hirescam", 0.0), ("gradcampp", 0.4))}
    # three images per patient, each a patient's value plus image noise
    values = {m: np.repeat(v, 3) + rng.normal(scale=0.3, size=24) for m, v in per_patient.items()}
    scores = _long_table([("aopc", "region_px", 8.0, values)])
    groups = {("d", f"img{i:02d}"): f"patient{i // 3}" for i in range(24)}
    grouped = ranking.friedman_table(scores, CELL, DIRECTION, groups=groups)
    assert (grouped["n_images"] == 24).all() and (grouped["n_blocks"] == 8).all()
    means = np.column_stack([values[m].reshape(8, 3).mean(axis=1) for m in ("gradcam", "gradcampp", "hirescam")])
    assert grouped["friedman_p"].iloc[0] == pytest.approx(ranking.friedman(means)[1])
    # one image per group (or no groups): every image is a block
    single = ranking.friedman_table(scores, CELL, DIRECTION, groups={("d", f"img{i:02d}"): f"p{i}" for i in range(24)})
    assert (single["n_blocks"] == 24).all()
    assert single["friedman_p"].iloc[0] == pytest.approx(ranking.friedman_table(scores, CELL, DIRECTION)["friedman_p"].iloc[0])
