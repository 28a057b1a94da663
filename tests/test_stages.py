"""Every metric on every method, through the stage functions the rules call (in one process, so the
whole registry fits the test budget; tests/test_workflow.py runs a subset through Snakemake)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from camfaith import explainers, pipeline, postprocess
from camfaith.metrics import REGISTRY, SCORE_COLUMNS, max_sensitivity, registry
from camfaith.metrics.common import MAP_STATES
from camfaith.store import read_maps, read_table_metadata

TINY = yaml.safe_load(Path(__file__).with_name("tiny_config.yaml").read_text())
PREPROCESSING = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
MODELS = {
    "flat": {"arch": "resnet18", "head": "flatten", "cut_after": "layer1", "plain_last_block": True},
    "gap": {"arch": "resnet18", "head": "gap", "cut_after": "layer1", "plain_last_block": True},
}
# Small settings so that every method runs in seconds; the rest are the registry's defaults.
SMALL = {"scorecam": {"batch_size": 32}, "integrated_gradients": {"steps": 4, "internal_batch_size": 16},
         "gradient_shap": {"samples": 3}, "occlusion": {"window": 8, "stride": 8, "batch_size": 16}}


DEFAULTS = yaml.safe_load(Path(__file__).parents[1].joinpath("config", "config.yaml").read_text())


def _metric_settings(metric: str) -> dict:
    """The tiny config's settings of ``metric`` over the default config's (the tiny config only switches
    some localisation metrics off, which the stage functions do not read)."""
    settings = {**DEFAULTS["metrics"][metric], **TINY["metrics"].get(metric, {})}
    return {key: value for key, value in settings.items() if key not in ("enabled", "skip_methods")}


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    for name, model in MODELS.items():
        params = {"model": model, "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "patience": 1, "seed": 0},
                  "preprocessing": PREPROCESSING, "device": "cpu"}
        pipeline.train_model(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, params, out / name / "model.pt",
                             out / name / "history.parquet", out / name / "resume.pt")
    return out


def _rows_are_the_registrys(frame: pd.DataFrame, metric: str) -> None:
    """The rows a runner writes are the ones its registry entry declares (its quantity, its dataset-level
    quantity, its extra quantities and the degenerate-map counts), and its quantity is among them."""
    entry = REGISTRY[metric]
    declared = {entry.quantity, entry.dataset_quantity, *entry.extra_quantities, *MAP_STATES} - {None}
    written = set(frame["quantity"])
    assert entry.quantity in written, metric
    assert written <= declared, (metric, sorted(written - declared))


def _cases():
    for method in explainers.names():
        yield pytest.param("gap" if method == "cam" else "flat", method, id=method)


@pytest.mark.parametrize(("model", "method"), list(_cases()))
def test_every_metric_runs_on_every_method(tiny_dataset, trained, model, method):
    data = (tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, trained / model / "model.pt")
    identity = {"dataset": "tiny", "model": model}
    maps_path = trained / model / f"{method}.h5"
    explain_params = {"target": "label", "batch_size": 5, "device": "cpu", "seed": 3, "settings": SMALL.get(method, {})}
    pipeline.explain(*data, method, explain_params, maps_path, identity)

    explainer = explainers.get(method)
    maps = read_maps(maps_path)
    n = len(maps.image_ids)
    assert maps.attrs["format"] == "camfaith.maps/2" and maps.attrs["resolution"] == explainer.resolution
    assert json.loads(maps.attrs["settings"]) == explainer.make_settings(SMALL.get(method, {})).as_dict()
    assert ("layer" in maps.attrs) == (explainer.layer is not None)
    assert ("seed" in maps.attrs) == explainer.stochastic
    expected_shape = (8, 8) if explainer.resolution == "layer" else (32, 32)
    assert maps.maps.shape == (n, *expected_shape) and np.isfinite(maps.maps).all()

    for metric in registry.names(forward=False):
        out = trained / model / method / f"{metric}.parquet"
        params = {"settings": _metric_settings(metric), "protocol": "default", "seed": 0, "ground_truth": "mask"}
        pipeline.score_ground_truth(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, {method: maps_path}, metric,
                                    params, out, identity)
        frame = pd.read_parquet(out)
        assert list(frame.columns) == list(SCORE_COLUMNS) and (frame["method"] == method).all()
        _rows_are_the_registrys(frame, metric)
        per_image = frame[frame["quantity"] == REGISTRY[metric].quantity]
        settings = _metric_settings(metric)
        parameters = len(settings.get("tolerance_px", settings.get("thresholds", settings.get("top_k", [None]))))
        assert len(per_image) == n * parameters, metric
        values = per_image["value"].to_numpy()
        finite = values[np.isfinite(values)]
        assert ((finite >= 0) & (finite <= 1)).all(), (metric, values)
        # undefined only where the map has nothing to measure (all zero after ReLU), never for a real map
        zero = postprocess.apply(torch.from_numpy(maps.maps), postprocess.PostProcess.from_config(settings["postprocess"]), (32, 32))
        nothing = (zero.flatten(1).amax(dim=1) <= 0).numpy()
        nothing_of = dict(zip(maps.image_ids, nothing))
        assert all(nothing_of[image] for image in per_image.loc[np.isnan(values), "image_id"]), metric
        assert read_table_metadata(out)["methods"][method]["images_selected"] == n

    for metric in registry.names(forward=True):
        out = trained / model / method / f"{metric}.parquet"
        params = {"settings": _metric_settings(metric), "protocol": "default", "seed": 0, "device": "cpu"}
        pipeline.score(*data, maps_path, metric, params, out, identity)
        frame = pd.read_parquet(out)
        assert list(frame.columns) == list(SCORE_COLUMNS)
        assert (frame["method"] == method).all()
        _rows_are_the_registrys(frame, metric)
        metadata = read_table_metadata(out)
        assert metadata["resolution"] == explainer.resolution and metadata["explainer_settings"] == json.loads(maps.attrs["settings"])
        per_image = frame[frame["quantity"] == REGISTRY[metric].quantity]
        parameters = {"aopc": len(TINY["metrics"]["aopc"]["region_px"]), "max_sensitivity": len(TINY["metrics"]["max_sensitivity"]["radii"]),
                      "haas": 1}[metric]
        assert len(per_image) == n * parameters  # images: all in the tiny config
        values = per_image["value"].to_numpy()
        if metric != "max_sensitivity":
            assert np.isfinite(values).all(), (metric, values)
            continue
        # floored normalisation (the default ε): never NaN, at most 1 + 1/ε, and an image whose post-processed
        # reference map is all zero is either unchanged by the noise (0) or flagged as floored
        assert np.isfinite(values).all() and (values <= 1 + 1 / max_sensitivity.DEFAULT_FLOOR + 1e-5).all(), method
        post = postprocess.PostProcess.from_config(TINY["metrics"]["max_sensitivity"]["postprocess"])
        reference = postprocess.apply(torch.from_numpy(maps.maps), post, (32, 32)).flatten(1).norm(dim=1).numpy()
        zero = per_image["image_id"].map(dict(zip(maps.image_ids, reference == 0))).to_numpy(dtype=bool)
        floored = frame[frame["quantity"] == "reference_floored"]["value"].to_numpy() > 0
        assert ((values[zero] == 0) | floored[zero]).all(), method
        if method in ("random", "centre"):
            assert (values == 0).all()  # the controls' maps never move: a "perfect" score, a finding about the metric


def test_maps_files_of_an_older_format_are_refused_with_the_way_out(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "camfaith.maps/1"
    with pytest.raises(ValueError, match=r"camfaith\.maps/2, found 'camfaith\.maps/1' \(written by an older camfaith: re-run its explain job"):
        read_maps(path)
