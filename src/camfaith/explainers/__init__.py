"""The explainer registry: the one place an attribution method is defined.

Each entry declares the method (:class:`~camfaith.explainers.base.Explainer`): its name, title,
map resolution, the layer it reads, whether it differentiates, the models it applies to and why
not, its typed settings, its memory footprint and its implementation, imported on first use. The
config schema's method names, the rules' wildcard constraint, the plot colours and the method list
in ``docs/metrics.md`` are read from here or tested against it (``tests/test_explainers.py``).

Adding a method: write ``explainers/<file>.py`` with ``explain(model, layer, images, targets,
settings, seeds) -> [N, h, w]`` and ``footprint(probe, settings)``, and add one entry below (with
its settings dataclass when it has settings).

This module does not import torch: the Snakefile reads it when it plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from camfaith.explainers.base import (
    ACTIVATIONS,
    Explainer,
    Footprint,
    ModelFacts,
    NoSettings,
    Probe,
    Settings,
    setting,
)

__all__ = ["REGISTRY", "Explainer", "Footprint", "ModelFacts", "Probe", "Settings", "get", "names", "parse_methods", "resolve_methods"]

_FAMILY = "camfaith.explainers.cam_family"
_CAPTUM = "camfaith.explainers.captum_methods"
_CONTROLS = "camfaith.explainers.controls"
_FAMILY_COST = "one forward and one backward that stops at the target layer"
_BASELINES = Literal["zeros", "blurred"]
_BASELINE_DOC = "zeros: the all-zero normalised input; blurred: the image under a Gaussian blur of σ = side/10"


@dataclass(frozen=True)
class ScoreCamSettings(Settings):
    batch_size: int = setting(64, "masked inputs per forward (speed and memory only; maps do not change)", minimum=1)


@dataclass(frozen=True)
class GuidedGradCamSettings(Settings):
    interpolate: Literal["nearest", "bilinear"] = setting("nearest", "how the Grad-CAM map is upsampled before the product (Captum's default: nearest)")


@dataclass(frozen=True)
class IntegratedGradientsSettings(Settings):
    steps: int = setting(32, "points on the path from the baseline to the image", minimum=1)
    baseline: _BASELINES = setting("zeros", _BASELINE_DOC)
    method: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"] = setting(
        "gausslegendre", "Captum's quadrature rule along the path")
    internal_batch_size: int = setting(64, "path points per forward/backward (speed and memory only)", minimum=1)


@dataclass(frozen=True)
class GradientShapSettings(Settings):
    samples: int = setting(16, "random points per image, each a forward and a backward", minimum=1)
    stdevs: float = setting(0.1, "standard deviation of the Gaussian noise added to the image before each point", minimum=0)
    baseline: _BASELINES = setting("zeros", _BASELINE_DOC)


@dataclass(frozen=True)
class OcclusionSettings(Settings):
    window: int = setting(8, "side of the square occluding patch, in input pixels", minimum=1)
    stride: int = setting(4, "step between patch positions, in input pixels", minimum=1)
    baseline: _BASELINES = setting("zeros", "what the patch shows: " + _BASELINE_DOC)
    batch_size: int = setting(32, "occluded inputs per forward, over all images of a call (speed and memory only)", minimum=1)


@dataclass(frozen=True)
class CentreSettings(Settings):
    sigma: float = setting(0.25, "standard deviation of the Gaussian blob, as a fraction of the image side", minimum=0.01)


def _gap_head_only(facts: ModelFacts, _settings: Settings) -> str | None:
    if not facts.built_here:
        return ("CAM reads the class weights of the GAP → Linear head camfaith builds (model source torchvision); on your own model "
                "use Grad-CAM, which equals CAM / (h·w) on such a head (camfaith layers shows whether yours is one)")
    if facts.head == "gap":
        return None
    heads = {"flatten": "Conv → Flatten → Linear", "gap_dense": "GAP → Linear → ReLU → Linear, no single class-weight layer"}
    return (f"CAM weights the pooled feature maps by the class's Linear weights, so it needs a Conv → GAP → Linear head; "
            f"this model's head is {facts.head} ({heads.get(facts.head, facts.head)})")


def _relu_only(facts: ModelFacts, _settings: Settings) -> str | None:
    if not facts.modules:
        return (f"Guided Backpropagation rewrites the backward pass of the model's nn.ReLU modules, and a model of source "
                f"{facts.source} has no such modules: {facts.source_why}")
    if not facts.built_here:
        return None  # the import stage checks the network's own activations before any map is made
    activation = ACTIVATIONS.get(facts.arch, "unknown")
    if activation == "ReLU":
        return None
    return f"Guided Backpropagation rewrites the backward pass of ReLU activations; {facts.arch} uses {activation}"


def _window_fits(facts: ModelFacts, settings: Settings) -> str | None:
    if settings.window > facts.input_size or settings.stride > facts.input_size:
        return f"the occlusion window ({settings.window} px) and stride ({settings.stride} px) must fit the {facts.input_size} px input"
    return None


def _family(name: str, title: str, colour: str, reference: str) -> Explainer:
    return Explainer(name, title, "cam", "layer", "target", True, f"{_FAMILY}:{name}", f"{_FAMILY}:footprint", colour, reference, _FAMILY_COST)


REGISTRY: dict[str, Explainer] = {e.name: e for e in (
    _family("gradcam", "Grad-CAM", "#1f77b4", "Selvaraju et al., ICCV 2017"),
    _family("hirescam", "HiResCAM", "#d62728", "Draelos & Carin, arXiv:2011.08891 (2020)"),
    _family("gradcampp", "Grad-CAM++", "#2ca02c", "Chattopadhay et al., WACV 2018"),
    _family("xgradcam", "XGrad-CAM", "#9467bd", "Fu et al., BMVC 2020"),
    _family("layercam", "LayerCAM", "#ff7f0e", "Jiang et al., IEEE TIP 2021"),
    Explainer("cam", "CAM", "cam", "layer", "pool", False, f"{_FAMILY}:cam", f"{_FAMILY}:cam_footprint", "#8c564b",
              "Zhou et al., CVPR 2016", "one forward, no backward", applies=_gap_head_only),
    Explainer("scorecam", "Score-CAM", "cam", "layer", "target", False, "camfaith.explainers.scorecam:explain",
              "camfaith.explainers.scorecam:footprint", "#e377c2", "Wang et al., CVPR Workshops 2020",
              "one forward per channel of the target layer", settings=ScoreCamSettings),
    Explainer("guided_backprop", "Guided Backprop", "gradient", "input", None, True, f"{_CAPTUM}:guided_backprop",
              f"{_CAPTUM}:backward_footprint", "#bcbd22", "Springenberg et al., ICLR Workshop 2015",
              "one forward and one backward to the input", amp=False, applies=_relu_only),
    Explainer("guided_gradcam", "Guided Grad-CAM", "gradient", "input", "target", True, f"{_CAPTUM}:guided_gradcam",
              f"{_CAPTUM}:backward_footprint", "#17becf", "Selvaraju et al., ICCV 2017",
              "two forwards and two backwards (Grad-CAM, then Guided Backpropagation to the input)",
              settings=GuidedGradCamSettings, amp=False, applies=_relu_only),
    Explainer("integrated_gradients", "Integrated Gradients", "gradient", "input", None, True, f"{_CAPTUM}:integrated_gradients",
              f"{_CAPTUM}:integrated_gradients_footprint", "#393b79", "Sundararajan et al., ICML 2017",
              "`steps` forwards and backwards to the input", settings=IntegratedGradientsSettings, amp=False),
    Explainer("gradient_shap", "GradientSHAP", "gradient", "input", None, True, f"{_CAPTUM}:gradient_shap",
              f"{_CAPTUM}:gradient_shap_footprint", "#637939", "Lundberg & Lee, NeurIPS 2017 (Captum's GradientShap)",
              "`samples` forwards and backwards to the input", settings=GradientShapSettings, stochastic=True, amp=False),
    Explainer("occlusion", "Occlusion", "perturbation", "input", None, False, f"{_CAPTUM}:occlusion",
              f"{_CAPTUM}:occlusion_footprint", "#bd9e39", "Zeiler & Fergus, ECCV 2014",
              "one forward per window position", settings=OcclusionSettings, amp=False, applies=_window_fits),
    Explainer("random", "Random (control)", "control", "input", None, False, f"{_CONTROLS}:random",
              f"{_CONTROLS}:footprint", "#7f7f7f", "control: uniform noise, seeded per image", "no model call",
              stochastic=True),
    Explainer("centre", "Centre (control)", "control", "input", None, False, f"{_CONTROLS}:centre",
              f"{_CONTROLS}:footprint", "#525252", "control: a fixed Gaussian blob at the image centre", "no model call",
              settings=CentreSettings),
)}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Explainer:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {list(REGISTRY)}") from None


def parse_methods(entries: list, where: str = "explain.methods") -> dict[str, dict]:
    """``{name: settings values}`` from a config list whose items are a name or ``{name: {settings}}``
    (order kept). Unknown names, duplicates and malformed items are errors naming ``where``."""
    methods: dict[str, dict] = {}
    for position, item in enumerate(entries):
        if isinstance(item, str):
            name, values = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, values), = item.items()
            values = values or {}
            if not isinstance(values, dict):
                raise ValueError(f"config {where}[{position}]: the settings of {name!r} must be a mapping, got {values!r}")
        else:
            raise ValueError(f"config {where}[{position}]: expected a method name or {{name: {{settings}}}}, got {item!r}")
        get(name)
        if name in methods:
            raise ValueError(f"config {where}: {name!r} is listed twice")
        methods[name] = dict(values)
    return methods


def resolve_methods(entries: list, where: str = "explain.methods") -> dict[str, Settings]:
    """``{name: Settings}`` with every default filled in (the exact settings a job runs with)."""
    return {name: get(name).make_settings(values, f"{where}.{name}") for name, values in parse_methods(entries, where).items()}


__all__ += ["CentreSettings", "GradientShapSettings", "GuidedGradCamSettings", "IntegratedGradientsSettings",
            "NoSettings", "OcclusionSettings", "ScoreCamSettings"]
