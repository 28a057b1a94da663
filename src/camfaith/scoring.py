"""Runs one metric over the selected test images, block by block, into long score rows.

A metric is a :class:`Runner`: ``block`` scores a block of images, ``finish`` adds the rows that
need every image (HAAS's dataset-level ratio), ``footprint`` states the memory a block and a forward
batch take (metrics with model forwards). A new metric is a runner and its entry in
:mod:`camfaith.metrics.registry`, which names the runner; the loading, batching and output stay as they are.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from camfaith import metrics as metric_registry
from camfaith import postprocess
from camfaith.data.images import Preprocessing
from camfaith.explainers import Explainer, Settings
from camfaith.memory import Footprint
from camfaith.metrics import aopc, common, haas, localisation, max_sensitivity
from camfaith.models import autocast
from camfaith.store import MapSet

log = logging.getLogger(__name__)

ROW_COLUMNS = ("image_id", "label", "target", "prediction", "parameter", "parameter_value", "quantity", "step", "value")


@dataclass
class Context:
    """What every runner may use: the model (eval, no parameter gradients; None for a metric without
    forwards), the stored maps, the resolved settings and where to compute; for metrics that
    re-explain, the maps' explainer with its recorded settings and the layer it reads."""

    model: nn.Module | None
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
    """A block of selected images: inputs ``[n, C, H, W]`` on the device (None for a metric without
    forwards), their raw maps ``[n, h, w]``, targets ``[n]``, ids, positions in the maps file and the
    explainer's per-image seeds; for a ground-truth metric, the ground truth at input resolution:
    ``masks [n, H, W]`` bool (the mask, or the box rasterised where a dataset has only boxes) and
    ``boxes [n, 4]`` float (x0, y0, x1, y1 in input pixels, x1/y1 exclusive)."""

    images: torch.Tensor | None
    raw: torch.Tensor
    targets: torch.Tensor
    image_ids: list[str]
    positions: np.ndarray
    seeds: list[int]
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        source = self.images if self.images is not None else self.masks
        return tuple(source.shape[-2:])


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
    @staticmethod
    def footprint(sizes, params: int, explainer: Explainer | None, settings: Settings | None) -> Footprint:
        """Bytes this metric needs for a model whose probe (:func:`camfaith.memory.probe`) gave ``sizes``
        and whose parameters and buffers take ``params`` bytes (:mod:`camfaith.memory`). A metric
        without forwards keeps a block of maps and masks only: no plan."""
        return Footprint(fixed=0, per_block_image=0, per_sample=0)

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

    @staticmethod
    def footprint(sizes, params: int, explainer: Explainer | None, settings: Settings | None) -> Footprint:
        """Per forward input: activations, the perturbed input and its sources (the image, its noise
        fill, the mask); per loaded image: the image, its fill and int64 region ranks."""
        image, plane = sizes.image, sizes.plane
        return Footprint(fixed=2 * params, per_block_image=2 * image + 12 * plane, per_sample=activation_bytes(sizes) + 3 * image + 9 * plane)

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

    @staticmethod
    def footprint(sizes, params: int, explainer: Explainer | None, settings: Settings | None) -> Footprint:
        """Per forward input: activations, the image, the noise, the map and what the explainer needs to
        re-explain it (its declared footprint); per loaded image: the image and the reference maps."""
        if explainer is None:
            raise ValueError("the Max-Sensitivity memory model needs the explainer that re-explains")
        need = explainer.footprint(sizes, settings if settings is not None else explainer.settings())
        image, plane = sizes.image, sizes.plane
        return Footprint(fixed=2 * params + need.fixed, per_block_image=image + 8 * plane,
                         per_sample=activation_bytes(sizes) + 3 * image + need.per_image + 8 * plane)

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

    @staticmethod
    def footprint(sizes, params: int, explainer: Explainer | None, settings: Settings | None) -> Footprint:
        """Per forward input: activations and the HA image; per loaded image: the image and its HA copy."""
        return Footprint(fixed=2 * params, per_block_image=2 * sizes.image, per_sample=activation_bytes(sizes) + sizes.image)

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


def activation_bytes(sizes) -> int:
    """Activation memory of one forward input, from the probe's largest layer input + output, doubled
    (:data:`camfaith.memory.ACTIVATION_SAFETY`: tensors held across a block, allocator slack)."""
    from camfaith.memory import ACTIVATION_SAFETY

    return int(ACTIVATION_SAFETY * sizes.peak)


class GroundTruthRunner(Runner):
    """A localisation metric: the block's maps post-processed to input resolution against its masks
    and boxes; no model forward. Subclasses implement :meth:`score`."""

    def block(self, context: Context, block: Block, rows: Rows) -> None:
        if block.masks is None or block.boxes is None:
            raise ValueError(f"{type(self).__name__} needs the ground truth of every image (masks and boxes)")
        maps = postprocess.apply(block.raw, context.post, block.input_size)
        regions = block.masks if context.settings.get("region", "auto") != "box" else localisation.box_region(block.boxes, block.input_size)
        self.score(context, block, maps, regions, rows)

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        raise NotImplementedError

    metric = ""  # the registry name, whose quantity the NaN rows of undefined images carry

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        parameter, values = self.parameters(context.settings)
        quantity = metric_registry.get(self.metric).quantity
        for value in values:
            for position in positions:
                rows.add(int(position), parameter, value, quantity, None, np.nan)

    @staticmethod
    def parameters(settings: dict) -> tuple[str, list[float]]:
        return "none", [np.nan]


class PointingGameRunner(GroundTruthRunner):
    """Per image and tolerance: ``hit`` (the share of the map's maxima within the tolerance of the
    ground truth, :func:`~camfaith.metrics.localisation.pointing_game`), ``tied_maxima`` (pixels that
    hold the maximum) and, with ``abstain_below``, the KTH ``recall``."""

    metric = "pointing_game"

    @staticmethod
    def parameters(settings: dict) -> tuple[str, list[float]]:
        return "tolerance_px", [float(t) for t in settings["tolerance_px"]]

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        abstain = context.settings.get("abstain_below")
        for tolerance in self.parameters(context.settings)[1]:
            hit, tied = localisation.pointing_game(maps, regions, tolerance)
            recall = localisation.pointing_recall(maps, hit, abstain).cpu() if abstain is not None else None
            hit, tied = hit.cpu(), tied.cpu()
            for i, position in enumerate(block.positions):
                rows.add(position, "tolerance_px", tolerance, "hit", None, hit[i])
                rows.add(position, "tolerance_px", tolerance, "tied_maxima", None, tied[i])
                if recall is not None:
                    rows.add(position, "tolerance_px", tolerance, "recall", None, recall[i])


class LocalisationRunner(GroundTruthRunner):
    """Per image: the ``iou`` of the map's box (largest region above ``threshold`` × max) with the
    ground-truth box, ``box_hit`` (IoU at least the rule's), and per k of ``top_k`` the
    ``localisation_error``: 0 when the label is among the k highest logits and the box is a hit, else 1.
    A k not below the number of classes is left out (every label would be in the top k)."""

    metric = "localisation_error"

    def __init__(self) -> None:
        self.classes = 0

    def parameters(self, settings: dict) -> tuple[str, list[float]]:
        return "top_k", [float(k) for k in settings["top_k"] if k < self.classes or k == 1]

    def block(self, context: Context, block: Block, rows: Rows) -> None:
        self.classes = context.maps.logits.shape[1]
        super().block(context, block, rows)

    def undefined(self, context: Context, positions: np.ndarray, rows: Rows) -> None:
        self.classes = context.maps.logits.shape[1]
        super().undefined(context, positions, rows)

    def finish(self, context: Context, selected: np.ndarray, rows: Rows) -> None:
        self.classes = context.maps.logits.shape[1]
        dropped = [k for k in context.settings["top_k"] if float(k) not in self.parameters(context.settings)[1]]
        if dropped:
            log.warning("localisation error top-%s left out: the model has %d classes, so every label is among its top %s",
                        "/".join(map(str, dropped)), self.classes, "/".join(map(str, dropped)))

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        settings = context.settings
        boxes = localisation.largest_region_boxes(maps, settings["threshold"])
        iou = localisation.box_iou(boxes, block.boxes.to(boxes.device))
        hit = (iou >= localisation.iou_needed(block.boxes.to(boxes.device), settings["iou"], settings.get("iou_rule", "fixed"))).cpu().numpy()
        iou = iou.cpu().numpy()
        logits, labels = context.maps.logits[block.positions], context.maps.labels[block.positions]
        for i, position in enumerate(block.positions):
            rows.add(position, "none", np.nan, "iou", None, iou[i])
            rows.add(position, "none", np.nan, "box_hit", None, float(hit[i]))
        for k in self.parameters(settings)[1]:
            correct = localisation.top_k_correct(logits, labels, int(k))
            for i, position in enumerate(block.positions):
                rows.add(position, "top_k", k, "localisation_error", None, float(not (correct[i] and hit[i])))


class RelevanceMassRunner(GroundTruthRunner):
    """Per image: the share of positive attribution inside the ground truth."""

    metric = "relevance_mass"

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        values = localisation.relevance_mass(maps, regions).cpu()
        for i, position in enumerate(block.positions):
            rows.add(position, "none", np.nan, "relevance_mass", None, values[i])


class PixelsInsideRunner(GroundTruthRunner):
    """Per image and threshold: the share of the pixels above threshold × max that lie inside the ground truth."""

    metric = "pixels_inside"

    @staticmethod
    def parameters(settings: dict) -> tuple[str, list[float]]:
        return "threshold", [float(t) for t in settings["thresholds"]]

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        for threshold in self.parameters(context.settings)[1]:
            values = localisation.pixels_inside(maps, regions, threshold).cpu()
            for i, position in enumerate(block.positions):
                rows.add(position, "threshold", threshold, "pixels_inside", None, values[i])


class RelevanceRankRunner(GroundTruthRunner):
    """Per image: the share of the |ground truth| highest-ranked pixels that lie inside it."""

    metric = "relevance_rank"

    def score(self, context: Context, block: Block, maps: torch.Tensor, regions: torch.Tensor, rows: Rows) -> None:
        values = localisation.relevance_rank(maps, regions).cpu()
        for i, position in enumerate(block.positions):
            rows.add(position, "none", np.nan, "relevance_rank", None, values[i])


def runner_class(metric: str) -> type[Runner]:
    """The runner the registry names for ``metric`` (``module:Class``)."""
    module, name = metric_registry.get(metric).runner.split(":")
    return getattr(importlib.import_module(module), name)


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
    runner = runner_class(metric)()
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
    quantity = metric_registry.get(metric).quantity
    for q, parameter_value, value in zip(columns["quantity"], columns["parameter_value"], columns["value"]):
        if q == quantity and not np.isfinite(value):
            key = "all" if np.isnan(parameter_value) else f"{parameter_value:g}"
            counts[key] = counts.get(key, 0) + 1
    return counts
