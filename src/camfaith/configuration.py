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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from camfaith import explainers, sweep
from camfaith.data import own as own_data
from camfaith.data import registry as dataset_registry
from camfaith.data.registry import ground_truth as dataset_ground_truth
from camfaith.explainers import ModelFacts, Settings
from camfaith.metrics import METRICS as METRIC_NAMES
from camfaith.metrics import PROTOCOLS, REGISTRY
from camfaith.models import sources

# The image of every rule under --sdm apptainer when a config replacing config/config.yaml
# (--replace-workflow-config) names none: the Dockerfile built locally, as config/config.yaml says.
DEFAULT_CONTAINER = "docker-daemon://camfaith:latest"
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
    resolved settings, in config order; ``grid_members[dataset][model]`` holds a grid member's values;
    ``replicates[dataset][model]`` a seed replicate's ``{"replicate_of", "seed"}``."""

    methods: dict[tuple[str, str], dict[str, Settings]]
    grid_members: dict[str, dict[str, dict]]
    metrics: tuple[str, ...]
    skips: tuple[Skip, ...] = field(default_factory=tuple)
    protocols: tuple[str, ...] = ("default",)
    replicates: dict[str, dict[str, dict]] = field(default_factory=dict)
    protocol_methods: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def scored(self, dataset: str, model: str, metric: str, protocol: str | None = None) -> list[str]:
        """The methods ``metric`` scores on that model (all of its methods but the skipped ones), under
        ``protocol`` only those of its ``protocol_methods`` list where it has one."""
        if protocol and not REGISTRY[metric].in_protocol(protocol):
            return []
        left_out = {s.method for s in self.skips if (s.dataset, s.model, s.metric) == (dataset, model, metric)}
        only = self.protocol_methods.get(protocol) if protocol else None
        return [m for m in self.methods[(dataset, model)] if m not in left_out and (only is None or m in only)]

    def protocol_skips(self, protocol: str) -> list[Skip]:
        """The metric skips plus, under ``protocol``, the methods its ``protocol_methods`` leaves out and
        the metrics it does not have (the study computed no localisation)."""
        outside = [metric for metric in self.metrics if not REGISTRY[metric].in_protocol(protocol)]
        reason = f"not part of the {protocol} protocol (the study did not compute {{}}; it runs under the default protocol)"
        skips = [Skip(d, m, method, metric, reason.format(REGISTRY[metric].short)) for metric in outside for (d, m) in self.methods
                 for method in self.scored(d, m, metric)]
        skips += [s for s in self.skips if s.metric not in outside]
        only = self.protocol_methods.get(protocol)
        if only is not None:
            reason = f"not scored under the {protocol} protocol (protocol_methods.{protocol}: {', '.join(only)})"
            skips += [Skip(d, m, method, metric, reason) for (d, m) in self.methods for metric in self.metrics
                      for method in self.scored(d, m, metric) if method not in only and metric not in outside]
        return skips


def load_schema(path: str | Path) -> dict:
    """The JSON schema of ``path`` with the registries filled in: ``method_name`` gets the explainer
    registry's names as its enum, ``method_entry``'s mapping form one property per method whose value
    is that method's settings schema, and ``metrics`` (and each dataset's ``metrics``) one property
    per metric of the metric registry, with its settings schema."""
    schema = yaml.safe_load(Path(path).read_text())
    definitions = schema["definitions"]
    definitions["method_name"]["enum"] = list(explainers.names())
    definitions["protocol_name"]["enum"] = list(PROTOCOLS)
    model_keys = definitions["model"]["properties"]["model"]["properties"]
    model_keys["source"]["enum"] = list(sources.SOURCE_NAMES)
    schema["properties"]["metrics"]["properties"] = {name: metric.schema() for name, metric in REGISTRY.items()}
    per_dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]["metrics"]
    per_dataset["properties"] = {name: metric.schema(per_dataset=True) for name, metric in REGISTRY.items()}
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


def prepare(config: dict, schema_path: str | Path, model_cache: str | Path | None = None) -> Plan:
    """Validate ``config`` (the merged config, modified in place: model grids are expanded into their
    members) and return the :class:`Plan`. Every problem is a :class:`ConfigError` naming its key.
    With ``model_cache`` (a JSON file; the Snakefile passes one in the main process only) every model's
    ``cut_after`` and ``target_layer`` are also checked by building it on torch's meta device: the one
    check that imports torch, so specs found good are remembered there."""
    schema = load_schema(schema_path)
    validate_schema(config, schema)
    config.setdefault("container", DEFAULT_CONTAINER)
    for dataset, entries in config["models"].items():
        for name, entry in entries.items():
            check_model_source(entry, f"models.{dataset}.{name}")
            if not sources.source_of(entry["model"]).trained_here:
                continue
            published = (entry.get("model") or {}).get("head") == "published"
            if published and not entry["model"].get("weights"):
                raise ConfigError(f"config models.{dataset}.{name}.model: head: published uses torchvision's weights as published; "
                                  "give weights (e.g. VGG16_Weights.IMAGENET1K_V1)")
            if published and (entry.get("training") or entry.get("grid")):
                raise ConfigError(f"config models.{dataset}.{name}: a model with head: published is not trained; remove its training/grid")
            if not published and "training" not in entry:
                raise ConfigError(f"config models.{dataset}.{name}: training is required (only a model with head: published has none)")
            if entry.get("grid") and "seeds" in (entry.get("training") or {}):
                raise ConfigError(f"config models.{dataset}.{name}: a grid model cannot also have training.seeds (put seed into the grid instead)")
    try:
        config["models"], members = sweep.expand(config["models"])
        config["models"], replicates = sweep.expand_seeds(config["models"])
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
    check_datasets(config, metrics)
    for dataset, models in config["models"].items():
        fractions = config["datasets"][dataset]["split"]["fractions"]
        empty = [part for part in ("train", "val") if fractions[part] == 0]
        trained = [name for name, entry in models.items() if sources.source_of(entry["model"]).trained_here
                   and entry["model"].get("head") != "published"]
        if empty and trained and config["datasets"][dataset]["source"] != "table":  # a table's split column may assign them
            raise ConfigError(f"config datasets.{dataset}.split.fractions.{empty[0]}: 0, but models.{dataset}.{trained[0]} is trained here "
                              f"and needs {' and '.join(empty)} images; a test-only dataset suits models brought from elsewhere (docs/models.md)")
    if config["explain"].get("images") == "ground_truth":
        for name, dataset in config["datasets"].items():
            if dataset_ground_truth(dataset) == "none":
                raise ConfigError(f"config explain.images: ground_truth maps only the images with a mask or a box, and dataset {name} has "
                                  f"none (datasets.{name}.ground_truth)")
    if model_cache is not None:
        check_models(config, Path(model_cache))
    methods, left_out = {}, []
    for dataset, models in config["models"].items():
        for model, entry in models.items():
            input_size = model_input_size(config, dataset, model)
            methods[(dataset, model)] = model_methods(config["explain"]["methods"], entry, dataset, model, input_size)
            left_out += [Skip(dataset, model, method, metric, f"does not apply to this model: {reason}")
                         for method, reason in inapplicable_defaults(config["explain"]["methods"], entry, input_size).items() for metric in metrics]
    return Plan(methods=methods, grid_members=members, metrics=metrics, skips=tuple(left_out + _skips(config, methods, metrics)),
                protocols=protocols(config["protocol"]), replicates=replicates,
                protocol_methods={p: tuple(chosen) for p, chosen in (config.get("protocol_methods") or {}).items()})


def protocols(value: str | list[str]) -> tuple[str, ...]:
    """The protocols a config runs, in its order: ``protocol: thesis`` or ``protocol: [default, thesis]``
    (each protocol's scores, tables and verdict live under its own path, docs/formats.md)."""
    return (value,) if isinstance(value, str) else tuple(value)


def check_datasets(config: dict, metrics: tuple[str, ...]) -> None:
    """What the schema cannot say about each dataset: only the keys its source reads
    (:data:`camfaith.data.registry.SOURCE_KEYS`), a ``local_path`` and table file that exist, split
    fractions summing to 1, AOPC regions smaller than the images they perturb, a ground-truth metric's
    settings only on a dataset with ground truth, and ``region: mask`` only where the dataset has masks."""
    for name, dataset in config["datasets"].items():
        try:
            dataset_registry.check_source_keys(name, dataset)
            own_data.check_dataset_paths(name, dataset)  # before the ground truth, which reads the table's header
        except ValueError as error:
            raise ConfigError(f"config {error}") from None
        kind = dataset_ground_truth(dataset)
        for metric in (m for m in REGISTRY.values() if m.ground_truth):
            own = (dataset.get("metrics") or {}).get(metric.name)
            if own is not None and kind == "none":
                raise ConfigError(f"config datasets.{name}.metrics.{metric.name}: {metric.short} needs ground truth, and dataset {name} has "
                                  f"none (datasets.{name}.ground_truth: mask or box, with the masks or boxes in its index)")
            region = (own or {}).get("region", config["metrics"].get(metric.name, {}).get("region", "auto"))
            if metric.name in metrics and kind == "box" and region == "mask":
                raise ConfigError(f"config metrics.{metric.name}.region: mask, but dataset {name} has boxes only "
                                  f"(datasets.{name}.ground_truth: box); use region: auto or box")
        fractions = dataset["split"]["fractions"]
        if abs(sum(fractions.values()) - 1) > 1e-6:
            raise ConfigError(f"config datasets.{name}.split.fractions: train + val + test must be 1, got "
                              f"{' + '.join(f'{v:g}' for v in fractions.values())} = {sum(fractions.values()):g}")
        size = dataset["preprocessing"]["image_size"]
        if "aopc" in metrics:
            too_large = [r for r in config["metrics"]["aopc"]["region_px"] if r >= size]
            if too_large:
                raise ConfigError(f"config metrics.aopc.region_px: region size(s) {too_large} px are not smaller than the "
                                  f"{size} px images of dataset {name} (datasets.{name}.preprocessing.image_size): "
                                  f"one region would be the whole image")


def model_check_cache() -> Path:
    """Where :func:`check_models` remembers the specs that passed: per user, shared by every run folder
    (``$XDG_CACHE_HOME/camfaith``, else ``~/.cache/camfaith``)."""
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "camfaith" / "checked_models.json"


def check_models(config: dict, cache: Path) -> None:
    """Build every configured model on torch's meta device (no memory, no weights, no download) and
    resolve its ``target_layer``, so a ``cut_after`` or layer name that does not exist is refused now,
    not after a training. Specs that passed are kept in ``cache`` (JSON), since importing torch and
    torchvision costs seconds; the key holds the spec, the input size, the torchvision version and a
    hash of ``camfaith/models/builder.py`` (which names the layers), so any of them changing checks again. A
    cache that cannot be written (a read-only home in a container) only costs the check's time."""
    import hashlib
    import json
    from importlib import metadata, util

    from camfaith.io import atomic_path, canonical_json

    versions = {"torchvision": metadata.version("torchvision"),
                "models_py": hashlib.sha256(Path(util.find_spec("camfaith.models.builder").origin).read_bytes()).hexdigest()[:16]}
    try:
        known = set(json.loads(cache.read_text())) if cache.is_file() else set()
    except (OSError, ValueError):  # unreadable or half-written by an older version: check again
        known = set()
    pending = {}
    for dataset, models in config["models"].items():
        size = config["datasets"][dataset]["preprocessing"]["image_size"]
        for model, entry in models.items():
            if not sources.source_of(entry["model"]).trained_here:
                continue  # a model brought from elsewhere is loaded and checked by its import job
            spec = {k: v for k, v in entry["model"].items() if k not in ("weights", "source")}  # weights change no layer name
            key = canonical_json({"spec": spec, "input_size": size, **versions})
            if key not in known:
                pending[key] = (f"models.{dataset}.{model}.model", spec, size)
    if not pending:
        return
    import torch

    from camfaith.models import ModelSpec, build_model, resolve_layer

    for key, (where, spec, size) in pending.items():
        try:
            built = ModelSpec.from_config(spec, 2, size)
            with torch.device("meta"):
                resolve_layer(build_model(built), built.target_layer)
        except (ValueError, KeyError, RuntimeError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            raise ConfigError(f"config {where}: {message}") from None
        known.add(key)
    try:
        with atomic_path(cache) as tmp:  # two snakemake processes may plan at once
            tmp.write_text(json.dumps(sorted(known)))
    except OSError:
        pass  # the cache only saves time; the models were checked


def check_model_source(entry: dict, where: str) -> None:
    """A model entry's source-specific rules (:mod:`camfaith.models.sources`): the keys its source
    reads, its checkpoint file, and no ``training``/``grid`` for a model camfaith does not train."""
    try:
        source = sources.source_of(entry["model"])
    except ValueError as error:
        raise ConfigError(f"config {where}.model.source: {error}") from None
    problems = sources.check_model_config(entry["model"], f"{where}.model")
    if problems:
        raise ConfigError("\n  ".join(problems))
    if not source.trained_here:
        for key in ("training", "grid"):
            if entry.get(key):
                raise ConfigError(f"config {where}.{key}: a model of source {source.name} is loaded from its checkpoint, not trained "
                                  f"(the train stage is skipped); remove {key}")


def model_input_size(config: dict, dataset: str, model: str) -> int:
    """The side in pixels a model's inputs have: its own ``model.preprocessing.image_size`` (a model
    brought from elsewhere), else its dataset's ``preprocessing.image_size``."""
    own = (config["models"][dataset][model]["model"].get("preprocessing") or {}).get("image_size")
    return int(own) if own else int(config["datasets"][dataset]["preprocessing"]["image_size"])


def inapplicable_defaults(defaults: list, entry: dict, input_size: int) -> dict[str, str]:
    """The methods of ``explain.methods`` a model brought from elsewhere leaves out when it has no
    ``methods:`` list of its own, because its source cannot run them (an ONNX model has no gradients, a
    TorchScript file calls no hooks, an export has no nn.ReLU modules to guide), with the reason: they
    are planned out and their table rows say why, instead of failing the config. (For a model camfaith
    builds, such a method is a config error, as before.)"""
    facts = ModelFacts.from_config(entry["model"], input_size)
    if "methods" in entry or facts.built_here:
        return {}
    chosen = explainers.resolve_methods(defaults, "explain.methods")
    gaps = {name: explainers.get(name).why_not(facts, settings) for name, settings in chosen.items()}
    return {name: reason for name, reason in gaps.items() if reason}


def model_methods(defaults: list, entry: dict, dataset: str, model: str, input_size: int) -> dict[str, Settings]:
    """The methods of one model with their settings: ``models.<d>.<m>.methods`` when given (a name
    there takes its settings from ``explain.methods`` unless it gives its own), else ``explain.methods``
    less the methods the model's source cannot run (:func:`inapplicable_defaults`). A method that does
    not apply to the model otherwise is a :class:`ConfigError` naming both and the reason."""
    try:
        shared = explainers.parse_methods(defaults, "explain.methods")
        where = f"models.{dataset}.{model}.methods" if "methods" in entry else "explain.methods"
        chosen = explainers.parse_methods(entry["methods"], where) if "methods" in entry else shared
        skipped = inapplicable_defaults(defaults, entry, input_size)
        chosen = {name: values for name, values in chosen.items() if name not in skipped}
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
            kind = f"head {facts.head}" if facts.built_here else f"source {facts.source}"
            raise ConfigError(f"config: method {name!r} does not apply to models.{dataset}.{model} ({facts.arch}, {kind}): "
                              f"{reason}. Remove it from that model's methods (models.{dataset}.{model}.methods) or change the model.")
    return resolved


def _skips(config: dict, methods: dict, metrics: tuple[str, ...]) -> list[Skip]:
    skips = []
    for metric in (m for m in metrics if REGISTRY[m].ground_truth):
        for dataset, entry in config["datasets"].items():
            if dataset_ground_truth(entry) == "none":
                reason = f"no ground truth: dataset {dataset} has no masks or boxes (datasets.{dataset}.ground_truth)"
                skips += [Skip(dataset, model, name, metric, reason) for (d, model), chosen in methods.items() if d == dataset for name in chosen]
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


def load_yaml(path: str | Path) -> dict:
    """The mapping in the YAML file ``path``; a syntax error is a :class:`ConfigError` naming the file,
    the line and the column (Snakemake's own message for a ``--configfile`` says neither)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: YAML syntax error: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, found a {type(loaded).__name__}")
    return loaded


def merge(defaults: dict, user: dict) -> dict:
    """The config the Snakefile runs: ``user`` merged key by key over ``defaults`` (as Snakemake
    merges ``--configfile`` over ``configfile:``), except that a user config naming its own
    datasets replaces the default datasets and models (:func:`study_sections`)."""

    def update(base: dict, extra: dict) -> dict:
        for key, value in extra.items():
            base[key] = update(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else copy.deepcopy(value)
        return base

    merged = update(copy.deepcopy(defaults), user)
    study = study_sections(user)
    if study is not None:
        merged.update(study)
    return merged


def main(argv: list[str] | None = None) -> int:
    """``python -m camfaith.configuration FILE...``: check config files as the workflow would (each
    merged over config/config.yaml), before any snakemake run; print the plan or the problems."""
    import argparse
    import sys

    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(prog="python -m camfaith.configuration", description=main.__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--defaults", type=Path, default=root / "config" / "config.yaml")
    parser.add_argument("--schema", type=Path, default=root / "config" / "schema.yaml")
    parser.add_argument("--no-models", action="store_true", help="skip building the models on the meta device (imports torch)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            config = merge(load_yaml(args.defaults), load_yaml(path))
            plan = prepare(config, args.schema, None if args.no_models else model_check_cache())
        except ConfigError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failed += 1
            continue
        # a metric with forwards is one job per method; a localisation metric one per model (all its methods)
        jobs = sum(len(plan.scored(d, m, metric)) if REGISTRY[metric].forward else min(1, len(plan.scored(d, m, metric)))
                   for (d, m) in plan.methods for metric in plan.metrics)
        print(f"{path}: OK: {len(plan.methods)} model(s), {sum(map(len, plan.methods.values()))} maps, {jobs} score jobs")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
