"""Localisation metrics: how well a map points at the dataset's ground truth (docs/metrics.md §9).

Every function takes post-processed maps ``[N, H, W]`` at input resolution (float32) and the ground
truth at the same resolution: ``regions [N, H, W]`` bool (a mask, or a box rasterised by
:func:`box_region`) or ``boxes [N, 4]`` float ``(x0, y0, x1, y1)`` in input pixels, x1/y1 exclusive.
None of them runs the model. An image whose value is undefined (an empty ground truth, a map with
nothing to measure) gets NaN, which the score job counts and the tables report as undefined.

Own code rather than Quantus: Quantus's localisation metrics loop over images in NumPy, count a tied
or all-zero map's maximum as a hit (its ``PointingGame``), set a bool hit to True where NaN was meant
for empty masks, and have no tolerance, no box from a map and no abstention (shared notes,
anchors.md §2.2); the definitions here state their ties and edge cases and are tested by hand.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# 8-connectivity for a map's regions: cv2.findContours (the KTH code) traces 8-connected outlines
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def box_region(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, H, W]`` bool: the pixels whose centre lies in each box ``[N, 4]`` (x0, y0, x1, y1), x1/y1
    exclusive; a NaN box gives an empty region."""
    height, width = size
    ys = torch.arange(height, dtype=torch.float32, device=boxes.device) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=boxes.device) + 0.5
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs.view(1, 1, -1) >= x0) & (xs.view(1, 1, -1) < x1) & (ys.view(1, -1, 1) >= y0) & (ys.view(1, -1, 1) < y1)


def within(regions: torch.Tensor, tolerance_px: float) -> torch.Tensor:
    """``[N, H, W]`` bool: pixels at most ``tolerance_px`` (Euclidean, pixel centres) from a region pixel."""
    if tolerance_px <= 0:
        return regions
    radius = int(np.floor(tolerance_px))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=regions.device)
    disc = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 <= tolerance_px**2).float()
    reached = F.conv2d(regions.float().unsqueeze(1), disc.view(1, 1, *disc.shape), padding=radius).squeeze(1)
    return reached > 0.5


def maxima(maps: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` bool: the pixels holding each map's maximum (several where it is tied)."""
    return maps == maps.flatten(1).max(dim=1).values.view(-1, 1, 1)


def pointing_game(maps: torch.Tensor, regions: torch.Tensor, tolerance_px: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``(hit, tied)``, both ``[N]`` float.

    ``hit``: 1 when the map's maximum lies within ``tolerance_px`` of the region, 0 when not; where the
    maximum is tied, the share of the tied maxima that do (the expected hit of a random choice among
    them: no row-major or first-index bias). A constant map (all zero after ReLU included) points at
    nothing and is a miss (0). An empty region is undefined (NaN). ``tied``: how many pixels hold the
    maximum (1 for a single point; H·W for a constant map).
    """
    top = maxima(maps)
    tied = top.flatten(1).sum(dim=1).float()
    near = within(regions, tolerance_px)
    hit = (top & near).flatten(1).sum(dim=1).float() / tied
    constant = tied == maps[0].numel()
    hit = torch.where(constant, torch.zeros_like(hit), hit)
    empty = ~regions.flatten(1).any(dim=1)
    return torch.where(empty, torch.full_like(hit, float("nan")), hit), tied


def pointing_recall(maps: torch.Tensor, hit: torch.Tensor, abstain_below: float) -> torch.Tensor:
    """``[N]``: the KTH recall of the ground-truth class: a hit whose map maximum reaches
    ``abstain_below`` counts 1; an image whose maximum is below it abstains and counts 0 (NaN stays NaN)."""
    confident = maps.flatten(1).max(dim=1).values >= abstain_below
    return torch.where(confident, hit, torch.where(torch.isnan(hit), hit, torch.zeros_like(hit)))


def largest_region_boxes(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[N, 4]`` float: the bounding box (x0, y0, x1, y1; pixel edges, x1/y1 exclusive) of each map's
    largest 8-connected region of pixels above ``threshold`` × its maximum (Grad-CAM's weakly
    supervised localisation). Regions of equal size: the first in row-major order of their first
    pixel. A map with no positive maximum has no region: NaN box."""
    values = maps.detach().float().cpu().numpy()
    boxes = np.full((len(values), 4), np.nan, dtype=np.float32)
    for i, plane in enumerate(values):
        peak = float(plane.max())
        if not np.isfinite(peak) or peak <= 0:
            continue
        labels, count = ndimage.label(plane > threshold * peak, structure=EIGHT_CONNECTED)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        rows, cols = np.nonzero(labels == int(np.argmax(sizes)) + 1)
        boxes[i] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return torch.from_numpy(boxes).to(maps.device)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``[N]`` intersection over union of paired boxes ``[N, 4]``; 0 where either box is NaN or empty."""
    x0 = torch.maximum(first[:, 0], second[:, 0])
    y0 = torch.maximum(first[:, 1], second[:, 1])
    x1 = torch.minimum(first[:, 2], second[:, 2])
    y1 = torch.minimum(first[:, 3], second[:, 3])
    intersection = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)

    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

    union = area(first) + area(second) - intersection
    iou = torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))
    return torch.nan_to_num(iou, nan=0.0)


def iou_needed(truth: torch.Tensor, iou: float, rule: str) -> torch.Tensor:
    """``[N]``: the IoU a box needs to be a hit: ``iou`` (rule ``fixed``), or the ILSVRC rule
    ``min(iou, wh / ((w + 10)(h + 10)))`` of the ground-truth box (``ilsvrc``, the KTH code)."""
    if rule == "fixed":
        return torch.full((len(truth),), float(iou), device=truth.device)
    if rule != "ilsvrc":
        raise ValueError(f"iou_rule must be fixed or ilsvrc, got {rule!r}")
    w, h = truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]
    return torch.clamp(w * h / ((w + 10) * (h + 10)), max=float(iou))


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` bool: the label is among the ``k`` highest logits (ties broken by the lower class index)."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def relevance_mass(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``[N]``: the share of positive attribution inside the region, Σ relu(m)·region / Σ relu(m)
    (Arras et al. 2022; "energy inside the box"). NaN for a map with no positive attribution or an empty region."""
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * regions.flatten(1).float()).sum(dim=1)
    share = inside / total.clamp(min=torch.finfo(total.dtype).tiny)
    undefined = (total <= 0) | ~regions.flatten(1).any(dim=1)
    return torch.where(undefined, torch.full_like(share, float("nan")), share)


def pixels_inside(maps: torch.Tensor, regions: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[N]``: of the pixels above ``threshold`` × the map's maximum, the share inside the region
    (the KTH reproduction's task 5 score, on min-max-scaled maps). NaN where no pixel is above (a map
    with no positive maximum) or the region is empty."""
    peak = maps.flatten(1).max(dim=1).values.view(-1, 1, 1)
    above = (maps > threshold * peak) & (peak > 0)
    count = above.flatten(1).sum(dim=1).float()
    share = (above & regions).flatten(1).sum(dim=1).float() / count.clamp(min=1)
    undefined = (count == 0) | ~regions.flatten(1).any(dim=1)
    return torch.where(undefined, torch.full_like(share, float("nan")), share)


def relevance_rank(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``[N]``: relevance rank accuracy (Arras et al. 2022): of the K = |region| highest-ranked pixels,
    the share inside the region. Pixels tied with the K-th value share the places left, each counting
    its expected part (a random order among them), so ties add no positional bias; an all-zero map
    scores the region's area fraction, a random pointer's. NaN for an empty region."""
    flat, inside = maps.flatten(1), regions.flatten(1)
    k = inside.sum(dim=1)
    ordered = flat.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp(min=0).view(-1, 1))
    above, tied = flat > kth, flat == kth
    places = (k - above.sum(dim=1)).float()
    share_tied = (tied & inside).sum(dim=1).float() / tied.sum(dim=1).clamp(min=1).float()
    accuracy = ((above & inside).sum(dim=1).float() + places * share_tied) / k.clamp(min=1).float()
    return torch.where(k == 0, torch.full_like(accuracy, float("nan")), accuracy)
