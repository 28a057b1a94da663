"""The metric registry: the one place a metric is defined.

Each :class:`Metric` states its name and titles, its direction, the per-image quantity the tables
average and the paired tests compare, what it needs (:data:`NEEDS`), its typed settings (a JSON
schema the config is validated against), the study's overrides under the thesis protocol (or that the
protocol has no such metric), and where its runner lives (the runner also holds its memory model,
``footprint``). The schema's ``metrics`` section, the workflow's rules and wildcards, the memory
planner, the tables, the verdict and the figures read this table; nothing here imports torch, so the
workflow plans from it in milliseconds.

Adding a metric: a runner (a class with ``block``/``finish``/``undefined`` and, for a metric with model
forwards, ``footprint``) in its own module, and one entry below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a metric may need. ``forward``: model forwards (it runs in the per-method ``score`` job, which
# loads the model and plans memory); ``explainer``: it re-explains inputs, so it needs the maps'
# explainer and layer; ``ground_truth``: the dataset's masks or boxes (planned only where a dataset has
# them; a metric without ``forward`` runs in the per-model ``score_ground_truth`` job, which reads every
# method's maps at once and loads no model). ``reference``, ``other_classes`` and
# ``randomised_model`` are declared for the metrics the seeds list next (a reference method's maps,
# maps of other target classes, a re-initialised copy of the model); no runner uses them yet.
NEEDS = ("forward", "explainer", "ground_truth", "reference", "other_classes", "randomised_model")
FAMILIES = ("faithfulness", "localisation")
PROTOCOLS = ("default", "thesis")

# JSON-schema pieces the settings share (definitions live in config/schema.yaml)
_INT = {"$ref": "#/definitions/positive_int"}
_COMMON = {
    "images": {"$ref": "#/definitions/images"},
    "postprocess": {"$ref": "#/definitions/postprocess"},
}
_FORWARD = {
    "batch_size": _INT,
    "images_per_block": _INT,
    "amp": {"type": "boolean", "description": "mixed-precision forwards on CUDA, float32 metric (ignored on CPU)"},
    "memory_format": {"$ref": "#/definitions/memory_format"},
}
_REGION = {"type": "string", "enum": ["auto", "mask", "box"],
           "description": "the ground truth a map is compared with: the dataset's mask, its box (rasterised at input resolution), "
                          "or auto: the mask where the dataset has masks, else the box"}
_FRACTIONS = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}
# keys that decide which jobs exist or what the scheduler reserves: global only, never per dataset
GLOBAL_ONLY = ("enabled", "skip_methods", "memory_mb")

# The study's exact choices, read from its code (shared notes, study-code.md §1-3). Maps: pytorch-grad-cam
# 1.4's ReLU, min-max, resize, min-max (its scale_cam_image once with and once without resizing), so
# they span [0, 1] at input resolution. amp False: the study computed in float32 (explain's float32
# comes from rules/common.smk explain_params).
_STUDY_MAPS = {"relu": True, "minmax": True, "upsample": "bilinear", "rescale": True}


@dataclass(frozen=True)
class Metric:
    """One metric.

    ``quantity``: the per-image row (of :data:`camfaith.metrics.SCORE_COLUMNS`) whose mean a table shows
    and whose paired differences the tests compare; ``dataset_quantity``: for a metric whose value is a
    dataset-level ratio (HAAS), the summary row holding it. ``binary``: per-image values are 0/1 (hits),
    tested by McNemar where images are independent. ``parameter``: the setting a table's columns run
    over (``None``: one column), labelled by ``column`` and, in sentences, by ``setting`` (a format with
    ``{value}``; ``grid_setting`` also names AOPC's ``{grid}``) and, as a column of the study's tables,
    by ``column_setting``. ``descending``: columns from the largest value (AOPC's
    coarsest grid first). ``thesis``: the study's overrides, ``None`` where the thesis protocol has no
    such metric (the study did not compute it). ``settings``/``required``: the JSON schema of
    ``metrics.<name>``; ``runner``: ``module:Class`` of its runner. ``panel``: the overlay label of the
    image's score (a format with ``{value}``), ``None`` to show none. ``note``: what its table says
    under its heading; ``source``: where the definition comes from. ``extra_quantities``: the other
    per-image rows its runner writes (diagnostics the tables do not average, e.g. the pointing game's
    ``recall``). ``global_settings``: settings checked against every dataset at once (AOPC's region
    sizes must divide every dataset's input size), so not overridable under ``datasets.<d>.metrics``.
    """

    name: str
    title: str
    short: str
    higher_is_better: bool
    quantity: str
    family: str
    needs: frozenset[str]
    runner: str
    settings: dict
    required: tuple[str, ...]
    parameter: str | None = None
    column: str = "value"
    setting: str = ""
    grid_setting: str = ""
    column_setting: str = "{value:g}"
    descending: bool = False
    binary: bool = False
    dataset_quantity: str | None = None
    thesis: dict | None = None
    panel: str | None = None
    better_word: str = "more faithful"
    note: str = ""
    source: str = ""
    extra_quantities: tuple[str, ...] = field(default_factory=tuple)
    global_settings: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {self.name}: unknown need(s) {sorted(unknown)}; known: {NEEDS}")
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name}: family {self.family!r} not in {FAMILIES}")

    @property
    def heading(self) -> str:
        """``AOPC (MoRF), higher is better``: a table's title."""
        return f"{self.title}, {'higher' if self.higher_is_better else 'lower'} is better"

    @property
    def forward(self) -> bool:
        """Whether it runs model forwards (the per-method ``score`` job) or not (``score_ground_truth``)."""
        return "forward" in self.needs

    @property
    def ground_truth(self) -> bool:
        return "ground_truth" in self.needs

    @property
    def reexplains(self) -> bool:
        return "explainer" in self.needs

    def in_protocol(self, protocol: str) -> bool:
        """Whether ``protocol`` scores this metric: the default one every metric, thesis the study's."""
        return protocol == "default" or self.thesis is not None

    def label(self, value: float | None, grid: str = "") -> str:
        """The setting in words: ``AOPC on 8x8 regions (8 px)``, ``pointing game within 4 px``, ``HAAS``."""
        if value is None or value != value or not self.setting:  # NaN: the metric has one setting
            return self.short
        if grid and self.grid_setting:
            return self.grid_setting.format(value=value, grid=grid)
        return self.setting.format(value=value)

    def schema(self, per_dataset: bool = False) -> dict:
        """The JSON schema of ``metrics.<name>`` (or, ``per_dataset``, of ``datasets.<d>.metrics.<name>``:
        every setting optional, the global-only keys left out)."""
        properties = dict(self.settings)
        if per_dataset:
            for key in (*GLOBAL_ONLY, *self.global_settings):
                properties.pop(key, None)
            return {"type": "object", "additionalProperties": False, "properties": properties}
        properties = {"enabled": {"type": "boolean"}, "skip_methods": {"$ref": "#/definitions/skip_methods"}, **properties}
        if self.forward:
            properties["memory_mb"] = {"$ref": "#/definitions/memory_mb"}
        # a disabled metric needs no settings (a config replacing the default one may just switch it off)
        return {"type": "object", "additionalProperties": False, "properties": properties,
                "if": {"required": ["enabled"], "properties": {"enabled": {"const": False}}}, "else": {"required": list(self.required)}}


def _aopc_schema() -> dict:
    return {
        "region_px": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _INT},
        "noise": {"type": "string", "enum": ["per_step", "per_image"]},
        **_COMMON,
        "zero_pad": {"type": "boolean"},
        "ties": {"type": "string", "enum": ["random", "row_major"],
                 "description": "order of regions with equal mean attribution: random (seeded, shared by every method; default) or row_major (the study)"},
        "round_decimals": {"$ref": "#/definitions/decimals"},
        **_FORWARD,
    }


def _max_sensitivity_schema() -> dict:
    radius = {"type": "object", "additionalProperties": False, "required": ["radius", "samples"],
              "properties": {"radius": {"type": "number", "exclusiveMinimum": 0}, "samples": _INT}}
    return {
        "radii": {"type": "array", "minItems": 1, "items": radius},
        **_COMMON,
        "normalise": {"type": "boolean"},
        "normalise_floor": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                            "description": "with normalise: floor of the denominator relative to the image's largest map norm (default 0.1); null "
                                           "divides by the reference norm alone"},
        "clip": {"type": "boolean"},
        **_FORWARD,
    }


def _haas_schema() -> dict:
    return {**_COMMON, "accuracy": {"type": "string", "enum": ["plain", "balanced"]}, "round_decimals": {"$ref": "#/definitions/decimals"}, **_FORWARD}


_GT_REQUIRED = ("images", "postprocess")
REGISTRY: dict[str, Metric] = {
    "aopc": Metric(
        name="aopc", title="AOPC (MoRF)", short="AOPC", higher_is_better=True, quantity="aopc", family="faithfulness",
        needs=frozenset({"forward"}), runner="camfaith.scoring:AopcRunner", settings=_aopc_schema(),
        required=("region_px", "noise", "images", "zero_pad", "postprocess", "batch_size", "images_per_block"),
        parameter="region_px", column="region size in px (grid)", setting="AOPC on {value:g} px regions",
        grid_setting="AOPC on {grid} regions ({value:g} px)", column_setting="{value:g} px",
        descending=True, panel="AOPC {value:g} px",
        thesis={"images": "correct", "zero_pad": True, "round_decimals": 3, "noise": "per_step", "ties": "row_major",
                "postprocess": _STUDY_MAPS, "amp": False},
        source="Samek et al. (2017), IEEE TNNLS 28(11); the study's region grid", extra_quantities=("probability", "tied_regions"),
        global_settings=("region_px",),
    ),
    "max_sensitivity": Metric(
        name="max_sensitivity", title="Max-Sensitivity", short="Max-Sensitivity", higher_is_better=False, quantity="max_sensitivity",
        family="faithfulness", needs=frozenset({"forward", "explainer"}), runner="camfaith.scoring:MaxSensitivityRunner",
        settings=_max_sensitivity_schema(), required=("radii", "images", "normalise", "clip", "postprocess", "batch_size", "images_per_block"),
        parameter="radius", column="noise radius r (L∞, normalised input)", setting="Max-Sensitivity at r = {value:g}", column_setting="r = {value:g}",
        panel="MS r={value:g}", better_word="more stable (lower Max-Sensitivity)",
        thesis={"images": "correct", "normalise": False, "clip": False, "postprocess": _STUDY_MAPS, "amp": False},
        source="Yeh et al. (2019), NeurIPS", extra_quantities=("reference_floored",),
    ),
    "haas": Metric(
        name="haas", title="HAAS", short="HAAS", higher_is_better=True, quantity="correct_ha", dataset_quantity="haas", family="faithfulness",
        needs=frozenset({"forward"}), runner="camfaith.scoring:HaasRunner", settings=_haas_schema(),
        required=("images", "accuracy", "postprocess", "batch_size", "images_per_block"), binary=True,
        thesis={"images": "all", "accuracy": "plain", "round_decimals": 2, "postprocess": _STUDY_MAPS, "amp": False},
        note="Above 1: the map's emphasis helps the model.", source="the study (Harmonic Activation Accuracy Score)",
        extra_quantities=("accuracy_original", "accuracy_ha"),
    ),
    "pointing_game": Metric(
        note="A hit: the map's maximum within the tolerance of the ground truth (tied maxima: the share that is; a constant map misses).",
        name="pointing_game", title="Pointing game", short="Pointing game", higher_is_better=True, quantity="hit", family="localisation",
        needs=frozenset({"ground_truth"}), runner="camfaith.scoring:PointingGameRunner", binary=True,
        settings={**_COMMON, "region": _REGION,
                  "tolerance_px": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 0},
                                   "description": "a hit when a maximum lies within this distance (input pixels) of the ground truth; TorchRay: 15 px "
                                                  "at 224 px"},
                  "abstain_below": {"type": ["number", "null"], "description": "KTH recall: an image whose map maximum (after postprocess) is below "
                                                                               "this abstains; null: no recall row"}},
        required=(*_GT_REQUIRED, "region", "tolerance_px"), parameter="tolerance_px", column="tolerance in px",
        setting="pointing game within {value:g} px", column_setting="{value:g} px", panel="PG {value:g} px",
        better_word="closer to the ground truth (pointing game)",
        source="Zhang et al. (2018), IJCV 126; TorchRay's 15 px tolerance; the KTH reproduction's recall", extra_quantities=("recall", "tied_maxima"),
    ),
    "localisation_error": Metric(
        note="1 unless the label is among the model's top k and the box around the map's largest region above the threshold meets the "
             "ground-truth box with the IoU the rule asks.",
        name="localisation_error", title="Localisation error (weakly supervised)", short="Localisation error", higher_is_better=False,
        quantity="localisation_error", family="localisation", needs=frozenset({"ground_truth"}), runner="camfaith.scoring:LocalisationRunner",
        binary=True,
        settings={**_COMMON,
                  "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                                "description": "the map is cut at this fraction of its maximum; the box bounds the largest connected region above it "
                                               "(Grad-CAM: 0.15)"},
                  "iou": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "a box is a hit from this IoU with the ground-truth box (0.5)"},
                  "iou_rule": {"type": "string", "enum": ["fixed", "ilsvrc"],
                               "description": "fixed: IoU >= iou; ilsvrc: IoU >= min(iou, wh / ((w + 10)(h + 10))) of the ground-truth box, as the KTH code"},
                  "top_k": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _INT,
                            "description": "localisation error top-k: the label must be among the k highest logits and its box a hit; k above the "
                                           "classes is left out"}},
        required=(*_GT_REQUIRED, "threshold", "iou", "top_k"), parameter="top_k", column="top-k",
        setting="localisation error top-{value:g}", column_setting="top-{value:g}", better_word="closer to the ground truth (lower localisation error)",
        source="Selvaraju et al. (2017), ICCV, §4.1 (ILSVRC weakly supervised localisation)", extra_quantities=("iou", "box_hit"),
    ),
    "relevance_mass": Metric(
        note="The share of the map's positive attribution that lies inside the ground truth.",
        name="relevance_mass", title="Relevance mass (energy inside)", short="Relevance mass", higher_is_better=True, quantity="relevance_mass",
        family="localisation", needs=frozenset({"ground_truth"}), runner="camfaith.scoring:RelevanceMassRunner",
        settings={**_COMMON, "region": _REGION}, required=(*_GT_REQUIRED, "region"),
        better_word="closer to the ground truth (relevance mass)",
        source="Arras, Osman, Samek (2022), Information Fusion 81; Score-CAM's energy-based pointing game (Wang et al. 2020)",
    ),
    "pixels_inside": Metric(
        note="Of the pixels above the threshold times the map's maximum, the share inside the ground truth.",
        name="pixels_inside", title="Pixels above a threshold inside (KTH energy)", short="Pixels inside", higher_is_better=True,
        quantity="pixels_inside", family="localisation", needs=frozenset({"ground_truth"}), runner="camfaith.scoring:PixelsInsideRunner",
        settings={**_COMMON, "region": _REGION,
                  "thresholds": {**_FRACTIONS, "description": "fractions of the map's maximum (KTH task 5: 0.15, 0.5, 0.85)"}},
        required=(*_GT_REQUIRED, "region", "thresholds"), parameter="threshold", column="threshold (fraction of the maximum)",
        setting="pixels above {value:g} × max inside", column_setting="t = {value:g}", better_word="closer to the ground truth (pixels inside)",
        source="the KTH reproduction, task 5 (ChestX-ray14 boxes)",
    ),
    "relevance_rank": Metric(
        note="Of the K highest-ranked pixels, K the size of the ground truth, the share inside it (ties share the last places).",
        name="relevance_rank", title="Relevance rank accuracy", short="Relevance rank", higher_is_better=True, quantity="relevance_rank",
        family="localisation", needs=frozenset({"ground_truth"}), runner="camfaith.scoring:RelevanceRankRunner",
        settings={**_COMMON, "region": _REGION}, required=(*_GT_REQUIRED, "region"),
        better_word="closer to the ground truth (relevance rank)", source="Arras, Osman, Samek (2022), Information Fusion 81",
    ),
}

METRICS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Metric:
    """The entry of ``name``; a clear error naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {METRICS}")
    return REGISTRY[name]


def names(*, family: str | None = None, forward: bool | None = None, ground_truth: bool | None = None) -> tuple[str, ...]:
    """Metric names in registry order, optionally only those of a ``family``, with or without forwards
    or ground truth."""
    return tuple(m.name for m in REGISTRY.values() if (family is None or m.family == family) and (forward is None or m.forward == forward)
                 and (ground_truth is None or m.ground_truth == ground_truth))


def direction() -> dict[str, tuple[str, bool]]:
    """metric → (per-image quantity, True if higher is better), for :mod:`camfaith.ranking`."""
    return {m.name: (m.quantity, m.higher_is_better) for m in REGISTRY.values()}
