"""The explainer registry and every method in it: against its reference implementation, on hand
cases, on the theory's identities, and on the contract every metric relies on (raw maps at the
declared resolution, independent of batching, reproducible from per-image seeds)."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frozen_tiny_resnet18
from torch import nn

from camfaith import configuration, explainers, postprocess, sweep
from camfaith.explainers import ModelFacts, cam_family, captum_methods
from camfaith.explainers.base import ACTIVATIONS
from camfaith.models import ARCHS, ModelSpec, build_model, resolve_layer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
ALL = explainers.names()
NOT_ON_FLATTEN = {"cam"}  # needs a GAP head


def settings(name: str, **values):
    return explainers.get(name).make_settings(values)


def explain(name: str, model, layer, images, targets, seeds=None, **values) -> torch.Tensor:
    seeds = list(range(100, 100 + len(images))) if seeds is None else seeds
    return explainers.get(name).explain(model, layer, images, targets, settings(name, **values), seeds)


@pytest.fixture(scope="module")
def tiny():
    model, layer = frozen_tiny_resnet18()
    images = torch.randn(5, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 0, 1])
    return model, layer, images, targets


def random_model(arch: str, head: str = "flatten", size: int = 32, frozen: bool = True, **spec) -> tuple[nn.Module, nn.Module]:
    """A random-weight model in eval mode whose BatchNorm layers have random statistics and biases (at
    their initial values the network would be positively homogeneous in its input, which hides
    errors: every path integral would be exact); parameters frozen as in a score job unless not ``frozen``."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, num_classes=3, input_size=size, head=head, **spec))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.normal_(0, 0.2)
    for parameter in model.parameters():
        parameter.requires_grad_(not frozen)
    return model, resolve_layer(model, None)[1]


ORACLE_MODELS = {
    "resnet18": dict(arch="resnet18", cut_after="layer2", plain_last_block=True),
    "vgg11": dict(arch="vgg11", cut_after="13"),
}


# --- the registry is the one source of names ---------------------------------------------------------

def test_the_schema_takes_method_names_and_settings_from_the_registry():
    schema = configuration.load_schema(SCHEMA)
    assert schema["definitions"]["method_name"]["enum"] == list(ALL)
    properties = schema["definitions"]["method_entry"]["oneOf"][1]["properties"]
    assert list(properties) == list(ALL)
    ig = properties["integrated_gradients"]["oneOf"][1]["properties"]
    assert ig["steps"]["default"] == 32 and ig["baseline"]["enum"] == ["zeros", "blurred"]
    # the schema file itself lists no method: adding one is a registry entry and a file
    assert "gradcam" not in SCHEMA.read_text()


def test_docs_list_every_method_of_the_registry_with_its_resolution():
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text[text.index("## 1. Attribution methods"):text.index("## 2.")]
    rows = re.findall(r"^\| `(\w+)` \| (layer|input) \|", section, flags=re.M)
    assert [name for name, _ in rows] == list(ALL)
    assert dict(rows) == {n: e.resolution for n, e in explainers.REGISTRY.items()}


def test_plot_styles_come_from_the_registry_and_tell_methods_apart():
    from camfaith.plots import method_style

    styles = {name: method_style(name) for name in ALL}
    assert len({s["color"] for s in styles.values()}) == len(ALL)
    assert {s["label"] for s in styles.values()} == {e.title for e in explainers.REGISTRY.values()}
    assert all((s["linestyle"] == "--") == explainers.get(n).is_control for n, s in styles.items())


def test_the_rules_method_wildcard_is_the_registry():
    common = (ROOT / "rules" / "common.smk").read_text()
    assert re.search(r'def method_pattern\(\):.*?return "\|"\.join\(explainers\.names\(\)\)', common, flags=re.S)
    assert "method=method_pattern()" in (ROOT / "rules" / "explain.smk").read_text()


def test_names_spelled_outside_the_registry_are_registry_names():
    assert sweep.STUDY_METHOD in ALL
    assert set(cam_family.METHODS) <= set(ALL)


def test_activation_table_matches_the_built_models():
    for arch in ARCHS:
        model = build_model(ModelSpec(arch=arch, num_classes=2, input_size=32))
        kinds = {type(m).__name__ for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU))}
        assert kinds == {ACTIVATIONS[arch]}, arch


def test_every_entry_declares_a_loadable_implementation_and_footprint():
    probe = explainers.Probe(image=4 * 3 * 1024, peak=10_000, after_layer=5_000, total=50_000, layer=4_096, plane=1024, channels=64)
    for name, entry in explainers.REGISTRY.items():
        need = entry.footprint(probe, entry.settings())
        assert need.fixed >= 0 and need.per_image > 0, name
        assert entry.cost and entry.reference and entry.title


# --- settings ------------------------------------------------------------------------------------------

def test_settings_refuse_unknown_keys_wrong_types_and_out_of_range_values():
    with pytest.raises(ValueError, match=r"explain\.methods\.integrated_gradients: unknown setting\(s\) \['stpes'\]"):
        settings("integrated_gradients", stpes=3)
    with pytest.raises(ValueError, match=r"integrated_gradients\.steps: must be an integer"):
        settings("integrated_gradients", steps="many")
    with pytest.raises(ValueError, match=r"occlusion\.window: must be at least 1"):
        settings("occlusion", window=0)
    with pytest.raises(ValueError, match=r"baseline: must be one of \['zeros', 'blurred'\]"):
        settings("gradient_shap", baseline="noise")
    with pytest.raises(ValueError, match=r"gradcam: unknown setting\(s\) \['steps'\]; known: none"):
        settings("gradcam", steps=3)
    assert settings("integrated_gradients", steps=8).as_dict() == {"steps": 8, "baseline": "zeros", "method": "gausslegendre",
                                                                   "internal_batch_size": 64}


def test_method_lists_take_names_or_name_with_settings():
    methods = explainers.resolve_methods(["gradcam", {"integrated_gradients": {"steps": 4}}, {"occlusion": None}])
    assert list(methods) == ["gradcam", "integrated_gradients", "occlusion"]
    assert methods["integrated_gradients"].steps == 4 and methods["occlusion"].window == 8
    with pytest.raises(ValueError, match="'gradcam' is listed twice"):
        explainers.parse_methods(["gradcam", {"gradcam": {}}])
    with pytest.raises(ValueError, match="unknown method 'gradcamm'"):
        explainers.parse_methods(["gradcamm"])


@pytest.mark.parametrize(("method", "facts", "reason"), [
    ("cam", ModelFacts("resnet18", "flatten", 64), "needs a Conv → GAP → Linear head; this model's head is flatten"),
    ("cam", ModelFacts("vgg11", "gap_dense", 64), "head is gap_dense"),
    ("guided_backprop", ModelFacts("efficientnet_b0", "flatten", 64), "efficientnet_b0 uses SiLU"),
    ("guided_gradcam", ModelFacts("efficientnet_b0", "gap", 64), "rewrites the backward pass of ReLU"),
    ("occlusion", ModelFacts("vgg11", "flatten", 4), "must fit the 4 px input"),
])
def test_a_method_that_does_not_apply_says_why(method, facts, reason):
    assert reason in explainers.get(method).why_not(facts)


def test_methods_apply_where_they_should():
    for name in ALL:
        assert explainers.get(name).why_not(ModelFacts("resnet18", "gap", 64)) is None, name
        assert (explainers.get(name).why_not(ModelFacts("vgg19", "flatten", 224)) is None) == (name not in NOT_ON_FLATTEN), name


# --- against the reference implementations -------------------------------------------------------------

def _pytorch_grad_cam(cls, model, layer, images, targets, batch_size=64) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with cls(model=model, target_layers=[layer]) as cam:
        cam.batch_size = batch_size
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("arch", sorted(ORACLE_MODELS))
@pytest.mark.parametrize("method", ["layercam", "scorecam"])
def test_layercam_and_scorecam_equal_pytorch_grad_cam(arch, method):
    """pytorch-grad-cam 1.5 post-processes each map: ReLU, min-max, cv2 bilinear resize, then (as it
    aggregates target layers) ReLU and min-max again; the same steps on our raw maps give its output."""
    from pytorch_grad_cam import LayerCAM, ScoreCAM

    model, layer = random_model(frozen=False, **ORACLE_MODELS[arch])  # pytorch-grad-cam back-propagates through the parameters
    torch.manual_seed(1)
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    theirs = _pytorch_grad_cam({"layercam": LayerCAM, "scorecam": ScoreCAM}[method], model, layer, images, targets)
    raw = explain(method, model, layer, images, targets)
    assert raw.shape == (3, 4, 4)  # raw, at the target layer
    ours = postprocess.minmax_scale(postprocess.apply(raw, postprocess.PostProcess(), (32, 32)).clamp(min=0))
    assert np.abs(ours.numpy() - theirs).max() <= 1e-5


def _direct_captum(name, model, layer, images, targets, chosen):
    """What a user of Captum writes for each method, per its documentation, before our channel reduction."""
    from captum.attr import GradientShap, GuidedBackprop, GuidedGradCam, IntegratedGradients, Occlusion

    x = images.clone().requires_grad_(True)
    if name == "guided_backprop":
        return GuidedBackprop(model).attribute(x, target=targets).sum(1)
    if name == "guided_gradcam":
        return GuidedGradCam(model, layer).attribute(x, target=targets, interpolate_mode=chosen.interpolate).sum(1)
    if name == "integrated_gradients":
        return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(images), target=targets, n_steps=chosen.steps,
                                                    method=chosen.method, internal_batch_size=chosen.internal_batch_size).sum(1)
    if name == "occlusion":
        return Occlusion(lambda z: model(z).softmax(1)).attribute(
            images, sliding_window_shapes=(3, chosen.window, chosen.window), strides=(3, chosen.stride, chosen.stride), baselines=0,
            target=targets, perturbations_per_eval=max(1, chosen.batch_size // len(images))).mean(1)
    if name == "gradient_shap":
        maps = []
        for i, seed in enumerate(range(100, 100 + len(images))):
            torch.manual_seed(seed)
            np.random.seed(seed)
            maps.append(GradientShap(model).attribute(x[i : i + 1], baselines=torch.zeros_like(images[:1]), target=targets[i : i + 1],
                                                      n_samples=chosen.samples, stdevs=chosen.stdevs).sum(1))
        return torch.cat(maps)
    raise AssertionError(name)


@pytest.mark.parametrize("arch", sorted(ORACLE_MODELS))
@pytest.mark.parametrize("method", ["guided_backprop", "guided_gradcam", "integrated_gradients", "gradient_shap", "occlusion"])
def test_captum_methods_equal_a_direct_captum_call(arch, method):
    model, layer = random_model(**ORACLE_MODELS[arch])
    torch.manual_seed(2)
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([2, 0, 1])
    values = {"integrated_gradients": {"steps": 8, "internal_batch_size": 5}, "gradient_shap": {"samples": 4},
              "occlusion": {"window": 8, "stride": 4, "batch_size": 7}}.get(method, {})
    chosen = settings(method, **values)
    ours = explain(method, model, layer, images, targets, **values)
    reference = _direct_captum(method, model, layer, images, targets, chosen).detach()
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    assert ours.abs().max() > 0


def test_gradient_shap_leaves_the_callers_random_streams_untouched(tiny):
    model, layer, images, targets = tiny
    torch.manual_seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(5)
    np.random.seed(5)
    explain("gradient_shap", model, layer, images[:2], targets[:2], samples=2)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


# --- theory and hand cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [dict(arch="resnet18", cut_after="layer2", plain_last_block=True), dict(arch="vgg11", cut_after="13")],
                         ids=["resnet18", "vgg11"])
def test_cam_is_hw_times_gradcam_on_a_gap_head(spec):
    model, layer = random_model(head="gap", size=32, **spec)
    model = model.double()
    images, targets = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2, 0])
    cam = explain("cam", model, None, images, targets)
    gradcam = explain("gradcam", model, layer, images, targets)
    h, w = gradcam.shape[-2:]
    torch.testing.assert_close(cam, h * w * gradcam.to(cam.dtype), rtol=1e-9, atol=1e-12)


def test_cam_is_refused_on_a_flatten_head_with_a_clear_message():
    model, _ = random_model("resnet18", cut_after="layer2", plain_last_block=True)
    with pytest.raises(ValueError, match=r"CAM needs a Conv → GAP → Linear head"):
        explain("cam", model, None, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    entry = {"model": {"arch": "resnet18", "head": "flatten"}, "training": {}}
    with pytest.raises(configuration.ConfigError, match=r"method 'cam' does not apply to models\.synthetic\.resnet18 \(resnet18, head flatten\)"):
        configuration.model_methods(["gradcam", "cam"], entry, "synthetic", "resnet18", 64)


def test_integrated_gradients_is_complete_within_its_quadrature_error():
    """Σ_pixels IG(x) = s_t(x) − s_t(0) (completeness), up to the error of the path integral,
    which shrinks as the step count grows (slowly: a ReLU network's gradient jumps along the path;
    measured here 39 % and 15 % of the gap at 4 steps, 0.6 % and 1.9 % at 256)."""
    model, _ = random_model("resnet18", cut_after="layer2", plain_last_block=True)
    model = model.double()
    torch.manual_seed(3)
    images, targets = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 2])
    with torch.no_grad():
        gap = model(images).gather(1, targets.view(-1, 1)).squeeze(1) - model(torch.zeros_like(images)).gather(1, targets.view(-1, 1)).squeeze(1)
    errors = {}
    for steps in (4, 256):
        total = explain("integrated_gradients", model, None, images, targets, steps=steps).double().sum(dim=(1, 2))
        errors[steps] = ((total - gap).abs() / gap.abs()).max().item()
    assert errors[256] < 0.025, errors
    assert errors[256] < errors[4] / 5, errors


def test_occlusion_on_a_hand_computed_case():
    """A 'model' whose class-0 probability is sigmoid(Σ w ⊙ x): each 2×2 window at stride 2 covers
    its pixels alone, so a pixel's attribution is p(x) − p(x with its window zeroed)."""
    weights = torch.tensor([[1.0, 0.0, -2.0, 0.5], [0.0, 3.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 2.0], [0.5, 0.5, -0.5, 1.0]])

    class Linear(nn.Module):
        def forward(self, x):
            score = (x.sum(dim=1) * weights).sum(dim=(1, 2))
            return torch.stack([score, torch.zeros_like(score)], dim=1)  # softmax → sigmoid(score) for class 0

    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(1, 3, 1, 1) / 16
    maps = explain("occlusion", Linear().eval(), None, image, torch.tensor([0]), window=2, stride=2)
    p = torch.sigmoid(3 * (image[0, 0] * weights).sum())
    expected = torch.zeros(4, 4)
    for r in (0, 2):
        for c in (0, 2):
            occluded = image[0, 0].clone()
            occluded[r : r + 2, c : c + 2] = 0
            expected[r : r + 2, c : c + 2] = p - torch.sigmoid(3 * (occluded * weights).sum())
    torch.testing.assert_close(maps[0], expected, rtol=1e-5, atol=1e-6)


def test_controls_ignore_the_model_random_follows_the_seed_and_centre_peaks_in_the_middle(tiny):
    model, layer, images, targets = tiny
    first = explain("random", model, layer, images, targets, seeds=[1, 2, 3, 4, 5])
    again = explain("random", model, layer, images[[2, 0]] + 1, targets[[2, 0]], seeds=[3, 1])
    assert torch.equal(again, first[[2, 0]])  # the same seed gives the same map, whatever the image or batch
    assert not torch.equal(first[0], first[1]) and first.min() >= 0 and first.max() < 1
    blob = explain("centre", model, layer, images[:2], targets[:2], sigma=0.2)
    assert torch.equal(blob[0], blob[1]) and blob.shape == (2, 32, 32)
    centre = blob[0, 15:17, 15:17]
    assert torch.allclose(centre, centre.max()) and int(blob[0].argmax()) in {15 * 32 + 15, 15 * 32 + 16, 16 * 32 + 15, 16 * 32 + 16}


# --- the contract every metric relies on ------------------------------------------------------------------

BATCH_SETTINGS = {
    "scorecam": ({"batch_size": 7}, {"batch_size": 64}),
    "integrated_gradients": ({"steps": 6, "internal_batch_size": 4}, {"steps": 6, "internal_batch_size": 64}),
    "gradient_shap": ({"samples": 3}, {"samples": 3}),
    "occlusion": ({"window": 8, "stride": 4, "batch_size": 3}, {"window": 8, "stride": 4, "batch_size": 50}),
}


@pytest.mark.parametrize("method", [m for m in ALL if m not in NOT_ON_FLATTEN])
def test_maps_do_not_depend_on_batching_and_have_the_declared_resolution(tiny, method):
    model, layer, images, targets = tiny
    small, large = BATCH_SETTINGS.get(method, ({}, {}))
    seeds = [11, 12, 13, 14, 15]
    together = explain(method, model, layer, images, targets, seeds=seeds, **large)
    alone = torch.cat([explain(method, model, layer, images[i : i + 1], targets[i : i + 1], seeds=seeds[i : i + 1], **small)
                       for i in range(len(images))])
    # XGrad-CAM divides each channel's gradient-weighted sum by the channel's activation sum: a channel
    # that ReLU all but zeroes turns the float32 rounding differences between a batched and a single
    # convolution (which oneDNN computes with different kernels) into errors of ~1e-4 of the map's scale
    atol = 1e-3 * float(together.abs().max()) if method == "xgradcam" else 1e-6
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=atol)
    expected = (4, 4) if explainers.get(method).resolution == "layer" else (32, 32)
    assert together.shape == (5, *expected) and together.dtype == torch.float32
    assert torch.isfinite(together).all()


def test_cam_does_not_depend_on_batching():
    model, _ = random_model("resnet18", head="gap", cut_after="layer2", plain_last_block=True)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    together = explain("cam", model, None, images, targets)
    alone = torch.cat([explain("cam", model, None, images[i : i + 1], targets[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_explainers_leave_parameter_gradients_and_grad_mode_alone(tiny):
    _, _, images, targets = tiny
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, cut_after="layer2", plain_last_block=True))
    layer = resolve_layer(model, None)[1]
    assert all(p.requires_grad for p in model.parameters())  # not frozen: a backward could fill .grad
    for name in ALL:
        if name in NOT_ON_FLATTEN:
            continue
        with torch.no_grad():
            explain(name, model, layer, images[:2], targets[:2], **BATCH_SETTINGS.get(name, ({}, {}))[0])
            assert not torch.is_grad_enabled(), name
        assert all(p.grad is None for p in model.parameters()), name


def test_models_in_training_mode_are_refused(tiny):
    model, layer, images, targets = tiny
    model.train()
    try:
        for name in ("gradcam", "scorecam", "integrated_gradients", "occlusion"):
            with pytest.raises(ValueError, match="eval mode"):
                explain(name, model, layer, images[:1], targets[:1])
    finally:
        model.eval()


def test_blurred_baseline_keeps_the_image_mean_and_smooths_it():
    image = torch.zeros(1, 3, 32, 32)
    image[..., ::2, :] = 1.0  # stripes
    blurred = captum_methods.baseline(image, "blurred")
    assert blurred.shape == image.shape
    assert blurred.std() < 0.1 * image.std()
    assert captum_methods.baseline(image, "zeros") == 0.0


def test_a_seed_list_of_the_wrong_length_is_refused(tiny):
    model, layer, images, targets = tiny
    with pytest.raises(ValueError, match="2 seeds for 5 images"):
        explainers.get("random").explain(model, layer, images, targets, settings("random"), [1, 2])


def test_cam_family_still_serves_several_methods_from_one_pass(tiny):
    model, layer, images, targets = tiny
    together = cam_family.compute(model, layer, images, targets, cam_family.METHODS)
    for name in cam_family.METHODS:
        torch.testing.assert_close(together[name], explain(name, model, layer, images, targets))


def test_the_hand_net_layercam_equals_its_definition():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    fc = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 2.0, -3.0, 0.5, 1.0, 0.0]]))
    model = nn.Sequential(OrderedDict(conv=conv, flatten=nn.Flatten(), fc=fc)).eval()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    gradient = fc.weight.view(2, 2, 2)
    activation = torch.stack([x[0, 0], -x[0, 0]])
    expected = (gradient.clamp(min=0) * activation).sum(0)
    torch.testing.assert_close(explain("layercam", model, conv, x, torch.tensor([0]))[0], expected)
