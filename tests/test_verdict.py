"""The verdict, win counts and study-layout tables from hand-built score tables (docs/statistics.md)."""

import numpy as np
import pandas as pd
import pytest

from camfaith import aggregate, paired, verdict


def long_scores(effects: dict[str, float], images: int = 40, seed: int = 0, model: str = "m1", metric: str = "aopc",
                noise: float = 0.05) -> pd.DataFrame:
    """Per-image rows of one cell: method → mean score; every method sees the same image effect."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.3, 0.1, images)
    rows = []
    for method, effect in effects.items():
        values = base + effect + rng.normal(0, noise, images)
        for i, value in enumerate(values):
            rows.append({"dataset": "d", "model": model, "method": method, "metric": metric, "protocol": "default",
                         "image_id": f"img{i:03d}", "label": 0, "target": 0, "prediction": 0,
                         "parameter": "region_px" if metric == "aopc" else "radius", "parameter_value": 8.0,
                         "quantity": metric, "step": None, "value": value})
            rows.append({**rows[-1], "quantity": "map_zero", "parameter": "none", "parameter_value": np.nan,
                         "value": float(method == "gradcampp" and i < 5)})
    return pd.DataFrame(rows)


def tables(scores: pd.DataFrame):
    tests = aggregate.paired_tests(scores, seed=0)
    summary = aggregate.summary_table(scores, 0, tests)
    summary["grid"] = "8x8"
    return summary, tests


CLASSIFICATION = pd.DataFrame([{"dataset": "d", "model": "m1", "balanced_accuracy": 0.9, "mean_auc": 0.95, "accuracy": 0.9},
                               {"dataset": "d", "model": "m2", "balanced_accuracy": 0.8, "mean_auc": 0.9, "accuracy": 0.8}])


def test_pair_sentence_says_who_is_more_faithful_with_the_interval_and_holm_p():
    summary, tests = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0, "random": -0.2}))
    cell = verdict.cells(summary, tests)[0]
    sentence = verdict.pair_sentence(cell, "hirescam", "gradcam")
    assert sentence.startswith("HiResCAM is more faithful than Grad-CAM by AOPC on 8x8 regions (8 px): +0.")
    assert "p_Holm" in sentence
    # asked the other way round, the numbers are negated and the winner still named first
    reverse = verdict.pair_sentence(cell, "gradcam", "hirescam")
    assert reverse.startswith("HiResCAM is more faithful than Grad-CAM") and "Grad-CAM − HiResCAM = -0." in reverse


def test_pair_sentence_cannot_tell_apart_identical_methods():
    summary, tests = tables(long_scores({"hirescam": 0.0, "gradcam": 0.0}, noise=0.02))
    sentence = verdict.pair_sentence(verdict.cells(summary, tests)[0], "hirescam", "gradcam")
    assert "cannot tell them apart" in sentence


def test_top_group_and_a_control_in_it_flags_the_setting():
    summary, tests = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0, "random": -0.3}))
    good = verdict.cells(summary, tests)[0]
    assert good.top_group == ["hirescam"] and good.flagged_controls == []
    summary, tests = tables(long_scores({"hirescam": 0.0, "gradcam": -0.1, "centre": 0.2}))
    bad = verdict.cells(summary, tests)[0]
    assert bad.flagged_controls == ["centre"]
    assert any("does not rank the control(s) Centre" in note for note in verdict.caveats(bad))


def test_degenerate_maps_are_a_caveat_with_their_count():
    summary, tests = tables(long_scores({"hirescam": 0.1, "gradcampp": 0.0}))
    notes = verdict.caveats(verdict.cells(summary, tests)[0])
    assert "Grad-CAM++: of the 40 maps AOPC scored, 5 all zero after ReLU" in notes


def test_win_counts_count_higher_means_and_significant_wins_per_setting():
    scores = pd.concat([long_scores({"hirescam": 0.1, "gradcam": 0.0}, model="m1"),
                        long_scores({"hirescam": 0.005, "gradcam": 0.0}, model="m2", seed=1, noise=0.2)])
    _, tests = tables(scores)
    counts = verdict.win_counts(tests)
    row = counts[(counts["method_a"] == "gradcam") & (counts["method_b"] == "hirescam")].iloc[0]
    assert row["cells"] == 2 and row["b_significant"] == 1 and row["a_significant"] == 0
    assert row["b_higher"] + row["a_higher"] == 2


def test_verdict_names_every_model_and_recommends_the_method_that_wins():
    scores = pd.concat([long_scores({"hirescam": 0.1, "gradcam": 0.0, "random": -0.3}, model=m, seed=i) for i, m in enumerate(["m1", "m2"])])
    summary, tests = tables(scores)
    result = verdict.build(summary, tests, CLASSIFICATION, ["hirescam", "gradcam"])
    text = result.markdown()
    assert "## d / m1 (test balanced accuracy 0.900)" in text and "## d / m2 (test balanced accuracy 0.800)" in text
    assert "HiResCAM is in the top group of 2 of 2 cells" in text
    assert "HiResCAM prevails over Grad-CAM by AOPC on 8 px regions in 2/2 models (significant in 2/2)" in text
    rst = result.rst()
    assert rst.startswith("Verdict\n=======") and "Recommendation\n--------------" in rst


def test_study_table_has_a_row_per_model_and_a_column_per_setting_and_method():
    scores = pd.concat([long_scores({"hirescam": 0.1, "gradcam": 0.0, "random": -0.3}, model=m, seed=i) for i, m in enumerate(["m1", "m2"])])
    summary, _ = tables(scores)
    table = aggregate.study_table(summary, "aopc")
    assert list(table.index) == [("d", "m1"), ("d", "m2")]
    assert list(table.columns) == [("8x8 (8 px)", "Grad-CAM"), ("8x8 (8 px)", "HiResCAM"), ("8x8 (8 px)", "Random (control)")]
    assert table.loc[("d", "m1"), ("8x8 (8 px)", "HiResCAM")].endswith("*")
    assert not table.loc[("d", "m1"), ("8x8 (8 px)", "Grad-CAM")].endswith("*")
    latex = aggregate.study_latex(table, "AOPC", "tab:aopc")
    assert "\\toprule" in latex and "\\bottomrule" in latex and "\\textbf{" in latex


# ---------- group-level procedures ----------


def test_group_means_and_clusters():
    assert paired.group_means(np.array([1.0, 3.0, 5.0]), np.array(["b", "a", "b"])).tolist() == [3.0, 3.0]
    assert paired.has_clusters(np.array(["a", "a", "b"])) and not paired.has_clusters(np.array(["a", "b"]))
    assert not paired.has_clusters(None)


def test_paired_test_counts_patients_not_images_when_images_share_a_patient():
    scores = long_scores({"hirescam": 0.1, "gradcam": 0.0}, images=40)
    groups = {("d", f"img{i:03d}"): f"patient{i // 4}" for i in range(40)}  # 10 patients of 4 images
    grouped = aggregate.paired_tests(scores, seed=0, groups=groups).iloc[0]
    alone = aggregate.paired_tests(scores, seed=0).iloc[0]
    assert grouped["test"] == "wilcoxon_pratt_groups" and grouped["n_units"] == 10 and grouped["n_pairs"] == 40
    assert alone["test"] == "wilcoxon_pratt" and alone["n_units"] == 40
    # 10 units cannot give the evidence 40 independent ones do
    assert grouped["p_value"] > alone["p_value"]


def test_ratio_interval_hand_cases():
    # every unit has the same ratio: the interval collapses onto it
    low, high = paired.bootstrap_ratio_interval(np.array([1, 2, 3, 4.0]), np.array([2, 4, 6, 8.0]), seed=0)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    numerator = np.array([1, 0, 1, 1, 0, 1, 1, 1.0] * 5)
    denominator = np.ones_like(numerator)
    narrow = paired.bootstrap_ratio_interval(numerator, denominator, seed=0)
    # the same values in 4 groups of 10 identical images: fewer units, a wider interval
    groups = np.repeat(np.arange(4), 10)
    clustered = paired.bootstrap_ratio_interval(np.sort(numerator), denominator, groups, seed=0)
    assert clustered[1] - clustered[0] > narrow[1] - narrow[0]
    assert np.isnan(paired.bootstrap_ratio_interval(np.array([1.0]), np.array([1.0]))[0])


# --- both protocols side by side -----------------------------------------------------------------

def test_protocol_table_lines_up_each_protocols_outcome_and_finds_the_disagreements():
    # default: HiResCAM clearly better; thesis: no real difference; random is worse under both
    _, default = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0, "random": -0.2}))
    _, thesis = tables(long_scores({"hirescam": 0.0, "gradcam": 0.0, "random": -0.2}, seed=1))
    table = verdict.protocol_table({"default": default, "thesis": thesis})
    assert len(table) == 3 and {"outcome_default", "outcome_thesis", "mean_difference_thesis", "p_holm_default"} <= set(table.columns)
    rows = table.set_index(["method_a", "method_b"])
    assert rows.loc[("gradcam", "hirescam"), "outcome_default"] == "HiResCAM better"
    assert rows.loc[("gradcam", "hirescam"), "outcome_thesis"] == "no difference"
    assert not rows.loc[("gradcam", "hirescam"), "agree"]
    assert rows.loc[("hirescam", "random"), "agree"] and rows.loc[("hirescam", "random"), "outcome_thesis"] == "HiResCAM better"
    text = verdict.protocol_markdown(table, ["default", "thesis"])
    assert "| aopc | 3 | 2 | 1 |" in text
    assert "## Where they disagree (1 of 3 pairs compared)" in text
    assert "| d / m1 | AOPC on 8 px regions | Grad-CAM − HiResCAM | HiResCAM better (-0.1" in text


def test_protocols_are_compared_on_the_pairs_both_tested_with_the_same_holm_family():
    # the default protocol tests 10 methods (45 pairs); the thesis protocol two of them (1 pair)
    effects = dict.fromkeys(("gradcampp", "xgradcam", "layercam", "scorecam", "guided_backprop", "guided_gradcam", "integrated_gradients", "occlusion"), 0.0)
    _, default = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0, **effects}, images=12, noise=0.1))
    _, thesis = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0}, images=12, noise=0.1))
    table = verdict.protocol_table({"default": default, "thesis": thesis})
    assert list(zip(table["method_a"], table["method_b"])) == [("gradcam", "hirescam")]  # only the pair both tested
    row = table.iloc[0]
    # one pair compared: Holm over one test is the raw p-value, for both protocols alike
    assert row["p_holm_default"] == pytest.approx(row["p_value_default"]) and row["p_holm_thesis"] == pytest.approx(row["p_value_thesis"])
    pair = default[(default["method_a"] == "gradcam") & (default["method_b"] == "hirescam")].iloc[0]
    assert pair["p_holm"] > row["p_holm_default"]  # paired_tests.csv corrects over all 45 default pairs


def test_one_protocol_has_nothing_to_compare_and_says_how_to_run_both():
    _, default = tables(long_scores({"hirescam": 0.1, "gradcam": 0.0}))
    table = verdict.protocol_table({"default": default})
    assert table["agree"].isna().all() and (table["p_holm_default"] == default["p_holm"]).all()
    text = verdict.protocol_markdown(table, ["default"])
    assert "One protocol ran (default): nothing to compare" in text and "protocol=[default, thesis]" in text
    assert verdict.protocol_rst(table, ["default"]) == ""


def test_verdict_page_joins_the_protocols_verdicts_and_their_comparison(tmp_path):
    from camfaith import pipeline

    files = {}
    for protocol, effect in (("default", 0.1), ("thesis", 0.0)):
        summary, tests = tables(long_scores({"hirescam": effect, "gradcam": 0.0, "random": -0.2}, seed=int(effect * 10)))
        result = verdict.build(summary, tests, CLASSIFICATION, ["hirescam", "gradcam"])
        files[protocol] = {"md": tmp_path / f"{protocol}.md", "rst": tmp_path / f"{protocol}.rst", "csv": tmp_path / f"{protocol}.csv"}
        files[protocol]["md"].write_text(result.markdown(f"Verdict: {protocol} protocol"))
        files[protocol]["rst"].write_text(result.rst(f"Verdict: {protocol} protocol"))
        tests.to_csv(files[protocol]["csv"], index=False)
    out = {key: tmp_path / name for key, name in (("verdict_md", "verdict.md"), ("verdict_rst", "verdict.rst"),
                                                  ("protocols_csv", "protocols.csv"), ("protocols_md", "protocols.md"))}
    pipeline.verdict_page(*({p: files[p][kind] for p in files} for kind in ("md", "rst", "csv")), out)
    page = out["verdict_md"].read_text()
    assert page.index("# Verdict: default protocol") < page.index("# Verdict: thesis protocol") < page.index("# The protocols compared")
    rst = out["verdict_rst"].read_text()
    assert "Verdict: thesis protocol\n========================" in rst and "The protocols compared\n======================" in rst
    assert "Grad-CAM vs HiResCAM: default: HiResCAM better; thesis: no difference" in rst
    assert len(pd.read_csv(out["protocols_csv"])) == 3


def test_caveats_name_each_setting_once_and_list_the_methods_in_one_line():
    summary, tests = tables(long_scores({"hirescam": 0.0, "gradcam": -0.1, "centre": 0.2}))
    summary["tied_share"] = [0.5, 0.3, 0.1]  # centre, gradcam, hirescam (summary rows are sorted by method)
    cell = verdict.cells(summary, tests)[0]
    tied = [n for n in verdict.caveats(cell, controls=False) if "tied" in n]
    assert tied == ["AOPC on 8x8 regions (8 px): regions tied (ordered by the seeded tie-break, not by the map): Centre (control) 50 %, "
                    "Grad-CAM 30 %"]
    other = verdict.cells(summary.assign(parameter_value=16.0, grid="4x4"), tests.assign(parameter_value=16.0))[0]
    assert verdict.flagged_note([cell, other]).startswith("AOPC on 8x8 regions (8 px) and AOPC on 4x4 regions (16 px) do not rank the "
                                                          "control(s) Centre (control) last")


def test_a_sentence_that_starts_with_a_settings_label_starts_with_a_capital():
    from camfaith.verdict import capitalised

    assert capitalised("pointing game within 4 px") == "Pointing game within 4 px"
    assert capitalised("pixels above 0.85 × max inside") == "Pixels above 0.85 × max inside"
    assert capitalised("AOPC on 8x8 regions (8 px)") == "AOPC on 8x8 regions (8 px)" and capitalised("") == ""
