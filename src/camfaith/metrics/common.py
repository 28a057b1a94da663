"""Pieces shared by the metrics: image selection, seeded noise, chunked class probabilities."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from camfaith.io import derive_seed


def select(labels: np.ndarray, predictions: np.ndarray, which: str) -> np.ndarray:
    """Positions of the images a metric uses: ``all``, or ``correct`` (prediction == label)."""
    if which == "all":
        return np.arange(len(labels))
    if which == "correct":
        return np.flatnonzero(labels == predictions)
    raise ValueError(f"images must be 'all' or 'correct', got {which!r}")


# The score-file layout (docs/formats.md §8); files without the metadata key are version 1
SCORES_FORMAT = "camfaith.scores/2"

# Per-image map diagnostics every score file carries (docs/statistics.md): mutually exclusive, in this order
MAP_STATES = ("map_nonfinite", "map_zero", "map_constant")


def map_states(raw_maps: np.ndarray, relu: bool) -> dict[str, np.ndarray]:
    """Which of ``raw_maps [n, h, w]`` are degenerate, as bool ``[n]`` per :data:`MAP_STATES`:
    ``map_nonfinite`` (a NaN or inf value), ``map_zero`` (all zero, after ReLU when the metric
    applies it: nothing is attributed, every region ties) and ``map_constant`` (finite, not zero,
    one value everywhere: min-max scaling makes it zero). A degenerate map is still scored (except a
    non-finite one); it is counted so a reader knows how many values rest on tie-breaking alone."""
    flat = np.asarray(raw_maps, dtype=np.float32).reshape(len(raw_maps), -1)
    nonfinite = ~np.isfinite(flat).all(axis=1)
    clean = np.where(np.isfinite(flat), flat, 0.0)
    if relu:
        clean = np.maximum(clean, 0.0)
    zero = ~nonfinite & (clean == 0).all(axis=1)
    constant = ~nonfinite & ~zero & (np.ptp(clean, axis=1) == 0) if flat.shape[1] else np.zeros(len(flat), dtype=bool)
    return {"map_nonfinite": nonfinite, "map_zero": zero, "map_constant": constant}


def generator(device: torch.device, *parts: object) -> torch.Generator:
    """A torch generator on ``device`` seeded by ``parts`` (seed, image id, purpose, step...).

    Seeds never include the CAM method, so every method sees the same noise (a paired comparison).
    """
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def uniform(shape: tuple[int, ...], low: float | torch.Tensor, high: float | torch.Tensor, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform noise in [low, high) of ``shape`` (float32) from ``gen``."""
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def layout_of(images: torch.Tensor) -> torch.memory_format:
    """The memory format of ``images [N, C, H, W]``, so perturbed copies can be built in the same one
    (a channels_last model fed contiguous batches converts every batch, losing its speed-up)."""
    if images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@torch.no_grad()
def target_probability(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int, amp: bool) -> torch.Tensor:
    """Softmax probability of ``targets [M]`` for ``images [M, C, H, W]``, in float32, in chunks."""
    out = torch.empty(len(images), dtype=torch.float32, device=images.device)
    for part in chunks(len(images), batch_size):
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp and images.device.type == "cuda"):
            logits = model(images[part])
        out[part] = logits.float().softmax(dim=1).gather(1, targets[part].view(-1, 1)).squeeze(1)
    return out


@torch.no_grad()
def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: int, amp: bool) -> torch.Tensor:
    """Argmax class ``[M]`` for ``images [M, C, H, W]``, in chunks."""
    out = torch.empty(len(images), dtype=torch.int64, device=images.device)
    for part in chunks(len(images), batch_size):
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp and images.device.type == "cuda"):
            out[part] = model(images[part]).argmax(dim=1)
    return out


def rounded(values: torch.Tensor | float, decimals: int | None):
    """Round half to even to ``decimals`` (the study rounds probabilities and scores); None: unchanged."""
    if decimals is None:
        return values
    if isinstance(values, torch.Tensor):
        return torch.round(values, decimals=decimals)
    return round(float(values), decimals)


def score_frame(rows: dict[str, list], identity: dict[str, str]) -> pd.DataFrame:
    """Assemble the long score table: ``rows`` columns plus the constant ``identity`` columns."""
    from camfaith.metrics import SCORE_COLUMNS

    frame = pd.DataFrame(rows)
    for key, value in identity.items():
        frame[key] = value
    for column in ("label", "target", "prediction", "step"):
        frame[column] = frame[column].astype("Int64")
    for column in ("dataset", "model", "method", "metric", "protocol", "image_id", "parameter", "quantity"):
        frame[column] = frame[column].astype("string")
    frame["parameter_value"] = frame["parameter_value"].astype("float64")
    frame["value"] = frame["value"].astype("float64")
    return frame[list(SCORE_COLUMNS)]
