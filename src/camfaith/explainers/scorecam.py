"""Score-CAM (Wang et al., 2020): each channel of the target layer, upsampled and scaled to [0, 1],
masks the input; the class score of each masked input weighs that channel.

For ``A [N, K, h, w]`` at the target layer and class scores ``s`` (logits):

    M_k = norm(up(A_k)),  norm(m) = (m − min m) / (max m − min m + 1e-8),  up: bilinear to H × W
    w_k = softmax_k s_t(x ⊙ M_k),  map = Σ_k w_k A_k   (raw: before ReLU, at h × w)

as pytorch-grad-cam 1.5 computes it (``UpsamplingBilinear2d``, i.e. ``align_corners=True``; the
logit, not the probability, inside the softmax), which the tests check to 1e-5.

Why our own code: pytorch-grad-cam builds all ``K`` masked copies of an image at once on the host
side of its loop and reads every score back with ``.item()``, one image at a time. Here the
``N·K`` (image, channel) pairs are cut into forward batches of ``batch_size`` and each batch's masks
are made on the device from its own channels: no per-channel Python loop, no NumPy round trip, and
memory for one batch of masked inputs whatever ``K``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camfaith.explainers.base import Footprint, Probe
from camfaith.explainers.cam_family import as_grid, require_eval

MASK_EPS = 1e-8


@torch.no_grad()
def layer_output(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output ``[N, K, h, w]`` of ``layer`` for ``images``, from one forward (a transformer's tokens on their grid)."""
    captured: dict[str, torch.Tensor] = {}

    def keep_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["A"] = output.detach().clone()  # a clone: an in-place op after the layer would change it

    handle = layer.register_forward_hook(keep_output)
    try:
        model(images)
    finally:
        handle.remove()
    if "A" not in captured:
        raise RuntimeError("the target layer was not called during the forward pass")
    return as_grid(captured["A"], layer)


@torch.no_grad()
def channel_scores(model: nn.Module, images: torch.Tensor, activations: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``s_t(x ⊙ M_k)`` for every image and channel: ``[N, K]`` float32, ``batch_size`` masked inputs
    per forward, each batch's masks upsampled and scaled on the device."""
    n, channels = activations.shape[:2]
    size = tuple(images.shape[-2:])
    layout = torch.channels_last if images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    flat = activations.reshape(n * channels, 1, *activations.shape[-2:])
    which_image = torch.arange(n, device=images.device).repeat_interleave(channels)
    scores = torch.empty(n * channels, dtype=torch.float32, device=images.device)
    for start in range(0, n * channels, batch_size):
        part = slice(start, min(start + batch_size, n * channels))
        masks = F.interpolate(flat[part].float(), size=size, mode="bilinear", align_corners=True)
        low = masks.amin(dim=(2, 3), keepdim=True)
        high = masks.amax(dim=(2, 3), keepdim=True)
        masks = (masks - low) / (high - low + MASK_EPS)
        rows = which_image[part]
        masked = (images[rows] * masks.to(images.dtype)).contiguous(memory_format=layout)
        logits = model(masked)
        scores[part] = logits.float().gather(1, targets[rows].view(-1, 1)).squeeze(1)
    return scores.view(n, channels)


@torch.no_grad()
def explain(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings, _seeds: Sequence[int]) -> torch.Tensor:
    """Raw Score-CAM maps ``[N, h, w]`` (float32) at the target layer."""
    require_eval(model)
    activations = layer_output(model, layer, images)
    weights = channel_scores(model, images, activations, targets.to(images.device), settings.batch_size).softmax(dim=1)
    return torch.einsum("nk,nkhw->nhw", weights, activations.float())


def footprint(probe: Probe, settings) -> Footprint:
    """One forward batch of masked inputs (their masks and activations) beyond the images' own
    layer outputs and channel scores."""
    batch = settings.batch_size
    return Footprint(fixed=batch * (2 * probe.image + 2 * probe.peak + 8 * probe.plane),
                     per_image=2 * probe.layer + 8 * probe.channels)
