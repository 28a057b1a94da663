"""The workflow through the snakemake CLI: a tiny config end to end, reruns, validation, lint, report."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).with_name("tiny_config.yaml")
METHODS = ("gradcam", "hirescam", "gradcampp", "xgradcam")
TABLES = ("classification.csv", "classification.md", "summary.csv", "paired_tests.csv", "aopc.md", "max_sensitivity.md", "haas.md")
FIGURES = ("morf_curves", "max_sensitivity", "accuracy_vs_aopc")

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
        assert (tiny_run / "results/aggregate/tables" / name).stat().st_size > 0, name
    for name in FIGURES:
        for extension in ("png", "pdf"):
            assert (tiny_run / f"results/aggregate/figures/{name}.{extension}").stat().st_size > 1000
    for extension in ("png", "pdf"):
        assert (tiny_run / f"results/aggregate/figures/overlays/synthetic/tinyres.{extension}").stat().st_size > 1000
    summary = pd.read_csv(tiny_run / "results/aggregate/tables/summary.csv")
    assert set(summary["method"]) == set(METHODS)
    assert set(summary["metric"]) == {"aopc", "max_sensitivity", "haas"}
    aopc = summary[summary["metric"] == "aopc"]
    assert sorted(aopc["grid"].unique()) == ["2x2", "4x4"]  # 32 px with 16 and 8 px regions
    assert aopc.groupby("parameter_value")["best"].sum().ge(1).all()  # a winner in every cell (ties share it)


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

    for method in METHODS:
        with h5py.File(tiny_run / f"results/explain/synthetic/tinyres/{method}.h5") as handle:
            assert handle.attrs["method"] == method
            assert handle["maps"].shape[1:] == (8, 8)  # resnet18 to layer1 at 32 px
            n = handle["maps"].shape[0]
        scores = pd.read_parquet(tiny_run / f"results/score/synthetic/tinyres/{method}/aopc.parquet")
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
    ],
    ids=["haas-accuracy", "aopc-region-added", "max-sensitivity-normalise"],
)
def test_editing_one_metric_setting_replans_only_that_metric_and_aggregation(tiny_run, metric, edit):
    edited = write_config(tiny_run / f"edited_{metric}.yaml", edit)
    result = snakemake(tiny_run, "-n", "--cores", "1", "--configfile", str(edited))
    output = result.stdout + result.stderr
    assert planned_jobs(output) == {"score": len(METHODS), "tables": 1, "figures": 1, "all": 1}
    planned_scores = re.findall(r"output: (results/score/\S+?\.parquet)", output)
    assert len(planned_scores) == len(METHODS) and all(p.endswith(f"/{metric}.parquet") for p in planned_scores)


def test_report_builds(tiny_run):
    snakemake(tiny_run, "--cores", "1", "--configfile", str(tiny_run / "config.yaml"), "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert "morf_curves.png" in html and "summary.csv" in html


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["metrics"]["aopc"].update(regionpx=[8]), "regionpx"),
        (lambda c: c["explain"].update(batch_size="big"), "batch_size"),
        (lambda c: c["explain"].update(methods=["gradcam", "scorecam"]), "scorecam"),
        (lambda c: c.update(protocl="thesis"), "protocl"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-method", "unknown-top-level-key"],
)
def test_bad_config_is_refused_before_any_job_naming_the_key(tmp_path, edit, named):
    config = write_config(tmp_path / "bad.yaml", edit)
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_default_config_plans_and_lints_clean():
    result = snakemake(ROOT, "-n", "--cores", "1")
    jobs = planned_jobs(result.stdout + result.stderr) if "Job stats" in result.stdout + result.stderr else {}
    assert "Nothing to be done" in result.stdout + result.stderr or jobs.get("score") == 24
    lint = snakemake(ROOT, "--lint", check=False)
    titles = set(re.findall(r"\* (.+?):\n", lint.stdout + lint.stderr))
    # docs/workflow.md explains the one lint left: rules name no conda env or container yet.
    assert titles <= {"Specify a conda environment or container for each rule."}, titles


def test_thesis_protocol_reruns_only_scores_and_applies_the_study_choices(tiny_run, tmp_path):
    import shutil

    from camfaith.store import read_table_metadata

    workdir = tmp_path / "thesis"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    config = workdir / "config.yaml"
    plan = snakemake(workdir, "-n", "--cores", "1", "--configfile", str(config), "--config", "protocol=thesis")
    assert planned_jobs(plan.stdout + plan.stderr) == {"score": 3 * len(METHODS), "tables": 1, "figures": 1, "all": 1}
    snakemake(workdir, "--cores", "2", "--configfile", str(config), "--config", "protocol=thesis")

    aopc_path = workdir / "results/score/synthetic/tinyres/hirescam/aopc.parquet"
    settings = read_table_metadata(aopc_path)["settings"]
    assert (settings["zero_pad"], settings["round_decimals"], settings["images"]) == (True, 3, "correct")
    probabilities = pd.read_parquet(aopc_path).query("quantity == 'probability'")["value"]
    assert np.allclose(probabilities, probabilities.round(3), atol=1e-6)
    assert read_table_metadata(workdir / "results/score/synthetic/tinyres/hirescam/max_sensitivity.parquet")["settings"]["normalise"] is False
    haas = pd.read_parquet(workdir / "results/score/synthetic/tinyres/hirescam/haas.parquet")
    value = haas.loc[haas["quantity"] == "haas", "value"].iloc[0]
    assert value == round(value, 2)
    assert (haas["protocol"] == "thesis").all()
