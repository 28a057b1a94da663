"""Metrics on stored maps: faithfulness (AOPC under MoRF, Max-Sensitivity, HAAS) and localisation
against the dataset's ground truth (pointing game, localisation error, relevance mass, pixels inside,
relevance rank). Each is defined once, in :mod:`camfaith.metrics.registry`.

Every metric writes the same long Parquet schema (:data:`SCORE_COLUMNS`, docs/formats.md).
``resolve`` turns a metric's config subtree and the protocol into the exact settings used; those
settings are recorded in the output.
"""

from __future__ import annotations

import copy

from camfaith.metrics.registry import METRICS, PROTOCOLS, REGISTRY, get

SCORE_COLUMNS = (
    "dataset", "model", "method", "metric", "protocol", "image_id", "label", "target", "prediction",
    "parameter", "parameter_value", "quantity", "step", "value",
)
# metric → the study's settings under the thesis protocol (the registry's ``thesis``), for the metrics it has
THESIS = {name: metric.thesis for name, metric in REGISTRY.items() if metric.thesis is not None}

__all__ = ["METRICS", "PROTOCOLS", "REGISTRY", "SCORE_COLUMNS", "THESIS", "get", "resolve"]


def resolve(metric: str, config: dict, protocol: str, overrides: dict | None = None) -> dict:
    """The settings a metric runs with: ``config`` as given, overridden by the study's choices when
    ``protocol`` is ``thesis``, then by ``overrides`` (a dataset's ``datasets.<name>.metrics.<metric>``),
    key by key: a per-dataset value wins over both (thesis.yaml states the study's per-dataset HAAS
    rounding this way). A dict value such as ``postprocess`` is replaced as a whole, as THESIS does.
    A metric the thesis protocol does not have (the study did not compute it) is a ValueError there."""
    entry = get(metric)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    if not entry.in_protocol(protocol):
        raise ValueError(f"metric {metric!r} is not part of the {protocol} protocol (the study did not compute it)")
    settings = copy.deepcopy(config)
    if protocol == "thesis":
        settings.update(copy.deepcopy(entry.thesis))
    settings.update(copy.deepcopy(overrides or {}))
    return settings
