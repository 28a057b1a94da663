"""Paired statistics (camfaith.paired, docs/statistics.md) on hand cases and against SciPy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from camfaith import aggregate, paired


def test_pratt_keeps_zero_differences_in_the_ranking():
    differences = np.array([0.0] * 8 + [0.1, 0.2, -0.05, 0.3, 0.15, 0.25, 0.12, 0.22])  # half of them tied at zero
    p = paired.wilcoxon_pratt(differences)
    assert p == pytest.approx(stats.wilcoxon(differences, zero_method="pratt").pvalue)
    # dropping the zeros before ranking ("wilcox") overstates the evidence here: 0.017 against 0.023
    assert p > stats.wilcoxon(differences, zero_method="wilcox").pvalue
    assert np.isnan(paired.wilcoxon_pratt(np.zeros(5))) and np.isnan(paired.wilcoxon_pratt(np.array([0.3])))


def test_rank_biserial_on_a_hand_case():
    # |d| ranks: 0 → 1, 1 → 2, -2 → 3, 3 → 4; R+ = 2 + 4, R- = 3 (the zero is ranked, then left out)
    assert paired.rank_biserial(np.array([1.0, -2.0, 3.0, 0.0])) == pytest.approx((6 - 3) / 9)
    assert paired.rank_biserial(np.array([0.1, 0.2])) == 1.0 and paired.rank_biserial(np.array([-0.1, -0.2])) == -1.0
    assert np.isnan(paired.rank_biserial(np.zeros(3)))


def test_holm_on_a_hand_case_ignores_untestable_entries():
    adjusted = paired.holm(np.array([0.01, 0.04, 0.03, np.nan]))
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])
    assert paired.holm(np.array([0.6, 0.7]))[1] == 1.0  # capped


def test_cluster_bootstrap_resamples_groups_and_is_wider_when_images_of_a_group_agree():
    rng = np.random.default_rng(0)
    group_effect = rng.normal(0.0, 1.0, size=8)
    groups = np.repeat(np.arange(8), 10)
    differences = group_effect[groups] + rng.normal(0.0, 0.05, size=80)
    by_image = paired.bootstrap_difference_interval(differences, seed=1)
    by_group = paired.bootstrap_difference_interval(differences, groups, seed=1)
    assert by_group[0] < differences.mean() < by_group[1]
    assert by_group[1] - by_group[0] > 2 * (by_image[1] - by_image[0])  # 8 independent units, not 80
    assert by_group == paired.bootstrap_difference_interval(differences, groups, seed=1)
    assert paired.bootstrap_difference_interval(differences, np.zeros(80), seed=0) == (differences.mean(), differences.mean())


def test_verdict_follows_the_corrected_p_value_and_the_metric_direction():
    assert paired.verdict(0.02, 0.01, higher_is_better=True) == "a"
    assert paired.verdict(0.02, 0.01, higher_is_better=False) == "b"
    assert paired.verdict(0.02, 0.2, higher_is_better=True) == "no difference"
    assert paired.verdict(0.02, np.nan, higher_is_better=True) == "no difference"


def _rows(metric: str, quantity: str, parameter_value: float, values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "model": "m", "metric": metric, "parameter": "p", "parameter_value": parameter_value,
                          "method": method, "image_id": f"i{i}", "quantity": quantity, "step": None, "value": v}
                         for method, column in values.items() for i, v in enumerate(column)])


def test_paired_tests_correct_within_each_metric_and_name_the_better_method():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=30)
    clear = {"gradcam": list(base), "hirescam": list(base + 0.05 + rng.normal(0, 0.01, 30))}
    unclear = {"gradcam": list(base), "hirescam": list(base + rng.normal(0, 0.05, 30))}
    scores = pd.concat([_rows("aopc", "aopc", 8.0, clear), _rows("aopc", "aopc", 16.0, unclear),
                        _rows("max_sensitivity", "max_sensitivity", 0.1, clear)])
    tests = aggregate.paired_tests(scores).set_index(["metric", "parameter_value"])
    aopc = tests.loc["aopc"]
    np.testing.assert_allclose(aopc["p_holm"], paired.holm(aopc["p_value"].to_numpy()))  # two AOPC tests: one family
    assert aopc.loc[8.0, "better"] == "hirescam" and aopc.loc[16.0, "better"] == "no difference"
    assert tests.loc[("max_sensitivity", 0.1), "p_holm"] == tests.loc[("max_sensitivity", 0.1), "p_value"]  # a family of one
    assert tests.loc[("max_sensitivity", 0.1), "better"] == "gradcam"  # lower is better
    row = aopc.loc[8.0]
    assert row["ci_low"] < row["mean_difference"] < row["ci_high"] < 0 and row["effect_size"] == -1.0


def test_mcnemar_exact_on_a_hand_case():
    a = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0])
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # 7 discordant pairs, all for a
    assert paired.mcnemar_exact(a, b) == pytest.approx(2 * 0.5**7)
    assert np.isnan(paired.mcnemar_exact(a, a))


def test_haas_pairs_are_tested_on_the_ha_images_correctness():
    correct = {"gradcam": [1.0] * 12 + [0.0] * 3, "hirescam": [0.0] * 12 + [0.0] * 3}
    tests = aggregate.paired_tests(_rows("haas", "correct_ha", np.nan, correct))
    row = tests.iloc[0]
    assert row["p_value"] == pytest.approx(2 * 0.5**12) and row["mean_difference"] == pytest.approx(12 / 15)
    assert row["better"] == "gradcam"


def test_haas_on_patients_with_several_images_tests_patients_not_images():
    # 12 HA images fixed by gradcam, but all from 3 patients: McNemar would count 12 independent wins
    correct = {"gradcam": [1.0] * 12 + [0.0] * 3, "hirescam": [0.0] * 15}
    groups = {("d", f"i{i}"): f"patient{i // 4}" for i in range(15)}  # patients of 4, 4, 4 and 3 images
    row = aggregate.paired_tests(_rows("haas", "correct_ha", np.nan, correct), groups=groups).iloc[0]
    assert row["test"] == "wilcoxon_pratt_groups" and row["n_units"] == 4
    units = np.array([1.0, 1.0, 1.0, 0.0])  # per patient, the mean of gradcam − hirescam (a − b)
    assert row["p_value"] == pytest.approx(paired.wilcoxon_pratt(units))
    assert row["p_value"] > 2 * 0.5**12  # far less sure than the images alone would claim


def test_best_is_bold_only_where_the_corrected_test_says_so():
    rng = np.random.default_rng(1)
    few = _rows("aopc", "aopc", 8.0, {"gradcam": [0.2, 0.3], "hirescam": [0.5, 0.6]})  # 2 images: no test can decide
    base = rng.uniform(0.2, 0.6, size=30)
    many = _rows("aopc", "aopc", 16.0, {"gradcam": list(base), "hirescam": list(base + 0.1 + rng.normal(0, 0.01, 30))})
    scores = pd.concat([few, many])
    table = aggregate.summary_table(scores, 0, aggregate.paired_tests(scores)).set_index(["parameter_value", "method"])
    assert table.loc[(8.0, "hirescam"), "best_mean"] and not table.loc[(8.0, "hirescam"), "best"]
    assert table.loc[(16.0, "hirescam"), "best"] and not table.loc[(16.0, "gradcam"), "best"]


def test_paired_tests_resample_the_groups_of_the_index():
    rng = np.random.default_rng(2)
    patient_effect = rng.normal(0, 0.2, size=6)
    patient = np.repeat(np.arange(6), 5)  # 6 patients, 5 images each
    base = rng.uniform(0.2, 0.6, size=30)
    scores = _rows("aopc", "aopc", 8.0, {"gradcam": list(base), "hirescam": list(base + patient_effect[patient])})
    index = pd.DataFrame({"image_id": [f"i{i}" for i in range(30)], "group": [f"p{g}" for g in patient]})
    groups = aggregate.image_groups({"d": index})
    by_group = aggregate.paired_tests(scores, 0, groups).iloc[0]
    by_image = aggregate.paired_tests(scores, 0).iloc[0]
    differences = -patient_effect[patient]  # gradcam − hirescam, images in id order i0, i1, i10, ...
    order = np.argsort([f"i{i}" for i in range(30)])
    expected = paired.bootstrap_difference_interval(differences[order], patient[order], seed=0)
    assert (by_group["ci_low"], by_group["ci_high"]) == pytest.approx(expected)
    assert by_group["ci_high"] - by_group["ci_low"] > by_image["ci_high"] - by_image["ci_low"]
