"""The workflow through the snakemake CLI: a tiny config end to end, reruns, validation, lint, report."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from camfaith.metrics import METRICS as METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).with_name("tiny_config.yaml")
_TINY_CONFIG = yaml.safe_load(TINY.read_text())
METHODS = tuple(m if isinstance(m, str) else next(iter(m)) for m in _TINY_CONFIG["explain"]["methods"])  # tinyres
GAP_METHODS = tuple(_TINY_CONFIG["models"]["synthetic"]["tinygap"]["methods"])
SKIPPED = {"max_sensitivity": set(_TINY_CONFIG["metrics"]["max_sensitivity"]["skip_methods"])}


def scored(metric: str) -> int:
    """Score jobs of one metric in the tiny run: every method of both models, but the skipped ones."""
    return len(set(METHODS) - SKIPPED.get(metric, set())) + len(set(GAP_METHODS) - SKIPPED.get(metric, set()))
TABLES = ("classification.csv", "classification.md", "summary.csv", "paired_tests.csv", *(f"{m}.md" for m in METRIC_NAMES),
          "friedman.csv", "win_counts.csv", "seeds.csv", "seeds.md", "study_tables.md", "study_tables.tex", "study_tables.html")
FIGURES = ("morf_curves", "running_aopc", "max_sensitivity", "accuracy_vs_aopc", "accuracy_vs_max_sensitivity", "critical_difference",
           "localisation")
# the metrics the tiny run scores: the faithfulness ones and the pointing game (the other localisation metrics are disabled there)
TINY_METRICS = {"aopc", "max_sensitivity", "haas", "pointing_game"}

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """Rule → count from a dry run's 'Job stats' table."""
    stats = output[output.index("Job stats:"):]
    counts = {}
    for line in stats.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def write_config(path: Path, edit=None) -> Path:
    config = yaml.safe_load(TINY.read_text())
    if edit:
        edit(config)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    config = write_config(workdir / "config.yaml")
    snakemake(workdir, "--cores", "2", "--configfile", str(config))
    return workdir


def test_tiny_config_produces_every_table_and_figure(tiny_run):
    for name in TABLES:
        assert (tiny_run / "results/aggregate/default/tables" / name).stat().st_size > 0, name
    for name in FIGURES:
        for extension in ("png", "pdf"):
            assert (tiny_run / f"results/aggregate/default/figures/{name}.{extension}").stat().st_size > 1000
    for model, kind in itertools.product(("tinyres", "tinygap"), ("overlays", "disagreement")):
        for extension in ("png", "pdf"):
            assert (tiny_run / f"results/aggregate/default/figures/{kind}/synthetic/{model}.{extension}").stat().st_size > 1000
    summary = pd.read_csv(tiny_run / "results/aggregate/default/tables/summary.csv")
    assert set(summary.loc[summary["model"] == "tinyres", "method"]) == set(METHODS)
    assert set(summary.loc[summary["model"] == "tinygap", "method"]) == set(GAP_METHODS)
    assert set(summary["metric"]) == TINY_METRICS
    sensitivity = summary[summary["metric"] == "max_sensitivity"]
    assert not set(sensitivity["method"]) & SKIPPED["max_sensitivity"]
    disabled = (tiny_run / "results/aggregate/default/tables/relevance_rank.md").read_text()
    assert disabled.startswith("# Relevance rank accuracy, higher is better") and disabled.rstrip().endswith("not run")
    table = (tiny_run / "results/aggregate/default/tables/max_sensitivity.md").read_text()
    assert re.search(r"^\| Score-CAM \| not run: left out by metrics\.max_sensitivity\.skip_methods \(one Score-CAM map costs one forward per "
                     r"channel of the target layer\) \|", table, flags=re.M), table
    assert "| Integrated Gradients | " in table and "| CAM | " in table
    aopc = summary[summary["metric"] == "aopc"]
    assert sorted(aopc["grid"].unique()) == ["2x2", "4x4"]  # 32 px with 16 and 8 px regions
    assert aopc.groupby("parameter_value")["best_mean"].sum().ge(1).all()  # a best mean in every cell (ties share it)
    assert (aopc["best_mean"] | ~aopc["best"]).all()  # bold only where the mean is best (and the corrected test agrees)
    paired = pd.read_csv(tiny_run / "results/aggregate/default/tables/paired_tests.csv")
    assert {"p_holm", "better", "ci_low", "ci_high", "effect_size"} <= set(paired.columns) and set(paired["metric"]) == TINY_METRICS


def test_verdict_names_every_model_and_no_mean_is_infinite(tiny_run):
    verdict = (tiny_run / "results/aggregate/verdict.md").read_text()
    for model in ("tinyres", "tinygap"):
        assert f"## synthetic / {model} (test balanced accuracy" in verdict
    assert "## Recommendation" in verdict
    assert "HiResCAM" in verdict and "Grad-CAM" in verdict  # the headline pair, aggregate.compare
    rst = (tiny_run / "results/aggregate/verdict.rst").read_text()
    assert rst.startswith("Verdict: default protocol\n=========================\n")
    assert verdict.startswith("# Verdict: default protocol\n")
    comparison = (tiny_run / "results/aggregate/protocols.md").read_text()
    assert "One protocol ran (default): nothing to compare" in comparison
    summary = pd.read_csv(tiny_run / "results/aggregate/default/tables/summary.csv")
    assert np.isfinite(summary["mean"].dropna()).all()
    sensitivity = summary[summary["metric"] == "max_sensitivity"]
    assert (sensitivity["mean"] <= 1 + 1 / 0.1 + 1e-6).all()  # the floored normalisation bounds it
    assert {"n_degenerate", "n_left_out", "tied_share", "n_floored"} <= set(summary.columns)
    assert summary["n_left_out"].notna().all()
    aopc = summary[summary["metric"] == "aopc"]
    assert aopc["tied_share"].between(0, 1).all()
    friedman = pd.read_csv(tiny_run / "results/aggregate/default/tables/friedman.csv")
    assert set(friedman["metric"]) == TINY_METRICS - {"haas"}


def test_score_log_says_what_was_scored_left_out_and_how_fast(tiny_run):
    log = (tiny_run / "logs/score/default/synthetic/tinyres/gradcam/aopc.log").read_text()
    assert re.search(r"aopc of gradcam: \d+ of \d+ test images scored \(\d+ left out", log), log
    assert re.search(r"aopc of gradcam: \d+ of \d+ images \(100 %\), [\d.]+ images/s, about 0 s left", log), log


def test_every_stage_logged_and_benchmarked(tiny_run):
    for stage in ("download", "index", "split", "train", "evaluate", "explain", "score", "aggregate"):
        assert any((tiny_run / "logs" / stage).rglob("*.log")), stage
        assert any((tiny_run / "benchmarks" / stage).rglob("*.tsv")), stage
    train_log = (tiny_run / "logs/train/synthetic/tinyres.log").read_text()
    assert "epoch 1/2" in train_log
    index_log = (tiny_run / "logs/index/synthetic.log").read_text()
    assert "quarantined 1" in index_log
    quarantine = pd.read_parquet(tiny_run / "results/index/synthetic/quarantine.parquet")
    assert len(quarantine) == 1 and "truncated" in quarantine["reason"].iloc[0]


def test_maps_and_scores_are_consistent(tiny_run):
    import h5py

    from camfaith import explainers

    for method in METHODS:
        with h5py.File(tiny_run / f"results/explain/synthetic/tinyres/{method}.h5") as handle:
            assert handle.attrs["method"] == method and handle.attrs["format"] == "camfaith.maps/2"
            resolution = explainers.get(method).resolution
            assert handle.attrs["resolution"] == resolution
            # resnet18 to layer1 at 32 px: 8x8 at the layer
            assert handle["maps"].shape[1:] == ((8, 8) if resolution == "layer" else (32, 32))
            n = handle["maps"].shape[0]
        scores = pd.read_parquet(tiny_run / f"results/score/default/synthetic/tinyres/{method}/aopc.parquet")
        per_image = scores[scores["quantity"] == "aopc"]
        assert len(per_image) == 2 * n  # images: all, two region sizes
        curve = scores[(scores["quantity"] == "probability") & (scores["parameter_value"] == 8)]
        assert curve["step"].max() == 16


def test_nothing_to_do_after_a_complete_run(tiny_run):
    result = snakemake(tiny_run, "-n", "--cores", "1", "--configfile", str(tiny_run / "config.yaml"))
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("metric", "edit"),
    [
        ("haas", lambda c: c["metrics"]["haas"].update(accuracy="balanced")),
        ("aopc", lambda c: c["metrics"]["aopc"]["region_px"].append(4)),
        ("max_sensitivity", lambda c: c["metrics"]["max_sensitivity"].update(normalise=False)),
        ("pointing_game", lambda c: c["metrics"]["pointing_game"].update(tolerance_px=[0, 3])),
    ],
    ids=["haas-accuracy", "aopc-region-added", "max-sensitivity-normalise", "pointing-game-tolerance"],
)
def test_editing_one_metric_setting_replans_only_that_metric_and_aggregation(tiny_run, metric, edit):
    edited = write_config(tiny_run / f"edited_{metric}.yaml", edit)
    result = snakemake(tiny_run, "-n", "--cores", "1", "--configfile", str(edited))
    output = result.stdout + result.stderr
    # the overlays show each image's AOPC, Max-Sensitivity and pointing game, not its HAAS
    redrawn = {"overlays": 2} if metric in ("aopc", "max_sensitivity", "pointing_game") else {}
    # a localisation metric is one job per model, over all its methods
    jobs = {"score_ground_truth": 2} if metric == "pointing_game" else {"score": scored(metric)}
    assert planned_jobs(output) == {**jobs, "tables": 1, "figures": 1, "verdict": 1, **redrawn, "all": 1}
    planned_scores = re.findall(r"output: (results/score/\S+?\.parquet)", output)
    assert len(planned_scores) == next(iter(jobs.values())) and all(p.endswith(f"/{metric}.parquet") for p in planned_scores)


def test_changing_one_methods_settings_replans_only_that_method(tiny_run):
    def more_steps(config):
        config["explain"]["methods"][METHODS.index("integrated_gradients")] = {"integrated_gradients": {"steps": 6, "internal_batch_size": 16}}

    edited = write_config(tiny_run / "edited_ig.yaml", more_steps)
    result = snakemake(tiny_run, "-n", "--cores", "1", "--configfile", str(edited))
    output = result.stdout + result.stderr
    # the model's pointing game too: one job over all the model's methods
    assert planned_jobs(output) == {"explain": 1, "score": 3, "score_ground_truth": 1, "overlays": 1, "tables": 1, "figures": 1, "verdict": 1,
                                    "all": 1}
    planned = re.findall(r"output: (results/(?:explain|score)/\S+)", output)
    per_method = [path for path in planned if not path.endswith("/tinyres/pointing_game.parquet")]
    assert len(per_method) == len(planned) - 1 and all("/integrated_gradients" in path for path in per_method), planned
    overlays = re.findall(r"output: (results/aggregate/default/figures/overlays/\S+?)[,\s]", output)
    assert overlays == ["results/aggregate/default/figures/overlays/synthetic/tinyres.png"], overlays  # the other model's is not redrawn


def test_report_builds(tiny_run):
    snakemake(tiny_run, "--cores", "1", "--configfile", str(tiny_run / "config.yaml"), "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert "morf_curves.png" in html and "summary.csv" in html
    assert "Recommendation" in html and "synthetic / tinyres" in html  # the verdict is the first page
    assert "Critical-difference diagrams" in html  # figures carry their captions


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["metrics"]["aopc"].update(regionpx=[8]), "regionpx"),
        (lambda c: c["explain"].update(batch_size="big"), "batch_size"),
        (lambda c: c["explain"].update(methods=["gradcam", "scorecamm"]), "scorecamm"),
        (lambda c: c.update(protocl="thesis"), "protocl"),
        (lambda c: c["explain"].update(methods=[{"integrated_gradients": {"stpes": 3}}]), "stpes"),
        (lambda c: c["explain"].update(methods=["gradcam", "cam"]),
         "method 'cam' does not apply to models.synthetic.tinyres (resnet18, head flatten): CAM weights the pooled feature maps"),
        (lambda c: c["metrics"]["aopc"].update(skip_methods=["hirescamm"]), "hirescamm"),
        (lambda c: c["models"]["synthetic"].update({"tiny/res": c["models"]["synthetic"].pop("tinyres")}), "'tiny/res' does not match"),
        (lambda c: c["models"]["synthetic"]["tinyres"]["model"].update(target_layer="layer1.9"), "target layer 'layer1.9' not found"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-method", "unknown-top-level-key", "unknown-setting", "method-does-not-apply",
         "unknown-skipped-method", "slash-in-model-name", "missing-target-layer"],
)
def test_bad_config_is_refused_before_any_job_naming_the_key(tmp_path, edit, named):
    config = write_config(tmp_path / "bad.yaml", edit)
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(config), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output
    assert not (tmp_path / "results").exists()
    # one clear message: a few lines (Snakemake's own validation printed 579 for one typo), no schema warning
    assert len(output.splitlines()) <= 15, output
    assert "No validator found" not in output


def test_default_config_plans_and_lints_clean():
    result = snakemake(ROOT, "-n", "--cores", "1")
    jobs = planned_jobs(result.stdout + result.stderr) if "Job stats" in result.stdout + result.stderr else {}
    # default protocol: two flatten models x 13 methods x 3 metrics, less 4 methods Max-Sensitivity skips, plus the GAP
    # model's 4 x 3; thesis protocol (protocol_methods): Grad-CAM and HiResCAM on the three models x 3 metrics
    assert "Nothing to be done" in result.stdout + result.stderr or jobs.get("score") == 2 * (13 * 3 - 4) + 4 * 3 + 3 * 2 * 3
    lint = snakemake(ROOT, "--lint", check=False)
    assert lint.returncode == 0 and "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr, lint.stdout + lint.stderr


def test_adding_the_thesis_protocol_scores_beside_the_default_and_applies_the_study_choices(tiny_run, tmp_path):
    import shutil

    from camfaith.store import read_table_metadata

    workdir = tmp_path / "thesis"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    config = workdir / "config.yaml"
    both = ("--config", "protocol=[default, thesis]")
    plan = snakemake(workdir, "-n", "--cores", "1", "--configfile", str(config), *both)
    output = plan.stdout + plan.stderr
    # the thesis protocol's scores (of Grad-CAM and HiResCAM: config/config.yaml's protocol_methods), tables, figures
    # and overlays; nothing of the default protocol re-runs
    assert planned_jobs(output) == {"score": 2 * 2 * 3, "tables": 1, "figures": 1, "overlays": 2, "verdict": 1, "all": 1}
    planned = re.findall(r"output: (results/(?:score|aggregate)/\S+?)[,\s]", output)
    assert all(p.startswith(("results/score/thesis/", "results/aggregate/thesis/", "results/aggregate/verdict.md")) for p in planned), planned
    # the plan above covers every score job; running HiResCAM's three is enough to check the study's choices
    targets = [f"results/score/thesis/synthetic/tinyres/hirescam/{metric}.parquet" for metric in ("aopc", "max_sensitivity", "haas")]
    default_aopc = workdir / "results/score/default/synthetic/tinyres/hirescam/aopc.parquet"
    before = default_aopc.read_bytes()
    snakemake(workdir, "--cores", "2", "--configfile", str(config), *both, "--", *targets)

    assert default_aopc.read_bytes() == before  # beside, not over
    aopc_path = workdir / "results/score/thesis/synthetic/tinyres/hirescam/aopc.parquet"
    settings = read_table_metadata(aopc_path)["settings"]
    assert (settings["zero_pad"], settings["round_decimals"], settings["images"], settings["ties"]) == (True, 3, "correct", "row_major")
    probabilities = pd.read_parquet(aopc_path).query("quantity == 'probability'")["value"]
    assert np.allclose(probabilities, probabilities.round(3), atol=1e-6)
    assert read_table_metadata(workdir / "results/score/thesis/synthetic/tinyres/hirescam/max_sensitivity.parquet")["settings"]["normalise"] is False
    haas = pd.read_parquet(workdir / "results/score/thesis/synthetic/tinyres/hirescam/haas.parquet")
    value = haas.loc[haas["quantity"] == "haas", "value"].iloc[0]
    assert value == round(value, 2)
    assert (haas["protocol"] == "thesis").all()


def test_protocol_methods_limit_what_a_protocol_scores_and_its_tables_say_why(tmp_path):
    def both(config):
        config["protocol"] = ["default", "thesis"]
        config["protocol_methods"] = {"thesis": ["gradcam", "hirescam"]}

    result = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", both)))
    thesis = set(re.findall(r"output: results/score/thesis/synthetic/(\S+?)/\w+\.parquet", result.stdout))
    assert thesis == {f"{model}/{method}" for model in ("tinyres", "tinygap") for method in ("gradcam", "hirescam")}
    # and the pointing game once per model, under the default protocol only (the study computed no localisation)
    assert len(re.findall(r"output: results/score/default/", result.stdout)) == sum(scored(m) for m in ("aopc", "max_sensitivity", "haas")) + 2
    from camfaith import configuration

    config = yaml.safe_load(TINY.read_text())
    both(config)
    plan = configuration.prepare(config, ROOT / "config/schema.yaml")
    skips = {(s.model, s.method, s.metric): s.reason for s in plan.protocol_skips("thesis")}
    assert skips[("tinyres", "integrated_gradients", "aopc")] == "not scored under the thesis protocol (protocol_methods.thesis: gradcam, hirescam)"
    assert ("tinygap", "cam", "haas") in skips and ("tinyres", "gradcam", "aopc") not in skips
    assert len(plan.protocol_skips("default")) == len(plan.skips)


def test_the_schema_rules_and_memory_planner_read_metric_names_from_the_registry():
    """Where a metric name was spelled out before the registry (the schema's metric sections, the score
    rules' wildcards, the memory planner's formulas), none is now: they read camfaith.metrics.REGISTRY.
    The files that still name a metric do so for code about that one metric (its figures, HAAS's sweep)."""
    from camfaith import configuration
    from camfaith.metrics import METRICS

    pattern = re.compile(r"\b(?:" + "|".join(METRICS) + r")\b")
    for path in (ROOT / "config/schema.yaml", ROOT / "Snakefile", ROOT / "rules/score.smk", ROOT / "src/camfaith/memory.py"):
        assert not pattern.search(path.read_text()), (path, pattern.findall(path.read_text()))
    schema = configuration.load_schema(ROOT / "config/schema.yaml")
    assert list(schema["properties"]["metrics"]["properties"]) == list(METRICS)
