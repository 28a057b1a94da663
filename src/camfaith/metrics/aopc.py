"""AOPC under MoRF: perturb regions in descending order of mean attribution, watch the class probability fall.

For a map upsampled to the input (``H×W``) and a region size ``s`` px, the image is tiled into
``R×C = ⌈H/s⌉×⌈W/s⌉`` regions (L = R·C; edge regions are smaller when ``s`` does not divide the
size). Regions are ranked by their mean attribution; step ``k`` replaces
the ``k`` top-ranked regions by uniform noise in [min x, max x] (global over the normalised image),
cumulatively, so ``x⁰`` is the original and ``x^L`` is all noise. With f the softmax probability of
the target class, ``AOPC = 1/(L+1) Σ_{k=0..L} (f(x⁰) − f(x^k))``.

Ties in that ranking are common (a ReLU'd CAM is exactly zero on much of the image): ``ties:
row_major`` (the study, via a stable sort) perturbs tied regions from the top left, so the tail of
the curve is a raster scan that favours whatever sits in the top rows; ``ties: random`` (the
default protocol) breaks them in a seeded random order of the regions, drawn per image and region
size and shared by every method, so tied regions are perturbed in an order unrelated to position and
the comparison of two methods stays paired. :func:`tied_share` measures how much of a map is tied.

``zero_pad`` (the study) averages an edge region as if zero-padded to ``s×s`` (skimage's
``block_reduce``), which ranks edge regions too low; the default divides by the pixels that exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camfaith import postprocess
from camfaith.metrics.common import chunks, generator, layout_of, rounded, target_probability, uniform

NOISE_MODES = ("per_step", "per_image")
TIE_MODES = ("row_major", "random")


def grid_shape(height: int, width: int, region_px: int) -> tuple[int, int]:
    """Regions per column and row: ``(⌈H/s⌉, ⌈W/s⌉)``."""
    return -(-height // region_px), -(-width // region_px)


def region_means(saliency: torch.Tensor, region_px: int, zero_pad: bool) -> torch.Tensor:
    """Mean attribution per region: ``[N, H, W]`` → ``[N, R, C]``."""
    sums = F.avg_pool2d(saliency.unsqueeze(1), region_px, stride=region_px, ceil_mode=True, divisor_override=1).squeeze(1)
    if zero_pad:
        return sums / float(region_px * region_px)
    ones = torch.ones((1, 1, *saliency.shape[-2:]), dtype=saliency.dtype, device=saliency.device)
    counts = F.avg_pool2d(ones, region_px, stride=region_px, ceil_mode=True, divisor_override=1).squeeze(1)
    return sums / counts


def tie_permutations(count: int, image_ids: list[str], region_px: int, seed: int, device: torch.device) -> torch.Tensor:
    """``[N, L]``: per image a seeded random permutation of its ``L = count`` region ids, from
    (seed, image id, region size) only, so every method of a comparison gets the same one."""
    return torch.stack([torch.randperm(count, generator=generator(device, seed, image_id, "aopc_ties", region_px), device=device)
                        for image_id in image_ids])


def region_order(means: torch.Tensor, permutations: torch.Tensor | None = None) -> torch.Tensor:
    """Region indices ``[N, L]`` (row-major ids) from most to least attributed, for ``means [N, R, C]``.

    Without ``permutations`` ties keep row-major order (the study); with ``permutations [N, L]``
    (:func:`tie_permutations`) tied regions come in that permutation's order instead."""
    flat = means.flatten(1)
    if permutations is None:
        return torch.sort(flat, dim=1, descending=True, stable=True).indices
    # a stable sort of the permuted means orders ties by their position in the permutation
    within = torch.sort(flat.gather(1, permutations), dim=1, descending=True, stable=True).indices
    return permutations.gather(1, within)


def tied_share(means: torch.Tensor) -> torch.Tensor:
    """``[N]``: the share of each map's regions (``means [N, R, C]``) whose mean equals another
    region's mean exactly, i.e. whose MoRF position is decided by tie-breaking, not by the map."""
    ordered = torch.sort(means.flatten(1), dim=1).values
    same = ordered[:, 1:] == ordered[:, :-1]
    tied = torch.zeros_like(ordered, dtype=torch.bool)
    tied[:, 1:] |= same
    tied[:, :-1] |= same
    return tied.float().mean(dim=1)


def region_ranks(order: torch.Tensor) -> torch.Tensor:
    """The inverse of ``order [..., L]``: each region's position in the MoRF order (0 = perturbed first)."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def pixel_ranks(order: torch.Tensor, height: int, width: int, region_px: int) -> torch.Tensor:
    """``[N, H, W]``: the position of each pixel's region in the MoRF order (0 = perturbed first)."""
    _, cols = grid_shape(height, width, region_px)
    ranks = region_ranks(order)
    rows_idx = torch.arange(height, device=order.device) // region_px
    cols_idx = torch.arange(width, device=order.device) // region_px
    region_of_pixel = rows_idx[:, None] * cols + cols_idx[None, :]
    return ranks[:, region_of_pixel]


def noise_fill(image: torch.Tensor, order: torch.Tensor, region_px: int, mode: str, seed: int, image_id: str) -> torch.Tensor:
    """The values that replace each pixel of ``image [C, H, W]`` once its region is perturbed.

    ``per_image``: one noise image, seeded by (seed, image id) and shared by every region size and
    method. ``per_step``: the region perturbed at step k gets a fresh patch seeded by (seed, image
    id, region size, k) — the study's re-sampled noise. Noise is U[min(image), max(image)].
    """
    channels, height, width = image.shape
    low, high = image.min(), image.max()
    if mode == "per_image":
        return uniform((channels, height, width), low, high, generator(image.device, seed, image_id, "aopc"), image.device)
    if mode != "per_step":
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {mode!r}")
    rows, cols = grid_shape(height, width, region_px)
    count = rows * cols
    # Patch k depends only on the step, not on where it lands, so all are drawn first and then tiled
    # by each region's rank on the device (no host round trip for the order).
    patches = torch.stack([uniform((channels, region_px, region_px), low, high,
                                   generator(image.device, seed, image_id, "aopc", region_px, step), image.device)
                           for step in range(1, count + 1)])
    tiles = patches[region_ranks(order)].view(rows, cols, channels, region_px, region_px)
    # [R, C_grid, ch, s, s] -> [ch, R·s, C_grid·s], then edge regions are cropped to the image
    tiled = tiles.permute(2, 0, 3, 1, 4).reshape(channels, rows * region_px, cols * region_px)
    return tiled[:, :height, :width].contiguous()


@torch.no_grad()
def morf_curves(
    model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor, image_ids: list[str],
    region_px: int, zero_pad: bool, noise: str, seed: int, batch_size: int, amp: bool = True, ties: str = "row_major",
) -> torch.Tensor:
    """``f(x^k)`` for k = 0..L: ``[n, L+1]`` float32 for ``images [n, C, H, W]`` and ``saliency [n, H, W]``,
    tied regions ordered as ``ties`` says (:data:`TIE_MODES`).

    Perturbed inputs are built on the device batch by batch (never all L+1 copies of all images at
    once) and pushed through the model ``batch_size`` at a time.
    """
    n, _, height, width = images.shape
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    means = region_means(saliency, region_px, zero_pad)
    permutations = None
    if ties == "random":
        permutations = tie_permutations(means[0].numel(), image_ids, region_px, seed, images.device)
    order = region_order(means, permutations)
    steps = order.shape[1] + 1
    ranks = pixel_ranks(order, height, width, region_px)
    layout = layout_of(images)
    fills = torch.stack([noise_fill(images[i], order[i], region_px, noise, seed, image_ids[i]) for i in range(n)])
    fills = fills.contiguous(memory_format=layout)
    pair_image = torch.arange(n, device=images.device).repeat_interleave(steps)
    pair_step = torch.arange(steps, device=images.device).repeat(n)
    probabilities = torch.empty(n * steps, dtype=torch.float32, device=images.device)
    for part in chunks(n * steps, batch_size):
        which, step = pair_image[part], pair_step[part]
        perturbed = (ranks[which] < step.view(-1, 1, 1)).unsqueeze(1)
        batch = torch.where(perturbed, fills[which], images[which]).contiguous(memory_format=layout)
        probabilities[part] = target_probability(model, batch, targets[which], batch_size, amp)
    return probabilities.view(n, steps)


def aopc_from_curves(curves: torch.Tensor, decimals: int | None = None) -> torch.Tensor:
    """``[n, L+1]`` probabilities → AOPC ``[n]`` = mean_k (f⁰ − f^k); optional study rounding of
    each probability and of the result."""
    curves = rounded(curves, decimals)
    return rounded((curves[:, :1] - curves).mean(dim=1), decimals)


def saliency_for(raw_maps: torch.Tensor, post: postprocess.PostProcess, size: tuple[int, int]) -> torch.Tensor:
    """Post-processed maps at input resolution; AOPC needs them there to rank pixel regions."""
    if post.upsample == "none" and tuple(raw_maps.shape[-2:]) != tuple(size):
        raise ValueError("AOPC ranks pixel regions: postprocess.upsample must not be 'none'")
    return postprocess.apply(raw_maps, post, size)
