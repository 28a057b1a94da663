"""The study's experiments as configs, model grids (expansion, planning, the min/max HAAS table) and training-seed replicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    ("thesis", {"download": 4, "index": 4, "split": 4, "train": 8, "evaluate": 8, "explain": 16, "score": 48, "overlays": 8, "verdict": 1}),
    ("haas_sweep", {"download": 3, "train": 48, "explain": 48, "score": 48, "sweep_table": 1}),
    ("retinopathy", {"download": 1, "train": 2, "explain": 6, "score": 18}),
    ("kth_chestxray", {"download": 1, "train": 1, "explain": 4, "score": None, "score_ground_truth": 1}),
    ("kth_imagenet", {"download": 1, "train": 2, "explain": 6, "score": None, "score_ground_truth": 4}),
])
def test_each_experiment_plans_exactly_its_study(tmp_path, experiment, expected):
    config = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
    for name, dataset in config["datasets"].items():
        if dataset.get("local_path"):  # a manual download's folder (ImageNet's) must exist when the config is checked
            dataset["local_path"] = str(tmp_path / "manual" / name)
            Path(dataset["local_path"]).mkdir(parents=True)
    (tmp_path / f"{experiment}.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / f"{experiment}.yaml"))
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

    # the sweep table and what it reads, not the figures and overlays (targets before --configfile)
    sweep_csv = "results/aggregate/default/tables/haas_sweep.csv"
    snakemake(tmp_path, "--cores", "2", sweep_csv, "results/aggregate/default/tables/haas_sweep.md",
              "--configfile", str(write_config(tmp_path / "config.yaml", grid)))
    table = pd.read_csv(tmp_path / sweep_csv)
    assert sorted(table["extreme"]) == ["max", "min"] and set(table["grid"]) == {"tinyres"}
    assert set(table["model"]) <= {"tinyres-no01", "tinyres-no02"} and set(table["members"]) == {2}
    summary = pd.read_csv(tmp_path / "results" / "aggregate" / "default" / "tables" / "summary.csv")
    haas = summary[summary["metric"] == "haas"].set_index("model")["mean"]
    assert table.set_index("extreme").loc["max", "haas"] == haas.max()
    assert (tmp_path / "results" / "aggregate" / "default" / "tables" / "haas_sweep.md").read_text().startswith("# HAAS over each hyperparameter grid")


# --- training-seed replicates ----------------------------------------------------------------------

def test_training_seeds_become_one_model_per_seed_that_differs_only_in_its_seed():
    entry = {"model": {"arch": "resnet18"}, "training": {"epochs": 3, "seed": 7, "seeds": [0, 1, 2]}, "methods": ["gradcam"]}
    models, replicates = sweep.expand_seeds({"d": {"r": entry, "plain": {"model": {"arch": "vgg11"}, "training": {"seed": 0}}}})
    assert list(models["d"]) == ["r-seed0", "r-seed1", "r-seed2", "plain"]
    assert [models["d"][f"r-seed{s}"]["training"] for s in (0, 1, 2)] == [{"epochs": 3, "seed": s} for s in (0, 1, 2)]
    assert models["d"]["r-seed1"]["methods"] == ["gradcam"] and "seeds" in entry["training"]  # the input is left as it was
    assert replicates == {"d": {f"r-seed{s}": {"replicate_of": "r", "seed": s} for s in (0, 1, 2)}}
    with pytest.raises(ValueError, match="'r-seed0' collides"):
        sweep.expand_seeds({"d": {"r": entry, "r-seed0": {"model": {"arch": "vgg11"}}}})


def test_a_grid_model_with_seeds_is_refused_naming_it(tmp_path):
    def both(config):
        entry = config["models"]["synthetic"]["tinyres"]
        entry["grid"] = {"lr": [1.0e-3, 1.0e-4]}
        entry["training"]["seeds"] = [0, 1]

    result = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", both)), check=False)
    assert result.returncode != 0 and "models.synthetic.tinyres: a grid model cannot also have training.seeds" in result.stdout + result.stderr


def test_seed_replicates_plan_a_model_each_and_one_seeds_table(tmp_path):
    def seeds(config):
        config["models"]["synthetic"]["tinygap"]["training"]["seeds"] = [0, 1, 2]

    result = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", seeds)))
    jobs = planned_jobs(result.stdout)
    assert (jobs["train"], jobs["explain"]) == (1 + 3, 5 + 3 * 3)  # tinyres, and tinygap once per seed
    assert "results/train/synthetic/tinygap-seed2/model.pt" in result.stdout and "results/train/synthetic/tinygap/" not in result.stdout
    assert "results/aggregate/default/tables/seeds.csv" in result.stdout


def paired_rows(model: str, difference: float, better: str) -> list[dict]:
    cell = {"dataset": "d", "model": model, "metric": "aopc", "parameter": "region_px", "parameter_value": 8.0}
    return [{**cell, "method_a": "gradcam", "method_b": "hirescam", "mean_difference": difference, "better": better},
            {**cell, "method_a": "gradcam", "method_b": "random", "mean_difference": 0.2, "better": "gradcam"}]


def test_seeds_table_summarises_each_pairs_difference_over_the_seeds_with_a_t_interval():
    from scipy import stats

    from camfaith import aggregate

    paired = pd.DataFrame(paired_rows("r-seed0", -0.01, "hirescam") + paired_rows("r-seed1", -0.03, "hirescam")
                          + paired_rows("r-seed2", 0.01, "no difference") + paired_rows("other", 0.5, "gradcam"))
    replicates = {"d": {f"r-seed{s}": {"replicate_of": "r", "seed": s} for s in range(3)}}
    table = aggregate.seeds_table(paired, replicates)
    assert set(table["model"]) == {"r"} and len(table) == 2  # "other" is not a replicate
    row = table[table["method_b"] == "hirescam"].iloc[0]
    assert row["seeds"] == 3 and row["mean_difference"] == pytest.approx(-0.01)
    assert row["sd"] == pytest.approx(0.02)
    half = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)  # 0.0497
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.01 - half, -0.01 + half))
    assert (row["a_better"], row["b_better"], row["no_difference"]) == (0, 2, 1)
    random_row = table[table["method_b"] == "random"].iloc[0]
    assert random_row["sd"] == pytest.approx(0.0) and random_row["a_better"] == 3
    assert "## d / r (3 seeds)" in aggregate.seeds_markdown(table)
    assert aggregate.seeds_table(paired, {}).empty and "No model has `training.seeds`" in aggregate.seeds_markdown(aggregate.seeds_table(paired, {}))


def test_the_verdict_says_how_the_pair_fares_across_seeds():
    from camfaith import aggregate, verdict

    paired = pd.DataFrame(paired_rows("r-seed0", -0.01, "hirescam") + paired_rows("r-seed1", -0.03, "hirescam"))
    table = aggregate.seeds_table(paired, {"d": {f"r-seed{s}": {"replicate_of": "r", "seed": s} for s in range(2)}})
    (heading, sentences, _), = verdict.seed_sentences(table, ["hirescam", "gradcam"])
    assert heading == "d / r across 2 training seeds"
    assert sentences[0].startswith("AOPC on 8 px regions: HiResCAM − Grad-CAM = +0.020 [")
    assert sentences[0].endswith("over 2 seeds (t-interval); HiResCAM significantly better in 2, Grad-CAM in 0, no difference in 0")
