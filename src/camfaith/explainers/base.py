"""What an explainer is: its declaration (name, resolution, settings, applicability, cost) and its
typed settings. Nothing here imports torch, so the Snakefile can read the registry when it plans.

An explainer turns ``images [N, C, H, W]`` and class ``targets [N]`` into raw maps ``[N, h, w]``:
signed, unscaled, at the resolution it declares (``layer``: the target layer's ``h × w``;
``input``: the input's ``H × W``). Post-processing (ReLU, scaling, upsampling) is the metric's.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RESOLUTIONS = ("layer", "input")
KINDS = ("cam", "gradient", "perturbation", "control")
LAYER_ROLES = ("target", "pool", None)

# The activation functions of each architecture's trunk (checked against the built models in
# tests/test_explainers.py). Guided Backpropagation rewrites the backward pass of ReLUs only.
ACTIVATIONS = {
    "resnet18": "ReLU", "resnet34": "ReLU", "resnet50": "ReLU",
    "vgg11": "ReLU", "vgg16": "ReLU", "vgg19": "ReLU",
    "efficientnet_b0": "SiLU", "densenet121": "ReLU",
}


@dataclass(frozen=True)
class ModelFacts:
    """What a config says about a model, enough to decide whether a method applies to it (no model
    is built): the architecture, the head (``flatten``, ``gap``, ``gap_dense``, ``published``; ``own``
    for a model camfaith did not build), the input side in pixels, the configured target layer (None:
    the default), and its source's capabilities (:mod:`camfaith.models.sources`): ``gradients``,
    ``hooks`` and ``modules``, with ``source_why``, what they rest on, for the reasons given."""

    arch: str
    head: str
    input_size: int
    target_layer: str | None = None
    source: str = "torchvision"
    gradients: bool = True
    hooks: bool = True
    modules: bool = True
    source_why: str = ""

    @classmethod
    def from_config(cls, model: dict, input_size: int) -> ModelFacts:
        from camfaith.models.sources import describe, source_of

        source = source_of(model)
        if source.trained_here:
            return cls(str(model["arch"]), str(model.get("head", "flatten")), int(input_size), model.get("target_layer"))
        return cls(describe(model), "own", int(input_size), model.get("target_layer"), source.name, source.gradients, source.hooks,
                   source.modules, source.why)

    @property
    def built_here(self) -> bool:
        """Whether camfaith built the network (torchvision source), so its head and activations are known."""
        return self.source == "torchvision"


@dataclass(frozen=True)
class Settings:
    """Base of every explainer's settings: a frozen dataclass whose fields have defaults.

    Field metadata may give ``minimum`` (numbers) and ``doc``. ``Literal`` types list the allowed
    strings. :meth:`from_config` refuses unknown keys and wrong types, naming them; :meth:`schema`
    is the JSON schema the config validation uses.
    """

    @classmethod
    def from_config(cls, values: dict | None, where: str) -> Settings:
        """Settings from a config mapping (None: all defaults). ``where`` names the config key in errors."""
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"config {where}: unknown setting(s) {unknown}; known: {sorted(known) or 'none'}")
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            problem = _type_problem(hints[name], value, known[name].metadata)
            if problem:
                raise ValueError(f"config {where}.{name}: {problem} (got {value!r})")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def schema(cls) -> dict:
        """JSON schema of the settings object (draft-07)."""
        hints = typing.get_type_hints(cls)
        properties = {}
        for f in dataclasses.fields(cls):
            prop = _json_type(hints[f.name])
            if "minimum" in f.metadata:
                prop["minimum"] = f.metadata["minimum"]
            if "doc" in f.metadata:
                prop["description"] = f.metadata["doc"]
            prop["default"] = f.default
            properties[f.name] = prop
        return {"type": "object", "additionalProperties": False, "properties": properties}


def setting(default: Any, doc: str, minimum: float | None = None) -> Any:
    """A settings field with its default, its documentation and (numbers) its minimum."""
    metadata = {"doc": doc} | ({"minimum": minimum} if minimum is not None else {})
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NoSettings(Settings):
    """For methods without settings."""


def _json_type(hint: Any) -> dict:
    if typing.get_origin(hint) is Literal:
        return {"type": "string", "enum": list(typing.get_args(hint))}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}}[hint]


def _type_problem(hint: Any, value: Any, metadata: typing.Mapping) -> str | None:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else f"must be one of {list(choices)}"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
    elif hint is str:
        return None if isinstance(value, str) else "must be a string"
    if "minimum" in metadata and value < metadata["minimum"]:
        return f"must be at least {metadata['minimum']}"
    return None


@dataclass(frozen=True)
class Footprint:
    """Bytes one explain call needs: ``fixed`` whatever the number of images (an internal batch of
    perturbed inputs), plus ``per_image`` for each image of the call."""

    fixed: int
    per_image: int


@dataclass(frozen=True)
class Probe:
    """Sizes read off one probe forward of a single image (:func:`camfaith.memory.probe`), in bytes:
    ``image`` the input, ``peak`` the largest input + output of a leaf module, ``after_layer`` the
    outputs after the target layer (what a head-only backward keeps), ``total`` every leaf output
    (what a backward to the input keeps), ``layer`` the target layer's output, ``plane`` = H·W
    (pixels) and ``channels`` of the target layer."""

    image: int
    peak: int
    after_layer: int
    total: int
    layer: int
    plane: int
    channels: int


def _always(_facts: ModelFacts, _settings: Settings) -> str | None:
    return None


@dataclass(frozen=True)
class Explainer:
    """One attribution method, as the registry (:mod:`camfaith.explainers`) declares it.

    - ``resolution``: ``layer`` (maps at the target layer's h × w) or ``input`` (H × W).
    - ``layer``: which layer the method reads: ``target`` (the configured target layer), ``pool``
      (the input of the GAP module: CAM), or None.
    - ``needs_grad``: whether it differentiates (a backward pass); ``amp``: whether mixed precision
      may be used for its forwards on CUDA (never for methods that back-propagate to the input).
    - ``stochastic``: it draws random numbers, from the per-image seeds it is given.
    - ``applies(facts, settings)``: None, or why the method does not apply to that model.
    - ``implementation``: ``"module:function"`` with the signature
      ``explain(model, layer, images [N, C, H, W], targets [N], settings, seeds) -> [N, h, w]``,
      imported on first use (it needs torch); ``footprint``: ``"module:function"`` taking
      ``(probe: Probe, settings)`` and returning a :class:`Footprint`.
    - ``cost``: what one image costs, in words (for tables that say why a method was left out).
    """

    name: str
    title: str
    kind: Literal["cam", "gradient", "perturbation", "control"]
    resolution: Literal["layer", "input"]
    layer: Literal["target", "pool"] | None
    needs_grad: bool
    implementation: str
    footprint_of: str
    colour: str
    reference: str
    cost: str
    settings: type[Settings] = NoSettings
    stochastic: bool = False
    amp: bool = True
    applies: Callable[[ModelFacts, Settings], str | None] = _always

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS or self.kind not in KINDS or self.layer not in LAYER_ROLES:
            raise ValueError(f"explainer {self.name}: bad resolution/kind/layer {self.resolution, self.kind, self.layer}")

    @property
    def is_control(self) -> bool:
        return self.kind == "control"

    def make_settings(self, values: dict | None, where: str = "") -> Settings:
        return self.settings.from_config(values, where or f"explain.methods.{self.name}")

    def why_not(self, facts: ModelFacts, settings: Settings | None = None) -> str | None:
        """None when the method applies to the model ``facts`` describes; else the reason: first what
        the model's source cannot do (:meth:`capability_gap`), then the method's own rule."""
        return self.capability_gap(facts) or self.applies(facts, settings if settings is not None else self.settings())

    def capability_gap(self, facts: ModelFacts) -> str | None:
        """Why the model's source cannot run this method at all (no gradients, no hooks), or None."""
        if self.needs_grad and not facts.gradients:
            return f"{self.title} differentiates the model, and a model of source {facts.source} cannot be: {facts.source_why}"
        if self.layer is not None and not facts.hooks:
            return (f"{self.title} reads the target layer's activations through a forward hook, and a model of source {facts.source} "
                    f"calls none: {facts.source_why}")
        return None

    def explain(self, model, layer, images, targets, settings: Settings, seeds: Sequence[int]):
        """Raw maps ``[N, h, w]`` (float32) of ``images [N, C, H, W]`` for ``targets [N]``; ``seeds``
        holds one integer per image for stochastic methods (the same image gets the same draws)."""
        if len(seeds) != len(images):
            raise ValueError(f"{self.name}: {len(seeds)} seeds for {len(images)} images")
        return _load(self.implementation)(model, layer, images, targets, settings, seeds)

    def footprint(self, probe: Probe, settings: Settings) -> Footprint:
        return _load(self.footprint_of)(probe, settings)


def _load(reference: str) -> Callable:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
