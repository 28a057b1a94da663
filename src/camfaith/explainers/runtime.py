"""What a stage needs to run any explainer on a loaded model: its layer, and per-image seeds."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from camfaith.explainers.base import Explainer
from camfaith.io import derive_seed
from camfaith.models import resolve_layer


def layer_for(explainer: Explainer, model: nn.Module, target_layer: str | None) -> tuple[str | None, nn.Module | None]:
    """``(name, module)`` of the layer ``explainer`` reads in ``model``: the configured target layer
    (None: the default, :func:`camfaith.models.default_target_layer`), the GAP module whose input CAM
    weights, or ``(None, None)`` for methods that read no layer."""
    if explainer.layer == "target":
        return resolve_layer(model, target_layer)
    if explainer.layer == "pool":
        from camfaith.explainers.cam_family import gap_head

        return "avgpool", gap_head(model)[0]
    return None, None


def image_seeds(seed: int, image_ids: Sequence[str]) -> list[int]:
    """One seed per image from (seed, image id) — never from the method, so a stochastic method
    draws the same numbers for an image wherever it is explained (explain, or a metric's re-explanation)."""
    return [derive_seed(seed, image_id, "explain") for image_id in image_ids]
