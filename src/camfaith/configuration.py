"""The config, checked before any job runs, and what the workflow plans from it.

:func:`prepare` validates the merged config against ``config/schema.yaml`` (with the explainer
registry's method names and settings filled in, so the schema file never lists them), expands model
grids (:mod:`camfaith.sweep`), checks what a schema cannot express (cross-references, whether each
method applies to each model) and returns a :class:`Plan`: the methods and settings of every model
and the (model, method, metric) combinations a metric leaves out, with the reason. Nothing here
imports torch; the Snakefile calls it when it plans.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from camfaith import explainers, sweep
from camfaith.explainers import ModelFacts, Settings

METRIC_NAMES = ("aopc", "max_sensitivity", "haas")
MAX_SCHEMA_ERRORS = 5


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and says what is wrong."""


@dataclass(frozen=True)
class Skip:
    """A (dataset, model, method, metric) a metric's ``skip_methods`` leaves out, and why."""

    dataset: str
    model: str
    method: str
    metric: str
    reason: str

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "method": self.method, "metric": self.metric, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """What the workflow runs. ``methods[(dataset, model)]`` maps each method of that model to its
    resolved settings, in config order; ``grid_members[dataset][model]`` holds a grid member's values."""

    methods: dict[tuple[str, str], dict[str, Settings]]
    grid_members: dict[str, dict[str, dict]]
    metrics: tuple[str, ...]
    skips: tuple[Skip, ...] = field(default_factory=tuple)

    def scored(self, dataset: str, model: str, metric: str) -> list[str]:
        """The methods ``metric`` scores on that model (all of its methods but the skipped ones)."""
        left_out = {s.method for s in self.skips if (s.dataset, s.model, s.metric) == (dataset, model, metric)}
        return [m for m in self.methods[(dataset, model)] if m not in left_out]


def load_schema(path: str | Path) -> dict:
    """The JSON schema of ``path`` with the explainer registry filled in: ``method_name`` gets the
    registry's names as its enum, and ``method_entry``'s mapping form one property per method whose
    value is that method's settings schema."""
    schema = yaml.safe_load(Path(path).read_text())
    definitions = schema["definitions"]
    definitions["method_name"]["enum"] = list(explainers.names())
    mapping = definitions["method_entry"]["oneOf"][1]
    mapping["properties"] = {name: {"oneOf": [{"type": "null"}, e.settings.schema()]} for name, e in explainers.REGISTRY.items()}
    mapping["additionalProperties"] = False
    return schema


def validate_schema(config: dict, schema: dict) -> None:
    """Raise :class:`ConfigError` listing what the schema rejects (key path and reason, one line each)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    lines = [_describe(jsonschema.exceptions.best_match([error])) for error in errors[:MAX_SCHEMA_ERRORS]]
    more = f"\n  ... and {len(errors) - MAX_SCHEMA_ERRORS} more" if len(errors) > MAX_SCHEMA_ERRORS else ""
    raise ConfigError("the config does not match config/schema.yaml:\n  " + "\n  ".join(lines) + more)


def _describe(error) -> str:
    while error.context:  # oneOf/anyOf: the branch that got furthest says what is wrong
        error = max(error.context, key=lambda e: len(e.absolute_path))
    where = ".".join(map(str, error.absolute_path)) or "(top level)"
    return f"config {where}: {error.message}"


def prepare(config: dict, schema_path: str | Path) -> Plan:
    """Validate ``config`` (the merged config, modified in place: model grids are expanded into their
    members) and return the :class:`Plan`. Every problem is a :class:`ConfigError` naming its key."""
    schema = load_schema(schema_path)
    validate_schema(config, schema)
    try:
        config["models"], members = sweep.expand(config["models"])
    except ValueError as error:
        raise ConfigError(f"config {error}") from None
    validate_schema(config, schema)  # the expanded members, with their grid values in place
    for dataset in config["models"]:
        if dataset not in config["datasets"]:
            raise ConfigError(f"config models.{dataset}: no dataset {dataset!r} under datasets ({sorted(config['datasets'])})")
    for dataset in config["datasets"]:
        if not config["models"].get(dataset):
            raise ConfigError(f"config datasets.{dataset}: no model under models.{dataset}")
    metrics = tuple(m for m in METRIC_NAMES if m in config["metrics"] and config["metrics"][m].get("enabled", True))
    if not metrics:
        raise ConfigError("config metrics: enable at least one of " + ", ".join(METRIC_NAMES))
    methods = {}
    for dataset, models in config["models"].items():
        input_size = config["datasets"][dataset]["preprocessing"]["image_size"]
        for model, entry in models.items():
            methods[(dataset, model)] = model_methods(config["explain"]["methods"], entry, dataset, model, input_size)
    return Plan(methods=methods, grid_members=members, metrics=metrics, skips=tuple(_skips(config, methods, metrics)))


def model_methods(defaults: list, entry: dict, dataset: str, model: str, input_size: int) -> dict[str, Settings]:
    """The methods of one model with their settings: ``models.<d>.<m>.methods`` when given (a name
    there takes its settings from ``explain.methods`` unless it gives its own), else ``explain.methods``.
    A method that does not apply to the model is a :class:`ConfigError` naming both and the reason."""
    try:
        shared = explainers.parse_methods(defaults, "explain.methods")
        where = f"models.{dataset}.{model}.methods" if "methods" in entry else "explain.methods"
        chosen = explainers.parse_methods(entry["methods"], where) if "methods" in entry else shared
        resolved = {}
        for name, values in chosen.items():
            inherited = not values and name in shared
            settings_where = f"explain.methods.{name}" if inherited else f"{where}.{name}"
            resolved[name] = explainers.get(name).make_settings(shared[name] if inherited else values, settings_where)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    facts = ModelFacts.from_config(entry["model"], input_size)
    for name, settings in resolved.items():
        reason = explainers.get(name).why_not(facts, settings)
        if reason:
            raise ConfigError(f"config: method {name!r} does not apply to models.{dataset}.{model} ({facts.arch}, head {facts.head}): "
                              f"{reason}. Remove it from that model's methods (models.{dataset}.{model}.methods) or change the model.")
    return resolved


def _skips(config: dict, methods: dict, metrics: tuple[str, ...]) -> list[Skip]:
    skips = []
    for metric in metrics:
        for name in config["metrics"][metric].get("skip_methods", []):
            explainer = explainers.get(name)
            reason = f"left out by metrics.{metric}.skip_methods (one {explainer.title} map costs {explainer.cost})"
            skips += [Skip(dataset, model, name, metric, reason) for (dataset, model), chosen in methods.items() if name in chosen]
    return skips


def cuda_expected(device: str) -> bool:
    """Whether torch jobs will run on a GPU, decided without importing torch (planning stays fast):
    ``cpu`` no, ``cuda[:N]`` yes, ``auto`` when this machine shows an NVIDIA driver device."""
    if device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def study_sections(user_config: dict) -> dict | None:
    """The ``datasets`` and ``models`` a user config brings (None when it brings no datasets): a
    config that names its own datasets describes a whole study, whose datasets and models replace
    the default ones instead of joining them."""
    if "datasets" not in user_config:
        return None
    return {key: copy.deepcopy(user_config.get(key, {})) for key in ("datasets", "models")}
