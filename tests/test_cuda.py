"""The CUDA code paths, on a GPU: skipped without one. ``make gpu-check`` runs this file on a lent GPU
machine (docs/gpu-check.md); on a CPU-only machine every test here reports "no CUDA device".

- every applicable explainer of the registry gives the same maps on the CPU and on CUDA (float32);
- AOPC, Max-Sensitivity and HAAS run on CUDA with their device-side noise generators, give finite
  values of the right shape, and repeat exactly with the same seed;
- a mixed-precision training run (GradScaler, pinned memory, non-blocking copies) on CUDA, its
  epoch checkpoint, a resume from it, and the trained model reloaded on the CPU;
- the explain and score stages under autocast (the pipeline's ``amp`` path) against float32.

Every test runs with TF32 off (cuBLAS matmuls and cuDNN convolutions), so "float32" means IEEE
float32 on both devices, and with deterministic cuDNN algorithms, so repeated calls can be compared
exactly; torch's global flags are put back after each test.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from functools import cache

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from camfaith import explainers, pipeline, postprocess
from camfaith.data.images import ImageTable, Preprocessing, select_split
from camfaith.explainers import ModelFacts, cam_family
from camfaith.explainers.runtime import image_seeds, layer_for
from camfaith.metrics import aopc, common, haas, max_sensitivity
from camfaith.models import ModelSpec, build_model, load_checkpoint, resolve_layer, safe_load, save_checkpoint
from camfaith.store import read_maps
from camfaith.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICE = torch.device("cuda")
CPU = torch.device("cpu")
# cuBLAS is deterministic only with a fixed workspace; read when its first handle is made (in a test).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# --- tolerances -----------------------------------------------------------------------------------
# CPU against CUDA, both IEEE float32: on the models below, float32 maps differ from float64 ones (on
# the CPU) by at most 7e-5 of the map's largest |value| (XGrad-CAM, whose weights divide by a sum of
# signed activations; every other method 1.4e-5 or less, most 1e-6). CUDA's kernels add in another
# order, which is rounding of the same size: 1e-3 leaves more than ten times that.
FLOAT32_TOLERANCE = 1e-3
# Target-class probabilities and emphasised (HA) inputs, CPU against CUDA in float32: absolute; the
# differences are rounding of values of order 1 (about 1e-6).
FLOAT32_ATOL = 1e-4
# Mixed precision (float16 forwards under autocast) against float32. Estimated before any GPU run with
# the CPU's float16 autocast: on the pipeline model below (ResNet18 cut after layer1) trained one epoch
# on the tiny dataset, maps within 2.2e-3 of their largest |value|, logits within 4e-4 of the largest
# |logit|, AOPC probabilities within 4e-5, normalised Max-Sensitivity within 3.9e-3 (Grad-CAM++; radii
# 0.1 and 0.3); with three random initialisations, maps within 2.5e-3 and logits within 1.9e-3. CUDA's
# float16 kernels round alike but add in another order: allowed, about ten times those (probabilities
# a hundred, as a sharper softmax turns the same logit error into a larger probability error).
AMP_MAP_TOLERANCE = 2e-2
AMP_LOGIT_TOLERANCE = 2e-2
AMP_PROBABILITY_ATOL = 5e-3
AMP_SENSITIVITY_ATOL = 3e-2
# XGrad-CAM weighs channel f by Σ G·A / (Σ A + 1e-7) with A the signed output of the target conv: where
# Σ A nearly cancels, float16's rounding of A moves the weight far. Estimated under float16 autocast:
# 0.09 (the trained model) to 0.57 (random ones) of the map's largest |value|, correlation with the
# float32 map 0.974 or more; its Max-Sensitivity moves by tens (its float32 values are themselves about
# 2 to 9 at these radii). A property of the method in half precision, not a CUDA fault: for it only the
# maps' correlation is checked, and of its Max-Sensitivity only where it is NaN or infinite.
AMP_ILL_CONDITIONED = {"xgradcam"}
AMP_ILL_CONDITIONED_MIN_CORRELATION = 0.9

# --- models and inputs ------------------------------------------------------------------------------
SIZE = 32
# Random weights (seed 0); 32 px, so every method's CPU reference takes milliseconds. CAM needs the GAP head.
MODELS = {
    "resnet18-flatten": ModelSpec("resnet18", 3, SIZE, cut_after="layer2", plain_last_block=True),
    "vgg11-flatten": ModelSpec("vgg11", 3, SIZE, cut_after="10"),
    "resnet18-gap": ModelSpec("resnet18", 3, SIZE, head="gap", cut_after="layer2", plain_last_block=True),
}
# Small settings (the registry's defaults otherwise), as in tests/test_stages.py.
SMALL = {"scorecam": {"batch_size": 32}, "integrated_gradients": {"steps": 8, "internal_batch_size": 16},
         "gradient_shap": {"samples": 4}, "occlusion": {"window": 8, "stride": 4, "batch_size": 16}}
REGION_PX = 8  # AOPC on 32 px: a 4 x 4 grid, 17 steps


@contextlib.contextmanager
def torch_flags_restored() -> Iterator[None]:
    """Put back torch's global precision and determinism flags on exit (train() changes some)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


@pytest.fixture(autouse=True)
def ieee_float32():
    """TF32 off for cuBLAS matmuls (PyTorch's default) and for cuDNN convolutions (on by default: it
    rounds their inputs to 10 mantissa bits, about 1e-3 relative, the size of FLOAT32_TOLERANCE);
    deterministic cuDNN algorithms, so a repeated call gives the same bits."""
    with torch_flags_restored():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield


@cache
def cpu_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(MODELS[name])
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # as in explain and score jobs
    return model


@cache
def cuda_model(name: str) -> nn.Module:
    return copy.deepcopy(cpu_model(name)).to(DEVICE)


def inputs(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [n, 3, 32, 32], targets [n])`` on the CPU."""
    images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return images, torch.arange(n) % 3


def normalised_error(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per map: max |other − reference| / max |reference| (the plain max difference for an all-zero reference)."""
    reference, other = reference.double().cpu().flatten(1), other.double().cpu().flatten(1)
    scale = reference.abs().amax(dim=1)
    return (other - reference).abs().amax(dim=1) / torch.where(scale > 0, scale, 1.0)


def correlation(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per map: Pearson correlation of the values."""
    a, b = reference.double().cpu().flatten(1), other.double().cpu().flatten(1)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def _explainer_cases():
    for model_name, spec in MODELS.items():
        facts = ModelFacts(spec.arch, spec.head, spec.input_size)
        for method, explainer in explainers.REGISTRY.items():
            if explainer.why_not(facts, explainer.make_settings(SMALL.get(method))) is None:
                yield pytest.param(model_name, method, id=f"{model_name}-{method}")


# --- explainers: CPU against CUDA ---------------------------------------------------------------------

@pytest.mark.parametrize(("model_name", "method"), list(_explainer_cases()))
def test_explainer_gives_the_cpu_maps_on_cuda(model_name, method):
    explainer = explainers.get(method)
    settings = explainer.make_settings(SMALL.get(method))
    images, targets = inputs()
    seeds = [101, 102, 103, 104]
    cpu, gpu = cpu_model(model_name), cuda_model(model_name)
    reference = explainer.explain(cpu, layer_for(explainer, cpu, None)[1], images, targets, settings, seeds)
    gpu_layer = layer_for(explainer, gpu, None)[1]
    x, t = images.to(DEVICE), targets.to(DEVICE)
    maps = explainer.explain(gpu, gpu_layer, x, t, settings, seeds)
    assert maps.device.type == DEVICE.type and maps.dtype == torch.float32 and maps.shape == reference.shape
    assert torch.isfinite(maps).all()
    if explainer.stochastic:
        # CUDA's generators draw other numbers than the CPU's from the same seed, so the maps differ
        # by design; the same seeds on CUDA must give the same maps, other seeds other maps.
        assert torch.equal(explainer.explain(gpu, gpu_layer, x, t, settings, seeds), maps)
        assert not torch.equal(explainer.explain(gpu, gpu_layer, x, t, settings, [s + 1 for s in seeds]), maps)
        return
    error = normalised_error(reference, maps)
    assert error.max() <= FLOAT32_TOLERANCE, f"{method} on {model_name}: CUDA maps differ from the CPU's by {error.tolist()} of their max"


# --- metrics on CUDA ------------------------------------------------------------------------------------

def test_aopc_runs_on_cuda_with_device_side_noise():
    cpu, model = cpu_model("resnet18-flatten"), cuda_model("resnet18-flatten")
    images, targets = inputs()
    x, t = images.to(DEVICE), targets.to(DEVICE)
    _, layer = resolve_layer(model, None)
    raw = cam_family.compute(model, layer, x, t, ["hirescam"])["hirescam"]
    saliency = aopc.saliency_for(raw, postprocess.PostProcess(), (SIZE, SIZE))
    ids = [f"image{i}" for i in range(len(x))]
    with torch.no_grad():
        clean = cpu(images).softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
    rows, cols = aopc.grid_shape(SIZE, SIZE, REGION_PX)
    order = aopc.region_order(aopc.region_means(saliency, REGION_PX, False))
    for noise in aopc.NOISE_MODES:
        fill = aopc.noise_fill(x[0], order[0], REGION_PX, noise, 0, ids[0])
        assert fill.device.type == DEVICE.type and fill.shape == x[0].shape
        assert x[0].min() - 1e-5 <= fill.min() and fill.max() <= x[0].max() + 1e-5  # U[min x, max x], up to rounding

        def curves_for(seed: int, amp: bool = False, noise: str = noise) -> torch.Tensor:
            return aopc.morf_curves(model, x, saliency, t, ids, REGION_PX, False, noise, seed, 16, amp=amp)

        curves = curves_for(0)
        assert curves.device.type == DEVICE.type and curves.dtype == torch.float32 and curves.shape == (len(x), rows * cols + 1)
        assert torch.isfinite(curves).all() and (curves >= 0).all() and (curves <= 1).all()
        assert torch.equal(curves_for(0), curves), f"AOPC ({noise}) on CUDA: the same seed gave other curves"
        other = curves_for(1)
        assert torch.equal(other[:, 0], curves[:, 0]) and not torch.equal(other[:, 1:], curves[:, 1:])
        torch.testing.assert_close(curves[:, 0].cpu(), clean, rtol=0, atol=FLOAT32_ATOL)  # step 0 is the clean image
        values = aopc.aopc_from_curves(curves)
        assert values.shape == (len(x),) and torch.isfinite(values).all()
        mixed = curves_for(0, amp=True)
        assert torch.isfinite(mixed).all() and (mixed - curves).abs().max() <= AMP_PROBABILITY_ATOL


def _explain_fn(explainer, model, layer, settings):
    def explain(noisy: torch.Tensor, targets: torch.Tensor, seeds) -> torch.Tensor:
        return explainer.explain(model, layer, noisy, targets, settings, seeds)

    return explain


def test_max_sensitivity_runs_on_cuda_with_device_side_noise():
    model = cuda_model("resnet18-flatten")
    images, targets = inputs()
    x, t = images.to(DEVICE), targets.to(DEVICE)
    ids = [f"image{i}" for i in range(len(x))]
    seeds = image_seeds(0, ids)
    noise = max_sensitivity.noise_sample(x.shape[1:], ids[0], 0.2, 0, 0, DEVICE)
    assert noise.device.type == DEVICE.type and noise.abs().max() <= 0.2 + 1e-6
    post = postprocess.PostProcess(relu=True, minmax=False, upsample="bilinear")
    zeros = torch.zeros(1, 3, 1, 1, device=DEVICE)
    preprocessing = Preprocessing(SIZE)
    for method in ("hirescam", "random"):
        explainer = explainers.get(method)
        explain = _explain_fn(explainer, model, layer_for(explainer, model, None)[1], explainer.make_settings(None))
        raw = explain(x, t, seeds)
        for clip_range in (None, (preprocessing.from_unit(zeros), preprocessing.from_unit(zeros + 1))):
            # 4 images x 3 samples in forward batches of 5: a short last batch
            def run(explain=explain, raw=raw, clip_range=clip_range) -> torch.Tensor:
                return max_sensitivity.max_sensitivity(explain, x, raw, t, ids, seeds, radius=0.2, samples=3, post=post, normalise=False,
                                                       clip_range=clip_range, seed=0, batch_size=5)

            values = run()
            assert values.device.type == DEVICE.type and values.shape == (len(x),)
            assert torch.isfinite(values).all() and (values >= 0).all()
            assert torch.equal(run(), values), f"Max-Sensitivity of {method} on CUDA: the same seed gave other values"
            if method == "random":
                assert (values == 0).all()  # a noisy copy keeps its image's seed, so the control's map cannot move
            else:
                assert (values > 0).any()


def test_haas_runs_on_cuda():
    model = cuda_model("resnet18-flatten")
    images, targets = inputs(8)
    x, t = images.to(DEVICE), targets.to(DEVICE)
    _, layer = resolve_layer(model, None)
    raw = cam_family.compute(model, layer, x, t, ["hirescam"])["hirescam"]
    preprocessing, post = Preprocessing(SIZE), postprocess.PostProcess()
    emphasised = haas.ha_images(x, raw, preprocessing, post)
    assert emphasised.device.type == DEVICE.type and emphasised.shape == x.shape and torch.isfinite(emphasised).all()
    torch.testing.assert_close(emphasised.cpu(), haas.ha_images(images, raw.cpu(), preprocessing, post), rtol=0, atol=FLOAT32_ATOL)
    original = common.predict_classes(model, x, 3, amp=False)
    predicted = common.predict_classes(model, emphasised, 3, amp=False)
    assert predicted.device.type == DEVICE.type and predicted.shape == (len(x),)
    assert torch.equal(common.predict_classes(model, emphasised, 3, amp=False), predicted)
    value, accuracy, accuracy_ha = haas.haas(original.cpu().numpy(), original.cpu().numpy(), predicted.cpu().numpy(), "plain", None)
    assert accuracy == 1.0 and 0 <= accuracy_ha <= 1 and np.isfinite(value) and value == accuracy_ha
    mixed = common.predict_classes(model, emphasised, 3, amp=True)
    assert mixed.shape == (len(x),) and ((mixed >= 0) & (mixed < 3)).all()


# --- training with mixed precision --------------------------------------------------------------------

PREPROCESSING = {"image_size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PIPELINE_MODELS = {  # as tests/test_stages.py; CAM needs the GAP head
    "flat": {"arch": "resnet18", "head": "flatten", "cut_after": "layer1", "plain_last_block": True},
    "gap": {"arch": "resnet18", "head": "gap", "cut_after": "layer1", "plain_last_block": True},
}


def test_amp_training_on_cuda_checkpoints_resumes_and_reloads_on_the_cpu(tiny_dataset, tmp_path):
    classes = tiny_dataset.classes
    spec = ModelSpec.from_config(PIPELINE_MODELS["flat"], len(classes), SIZE)
    preprocessing = Preprocessing.from_config(PREPROCESSING)
    tables = {name: ImageTable(tiny_dataset.root, select_split(tiny_dataset.index, tiny_dataset.splits, name), preprocessing)
              for name in ("train", "val")}
    values = {"epochs": 3, "batch_size": 16, "lr": 1e-3, "patience": None, "seed": 0, "amp": True, "augment": {"hflip": 0.5}}
    resume = tmp_path / "resume.pt"
    torch.manual_seed(0)
    model = build_model(spec)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    with torch_flags_restored():
        best, history = train(model, tables["train"], tables["val"], TrainConfig.from_config(values), resume, DEVICE, "cuda-amp", len(classes))
    assert next(model.parameters()).device.type == DEVICE.type
    assert len(history) == 3
    assert np.isfinite(history[["train_loss", "val_loss", "val_balanced_accuracy"]].to_numpy()).all(), history
    assert all(value.device.type == "cpu" for value in best.values())
    changed = [key for key, value in initial.items() if value.is_floating_point() and not torch.equal(value, best[key])]
    assert changed, "no weight changed: every optimizer step was skipped (the GradScaler found inf/NaN gradients each time)"

    state = safe_load(resume)
    scaler = state["scaler"]
    assert scaler, "the epoch checkpoint has no GradScaler state: mixed precision was not enabled on CUDA"
    assert np.isfinite(scaler["scale"]) and 0 < scaler["scale"] <= 2.0**16  # starts at 2**16, halves on each skipped step

    with torch_flags_restored():  # a fourth epoch resumes from the checkpoint, its scaler state included
        torch.manual_seed(0)
        resumed, longer = train(build_model(spec), tables["train"], tables["val"], TrainConfig.from_config({**values, "epochs": 4}), resume,
                                DEVICE, "cuda-amp", len(classes))
    assert len(longer) == 4 and np.isfinite(longer["train_loss"]).all()
    pd.testing.assert_frame_equal(longer.iloc[:3], history)

    model.load_state_dict(best)
    images = torch.stack([tables["val"][i][0] for i in range(len(tables["val"]))])
    with torch.no_grad():
        on_cuda = model.eval()(images.to(DEVICE)).cpu()
    path = tmp_path / "model.pt"
    save_checkpoint(path, copy.deepcopy(model).cpu(), spec, classes, PREPROCESSING)
    reloaded, reloaded_spec, reloaded_classes, _ = load_checkpoint(path, CPU)
    assert reloaded_spec == spec and reloaded_classes == classes
    assert all(value.device.type == "cpu" for value in reloaded.state_dict().values())
    with torch.no_grad():
        on_cpu = reloaded(images)
    assert torch.isfinite(on_cpu).all()
    assert normalised_error(on_cpu, on_cuda).max() <= FLOAT32_TOLERANCE


# --- the explain and score stages under autocast ----------------------------------------------------------

METRIC_SETTINGS = {  # tests/tiny_config.yaml's metrics
    "aopc": {"region_px": [16, 8], "noise": "per_step", "images": "all", "zero_pad": False, "round_decimals": None,
             "postprocess": {"relu": True, "minmax": True, "upsample": "bilinear"}, "batch_size": 64, "images_per_block": 8,
             "memory_format": "channels_last"},
    "max_sensitivity": {"radii": [{"radius": 0.1, "samples": 2}, {"radius": 0.3, "samples": 2}], "images": "all", "normalise": True,
                        "clip": False, "postprocess": {"relu": True, "minmax": False, "upsample": "bilinear"}, "batch_size": 32,
                        "images_per_block": 8},
    "haas": {"images": "all", "accuracy": "plain", "round_decimals": None, "postprocess": {"relu": True, "minmax": True, "upsample": "bilinear"},
             "batch_size": 64, "images_per_block": 16},
}
# The methods whose forwards may use autocast, and Integrated Gradients, which must never (its maps under
# amp: true must be the float32 ones exactly).
AMP_METHODS = [name for name, explainer in explainers.REGISTRY.items() if explainer.amp] + ["integrated_gradients"]


@pytest.fixture(scope="module")
def cuda_trained(tiny_dataset, tmp_path_factory):
    """The train stage on CUDA (mixed precision by default): one epoch of each pipeline model."""
    out = tmp_path_factory.mktemp("cuda_stages")
    for name, model in PIPELINE_MODELS.items():
        params = {"model": model, "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "patience": 1, "seed": 0},
                  "preprocessing": PREPROCESSING, "device": "cuda"}
        with torch_flags_restored():
            pipeline.train_model(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, params, out / name / "model.pt",
                                 out / name / "history.parquet", out / name / "resume.pt")
        assert not (out / name / "resume.pt").exists()
    return out


def _per_image(frame: pd.DataFrame, quantity: str) -> pd.DataFrame:
    rows = frame[frame["quantity"] == quantity]
    return rows.sort_values(["image_id", "parameter_value", "step"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("method", AMP_METHODS)
def test_explain_and_score_stages_under_autocast_match_float32(tiny_dataset, cuda_trained, method):
    explainer = explainers.get(method)
    model = "gap" if method == "cam" else "flat"
    data = (tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, cuda_trained / model / "model.pt")
    identity = {"dataset": "tiny", "model": model}
    maps = {}
    for amp in (True, False):
        params = {"target": "label", "batch_size": 5, "device": "cuda", "seed": 3, "settings": SMALL.get(method, {}), "amp": amp,
                  "memory_format": "channels_last"}
        path = cuda_trained / model / f"{method}-amp{int(amp)}.h5"
        pipeline.explain(*data, method, params, path, identity)
        maps[amp] = read_maps(path)
        assert str(maps[amp].attrs["device"]).startswith("cuda")
        assert np.isfinite(maps[amp].maps).all() and np.isfinite(maps[amp].logits).all()
    mixed, single = (torch.from_numpy(maps[amp].maps) for amp in (True, False))
    logit_error = np.abs(maps[True].logits - maps[False].logits).max() / np.abs(maps[False].logits).max()
    assert logit_error <= AMP_LOGIT_TOLERANCE, f"logits under autocast differ from float32 by {logit_error:.3g} of the largest"
    if not explainer.amp or explainer.is_control:
        assert torch.equal(mixed, single), f"{method}: maps must not depend on amp (no autocast for it, or no model)"
    elif method in AMP_ILL_CONDITIONED:
        assert correlation(single, mixed).min() >= AMP_ILL_CONDITIONED_MIN_CORRELATION
    else:
        error = normalised_error(single, mixed)
        assert error.max() <= AMP_MAP_TOLERANCE, f"{method} maps under autocast differ from float32 by up to {error.max():.3g} of their max"

    # Both score runs read the float32 maps: only the metric's own forwards (and re-explanations) change.
    for metric, settings in METRIC_SETTINGS.items():
        frames = {}
        for amp in (True, False):
            out = cuda_trained / model / method / f"{metric}-amp{int(amp)}.parquet"
            params = {"settings": {**settings, "amp": amp}, "protocol": "default", "seed": 0, "device": "cuda"}
            pipeline.score(*data, cuda_trained / model / f"{method}-amp0.h5", metric, params, out, identity)
            frames[amp] = pd.read_parquet(out)
        if metric == "aopc":
            for quantity in ("aopc", "probability"):
                a, b = _per_image(frames[True], quantity), _per_image(frames[False], quantity)
                assert len(a) == len(b) > 0 and (a[["image_id", "parameter_value"]] == b[["image_id", "parameter_value"]]).all().all()
                assert np.isfinite(a["value"]).all()
                assert np.abs(a["value"] - b["value"]).max() <= AMP_PROBABILITY_ATOL, (method, quantity)
        elif metric == "max_sensitivity":
            a, b = (_per_image(frames[amp], "max_sensitivity") for amp in (True, False))
            assert len(a) == len(b) > 0 and (a[["image_id", "parameter_value"]] == b[["image_id", "parameter_value"]]).all().all()
            a, b = a["value"].to_numpy(), b["value"].to_numpy()
            assert not np.isinf(a).any() and not np.isinf(b).any()
            # NaN exactly where the stored (float32) reference map is all zero after ReLU, in both runs
            assert np.array_equal(np.isnan(a), np.isnan(b))
            if method not in AMP_ILL_CONDITIONED:
                finite = ~np.isnan(b)
                assert np.abs(a[finite] - b[finite]).max(initial=0) <= AMP_SENSITIVITY_ATOL, (method, a, b)
        else:
            for amp in (True, False):
                correct = _per_image(frames[amp], "correct_ha")["value"]
                assert len(correct) > 0 and correct.isin([0.0, 1.0]).all()
                accuracy = frames[amp].loc[frames[amp]["quantity"] == "accuracy_ha", "value"]
                assert len(accuracy) == 1 and 0 <= accuracy.iloc[0] <= 1
