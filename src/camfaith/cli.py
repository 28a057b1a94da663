"""The ``camfaith`` command: look at a model and a config before running anything.

- ``camfaith layers CONFIG_OR_MODEL``: every module with its output shape and parameter count for one
  input, and at the layers nearest the head HiResCAM's measured faithfulness residual: where the
  theory (Flatten → Linear: HiResCAM faithful and unlike Grad-CAM; GAP → Linear: the two coincide)
  holds on *this* model (:mod:`camfaith.models.inspect`).
- ``camfaith methods CONFIG``: each method of the explainer registry, whether it applies to each
  configured model, and why not.
- ``camfaith check CONFIG...``: the config validated as the workflow would (``python -m camfaith.configuration``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_SUFFIXES = (".yaml", ".yml")


def _merged(path: Path) -> dict:
    from camfaith import configuration

    return configuration.merge(configuration.load_yaml(ROOT / "config" / "config.yaml"), configuration.load_yaml(path))


def _config_models(path: Path, only: str | None) -> list[tuple[str, object, int, dict]]:
    """``(label, model in eval mode, input size, preprocessing)`` of every model of a config (``only``:
    the one named ``dataset/model`` or ``model``): a trained checkpoint where the run left one in the
    working directory, else the torchvision network built with random weights (the residual is a
    property of the architecture and the layer), or a model brought from elsewhere, built from its source."""
    from camfaith import configuration
    from camfaith.data import registry
    from camfaith.models import ModelSpec, build_model, load_checkpoint, sources
    from camfaith.models.own import build, wrap_as_is

    config = _merged(path)
    chosen = []
    for dataset, models in config["models"].items():
        for name, entry in models.items():
            if only and only not in (name, f"{dataset}/{name}"):
                continue
            label = f"{dataset}/{name}"
            size = configuration.model_input_size(config, dataset, name)
            preprocessing = {**config["datasets"][dataset]["preprocessing"], **(entry["model"].get("preprocessing") or {})}
            if sources.source_of(entry["model"]).trained_here:
                trained = Path("results") / "train" / dataset / name / "model.pt"
                if trained.is_file():
                    model, _, _, preprocessing = load_checkpoint(trained)
                    label += f" (trained: {trained})"
                else:
                    classes = registry.declared_classes(config["datasets"][dataset]) or ["a", "b"]
                    spec = ModelSpec.from_config({k: v for k, v in entry["model"].items() if k != "weights"}, len(classes), size)
                    model = build_model(spec)
                    label += " (random weights: not trained yet)"
                chosen.append((label, model, size, preprocessing))
            else:
                chosen.append((label, wrap_as_is(build(entry["model"]).module, size), size, preprocessing))
    if not chosen:
        raise SystemExit(f"{path}: no model {only!r}" if only else f"{path}: no model")
    return chosen


def _file_model(spec: str, size: int) -> tuple[str, object, int, dict]:
    """A model from a file (``.pt2`` export, ``.onnx``, a TorchScript or camfaith ``.pt``) or a name
    (``timm:<name>``, ``torchvision:<name>``, random weights)."""
    from camfaith.models import load_checkpoint
    from camfaith.models.own import build, wrap_as_is

    preprocessing = {"image_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}
    if spec.startswith(("timm:", "torchvision:")):
        library, _, name = spec.partition(":")
        if library == "timm":
            import timm

            module = timm.create_model(name, pretrained=False)
        else:
            import torchvision

            module = torchvision.models.get_model(name, weights=None)
        source = None
    else:
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"{spec}: no such file (or give a config .yaml, timm:<name> or torchvision:<name>)")
        suffix = path.suffix.lower()
        source = {".pt2": "export", ".onnx": "onnx"}.get(suffix)
        if source is None:
            try:
                model, spec_, _, preprocessing = load_checkpoint(path)
                return f"{path} (camfaith checkpoint)", model, spec_.input_size, preprocessing
            except ValueError:
                source = "torchscript"
        module = build({"source": source, "checkpoint": str(path)}).module
    return f"{spec}{f' ({source})' if source else ''}", wrap_as_is(module, size), size, preprocessing


def _image(path: str | None, size: int, preprocessing: dict, seed: int):
    import torch

    if path is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(1, 3, size, size, generator=generator) * 2 - 1, f"a random image (seed {seed})"
    from PIL import Image

    from camfaith.data.images import Preprocessing, to_unit_rgb

    prep = Preprocessing(size, tuple(preprocessing["mean"]), tuple(preprocessing["std"]))
    with Image.open(path) as opened:
        unit = to_unit_rgb(opened)
    from torchvision.transforms import v2

    unit = v2.functional.resize(unit, [size, size], antialias=True).clamp(0, 1).unsqueeze(0)
    return prep.from_unit(unit), path


def layers(args: argparse.Namespace) -> int:
    import torch

    from camfaith.models import inspect

    torch.manual_seed(args.seed)
    target = Path(args.source)
    models = _config_models(target, args.model) if target.suffix in CONFIG_SUFFIXES else [_file_model(args.source, args.size or 224)]
    for label, model, size, preprocessing in models:
        size = args.size or size
        image, described = _image(args.image, size, preprocessing, args.seed)
        print(f"## {label}\n\nOne input of {size}×{size} px: {described}. Residual: |Σ HiResCAM + s(A=0) − s| / |s| for the predicted class at "
              f"the last {args.measure} layers with a map-shaped output (≤ {inspect.FAITHFUL_RESIDUAL:g}: HiResCAM sums to the score there).\n")
        try:
            rows = inspect.layer_table(model, image, None, args.measure)
        except RuntimeError as error:
            if "not supported on ScriptModules" not in str(error):
                raise
            print("A TorchScript model calls no Python hooks: its layers' outputs cannot be read, so only the methods at the input "
                  "(Integrated Gradients, GradientSHAP, occlusion, the controls) apply.\n")
            continue
        print(inspect.markdown(rows))
    return 0


def methods(args: argparse.Namespace) -> int:
    from camfaith import configuration, explainers
    from camfaith.explainers import ModelFacts
    from camfaith.models import sources

    config = _merged(Path(args.config))
    try:
        plan = configuration.prepare(config, ROOT / "config" / "schema.yaml", None)
    except configuration.ConfigError as error:
        print(f"{args.config}: {error}", file=sys.stderr)
        return 1
    left_out = {(s.dataset, s.model, s.method): s.reason for s in plan.skips if s.reason.startswith("does not apply")}
    for (dataset, model), chosen in plan.methods.items():
        entry = config["models"][dataset][model]
        facts = ModelFacts.from_config(entry["model"], configuration.model_input_size(config, dataset, model))
        late = {}
        if not args.no_load and not sources.source_of(entry["model"]).trained_here and facts.modules:
            from camfaith.models.own import GUIDED_METHODS, activation_types, build, guided_problem

            problem = guided_problem(activation_types(build(entry["model"]).module))
            late = dict.fromkeys(GUIDED_METHODS, problem) if problem else {}
        print(f"## {dataset}/{model} ({facts.arch}, {'head ' + facts.head if facts.built_here else 'source ' + facts.source})\n")
        print("| method | runs | why not |\n|---|---|---|")
        for name, explainer in explainers.REGISTRY.items():
            if name in chosen and name not in late:
                print(f"| {explainer.title} | yes | |")
                continue
            reason = late.get(name) or left_out.get((dataset, model, name)) or explainer.why_not(facts)
            print(f"| {explainer.title} | no | {reason or 'not in its methods (explain.methods or models.' + dataset + '.' + model + '.methods)'} |")
        print()
    return 0


def check(args: argparse.Namespace) -> int:
    from camfaith import configuration

    return configuration.main([str(path) for path in args.configs] + (["--no-models"] if args.no_models else []))


def main(argv: list[str] | None = None) -> int:
    """``camfaith layers|methods|check``."""
    parser = argparse.ArgumentParser(prog="camfaith", description="Look at a model and a config before running anything: layers, methods, check.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("layers", help="every module of a model, and where HiResCAM is faithful on it")
    show.add_argument("source", help="a config (.yaml), a model file (.pt2, .onnx, TorchScript or camfaith .pt), timm:<name> or torchvision:<name>")
    show.add_argument("--model", help="only this model of the config (<model> or <dataset>/<model>)")
    show.add_argument("--image", help="an image file to measure on (default: a random image)")
    show.add_argument("--size", type=int, help="input side in pixels (default: the config's, or 224 for a file)")
    show.add_argument("--measure", type=int, default=12, help="how many of the last map-shaped layers to measure (default 12)")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(run=layers)
    listing = commands.add_parser("methods", help="each registry method, whether it applies to each configured model and why not")
    listing.add_argument("config")
    listing.add_argument("--no-load", action="store_true", help="do not build the models brought from elsewhere (their activations are then not checked)")
    listing.set_defaults(run=methods)
    validate = commands.add_parser("check", help="validate config files as the workflow would")
    validate.add_argument("configs", nargs="+", type=Path)
    validate.add_argument("--no-models", action="store_true", help="skip building the torchvision models on the meta device")
    validate.set_defaults(run=check)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
