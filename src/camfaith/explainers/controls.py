"""Control maps that ignore the model: what a sound metric must rank below every real method.

- ``random``: uniform noise ``[H, W]`` in [0, 1), drawn from the image's own seed, so every metric
  (and every re-explanation of a perturbed copy of that image) sees the same map.
- ``centre``: one fixed isotropic Gaussian blob at the image centre, σ = ``sigma`` × side, the same
  for every image (a centre-bias prior, a common shortcut of saliency benchmarks).

A metric that ranks a control above a real method measures something other than faithfulness to
the model; the tables and the verdict say so instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camfaith.explainers.base import Footprint, Probe, Settings


def random(_model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, _targets: torch.Tensor, _settings: Settings,
           seeds: Sequence[int]) -> torch.Tensor:
    """``[N, H, W]`` uniform noise, image ``n`` drawn from ``seeds[n]`` alone."""
    height, width = images.shape[-2:]
    maps = torch.empty((len(images), height, width), dtype=torch.float32, device=images.device)
    for row, seed in enumerate(seeds):
        generator = torch.Generator(device=images.device).manual_seed(int(seed))
        maps[row].uniform_(0.0, 1.0, generator=generator)
    return maps


def centre(_model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, _targets: torch.Tensor, settings: Settings,
           _seeds: Sequence[int]) -> torch.Tensor:
    """``[N, H, W]``: exp(−d² / 2σ²) with d the distance of each pixel centre to the image centre."""
    height, width = images.shape[-2:]
    sigma = settings.sigma * min(height, width)
    rows = torch.arange(height, dtype=torch.float32, device=images.device) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32, device=images.device) - (width - 1) / 2
    blob = torch.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    return blob.expand(len(images), height, width).clone()


def footprint(probe: Probe, _settings: Settings) -> Footprint:
    return Footprint(fixed=0, per_image=4 * probe.plane)
