"""Faults a user can hit, each with a clear answer and nothing lost (docs/reliability.md): non-finite
maps, duplicate ids, undeclared labels, configs refused at validation, truncated inputs, shared file
permissions, leftovers of killed writers, reproducible provenance; and, through Snakemake, kill -9 in
the middle of a run followed by --unlock and a rerun that matches an uninterrupted run."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from camfaith import configuration, pipeline
from camfaith.data.index import build_index
from camfaith.evaluation import classification_scores
from camfaith.io import UnreadableInputError, atomic_path
from camfaith.metrics import haas, max_sensitivity
from camfaith.models import ModelSpec, build_model, load_checkpoint, save_checkpoint, weights_sha256
from camfaith.postprocess import PostProcess
from camfaith.store import read_maps, read_parquet, read_table_metadata

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
SCHEMA = ROOT / "config" / "schema.yaml"
PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


# --- non-finite maps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability")
    params = {"model": {"arch": "resnet18", "head": "flatten", "cut_after": "layer1", "plain_last_block": True},
              "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "patience": 1, "seed": 0}, "preprocessing": PREPROCESSING, "device": "cpu"}
    pipeline.train_model(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, params, out / "model.pt",
                         out / "history.parquet", out / "resume.pt")
    return out / "model.pt"


def _score_settings(metric: str) -> dict:
    tiny = yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
    return {k: v for k, v in tiny["metrics"][metric].items() if k not in ("enabled", "skip_methods")}


def test_non_finite_maps_are_flagged_by_explain_and_scored_nan_by_every_metric(tiny_dataset, model_path, tmp_path, monkeypatch, caplog):
    from camfaith.explainers import controls

    original = controls.random

    def broken(*args):  # image 0 all NaN, image 1 one +inf pixel, the rest as the control makes them
        maps = original(*args).clone()
        if args[2].shape[0] > 1:
            maps[0] = float("nan")
            maps[1, 0, 0] = float("inf")
        return maps

    monkeypatch.setattr(controls, "random", broken)
    data = (tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, model_path)
    maps_path = tmp_path / "random.h5"
    pipeline.explain(*data, "random", {"target": "label", "batch_size": 64, "device": "cpu", "seed": 0}, maps_path, {"dataset": "t", "model": "m"})
    monkeypatch.undo()  # the metrics re-explain with the real control
    maps = read_maps(maps_path)
    bad = maps.image_ids[:2]
    assert "not finite" in caplog.text and json.loads(maps.attrs["nonfinite_images"]) == bad

    for metric, quantity in (("aopc", "aopc"), ("max_sensitivity", "max_sensitivity"), ("haas", "correct_ha")):
        out = tmp_path / f"{metric}.parquet"
        pipeline.score(*data, maps_path, metric, {"settings": _score_settings(metric), "protocol": "default", "seed": 0, "device": "cpu"},
                       out, {"dataset": "t", "model": "m"})
        frame = pd.read_parquet(out)
        per_image = frame[frame["quantity"] == quantity]
        undefined = per_image[per_image["image_id"].isin(bad)]
        assert len(undefined) and undefined["value"].isna().all(), metric
        assert np.isfinite(per_image.loc[~per_image["image_id"].isin(bad), "value"]).all(), metric
        metadata = read_table_metadata(out)
        assert metadata["images_nonfinite_map"] == bad
        assert sum(metadata["values_undefined"].values()) == len(undefined)
        if metric == "haas":  # the ratio is over the images that have a map
            ratio = frame.loc[frame["quantity"] == "haas", "value"].item()
            assert np.isfinite(ratio)


def test_max_sensitivity_of_a_non_finite_re_explanation_is_nan_not_inf():
    images = torch.zeros(2, 3, 8, 8)
    raw = torch.rand(2, 4, 4)

    def explain(noisy, targets, seeds):
        maps = torch.rand(len(noisy), 4, 4)
        maps[: len(noisy) // 2] = float("inf")  # the first image's samples
        return maps

    values = max_sensitivity.max_sensitivity(explain, images, raw, torch.zeros(2, dtype=torch.long), ["a", "b"], [0, 0], radius=0.1,
                                             samples=2, post=PostProcess(relu=True, minmax=False, upsample="bilinear"), normalise=False,
                                             seed=0, batch_size=4)
    assert torch.isnan(values[0]) and torch.isfinite(values[1])


def test_haas_range_check_rejects_nan_maps():
    from camfaith.data.images import Preprocessing

    raw = torch.full((1, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="HAAS needs maps in"):
        haas.ha_images(torch.zeros(1, 3, 8, 8), raw, Preprocessing(8), PostProcess(relu=True, minmax=True, upsample="bilinear"))


# --- index: duplicate ids, undeclared labels, missing classes -----------------------------------


def _dataset(root: Path, rows: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path, _ in rows:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / path)
    table = pd.DataFrame({"image": [p for p, _ in rows], "label": [label for _, label in rows], "group": [p for p, _ in rows]})
    table.to_csv(root / "metadata.csv", index=False)
    return root


def test_two_files_with_one_image_id_are_refused_naming_both(tmp_path):
    root = _dataset(tmp_path / "raw", [("x.png", "a"), ("x.jpg", "a"), ("y.png", "b")])
    with pytest.raises(ValueError, match=r"image id\(s\) are shared.*'x': \['x.png', 'x.jpg'\]"):
        build_index(root, "metadata_csv", 0.0)


def test_a_label_outside_the_declared_classes_is_refused_and_an_empty_class_warned(tmp_path, caplog):
    root = _dataset(tmp_path / "raw", [("p.png", "a"), ("q.png", "b"), ("r.png", "typo")])
    with pytest.raises(ValueError, match=r"label outside the declared classes \['a', 'b'\]: \{'typo': 1\}"):
        build_index(root, "metadata_csv", 0.0, ["a", "b"])
    root = _dataset(tmp_path / "raw2", [("p.png", "a"), ("q.png", "b")])
    index, _ = build_index(root, "metadata_csv", 0.0, ["a", "b", "c"])
    assert "['c'] have no image" in caplog.text
    assert index.set_index("label")["label_index"].to_dict() == {"a": 0, "b": 1}


def test_a_class_absent_from_the_test_split_has_undefined_recall_not_zero():
    frame = classification_scores(np.eye(3)[[0, 1, 1, 1]].astype(np.float32), np.array([0, 0, 1, 1]), ["a", "b", "c"])
    recall = frame[frame["metric"] == "recall"].set_index("class_true")["value"]
    assert recall["a"] == 0.5 and recall["b"] == 1.0 and np.isnan(recall["c"])


# --- config: refused when validated, with the key named ----------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["metrics"]["aopc"].update(region_px=[64, 8]), "metrics.aopc.region_px: region size(s) [64] px are not smaller than the 64 px"),
        (lambda c: c["datasets"]["synthetic"]["split"]["fractions"].update(test=0.5), "train + val + test must be 1, got 0.6 + 0.2 + 0.5 = 1.3"),
        (lambda c: c.update(seed=-1), "config seed: -1 is less than the minimum of 0"),
        (lambda c: c["datasets"]["synthetic"]["split"].update(seed=-3), "config datasets.synthetic.split.seed: -3 is less than the minimum of 0"),
        (lambda c: c["models"]["synthetic"].update({"res/net": c["models"]["synthetic"].pop("resnet18")}), "'res/net' does not match"),
        (lambda c: c["models"]["synthetic"]["resnet18"]["model"].update(cut_after="layer9"),
         "models.synthetic.resnet18.model: cut_after for resnet18 must be one of ('layer1', 'layer2', 'layer3', 'layer4'), got 'layer9'"),
        (lambda c: c["models"]["synthetic"]["vgg11"]["model"].update(target_layer="features.99"),
         "models.synthetic.vgg11.model: target layer 'features.99' not found in the model"),
        (lambda c: c["models"]["synthetic"]["vgg11"]["model"].update(head="published", cut_after=None, target_layer=None),
         "models.synthetic.vgg11.model: head: published uses torchvision's weights as published; give weights"),
        (lambda c: c["models"]["synthetic"]["vgg11"]["model"].update(head="published", cut_after=None, target_layer=None,
                                                                       weights="VGG11_Weights.IMAGENET1K_V1"),
         "models.synthetic.vgg11: a model with head: published is not trained; remove its training"),
        (lambda c: c["models"]["synthetic"]["vgg11"].pop("training"),
         "models.synthetic.vgg11: training is required (only a model with head: published has none)"),
    ],
    ids=["region-not-smaller-than-image", "fractions-not-one", "negative-seed", "negative-split-seed", "slash-in-name", "cut-after-missing",
         "target-layer-missing", "published-without-weights", "published-with-training", "training-missing"],
)
def test_config_problems_are_refused_when_validated(edit, message, tmp_path):
    config = copy.deepcopy(DEFAULTS)
    edit(config)
    with pytest.raises(configuration.ConfigError) as error:
        configuration.prepare(config, SCHEMA, tmp_path / "checked.json")
    assert message in str(error.value)


def test_a_config_that_replaces_the_default_plans_without_a_container_key():
    # the container image test runs the tiny config alone (--replace-workflow-config); it names no image
    tiny = yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
    assert "container" not in tiny
    configuration.prepare(tiny, SCHEMA, None)
    assert tiny["container"] == configuration.DEFAULT_CONTAINER == DEFAULTS["container"]


def test_model_check_remembers_good_specs_and_rechecks_changed_ones(tmp_path):
    cache = tmp_path / "checked.json"
    configuration.prepare(copy.deepcopy(DEFAULTS), SCHEMA, cache)
    assert len(set(cache.read_text().split("spec"))) > 1  # one entry per distinct model spec
    config = copy.deepcopy(DEFAULTS)
    config["models"]["synthetic"]["resnet18"]["model"]["target_layer"] = "layer1.5"
    with pytest.raises(configuration.ConfigError, match="layer1.5"):
        configuration.prepare(config, SCHEMA, cache)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text("seed: 0\nexplain:\n  methods: [gradcam\n  target: label\n")
    with pytest.raises(configuration.ConfigError, match=r"study.yaml, line 4, column 9: YAML syntax error"):
        configuration.load_yaml(bad)
    result = subprocess.run([sys.executable, "-m", "camfaith.configuration", "--no-models", str(bad), str(ROOT / "tests" / "tiny_config.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "line 4, column 9" in result.stderr and "tiny_config.yaml: OK" in result.stdout


# --- truncated inputs name the file and the rule ------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_inputs_name_the_file_and_the_rule_that_writes_it(tiny_dataset, model_path, tmp_path):
    results = tmp_path / "results"
    index = results / "index" / "d" / "index.parquet"
    index.parent.mkdir(parents=True)
    index.write_bytes(tiny_dataset.index_path.read_bytes())
    _truncate(index)
    with pytest.raises(UnreadableInputError, match=r"index.parquet is truncated or corrupt .*written by rule index"):
        read_parquet(index)
    maps_path = results / "explain" / "d" / "m" / "random.h5"
    pipeline.explain(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, model_path, "random",
                     {"target": "label", "batch_size": 64, "device": "cpu", "seed": 0}, maps_path, {"dataset": "d", "model": "m"})
    _truncate(maps_path)
    with pytest.raises(UnreadableInputError, match=r"random.h5 is truncated or corrupt .*written by rule explain"):
        read_maps(maps_path)
    model = results / "train" / "d" / "m" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(model_path.read_bytes())
    _truncate(model)
    with pytest.raises(UnreadableInputError, match=r"model.pt is truncated or corrupt .*written by rule train"):
        load_checkpoint(model)


# --- files people share -------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_get_the_umask_s_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / ".table.csv.k3j2h1.part"
    other = tmp_path / ".other.csv.abc.part"
    leftover.write_text("half")
    other.write_text("half")
    with atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("whole\n")
    assert not leftover.exists() and other.exists()  # only that output's own leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.abc.part", "table.csv"]


def test_weights_hash_is_reproducible_where_the_checkpoint_file_hash_is_not(tmp_path):
    from camfaith.io import sha256_file

    torch.manual_seed(0)
    spec = ModelSpec("resnet18", 3, 32, cut_after="layer1")
    model = build_model(spec)
    for name in ("a.pt", "b.pt"):
        save_checkpoint(tmp_path / name, model, spec, ["x", "y", "z"], PREPROCESSING)
    loaded = [load_checkpoint(tmp_path / name)[0] for name in ("a.pt", "b.pt")]
    assert weights_sha256(loaded[0]) == weights_sha256(loaded[1]) == weights_sha256(model)
    assert sha256_file(tmp_path / "a.pt") != sha256_file(tmp_path / "b.pt")  # why the file hash is not recorded
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] += 1e-3
    assert weights_sha256(model) != weights_sha256(loaded[0])


# --- through Snakemake: kill -9, --unlock, rerun; two runs in two folders agree -----------------

TARGETS = ("results/score/default/synthetic/tinyres/gradcam/aopc.parquet",)


@pytest.fixture(scope="module")
def slow_training_config(tmp_path_factory) -> Path:
    """The tiny config with 20 epochs for tinyres (0.1 s each), so a run is still training when the test acts."""
    config = yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
    config["models"]["synthetic"]["tinyres"]["training"].update(epochs=20, patience=20)
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(workdir: Path, config: Path, *args: str) -> list[str]:
    # targets before --configfile, which takes every word after it as a config file
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
            *args, "--configfile", str(config)]


def _run(workdir: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(workdir, config, *args), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _wait_for(condition, process: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"snakemake ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.05)


@pytest.mark.workflow
def test_kill_9_during_training_then_unlock_and_rerun_matches_an_uninterrupted_run(tmp_path, tmp_path_factory, slow_training_config):
    config = slow_training_config
    process = subprocess.Popen(_command(tmp_path, config, *TARGETS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        _wait_for(lambda: locks.is_dir() and any(locks.iterdir()), process, 120, "lock")
        second = _run(tmp_path, config, *TARGETS, check=False)  # a second run in the same folder, at the same time
        assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr
        resume = tmp_path / "results" / "train" / "synthetic" / "tinyres" / "resume.pt"
        _wait_for(resume.exists, process, 300, "epoch checkpoint (resume.pt)")
    finally:
        with contextlib.suppress(ProcessLookupError):  # already ended: the assertion above says why
            os.killpg(process.pid, signal.SIGKILL)  # snakemake and its job, as a kill -9 of the session would
        process.wait()

    locked = _run(tmp_path, config, *TARGETS, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    _run(tmp_path, config, "--unlock", *TARGETS)
    _run(tmp_path, config, *TARGETS)
    assert "resuming from" in (tmp_path / "logs" / "train" / "synthetic" / "tinyres.log").read_text()
    assert not list((tmp_path / "results").rglob("*.part")) and not resume.exists()

    # an uninterrupted run in another folder: the same split, weights, maps and scores
    clean = tmp_path_factory.mktemp("uninterrupted")
    _run(clean, config, *TARGETS)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "results/split/synthetic/split.parquet"),
                                  read_parquet(clean / "results/split/synthetic/split.parquet"))
    ours, theirs = (read_maps(root / "results/explain/synthetic/tinyres/gradcam.h5") for root in (tmp_path, clean))
    assert ours.attrs["weights_sha256"] == theirs.attrs["weights_sha256"]
    np.testing.assert_array_equal(ours.maps, theirs.maps)
    for target in TARGETS:
        ours, theirs = read_parquet(tmp_path / target), read_parquet(clean / target)
        np.testing.assert_array_equal(ours["value"].to_numpy(), theirs["value"].to_numpy())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_check_stops_at_once_without_a_cuda_device():
    result = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "gpu-check: no CUDA device" in result.stderr, result.stdout + result.stderr
    assert "pytest" not in result.stdout  # nothing else ran
