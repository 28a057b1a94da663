"""Faithfulness metrics on stored maps: AOPC (MoRF), Max-Sensitivity, HAAS.

Every metric writes the same long Parquet schema (:data:`SCORE_COLUMNS`, docs/formats.md).
``resolve`` turns a metric's config subtree and the protocol into the exact settings used; those
settings are recorded in the output.
"""

from __future__ import annotations

import copy

METRICS = ("aopc", "max_sensitivity", "haas")
PROTOCOLS = ("default", "thesis")
SCORE_COLUMNS = (
    "dataset", "model", "method", "metric", "protocol", "image_id", "label", "target", "prediction",
    "parameter", "parameter_value", "quantity", "step", "value",
)

# The study's exact choices, read from its code (shared notes, study-code.md §1-3). Maps: pytorch-grad-cam
# 1.4's ReLU, min-max, resize, min-max (its scale_cam_image once with and once without resizing), so
# they span [0, 1] at input resolution. amp False: the study computed in float32 (explain's float32
# comes from rules/common.smk explain_params).
_STUDY_MAPS = {"relu": True, "minmax": True, "upsample": "bilinear", "rescale": True}
THESIS = {
    "aopc": {"images": "correct", "zero_pad": True, "round_decimals": 3, "noise": "per_step", "ties": "row_major", "postprocess": _STUDY_MAPS,
             "amp": False},
    "max_sensitivity": {"images": "correct", "normalise": False, "clip": False, "postprocess": _STUDY_MAPS, "amp": False},
    "haas": {"images": "all", "accuracy": "plain", "round_decimals": 2, "postprocess": _STUDY_MAPS, "amp": False},
}


def resolve(metric: str, config: dict, protocol: str, overrides: dict | None = None) -> dict:
    """The settings a metric runs with: ``config`` as given, overridden by the study's choices when
    ``protocol`` is ``thesis``, then by ``overrides`` (a dataset's ``datasets.<name>.metrics.<metric>``),
    key by key: a per-dataset value wins over both (thesis.yaml states the study's per-dataset HAAS
    rounding this way). A dict value such as ``postprocess`` is replaced as a whole, as THESIS does."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    settings = copy.deepcopy(config)
    if protocol == "thesis":
        settings.update(copy.deepcopy(THESIS[metric]))
    settings.update(copy.deepcopy(overrides or {}))
    return settings
