"""The study's experiments as configs, and model grids: expansion, planning, and the min/max HAAS table."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, planned_jobs, snakemake, write_config

from camfaith import sweep

EXPERIMENTS = ROOT / "config" / "experiments"


def test_a_grid_expands_in_product_order_with_the_studys_numbering():
    cifar = yaml.safe_load((EXPERIMENTS / "haas_sweep.yaml").read_text())["models"]["cifar10"]
    models, members = sweep.expand({"cifar10": cifar})
    names = list(models["cifar10"])
    assert names == [f"vgg19-no{i:02d}" for i in range(1, 17)]
    # the study's extremes: no1 = lr 1e-4, weight decay, batch 32; no13 = lr 1e-6, no weight decay, batch 32
    assert {k: members["cifar10"]["vgg19-no01"][k] for k in ("lr", "weight_decay", "batch_size")} == {"lr": 1e-4, "weight_decay": 0.01, "batch_size": 32}
    assert {k: members["cifar10"]["vgg19-no13"][k] for k in ("lr", "weight_decay", "batch_size")} == {"lr": 1e-6, "weight_decay": 0.0, "batch_size": 32}
    no13 = models["cifar10"]["vgg19-no13"]
    assert no13["training"]["lr"] == 1e-6 and no13["training"]["epochs"] == 10 and "grid" not in no13
    assert no13["model"] == cifar["vgg19"]["model"]


def test_a_model_without_grid_is_kept_and_a_colliding_member_name_refused():
    plain = {"model": {"arch": "vgg11"}, "training": {"lr": 0.1}}
    models, members = sweep.expand({"d": {"m": plain}})
    assert models == {"d": {"m": plain}} and members == {}
    with pytest.raises(ValueError, match="collides"):
        sweep.expand({"d": {"m": {**plain, "grid": {"lr": [1, 2]}}, "m-no01": plain}})


def test_extremes_pick_the_highest_and_lowest_haas_member_with_its_hyperparameters():
    members = {"c": {f"v-no0{i}": {"grid_model": "v", "lr": lr, "scheduler": sched} for i, (lr, sched) in
                     enumerate([(1e-4, None), (1e-4, {"step_size": 2, "gamma": 0.5}), (1e-6, None)], start=1)}}
    summary = pd.DataFrame({"dataset": "c", "model": ["v-no01", "v-no02", "v-no03", "v-no03"], "metric": "haas",
                            "method": ["hirescam", "hirescam", "hirescam", "gradcam"], "mean": [0.99, 1.03, 0.97, 5.0]})
    classification = pd.DataFrame({"dataset": "c", "model": ["v-no01", "v-no02", "v-no03"], "balanced_accuracy": [0.5, 0.6, 0.7],
                                   "mean_auc": [0.8, 0.9, 0.95], "accuracy": [0.5, 0.6, 0.7]})
    table = sweep.extremes(summary, classification, members, "hirescam").set_index("extreme")
    assert table.loc["max", "model"] == "v-no02" and table.loc["max", "haas"] == 1.03
    assert table.loc["max", "hyperparameters"] == "lr 0.0001; scheduler step_size 2, gamma 0.5"
    assert table.loc["min", "model"] == "v-no03" and table.loc["min", "test_mean_auc"] == 0.95  # gradcam's 5.0 is not HiResCAM's
    assert set(table["members"]) == {3}


@pytest.mark.workflow
@pytest.mark.parametrize("experiment, expected", [
    ("thesis", {"download": 4, "index": 4, "split": 4, "train": 8, "evaluate": 8, "explain": 16, "score": 48, "overlays": 8}),
    ("haas_sweep", {"download": 3, "train": 48, "explain": 48, "score": 48, "sweep_table": 1}),
    ("retinopathy", {"download": 1, "train": 2, "explain": 6, "score": 18}),
])
def test_each_experiment_plans_exactly_its_study(tmp_path, experiment, expected):
    result = snakemake(tmp_path, "-n", "--configfile", str(EXPERIMENTS / f"{experiment}.yaml"))
    jobs = planned_jobs(result.stdout)
    assert {rule: jobs.get(rule) for rule in expected} == expected
    assert "synthetic" not in result.stdout  # the study's datasets replace the default one


@pytest.mark.workflow
def test_the_thesis_experiment_is_the_studys_protocol_and_models(tmp_path):
    config = yaml.safe_load((EXPERIMENTS / "thesis.yaml").read_text())
    assert config["protocol"] == "thesis"
    assert {d: sorted(m) for d, m in config["models"].items()} == {
        "crc": ["resnet34", "vgg19"], "covid": ["resnet34", "vgg19"], "ham10000": ["resnet50", "vgg19"], "breakhis": ["resnet50", "vgg19"]}
    assert all(d["preprocessing"] == {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3} for d in config["datasets"].values())
    assert config["metrics"]["aopc"]["region_px"] == [56, 28, 21, 16]
    assert [(r["radius"], r["samples"]) for r in config["metrics"]["max_sensitivity"]["radii"]] == [
        (0.05, 20), (0.1, 20), (0.2, 30), (0.3, 30), (0.4, 40), (0.5, 40)]


@pytest.mark.workflow
def test_a_grid_runs_end_to_end_to_the_min_max_haas_table(tmp_path):
    def grid(config):
        entry = config["models"]["synthetic"]["tinyres"]
        entry["training"]["epochs"] = 1
        entry["grid"] = {"lr": [1.0e-3, 1.0e-5]}
        config["explain"]["methods"] = ["hirescam"]
        config["metrics"]["aopc"]["enabled"] = False
        config["metrics"]["max_sensitivity"]["enabled"] = False

    snakemake(tmp_path, "--cores", "2", "--configfile", str(write_config(tmp_path / "config.yaml", grid)))
    table = pd.read_csv(tmp_path / "results" / "aggregate" / "tables" / "haas_sweep.csv")
    assert sorted(table["extreme"]) == ["max", "min"] and set(table["grid"]) == {"tinyres"}
    assert set(table["model"]) <= {"tinyres-no01", "tinyres-no02"} and set(table["members"]) == {2}
    summary = pd.read_csv(tmp_path / "results" / "aggregate" / "tables" / "summary.csv")
    haas = summary[summary["metric"] == "haas"].set_index("model")["mean"]
    assert table.set_index("extreme").loc["max", "haas"] == haas.max()
    assert (tmp_path / "results" / "aggregate" / "tables" / "haas_sweep.md").read_text().startswith("# HAAS over each hyperparameter grid")
