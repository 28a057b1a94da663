"""HAAS: does emphasising what the map highlights keep the model right?

``HA = clip(x_norm · (1 + a_norm), −1, 1)`` with ``x_norm`` the image in [−1, 1] and ``a_norm`` the
map in [0, 1] upsampled to the input and applied to every channel. ``HAAS = acc(HA) / acc(x)``
over the selected images, with plain or balanced accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from camfaith import postprocess
from camfaith.data.images import Preprocessing


def ha_images(images: torch.Tensor, raw_maps: torch.Tensor, preprocessing: Preprocessing, post: postprocess.PostProcess) -> torch.Tensor:
    """HA images as model inputs ``[n, C, H, W]`` from normalised ``images`` and ``raw_maps [n, h, w]``.

    The image is taken to [−1, 1] whatever the model's normalisation (for mean = std = 0.5, the
    study's, that is the input itself), emphasised, clipped, and normalised back.
    """
    size = tuple(images.shape[-2:])
    a_norm = postprocess.apply(raw_maps, post, size)
    low, high = float(a_norm.min()), float(a_norm.max())
    if not (low >= -1e-6 and high <= 1 + 1e-6):  # written so that NaN fails the check too
        raise ValueError(f"HAAS needs maps in [0, 1] (postprocess relu+minmax); got range [{low:.3g}, {high:.3g}]")
    x_norm = 2 * preprocessing.to_unit(images) - 1
    emphasised = (x_norm * (1 + a_norm.unsqueeze(1))).clamp(-1, 1)
    return preprocessing.from_unit((emphasised + 1) / 2)


def accuracy(labels: np.ndarray, predictions: np.ndarray, kind: str) -> float:
    """``plain`` or ``balanced`` accuracy (sklearn)."""
    if kind == "plain":
        return float((labels == predictions).mean())
    if kind == "balanced":
        # imported here: scikit-learn takes 1.4 s to import, which every score job would pay
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(labels, predictions))
    raise ValueError(f"accuracy must be 'plain' or 'balanced', got {kind!r}")


def haas(labels: np.ndarray, predictions: np.ndarray, predictions_ha: np.ndarray, kind: str, decimals: int | None) -> tuple[float, float, float]:
    """``(HAAS, acc(x), acc(HA))``; with ``decimals`` both accuracies and the ratio are rounded (the study)."""
    acc, acc_ha = accuracy(labels, predictions, kind), accuracy(labels, predictions_ha, kind)
    if decimals is not None:
        acc, acc_ha = round(acc, decimals), round(acc_ha, decimals)
    ratio = acc_ha / acc if acc > 0 else float("nan")
    return (round(ratio, decimals) if decimals is not None else ratio), acc, acc_ha
