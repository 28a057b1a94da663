"""``protocol: thesis`` reproduces the study's choices exactly: pytorch-grad-cam 1.4's second min-max
after resizing (``postprocess.rescale``), the per-dataset HAAS rounding of ``thesis.yaml``
(``datasets.<name>.metrics``, applied after the protocol's overrides) and float32 (no autocast) in the
explain and score stages."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from camfaith import configuration, postprocess
from camfaith.metrics import METRICS, THESIS, resolve

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
THESIS_YAML = ROOT / "config" / "experiments" / "thesis.yaml"
STUDY_HAAS_DECIMALS = {"crc": 2, "covid": 2, "ham10000": 3, "breakhis": 3}  # shared notes, study-code.md §3


def random_maps(n: int = 6, side: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, side, side)).astype(np.float32))


def thesis_post(metric: str) -> postprocess.PostProcess:
    config = {"postprocess": {"relu": True, "minmax": True, "upsample": "bilinear"}}
    return postprocess.PostProcess.from_config(resolve(metric, config, "thesis")["postprocess"])


def merged(user: Path | None = None) -> dict:
    defaults = configuration.load_yaml(ROOT / "config" / "config.yaml")
    return configuration.merge(defaults, configuration.load_yaml(user) if user else {})


def rules_common(config: dict, uses_gpu: bool) -> dict:
    """The helpers of rules/common.smk (plain Python) with ``config``, ``USES_GPU`` and a one-method plan."""
    namespace = {"config": config, "USES_GPU": uses_gpu}
    exec(compile((ROOT / "rules" / "common.smk").read_text(), "rules/common.smk", "exec"), namespace)
    settings = SimpleNamespace(as_dict=lambda: {})
    namespace["PLAN"] = SimpleNamespace(methods={(d, m): {"gradcam": settings} for d, models in config["models"].items() for m in models},
                                        protocols=configuration.protocols(config["protocol"]))
    return namespace


# ---------- 1. rescale: min-max again after upsampling ----------

def test_rescale_is_off_by_default_and_on_in_every_thesis_metric():
    assert postprocess.PostProcess().rescale is False
    assert postprocess.PostProcess.from_config({"relu": True, "minmax": True, "upsample": "bilinear"}).rescale is False
    assert set(THESIS) == {"aopc", "max_sensitivity", "haas"}  # the study's metrics; it computed no localisation
    for metric in THESIS:
        assert THESIS[metric]["postprocess"]["rescale"] is True
        assert thesis_post(metric) == postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear", rescale=True)
        assert resolve(metric, {"postprocess": {"relu": True, "minmax": True, "upsample": "bilinear"}}, "default")["postprocess"].get("rescale") is None


@pytest.mark.parametrize("metric", list(THESIS))
def test_thesis_maps_span_zero_to_one_at_input_resolution(metric):
    raw = random_maps()
    maps = postprocess.apply(raw, thesis_post(metric), (224, 224))
    assert maps.shape == (6, 224, 224)
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(6), atol=1e-6)
    assert torch.allclose(flat.max(1).values, torch.ones(6), atol=1e-6)
    # without rescale the bilinear upsampling of a 7x7 map misses its peak: the maximum stays below 1
    default = postprocess.apply(raw, postprocess.PostProcess(), (224, 224)).flatten(1).max(1).values
    assert (default < 1 - 1e-3).any()
    assert (default <= 1).all()


def test_rescale_follows_the_upsampling_also_without_a_resize():
    raw = random_maps(side=8) * 3 + 1
    spec = postprocess.PostProcess(relu=False, minmax=False, upsample="none", rescale=True)
    maps = postprocess.apply(raw, spec, (8, 8))
    assert torch.allclose(maps, postprocess.minmax_scale(raw))
    spec = postprocess.PostProcess(relu=True, minmax=True, upsample="nearest", rescale=True)
    expected = postprocess.minmax_scale(postprocess.upsample(postprocess.minmax_scale(raw.clamp(min=0)), (32, 32), "nearest"))
    assert torch.equal(postprocess.apply(raw, spec, (32, 32)), expected)


@pytest.mark.parametrize("side", [7, 14])
def test_thesis_maps_are_pytorch_grad_cams_scale_cam_image_applied_twice(side):
    """pytorch-grad-cam (1.4.6/1.4.8, as the study ran, and the 1.5.7 installed here, whose steps for
    2-D maps are the same): ``compute_cam_per_layer`` does ReLU then ``scale_cam_image(cam, size)``
    (min-max, cv2.resize), ``aggregate_multi_layers`` ReLU, the mean over one layer and
    ``scale_cam_image(result)`` (min-max)."""
    pytest.importorskip("cv2")
    image = pytest.importorskip("pytorch_grad_cam.utils.image")
    raw = random_maps(side=side, seed=side)
    theirs = image.scale_cam_image(np.maximum(image.scale_cam_image(np.maximum(raw.numpy(), 0), (224, 224)), 0))
    ours = postprocess.apply(raw, thesis_post("max_sensitivity"), (224, 224)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.parametrize("name", ["gradcam", "hirescam"])
def test_thesis_maps_equal_pytorch_grad_cams_output(name):
    """End to end: our raw Grad-CAM/HiResCAM map with the thesis post-processing is the library's
    output for the same model, layer and target (class calls as in the study's notebooks)."""
    pytest.importorskip("cv2")
    library = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from test_explainers import random_model

    from camfaith import explainers

    model, layer = random_model("resnet18", frozen=False, cut_after="layer2", plain_last_block=True)  # the library needs gradients
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    cls = {"gradcam": library.GradCAM, "hirescam": library.HiResCAM}[name]
    with cls(model=model, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    explainer = explainers.get(name)
    raw = explainer.explain(model, layer, images, targets, explainer.make_settings({}), [0, 1, 2])
    assert raw.shape[-2:] != (32, 32)  # raw, at the layer: the resize is part of what is compared
    ours = postprocess.apply(raw, thesis_post("haas"), (32, 32)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5


def test_the_schema_takes_postprocess_rescale_in_every_metric():
    schema = configuration.load_schema(SCHEMA)
    config = merged()
    for metric in METRICS:
        config["metrics"][metric]["postprocess"]["rescale"] = True
    configuration.validate_schema(config, schema)
    config["metrics"]["haas"]["postprocess"]["rescale"] = "yes"
    with pytest.raises(configuration.ConfigError, match=r"metrics\.haas\.postprocess\.rescale"):
        configuration.validate_schema(config, schema)


# ---------- 2. per-dataset metric settings: datasets.<name>.metrics.<metric> ----------

def test_overrides_win_over_config_and_thesis():
    config = {"images": "all", "accuracy": "plain", "round_decimals": None, "batch_size": 8}
    before = copy.deepcopy(config)
    assert resolve("haas", config, "default", None) == resolve("haas", config, "default") == config
    assert resolve("haas", config, "default", {})["round_decimals"] is None
    assert resolve("haas", config, "default", {"round_decimals": 3})["round_decimals"] == 3
    thesis = resolve("haas", config, "thesis", {"round_decimals": 3, "batch_size": 2})
    assert (thesis["round_decimals"], thesis["batch_size"], thesis["accuracy"]) == (3, 2, "plain")
    assert resolve("haas", config, "thesis")["round_decimals"] == THESIS["haas"]["round_decimals"] == 2
    # a dict value is replaced as a whole, as THESIS replaces postprocess
    post = {"relu": True, "minmax": True, "upsample": "nearest"}
    assert resolve("aopc", {"postprocess": {}}, "thesis", {"postprocess": post})["postprocess"] == post
    overrides = {"postprocess": post}
    resolve("aopc", config, "thesis", overrides)["postprocess"]["relu"] = False
    assert overrides["postprocess"]["relu"] is True and config == before
    assert THESIS["aopc"]["postprocess"]["relu"] is True


def test_thesis_yaml_resolves_the_studys_haas_decimals_per_dataset():
    config = merged(THESIS_YAML)
    configuration.validate_schema(config, configuration.load_schema(SCHEMA))
    assert set(config["datasets"]) == set(STUDY_HAAS_DECIMALS)
    common = rules_common(config, uses_gpu=False)
    for dataset, decimals in STUDY_HAAS_DECIMALS.items():
        overrides = config["datasets"][dataset]["metrics"]["haas"]
        haas = {k: v for k, v in config["metrics"]["haas"].items() if k not in ("enabled", "skip_methods")}
        assert resolve("haas", haas, "thesis", overrides)["round_decimals"] == decimals, dataset
        # as the score rule passes it (rules/common.smk score_params) and pipeline.score resolves it
        model = next(iter(config["models"][dataset]))
        params = common["score_params"](SimpleNamespace(protocol="thesis", dataset=dataset, model=model, method="gradcam", metric="haas"))
        assert params["overrides"] == {"round_decimals": decimals}
        assert resolve("haas", params["settings"], params["protocol"], params.get("overrides"))["round_decimals"] == decimals
        other = common["score_params"](SimpleNamespace(protocol="thesis", dataset=dataset, model=model, method="gradcam", metric="aopc"))
        assert "overrides" not in other  # a metric without per-dataset settings keeps its params (no re-run)


def test_the_schema_takes_typed_per_dataset_metric_settings():
    schema = configuration.load_schema(SCHEMA)
    config = merged()
    dataset = next(iter(config["datasets"]))
    post = {"relu": True, "minmax": True, "upsample": "bilinear", "rescale": True}
    config["datasets"][dataset]["metrics"] = {"haas": {"round_decimals": 3, "amp": False}, "aopc": {"zero_pad": True, "postprocess": post},
                                              "max_sensitivity": {"radii": [{"radius": 0.1, "samples": 2}], "normalise": False}}
    configuration.validate_schema(copy.deepcopy(config), schema)
    for bad, where in [({"haas": {"round_decimals": "2"}}, "round_decimals"), ({"haas": {"round_decimal": 2}}, "round_decimal"),
                       ({"haas": {"enabled": False}}, "enabled"), ({"aopc": {"region_px": [8]}}, "region_px"),
                       ({"gradcam": {}}, "gradcam"), ({"aopc": {"postprocess": {"relu": True}}}, "postprocess")]:
        broken = copy.deepcopy(config)
        broken["datasets"][dataset]["metrics"] = bad
        with pytest.raises(configuration.ConfigError, match=where):
            configuration.validate_schema(broken, schema)


# ---------- 3. float32: no autocast under the thesis protocol ----------

def test_thesis_turns_mixed_precision_off_in_every_metric_and_default_keeps_it():
    for metric in THESIS:
        assert THESIS[metric]["amp"] is False
        assert resolve(metric, {"amp": True}, "thesis")["amp"] is False
        assert resolve(metric, {}, "default").get("amp", True) is True
        assert resolve(metric, {"amp": True}, "default")["amp"] is True


def test_explain_params_turn_autocast_off_under_thesis_where_it_would_apply():
    config = merged(THESIS_YAML)
    config["explain"]["amp"] = True
    wildcards = SimpleNamespace(dataset="crc", model="resnet34", method="gradcam")
    assert rules_common(config, uses_gpu=True)["explain_params"](wildcards)["amp"] is False
    # without CUDA, autocast never applies: the param is left as configured, so switching the
    # protocol on a CPU machine re-runs no maps (they would be the same)
    assert rules_common(config, uses_gpu=False)["explain_params"](wildcards)["amp"] is True
    default = merged()
    default["protocol"] = "default"
    dataset, models = next(iter(default["models"].items()))
    wildcards = SimpleNamespace(dataset=dataset, model=next(iter(models)), method="gradcam")
    assert rules_common(default, uses_gpu=True)["explain_params"](wildcards).get("amp", True) is True
    # both protocols share the maps: the thesis protocol's float32 holds for the run
    default["protocol"] = ["default", "thesis"]
    assert rules_common(default, uses_gpu=True)["explain_params"](wildcards)["amp"] is False
