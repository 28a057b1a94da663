"""Explicit map post-processing: ReLU, per-image min-max scaling, upsampling to the input size.

Raw maps are stored; each metric states which of these steps it applies (config ``postprocess:``)
and records them in its output. The order is fixed — ReLU, then min-max, then upsampling, then (with
``rescale``) min-max again — which is pytorch-grad-cam 1.4's order and hence the study's: its
``compute_cam_per_layer`` applies ReLU and ``scale_cam_image(cam, target_size)`` (min-max, then
``cv2.resize``), and ``aggregate_multi_layers`` then ReLU (a no-op on min-max-scaled maps) and
``scale_cam_image`` once more without resizing (min-max of the resized map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MINMAX_EPS = 1e-7
UPSAMPLE_MODES = ("none", "bilinear", "nearest", "bicubic")


@dataclass(frozen=True)
class PostProcess:
    relu: bool = True
    minmax: bool = True
    upsample: str = "bilinear"
    rescale: bool = False  # min-max again after upsampling (pytorch-grad-cam's second scale_cam_image)

    @classmethod
    def from_config(cls, config: dict) -> PostProcess:
        spec = cls(**config)
        if spec.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"postprocess.upsample must be one of {UPSAMPLE_MODES}, got {spec.upsample!r}")
        return spec


def minmax_scale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``[N, h, w]`` to [0, 1]: (m − min) / (max − min + 1e-7); constant maps → 0."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - low) / (high - low + MINMAX_EPS)


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``[N, h, w]`` maps to ``[N, H, W]`` (half-pixel centres, like OpenCV's INTER_LINEAR)."""
    if mode == "none" or tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(maps.unsqueeze(1), size=size, mode=mode, **kwargs).squeeze(1)
    if mode == "bicubic":  # bicubic overshoots; keep each map within its own range (e.g. [0, 1])
        flat = maps.flatten(1)
        resized = resized.clamp(flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1))
    return resized


def apply(maps: torch.Tensor, spec: PostProcess, size: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` raw maps → ``[N, H, W]`` (or ``[N, h, w]`` with ``upsample: none``), float32.
    ``rescale`` min-max scales the upsampled map (always, as pytorch-grad-cam 1.4 did, also when the
    size did not change), so each map spans [0, 1] at the resolution the metric reads."""
    maps = maps.float()
    if spec.relu:
        maps = maps.clamp(min=0)
    if spec.minmax:
        maps = minmax_scale(maps)
    maps = upsample(maps, size, spec.upsample)
    if spec.rescale:
        maps = minmax_scale(maps)
    return maps
