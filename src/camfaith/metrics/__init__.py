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

# The study's exact choices, read from its code (shared notes, study-code.md §1-3).
_STUDY_MAPS = {"relu": True, "minmax": True, "upsample": "bilinear"}
THESIS = {
    "aopc": {"images": "correct", "zero_pad": True, "round_decimals": 3, "noise": "per_step", "postprocess": _STUDY_MAPS},
    "max_sensitivity": {"images": "correct", "normalise": False, "clip": False, "postprocess": _STUDY_MAPS},
    "haas": {"images": "all", "accuracy": "plain", "round_decimals": 2, "postprocess": _STUDY_MAPS},
}


def resolve(metric: str, config: dict, protocol: str) -> dict:
    """The settings a metric runs with: ``config`` as given, overridden by the study's choices when
    ``protocol`` is ``thesis``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    settings = copy.deepcopy(config)
    if protocol == "thesis":
        settings.update(copy.deepcopy(THESIS[metric]))
    return settings
