"""Max-Sensitivity: the largest change of the map under small uniform input noise.

For radius r and S samples, ``y_s = x + u_s`` with ``u_s ~ U[−r, r]`` per element (the L∞ ball),
drawn with a seed from (seed, image id, r, s) so every method sees the same samples. The map Φ is
post-processed as configured and upsampled to the input, and

    MaxSens(x) = max_s ‖Φ(x) − Φ(y_s)‖₂  [ / ‖Φ(x)‖₂ when ``normalise`` ]

Normalising makes the value scale-free, but a reference map that is nearly zero (a Grad-CAM++ or
Grad-CAM map that ReLU all but erased) turns a small absolute change into a huge ratio, and one
such image dominates a mean (799 [1, 2388] on the default run before this). ``floor`` ε bounds
the denominator from below relative to the map scale seen for that image:

    denominator = max(‖Φ(x)‖₂, ε · max(‖Φ(x)‖₂, max_s ‖Φ(y_s)‖₂))

so a value is at most 1 + 1/ε, still scale-free (multiplying every map by c changes nothing),
and depends on no other image. Images where the floor decides are counted ("floored"). Without
``floor`` a zero reference map gives NaN; with it, a zero reference and all-zero noisy maps give 0.

Φ(y_s) is recomputed by the same explainer, with the settings, layer and target class of the
stored map (Captum's ``sensitivity_max`` takes an explanation function the same way), so the metric
works for every method: one sample costs what one explanation of one image costs (a forward and a
head-only backward for the Grad-CAM family, a forward per channel for Score-CAM, ...). A stochastic
explainer re-explains a noisy copy with its image's own seed, so only the input noise differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from camfaith import postprocess
from camfaith.metrics.common import chunks, generator, layout_of

# ε of the floored normalisation when the config does not say (module docstring)
DEFAULT_FLOOR = 0.1

# (images [M, C, H, W], targets [M], seeds [M]) -> raw maps [M, h, w] at the explainer's resolution
ExplainFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]


def fill_noise(out: torch.Tensor, image_id: str, radius: float, sample: int, seed: int) -> torch.Tensor:
    """Fill ``out [C, H, W]`` (contiguous) in place with sample ``sample`` of ``u ~ U[−r, r]`` for one
    image, from that sample's own seed; returns ``out``. In place so a forward batch of noise is drawn
    straight into one buffer (no per-sample tensors to stack)."""
    if not out.is_contiguous():
        # uniform_ assigns draws in memory order, so another layout would give other noise
        raise ValueError("noise must be drawn into a contiguous [C, H, W] tensor")
    return out.uniform_(-radius, radius, generator=generator(out.device, seed, image_id, "max_sensitivity", radius, sample))


def noise_sample(shape: torch.Size, image_id: str, radius: float, sample: int, seed: int, device: torch.device) -> torch.Tensor:
    """Sample ``sample`` of the noise ``u ~ U[−r, r]`` of ``shape [C, H, W]`` for one image (its own seed)."""
    return fill_noise(torch.empty(shape, dtype=torch.float32, device=device), image_id, radius, sample, seed)


def perturbations(image: torch.Tensor, image_id: str, radius: float, samples: int, seed: int) -> torch.Tensor:
    """``[S, C, H, W]`` noisy copies of ``image [C, H, W]``."""
    return image.unsqueeze(0) + torch.stack([noise_sample(image.shape, image_id, radius, s, seed, image.device) for s in range(samples)])


def max_sensitivity(
    explain: ExplainFn, images: torch.Tensor, raw_maps: torch.Tensor, targets: torch.Tensor, image_ids: Sequence[str],
    seeds: Sequence[int], *, radius: float, samples: int, post: postprocess.PostProcess, normalise: bool,
    clip_range: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int, batch_size: int,
    floor: float | None = None, floored: torch.Tensor | None = None,
) -> torch.Tensor:
    """MaxSens ``[n]`` for ``images [n, C, H, W]`` whose raw maps ``raw_maps [n, h, w]`` were computed
    for ``targets [n]`` with per-image explainer ``seeds``; ``explain`` recomputes maps of noisy copies,
    ``batch_size`` of them per call. ``clip_range`` (low, high ``[1, C, 1, 1]``) clamps the noisy
    inputs; None leaves them unclipped (the study). With ``normalise``, ``floor`` ε floors the
    denominator at ε times the largest map norm of the image (module docstring); ``floored``, a
    bool ``[n]`` tensor, receives where it did. A zero reference map with ``normalise`` and no
    ``floor``, or a non-finite map, gives NaN."""
    n, _, height, width = images.shape
    size = (height, width)
    reference = postprocess.apply(raw_maps, post, size)
    distances = torch.empty(n, samples, dtype=torch.float32, device=images.device)
    norms = torch.empty(n, samples, dtype=torch.float32, device=images.device)  # ‖Φ(y_s)‖, the floor's scale
    pair_image = torch.arange(n, device=images.device).repeat_interleave(samples)
    layout = layout_of(images)
    flat, flat_norms = distances.view(-1), norms.view(-1)
    noise_buffer = torch.empty((min(batch_size, n * samples), *images.shape[1:]), dtype=torch.float32, device=images.device)
    for part in chunks(n * samples, batch_size):
        which = pair_image[part]
        # Noise is drawn per chunk (each sample has its own seed), so memory holds one forward
        # batch of noisy inputs, never all n·S of a block.
        noise = noise_buffer[: part.stop - part.start]
        for row, k in enumerate(range(part.start, part.stop)):
            fill_noise(noise[row], image_ids[k // samples], radius, k % samples, seed)
        noisy = torch.empty_like(noise, memory_format=layout)
        torch.add(images[which], noise, out=noisy)
        if clip_range is not None:
            noisy = torch.maximum(torch.minimum(noisy, clip_range[1]), clip_range[0])
        maps = explain(noisy, targets[which], [seeds[k // samples] for k in range(part.start, part.stop)])
        perturbed = postprocess.apply(maps, post, size)
        flat[part] = (perturbed - reference[which]).flatten(1).norm(dim=1)
        flat_norms[part] = perturbed.flatten(1).norm(dim=1)
    worst = distances.max(dim=1).values
    # a non-finite re-explanation (or reference) makes the value undefined: NaN, never inf
    worst = torch.where(torch.isfinite(worst), worst, torch.nan)
    if floored is not None:
        floored.zero_()
    if not normalise:
        return worst
    scale = reference.flatten(1).norm(dim=1)
    if floor is None:
        return torch.where(scale > 0, worst / torch.where(scale > 0, scale, 1.0), torch.nan)
    lowest = floor * torch.maximum(scale, norms.max(dim=1).values)
    denominator = torch.maximum(scale, lowest)
    if floored is not None:
        floored.copy_(scale < lowest)
    # every map of the image zero: nothing changed, nothing to divide (0, and the map is counted degenerate)
    return torch.where(denominator > 0, worst / torch.where(denominator > 0, denominator, 1.0), torch.where(torch.isnan(worst), worst, 0.0))
