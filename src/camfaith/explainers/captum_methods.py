"""Gradient and perturbation attributions through Captum: Guided Backpropagation, Guided Grad-CAM,
Integrated Gradients, GradientSHAP and occlusion.

The attribution is Captum's; the wiring is ours: class targets per image, baselines, seeds, internal
batching (``internal_batch_size``; ``perturbations_per_eval`` derived from a forward batch size) and the reduction of Captum's
``[N, C, H, W]`` attributions to one signed map ``[N, H, W]`` per image:

- gradient methods (Guided Backpropagation, Guided Grad-CAM, Integrated Gradients, GradientSHAP):
  the **sum over channels**, so Integrated Gradients' completeness (Σ attribution = f(x) − f(b))
  holds for the map itself;
- occlusion: the **mean over channels** (the patch covers every channel, so all channels carry the
  same value: the drop of the target's softmax probability, averaged over the patches covering the
  pixel).

Baselines (``baseline:``): ``zeros`` is the all-zero model input (for the study's mean = std = 0.5
normalisation, mid-grey); ``blurred`` is the image under a Gaussian blur of σ = side / 10.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from captum.attr import GradientShap, GuidedBackprop, GuidedGradCam, IntegratedGradients, Occlusion
from torch import nn
from torchvision.transforms.v2 import functional as TF

from camfaith.explainers.base import Footprint, Probe, Settings
from camfaith.explainers.cam_family import require_eval

BLUR_SIGMA_FRACTION = 0.1


def baseline(images: torch.Tensor, kind: str) -> torch.Tensor | float:
    """The reference input of ``images [N, C, H, W]``: ``0.0`` (zeros) or their blurred copies."""
    if kind == "zeros":
        return 0.0
    if kind == "blurred":
        sigma = BLUR_SIGMA_FRACTION * min(images.shape[-2:])
        kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
        return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    raise ValueError(f"baseline must be 'zeros' or 'blurred', got {kind!r}")


def _input_with_grad(images: torch.Tensor) -> torch.Tensor:
    # Captum would set requires_grad on the caller's tensor (with a warning); give it its own leaf.
    return images.detach().clone().requires_grad_(True)


@contextlib.contextmanager
def _captum_call() -> Iterator[None]:
    """Gradients on, and Captum's notice that it hooks ReLUs (printed on every call) silenced."""
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        yield


def guided_backprop(model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, targets: torch.Tensor, _settings: Settings,
                    _seeds: Sequence[int]) -> torch.Tensor:
    """Captum's ``GuidedBackprop`` summed over channels: ``[N, H, W]``."""
    require_eval(model)
    with _captum_call():
        attribution = GuidedBackprop(model).attribute(_input_with_grad(images), target=targets)
    return attribution.detach().float().sum(dim=1)


def guided_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: Settings,
                   _seeds: Sequence[int]) -> torch.Tensor:
    """Captum's ``GuidedGradCam`` at the target layer (ReLU'd Grad-CAM upsampled by ``interpolate``,
    times Guided Backpropagation), summed over channels: ``[N, H, W]``."""
    require_eval(model)
    with _captum_call():
        attribution = GuidedGradCam(model, layer).attribute(_input_with_grad(images), target=targets,
                                                            interpolate_mode=settings.interpolate)
    return attribution.detach().float().sum(dim=1)


def integrated_gradients(model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, targets: torch.Tensor,
                         settings: Settings, _seeds: Sequence[int]) -> torch.Tensor:
    """Captum's ``IntegratedGradients`` of the target logit, summed over channels: ``[N, H, W]``;
    ``Σ map ≈ s_t(x) − s_t(baseline)`` up to the quadrature error of ``steps``."""
    require_eval(model)
    with _captum_call():
        attribution = IntegratedGradients(model).attribute(
            _input_with_grad(images), baselines=baseline(images.detach(), settings.baseline), target=targets,
            n_steps=settings.steps, method=settings.method, internal_batch_size=settings.internal_batch_size)
    return attribution.detach().float().sum(dim=1)


@contextlib.contextmanager
def seeded_global_generators(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and NumPy's global generators (Captum's GradientShap draws from both) for one
    call, and put both states back afterwards, so the caller's random stream is untouched."""
    devices = [device] if device.type == "cuda" else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)


def gradient_shap(model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, targets: torch.Tensor, settings: Settings,
                  seeds: Sequence[int]) -> torch.Tensor:
    """Captum's ``GradientShap`` of the target logit, summed over channels: ``[N, H, W]``.

    Captum draws the noise, the baseline and the point on the path from the global generators;
    each image is attributed in its own call under its own seed, so its map does not depend on
    which other images share its batch (``samples`` points per call, in one forward batch).
    """
    require_eval(model)
    maps = []
    for i, seed in enumerate(seeds):
        image = images[i : i + 1].detach()
        reference = baseline(image, settings.baseline)
        reference = torch.zeros_like(image) if isinstance(reference, float) else reference
        with _captum_call(), seeded_global_generators(int(seed), images.device):
            attribution = GradientShap(model).attribute(_input_with_grad(image), baselines=reference, target=targets[i : i + 1],
                                                        n_samples=settings.samples, stdevs=settings.stdevs)
        maps.append(attribution.detach().float().sum(dim=1))
    return torch.cat(maps) if maps else images.new_zeros((0, *images.shape[-2:]))


@torch.no_grad()
def occlusion(model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, targets: torch.Tensor, settings: Settings,
              _seeds: Sequence[int]) -> torch.Tensor:
    """Captum's ``Occlusion`` of the target's softmax probability with a ``window``² patch moved by
    ``stride``, mean over channels: ``[N, H, W]`` (pixels no window covers get 0).

    Captum evaluates ``perturbations_per_eval`` occluded copies of *every* image per forward, so
    its forward batch is that times N; it is set so that batch is about ``batch_size`` whatever N
    (a fixed ``perturbations_per_eval`` of 64 made 2048-image batches for 32 images, measured 1.8×
    slower than the forward floor on the default models)."""
    require_eval(model)
    channels = images.shape[1]
    per_eval = max(1, settings.batch_size // max(1, len(images)))

    def probability(x: torch.Tensor) -> torch.Tensor:
        return model(x).float().softmax(dim=1)

    attribution = Occlusion(probability).attribute(
        images, sliding_window_shapes=(channels, settings.window, settings.window), strides=(channels, settings.stride, settings.stride),
        baselines=baseline(images, settings.baseline), target=targets, perturbations_per_eval=per_eval)
    return attribution.float().mean(dim=1)


# --- memory ----------------------------------------------------------------------------------------

def backward_footprint(probe: Probe, _settings: Settings) -> Footprint:
    """A backward to the input keeps every activation and its gradient (twice for Guided Grad-CAM's two passes)."""
    return Footprint(fixed=0, per_image=2 * probe.total + 3 * probe.image)


def integrated_gradients_footprint(probe: Probe, settings: Settings) -> Footprint:
    """One internal batch of path points with their activations and gradients, plus the scaled
    inputs and summed gradients of every image."""
    return Footprint(fixed=settings.internal_batch_size * (2 * probe.total + 3 * probe.image), per_image=4 * probe.image)


def gradient_shap_footprint(probe: Probe, settings: Settings) -> Footprint:
    """One image's ``samples`` noisy points with their activations and gradients at a time."""
    return Footprint(fixed=settings.samples * (2 * probe.total + 4 * probe.image), per_image=2 * probe.image)


def occlusion_footprint(probe: Probe, settings: Settings) -> Footprint:
    """One forward batch of about ``batch_size`` occluded inputs with their activations."""
    return Footprint(fixed=settings.batch_size * (probe.image + 2 * probe.peak), per_image=4 * probe.image)
