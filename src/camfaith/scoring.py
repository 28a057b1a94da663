"""Runs one metric over the selected test images, block by block, into long score rows.

A metric is a :class:`Runner`: ``block`` scores a block of images, ``finish`` adds the rows that
need every image (HAAS's dataset-level ratio). A new metric is a new runner in :data:`RUNNERS`
(plus its config block in the schema); the loading, batching and output stay as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from camfaith import postprocess
from camfaith.data.images import Preprocessing
from camfaith.explainers import Explainer, Settings
from camfaith.metrics import aopc, common, haas, max_sensitivity
from camfaith.models import autocast
from camfaith.store import MapSet

log = logging.getLogger(__name__)

ROW_COLUMNS = ("image_id", "label", "target", "prediction", "parameter", "parameter_value", "quantity", "step", "value")


@dataclass
class Context:
    """What every runner may use: the model (eval, no parameter gradients), the stored maps, the
    resolved settings and where to compute; for metrics that re-explain, the maps' explainer with
    its recorded settings and the layer it reads."""

    model: nn.Module
    maps: MapSet
    settings: dict
    preprocessing: Preprocessing
    device: torch.device
    seed: int
    amp: bool
    explainer: Explainer | None = None
    explainer_settings: Settings | None = None
    layer: nn.Module | None = None
    post: postprocess.PostProcess = field(init=False)

    def __post_init__(self) -> None:
        self.post = postprocess.PostProcess.from_config(self.settings["postprocess"])

    @property
    def method(self) -> str:
        return str(self.maps.attrs["method"])


@dataclass
class Block:
    """A block of selected images: inputs ``[n, C, H, W]`` on the device, their raw maps ``[n, h, w]``,
    targets ``[n]``, ids, positions in the maps file and the explainer's per-image seeds."""

    images: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    image_ids: list[str]
    positions: np.ndarray
    seeds: list[int]


class Rows:
    """Column lists of the long score table (:data:`camfaith.metrics.SCORE_COLUMNS` less identity)."""

    def __init__(self, maps: MapSet):
        self.maps = maps
        self.columns: dict[str, list] = {key: [] for key in ROW_COLUMNS}

    def add(self, position: int | None, parameter: str, parameter_value: float, quantity: str, step: int | None, value: float) -> None:
        """One row; ``position`` None makes a summary row (no image)."""
        self.columns["image_id"].append(None if position is None else self.maps.image_ids[position])
        for column, array in (("label", self.maps.labels), ("target", self.maps.targets), ("prediction", self.maps.predictions)):
            self.columns[column].append(None if position is None else int(array[position]))
        self.columns["parameter"].append(parameter)
        self.columns["parameter_value"].append(float(parameter_value))
        self.columns["quantity"].append(quantity)
        self.columns["step"].append(step)
        self.columns["value"].append(float(value))


class Runner:
    def block(self, context: Context, block: Block, rows: Rows) -> None:
        raise NotImplementedError

    def finish(self, context: Context, selected: np.ndarray, rows: Rows) -> None:
        """Rows that need every image; none by default."""

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        """NaN rows for images that cannot be scored (a non-finite map): one per parameter value."""
        raise NotImplementedError


class AopcRunner(Runner):
    """Per image and region size: the AOPC value, the MoRF curve (``probability`` at each step) and
    the share of regions whose rank was decided by tie-breaking (``tied_regions``)."""

    def block(self, context: Context, block: Block, rows: Rows) -> None:
        settings = context.settings
        decimals = settings.get("round_decimals")
        saliency = aopc.saliency_for(block.raw, context.post, tuple(block.images.shape[-2:]))
        for region_px in settings["region_px"]:
            curves = aopc.morf_curves(context.model, block.images, saliency, block.targets, block.image_ids, region_px,
                                      settings["zero_pad"], settings["noise"], context.seed, settings["batch_size"], context.amp,
                                      ties=settings.get("ties", "random"))
            values = aopc.aopc_from_curves(curves, decimals).cpu()
            shown = common.rounded(curves, decimals).cpu()
            tied = aopc.tied_share(aopc.region_means(saliency, region_px, settings["zero_pad"])).cpu()
            for i, position in enumerate(block.positions):
                rows.add(position, "region_px", region_px, "aopc", None, values[i])
                rows.add(position, "region_px", region_px, "tied_regions", None, tied[i])
                for step in range(shown.shape[1]):
                    rows.add(position, "region_px", region_px, "probability", step, shown[i, step])

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        for region_px in context.settings["region_px"]:
            for position in positions:
                rows.add(int(position), "region_px", region_px, "aopc", None, np.nan)


class MaxSensitivityRunner(Runner):
    """Per image and radius: the largest (optionally normalised) map change under the radius's noise,
    the noisy copies re-explained by the maps' own explainer."""

    def block(self, context: Context, block: Block, rows: Rows) -> None:
        settings = context.settings
        clip_range = None
        if settings.get("clip", False):
            zeros = torch.zeros(1, block.images.shape[1], 1, 1, device=context.device)
            clip_range = (context.preprocessing.from_unit(zeros), context.preprocessing.from_unit(zeros + 1))
        explainer, explainer_settings = context.explainer, context.explainer_settings
        if explainer is None:
            raise ValueError("Max-Sensitivity re-explains: the context needs the maps' explainer")
        amp = context.amp and explainer.amp

        def explain(noisy: torch.Tensor, targets: torch.Tensor, seeds) -> torch.Tensor:
            with autocast(context.device, amp):
                return explainer.explain(context.model, context.layer, noisy, targets, explainer_settings, seeds)

        floor = settings.get("normalise_floor", max_sensitivity.DEFAULT_FLOOR) if settings["normalise"] else None
        for entry in settings["radii"]:
            floored = torch.zeros(len(block.positions), dtype=torch.bool, device=context.device)
            values = max_sensitivity.max_sensitivity(
                explain, block.images, block.raw, block.targets, block.image_ids, block.seeds, radius=entry["radius"],
                samples=entry["samples"], post=context.post, normalise=settings["normalise"], clip_range=clip_range,
                seed=context.seed, batch_size=settings["batch_size"], floor=floor, floored=floored).cpu()
            floored = floored.cpu()
            for i, position in enumerate(block.positions):
                rows.add(position, "radius", entry["radius"], "max_sensitivity", None, values[i])
                if floor is not None:
                    rows.add(position, "radius", entry["radius"], "reference_floored", None, float(floored[i]))

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        for entry in context.settings["radii"]:
            for position in positions:
                rows.add(int(position), "radius", entry["radius"], "max_sensitivity", None, np.nan)


class HaasRunner(Runner):
    """Per image: is the HA image still classified correctly; then the dataset-level ratio."""

    def __init__(self) -> None:
        self.predicted: list[np.ndarray] = []

    def block(self, context: Context, block: Block, rows: Rows) -> None:
        emphasised = haas.ha_images(block.images, block.raw, context.preprocessing, context.post)
        self.predicted.append(common.predict_classes(context.model, emphasised, context.settings["batch_size"], context.amp).cpu().numpy())

    def finish(self, context: Context, selected: np.ndarray, rows: Rows) -> None:
        predicted = np.concatenate(self.predicted) if self.predicted else np.zeros(0, dtype=np.int64)
        labels, originals = context.maps.labels[selected], context.maps.predictions[selected]
        for i, position in enumerate(selected):
            rows.add(int(position), "none", np.nan, "correct_ha", None, float(predicted[i] == labels[i]))
        value, acc, acc_ha = haas.haas(labels, originals, predicted, context.settings["accuracy"], context.settings.get("round_decimals"))
        for quantity, number in (("accuracy_original", acc), ("accuracy_ha", acc_ha), ("haas", value)):
            rows.add(None, "none", np.nan, quantity, None, number)

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        # no HA image without a map: the image is left out of both accuracies of the ratio
        for position in positions:
            rows.add(int(position), "none", np.nan, "correct_ha", None, np.nan)


RUNNERS: dict[str, type[Runner]] = {"aopc": AopcRunner, "max_sensitivity": MaxSensitivityRunner, "haas": HaasRunner}
REEXPLAINS = {"max_sensitivity"}  # metrics that recompute maps, so need the explainer and its layer


# The per-image quantity of each metric: the one whose NaN values are counted as undefined
PER_IMAGE_QUANTITY = {"aopc": "aopc", "max_sensitivity": "max_sensitivity", "haas": "correct_ha"}


# Seconds between two progress lines of a score job
PROGRESS_SECONDS = 30.0


class Progress:
    """Logs ``images done of total, rate, time left`` at most every ``every`` seconds, and at the end."""

    def __init__(self, metric: str, method: str, total: int, every: float = PROGRESS_SECONDS, clock=time.monotonic):
        self.metric, self.method, self.total, self.every, self.clock = metric, method, total, every, clock
        self.done = 0
        self.start = self.last = clock()

    def advance(self, images: int) -> None:
        self.done += images
        now = self.clock()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            elapsed = max(now - self.start, 1e-9)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%s of %s: %d of %d images (%.0f %%), %.2f images/s, about %s left", self.metric, self.method, self.done,
                     self.total, 100 * self.done / max(self.total, 1), rate, _duration(left))


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "unknown time"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run(metric: str, context: Context, blocks, selected: np.ndarray, undefined: np.ndarray | None = None,
        progress_seconds: float = PROGRESS_SECONDS) -> dict[str, list]:
    """Score ``metric`` over ``blocks`` (an iterable of :class:`Block`) of the ``selected`` positions
    and return the row columns; the ``undefined`` positions (images whose map is not finite) get NaN
    rows instead of scores. Every selected or undefined image also gets its map diagnostics
    (:data:`camfaith.metrics.common.MAP_STATES`, 0/1 rows). Progress is logged every
    ``progress_seconds``."""
    runner = RUNNERS[metric]()
    rows = Rows(context.maps)
    progress = Progress(metric, context.method, len(selected), progress_seconds)
    for block in blocks:
        runner.block(context, block, rows)
        progress.advance(len(block.positions))
    runner.finish(context, selected, rows)
    undefined = np.zeros(0, dtype=np.int64) if undefined is None else np.asarray(undefined, dtype=np.int64)
    if len(undefined):
        runner.undefined(context, undefined, rows)
    scored = np.sort(np.concatenate([np.asarray(selected, dtype=np.int64), undefined]))
    states = common.map_states(context.maps.maps[scored], context.post.relu)
    for state in common.MAP_STATES:
        for position, flag in zip(scored, states[state], strict=True):
            rows.add(int(position), "none", np.nan, state, None, float(flag))
    return rows.columns


def degenerate_counts(columns: dict[str, list]) -> dict[str, int]:
    """How many of the scored images have each degenerate map state (zeros omitted)."""
    counts = dict.fromkeys(common.MAP_STATES, 0)
    for quantity, value in zip(columns["quantity"], columns["value"]):
        if quantity in counts and value > 0:
            counts[quantity] += 1
    return {state: count for state, count in counts.items() if count}


def undefined_counts(columns: dict[str, list], metric: str) -> dict[str, int]:
    """Per parameter value, how many per-image values of ``metric`` are NaN or infinite."""
    counts: dict[str, int] = {}
    quantity = PER_IMAGE_QUANTITY[metric]
    for q, parameter_value, value in zip(columns["quantity"], columns["parameter_value"], columns["value"]):
        if q == quantity and not np.isfinite(value):
            key = "all" if np.isnan(parameter_value) else f"{parameter_value:g}"
            counts[key] = counts.get(key, 0) + 1
    return counts
