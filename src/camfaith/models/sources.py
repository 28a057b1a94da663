"""The model sources: where a classifier comes from and what camfaith can do with it.

One entry per source (``models.<dataset>.<name>.model.source``). Each states the config keys it
reads, the checkpoint file types it takes and its capabilities, decided by the kind of file alone so
that the workflow can plan without loading anything:

- ``gradients``: autograd runs through the model (every method that differentiates needs it);
- ``hooks``: Python forward hooks on named modules fire (the CAM family and Score-CAM read the target
  layer's activations that way);
- ``modules``: the model is a tree of ordinary ``nn.Module`` objects of their own types (Guided
  Backpropagation replaces the backward pass of its ``nn.ReLU`` modules; Captum finds them by type).

The explainer registry's ``applies`` reads these through :class:`camfaith.explainers.ModelFacts`, so a
method that cannot run on a model is left out (or refused) before any job runs, with the reason.
What only the model itself can tell (which activations a network uses, whether its forward returns a
tuple) is checked by the import stage (:func:`camfaith.models.own.import_model`), the first job of
the model, before any map is made.

This module does not import torch: the Snakefile reads it when it plans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TORCHVISION = "torchvision"
# The torchvision source's networks and heads (camfaith.models.builder builds them)
RESNETS = ("resnet18", "resnet34", "resnet50")
VGGS = ("vgg11", "vgg16", "vgg19")
# Networks whose trunk is a ``features`` Sequential followed by a classifier (cut and re-headed like VGG).
FEATURE_NETS = ("efficientnet_b0", "densenet121")
ARCHS = RESNETS + VGGS + FEATURE_NETS
HEADS = ("flatten", "gap", "gap_dense", "published")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")
# The keys every model source may carry: the class names in output order, the preprocessing the
# model expects, the layer the layer methods read, and a head description for the reader.
COMMON_KEYS = ("source", "classes", "preprocessing", "target_layer")
LIBRARIES = ("torchvision", "timm")
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelSource:
    """One way of bringing a model (see the module docstring for the capabilities)."""

    name: str
    title: str
    keys: tuple[str, ...]
    required: tuple[str, ...]
    suffixes: tuple[str, ...]
    gradients: bool
    hooks: bool
    modules: bool
    loader: str  # "module:function" building the network, imported on first use (it needs torch)
    why: str  # what the capabilities rest on, in words (the reason a refused method gives)

    @property
    def trained_here(self) -> bool:
        return self.name == TORCHVISION


SOURCES: dict[str, ModelSource] = {s.name: s for s in (
    ModelSource(TORCHVISION, "a torchvision network built and trained by camfaith",
                ("arch", "head", "cut_after", "plain_last_block", "target_layer", "weights", "dense_hidden", "trainable"), ("arch",), (),
                True, True, True, "camfaith.models.builder:build_model", "built here from torchvision's modules"),
    ModelSource("timm", "a timm model by name with its weights", ("arch", "checkpoint", "kwargs"), ("arch", "checkpoint"),
                STATE_DICT_SUFFIXES, True, True, True, "camfaith.models.own:build_timm", "a timm nn.Module"),
    ModelSource("state_dict", "a torchvision or timm architecture with a state-dict file", ("arch", "library", "checkpoint", "kwargs"),
                ("arch", "checkpoint"), STATE_DICT_SUFFIXES, True, True, True, "camfaith.models.own:build_state_dict",
                "an ordinary nn.Module"),
    ModelSource("factory", "a function of the user's code returning the nn.Module, with an optional state dict",
                ("factory", "kwargs", "python_path", "checkpoint"), ("factory",), STATE_DICT_SUFFIXES, True, True, True,
                "camfaith.models.own:build_factory", "the user's own nn.Module"),
    ModelSource("export", "a torch.export program (.pt2)", ("checkpoint",), ("checkpoint",), (".pt2",), True, True, False,
                "camfaith.models.own:build_export",
                "a torch.export program, unflattened into its original module hierarchy: hooks fire and autograd runs, "
                "but its modules are interpreters of the exported graph, not nn.ReLU and the like"),
    ModelSource("torchscript", "a scripted or traced TorchScript file", ("checkpoint",), ("checkpoint",), (".pt", ".pth", ".ts", ".jit"),
                True, False, False, "camfaith.models.own:build_torchscript",
                "a TorchScript module runs its graph in C++: autograd runs through it, but it calls no Python hooks"),
    ModelSource("onnx", "an ONNX file run with onnxruntime (forward only)", ("checkpoint",), ("checkpoint",), (".onnx",),
                False, False, False, "camfaith.models.own:build_onnx",
                "onnxruntime runs the ONNX graph forward only: no gradients, no hooks"),
)}
SOURCE_NAMES = tuple(SOURCES)


def source_of(model: dict) -> ModelSource:
    """The source of a ``models.<d>.<m>.model`` config (``torchvision`` when it names none)."""
    name = model.get("source", TORCHVISION)
    if name not in SOURCES:
        raise ValueError(f"unknown model source {name!r}; known: {list(SOURCES)}")
    return SOURCES[name]


def check_model_config(model: dict, where: str) -> list[str]:
    """What is wrong with a ``model:`` config for its source, as messages naming ``where`` (the key
    path): a key the source does not read, a required key missing, a checkpoint that does not exist
    or whose suffix the source does not take, a malformed factory. Paths are relative to the
    working directory (Snakemake's ``--directory``). Empty when it is fine."""
    source = source_of(model)
    problems = []
    allowed = set(source.keys) | set(COMMON_KEYS)
    for key in sorted(set(model) - allowed):
        problems.append(f"config {where}.{key}: source {source.name} ({source.title}) does not read {key!r}; it reads "
                        f"{', '.join(sorted(allowed - {'source'}))}")
    for key in source.required:
        if model.get(key) in (None, ""):
            problems.append(f"config {where}: source {source.name} needs {key!r}")
    checkpoint = model.get("checkpoint")
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            problems.append(f"config {where}.checkpoint: {checkpoint} is not a file (relative paths start at the working directory, "
                            f"{Path.cwd()})")
        elif source.suffixes and path.suffix.lower() not in source.suffixes:
            problems.append(f"config {where}.checkpoint: {checkpoint}: source {source.name} takes {', '.join(source.suffixes)} files")
    if source.name == "factory" and model.get("factory") and not FACTORY_PATTERN.match(str(model["factory"])):
        problems.append(f"config {where}.factory: expected 'package.module:function', got {model['factory']!r}")
    for folder in model.get("python_path") or []:
        if not Path(folder).is_dir():
            problems.append(f"config {where}.python_path: {folder} is not a folder")
    if source.trained_here and model.get("arch") and model["arch"] not in ARCHS:
        problems.append(f"config {where}.arch: source torchvision builds {', '.join(ARCHS)}, got {model['arch']!r} (any other "
                        "network: source state_dict, timm or factory)")
    if source.trained_here and model.get("head", "flatten") not in HEADS:
        problems.append(f"config {where}.head: one of {', '.join(HEADS)}, got {model['head']!r}")
    library = model.get("library", TORCHVISION)
    if library not in LIBRARIES:
        problems.append(f"config {where}.library: one of {list(LIBRARIES)}, got {library!r}")
    return problems


def describe(model: dict) -> str:
    """A short name of the configured model for messages and tables: the architecture, the factory or the file."""
    source = source_of(model)
    if model.get("arch"):
        return f"{model['arch']} ({source.name})" if not source.trained_here else str(model["arch"])
    if model.get("factory"):
        return f"{model['factory']} (factory)"
    return f"{Path(str(model.get('checkpoint', '?'))).name} ({source.name})"
