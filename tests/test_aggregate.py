"""Aggregation: winners per cell, bootstrap intervals, paired tests, Markdown."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from camfaith import aggregate


def score_rows(metric: str, quantity: str, parameter: str, values: dict[str, list[float]], parameter_value: float = 1.0) -> pd.DataFrame:
    rows = []
    for method, per_image in values.items():
        for i, value in enumerate(per_image):
            rows.append({"dataset": "d", "model": "m", "method": method, "metric": metric, "protocol": "default",
                         "image_id": f"img{i}", "label": 0, "target": 0, "prediction": 0, "parameter": parameter,
                         "parameter_value": parameter_value, "quantity": quantity, "step": None, "value": value})
    return pd.DataFrame(rows)


def test_best_is_higher_aopc_and_lower_max_sensitivity():
    scores = pd.concat([
        score_rows("aopc", "aopc", "region_px", {"gradcam": [0.2, 0.3, 0.4], "hirescam": [0.5, 0.6, 0.7]}),
        score_rows("max_sensitivity", "max_sensitivity", "radius", {"gradcam": [0.2, 0.3, 0.4], "hirescam": [0.5, 0.6, 0.7]}),
    ])
    table = aggregate.summary_table(scores).set_index(["metric", "method"])
    assert table.loc[("aopc", "hirescam"), "best"] and not table.loc[("aopc", "gradcam"), "best"]
    assert table.loc[("max_sensitivity", "gradcam"), "best"] and not table.loc[("max_sensitivity", "hirescam"), "best"]
    assert table.loc[("aopc", "hirescam"), "mean"] == pytest.approx(0.6)
    assert table.loc[("aopc", "hirescam"), "n"] == 3


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(1.0, 0.5, size=200)
    low, high = aggregate.bootstrap_interval(values, seed=1)
    assert low < values.mean() < high and high - low < 0.25
    assert (low, high) == aggregate.bootstrap_interval(values, seed=1)
    assert aggregate.bootstrap_interval(np.array([3.0]), seed=0) == (3.0, 3.0)
    assert np.isnan(aggregate.bootstrap_interval(np.array([np.nan]), seed=0)[0])


def test_paired_test_pairs_by_image_and_matches_scipy():
    a = [0.1, 0.5, 0.3, 0.9, 0.4, 0.8, 0.7]
    b = [0.2, 0.3, 0.1, 0.6, 0.2, 0.5, 0.3]
    scores = score_rows("aopc", "aopc", "region_px", {"gradcam": a, "hirescam": b})
    scores = scores.sample(frac=1, random_state=0)  # order must not matter: pairs are by image id
    tests = aggregate.paired_tests(scores)
    assert len(tests) == 1
    row = tests.iloc[0]
    assert (row["method_a"], row["method_b"], row["n_pairs"]) == ("gradcam", "hirescam", 7)
    assert row["mean_difference"] == pytest.approx(np.mean(np.array(a) - np.array(b)))
    assert row["p_value"] == pytest.approx(stats.wilcoxon(a, b, zero_method="pratt").pvalue)


def test_haas_summary_row_becomes_the_cell_value():
    rows = score_rows("haas", "correct_ha", "none", {"gradcam": [1, 0, 1], "hirescam": [1, 1, 1]}, np.nan)
    summary = pd.DataFrame([{**rows.iloc[0].to_dict(), "method": method, "image_id": None, "quantity": "haas", "value": value}
                            for method, value in (("gradcam", 0.8), ("hirescam", 1.05))])
    table = aggregate.summary_table(pd.concat([rows, summary])).set_index("method")
    assert table.loc["hirescam", "mean"] == 1.05 and table.loc["hirescam", "best"] and not table.loc["gradcam", "best"]


def test_markdown_has_a_section_per_model_a_row_per_method_and_bolds_the_winner():
    scores = pd.concat([score_rows("aopc", "aopc", "region_px", {"gradcam": [0.2, 0.3], "hirescam": [0.5, 0.6], "random": [0.1, 0.0]}, px)
                        for px in (8.0, 16.0)])
    table = aggregate.summary_table(scores)
    table["grid"] = table["parameter_value"].map({8.0: "8x8", 16.0: "4x4"})
    skipped = [{"dataset": "d", "model": "m", "method": "scorecam", "metric": "aopc", "reason": "left out because"}]
    text = aggregate.markdown_by_model(table, "aopc", "method", skipped)
    lines = text.splitlines()
    assert lines[0] == "## d / m"
    assert lines[2] == "| method | 16 px (4x4) | 8 px (8x8) | images |"  # the coarsest grid first, as in the study
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]] for line in lines[4:]}
    assert list(rows) == ["Grad-CAM", "HiResCAM", "Score-CAM", "Random (control)"]  # registry order, controls last
    assert rows["HiResCAM"][0].startswith("**0.55") and not rows["Grad-CAM"][0].startswith("**")
    assert rows["Score-CAM"] == ["not run: left out because", "", ""]
    assert rows["Grad-CAM"][2] == "2 scored"  # what the row rests on
    table.loc[table["method"] == "gradcam", ["n_left_out", "n_degenerate", "tied_share"]] = [3, 1, 0.5]
    gradcam = next(line for line in aggregate.markdown_by_model(table, "aopc", "method").splitlines() if line.startswith("| Grad-CAM"))
    assert gradcam.endswith("| 2 scored; 3 left out; 1 degenerate; tied 50 %/50 % |")
    assert aggregate.markdown_by_model(table, "haas", "method") == "not run\n"
