"""A researcher's own model: built from its source, checked once at the import stage, loaded by every stage after it.

The import stage (:func:`import_model`, rule ``import_model``) takes a ``models.<dataset>.<name>.model``
config of a source other than ``torchvision`` (:mod:`camfaith.models.sources`), builds the network,
and settles everything a later stage must rely on, before any map is made:

- the class names in output order (config ``classes``, else the checkpoint's metadata), matched to the
  data's labels **by name**: the logits are re-ordered to the dataset's class order (a permutation
  kept in the wrapper), and a class the model lacks or has in excess is an error naming it;
- the preprocessing (config, else the checkpoint's metadata, else timm's data config, else the
  dataset's), each value with where it came from;
- what the forward returns: a tensor of logits, a tuple (its first element), an object with
  ``.logits`` (Hugging Face) or a mapping with ``"logits"`` — unwrapped, and the log says so;
- whether the program takes any batch size (a fixed-batch export or ONNX file is fed in padded chunks);
- the target layer (config, else the last ``Conv2d``; a vision transformer: the first LayerNorm of its
  last block) and, for a transformer, the token grid that turns its ``[N, prefix + h·w, C]`` output
  into ``[N, C, h, w]`` maps;
- the network's activation modules, so that Guided Backpropagation (which rewrites ``nn.ReLU``'s
  backward only) is refused on a GELU or SiLU network by name.

It writes ``results/import/<dataset>/<model>/model.json`` (docs/formats.md, "Imported model"), which
names the checkpoint by absolute path and SHA-256. :func:`load_model` reads that file (or a
camfaith checkpoint of a model trained here) and returns a :class:`LoadedModel`; a checkpoint that
changed since its import is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camfaith.io import atomic_path, sha256_file
from camfaith.models import sources
from camfaith.models.builder import layer_root, load_checkpoint, safe_load

log = logging.getLogger(__name__)

IMPORT_FORMAT = "camfaith.model-import/1"
METADATA_NAME = "camfaith.json"  # the metadata a checkpoint may carry: {"classes": [...], "preprocessing": {...}}
PREPROCESSING_KEYS = ("image_size", "mean", "std")
# The activation modules Guided Backpropagation can run on: it replaces nn.ReLU's backward only
GUIDED_METHODS = ("guided_backprop", "guided_gradcam")
ACTIVATION_TYPES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish",
                    "Hardsigmoid", "Sigmoid", "Tanh", "Softplus", "Hardtanh", "QuickGELU", "GELUTanh")


# --- the wrappers -----------------------------------------------------------------------------------------


class OwnModel(nn.Module):
    """A user's network as every stage sees it: ``forward(x [N, C, H, W]) → logits [N, K]`` in the
    dataset's class order.

    ``output``: how the network's forward is unwrapped (``tensor``, ``first`` of a tuple, ``logits``
    attribute, ``logits_key`` of a mapping); ``permutation [K]``: column ``i`` of the result is the
    network's output ``permutation[i]`` (a buffer, so it is part of the weights' hash);
    ``fixed_batch``: the only batch size the program takes (None: any), fed in zero-padded chunks
    (samples do not interact in eval mode, so padding changes no row). Layer names are the network's
    own (:func:`camfaith.models.builder.layer_root`)."""

    def __init__(self, inner: nn.Module, permutation: list[int], output: str = "tensor", fixed_batch: int | None = None):
        super().__init__()
        self.camfaith_inner = inner
        self.register_buffer("camfaith_permutation", torch.tensor(permutation, dtype=torch.long))
        self.output = output
        self.fixed_batch = fixed_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            logits = unwrap_output(self.camfaith_inner(x), self.output)
        else:
            logits = torch.cat([unwrap_output(self.camfaith_inner(chunk), self.output)[:rows] for chunk, rows in _padded(x, self.fixed_batch)])
        return logits.index_select(1, self.camfaith_permutation.to(logits.device))


def _padded(x: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """``(chunk [size, ...], real rows)`` over ``x``, the last chunk padded with zeros."""
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        rows = len(chunk)
        if rows < size:
            chunk = torch.cat([chunk, chunk.new_zeros((size - rows, *chunk.shape[1:]))])
        yield chunk, rows


def unwrap_output(output: object, how: str) -> torch.Tensor:
    """The logits tensor out of a forward's ``output`` as :func:`output_kind` found it."""
    if how == "tensor":
        return output
    if how == "first":
        return output[0]
    if how == "logits":
        return output.logits
    if how == "logits_key":
        return output["logits"]
    raise ValueError(f"unknown output kind {how!r}")


def output_kind(output: object) -> str:
    """How to find the logits in what a forward returned: ``tensor``, ``first`` (a tuple or list whose
    first element is a tensor), ``logits`` (an object with a ``.logits`` tensor, Hugging Face style),
    ``logits_key`` (a mapping with ``"logits"``); a ValueError saying what was returned otherwise."""
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return "logits_key"
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return "logits"
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return "first"
    raise ValueError(f"the model's forward returned a {type(output).__name__}; camfaith needs the logits: a tensor [N, classes], a tuple "
                     "whose first element is one, an object with .logits or a mapping with 'logits'")


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime on the CPU: ``forward(x [N, C, H, W]) → its first output``,
    forward only (no autograd through it). The file's SHA-256 is a buffer, so the weights' hash
    (:func:`camfaith.models.builder.weights_sha256`) identifies the file."""

    def __init__(self, path: str | Path):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers would fill every job's log
        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: the ONNX graph has {len(inputs)} inputs ({[i.name for i in inputs]}); camfaith feeds one image batch")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.declared_batch = batch if isinstance(batch, int) else None
        self.register_buffer("onnx_sha256", torch.tensor(list(bytes.fromhex(sha256_file(path))), dtype=torch.uint8))
        self.camfaith_opaque = True  # camfaith.memory cannot see its layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def metadata(self) -> dict:
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_NAME)
        return _parse_metadata(text, self.path)


# --- building each source -----------------------------------------------------------------------------


@dataclass
class Built:
    """A network from its source: the module (eval mode, CPU), the metadata its file carried
    (``classes``, ``preprocessing``) and, for timm, timm's data config."""

    module: nn.Module
    metadata: dict = field(default_factory=dict)
    timm_config: dict | None = None


def _parse_metadata(text: str | None, where: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{where}: its {METADATA_NAME} metadata is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: its {METADATA_NAME} metadata must be a JSON object with classes and preprocessing")
    return value


def metadata_json(classes: list[str], preprocessing: dict | None = None) -> str:
    """The metadata text a checkpoint may carry (as ``camfaith.json``): the class names in output
    order and the preprocessing (``image_size``, ``mean``, ``std``) the model expects."""
    return json.dumps({"classes": list(classes), **({"preprocessing": dict(preprocessing)} if preprocessing else {})})


STATE_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict, metadata)`` of a weights file: ``.safetensors`` (metadata from its header's
    ``camfaith.json``), or a ``torch.save`` file loaded with ``weights_only=True`` (never running
    code) holding the state dict itself or a dict with it under ``state_dict`` / ``model_state_dict``
    / ``model`` (a training script's checkpoint, whose ``classes`` and ``preprocessing`` keys are its
    metadata). A ``module.`` prefix (DataParallel) is removed."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state, metadata = load_file(str(path)), _parse_metadata(header.get(METADATA_NAME), str(path))
    else:
        payload = safe_load(path)
        if not isinstance(payload, dict):
            raise ValueError(f"{path}: expected a state dict (a mapping of parameter names to tensors), found a {type(payload).__name__}")
        metadata = {key: payload[key] for key in ("classes", "preprocessing") if key in payload}
        nested = next((payload[key] for key in STATE_KEYS if isinstance(payload.get(key), dict)), None)
        state = nested if nested is not None else payload
        if METADATA_NAME in payload and isinstance(payload[METADATA_NAME], str):
            metadata = {**_parse_metadata(payload[METADATA_NAME], str(path)), **metadata}
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors under its keys {sorted(map(str, state))[:8]}; expected a state dict")
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors, metadata


def load_weights(module: nn.Module, path: str | Path) -> dict:
    """Load the state dict of ``path`` into ``module`` (strict: every name and shape must match; the
    error lists the first mismatches) and return the file's metadata."""
    state, metadata = read_state_dict(path)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing in the file: {missing[:5]}{' …' if len(missing) > 5 else ''}" if missing else "",
                 f"not in the model: {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}" if unexpected else "",
                 f"other shapes: {shapes[:3]}" if shapes else ""]
        raise ValueError(f"{path}: its weights do not fit the model ({'; '.join(p for p in parts if p)}). Is arch (or the factory) the "
                         "network these weights were trained with, and are classes the model's classes?")
    module.load_state_dict(state)
    return metadata


def _classes_hint(config: dict, metadata: dict) -> int:
    classes = config.get("classes") or metadata.get("classes")
    if not classes:
        raise ValueError("the model's class names are needed to build its classifier: give models.<dataset>.<model>.model.classes "
                         "(in the order of the model's outputs), or store them in the checkpoint's metadata (docs/models.md)")
    return len(classes)


def _peek_metadata(config: dict) -> dict:
    checkpoint = config.get("checkpoint")
    return read_state_dict(checkpoint)[1] if checkpoint else {}


def build_timm(config: dict) -> Built:
    """A timm model by name (``arch``, ``kwargs``) with the weights of ``checkpoint``; timm's data
    config gives its preprocessing unless the config does."""
    import timm

    metadata = _peek_metadata(config)
    module = timm.create_model(config["arch"], pretrained=False, num_classes=_classes_hint(config, metadata), **(config.get("kwargs") or {}))
    load_weights(module, config["checkpoint"])
    return Built(module.eval(), metadata, dict(timm.data.resolve_model_data_config(module)))


def build_state_dict(config: dict) -> Built:
    """A torchvision (``library: torchvision``, ``torchvision.models.get_model``) or timm architecture
    named by ``arch`` with the weights of ``checkpoint``."""
    if config.get("library", "torchvision") == "timm":
        return build_timm(config)
    import torchvision

    metadata = _peek_metadata(config)
    try:
        module = torchvision.models.get_model(config["arch"], weights=None, num_classes=_classes_hint(config, metadata),
                                              **(config.get("kwargs") or {}))
    except ValueError as error:
        raise ValueError(f"arch {config['arch']!r}: {error} (torchvision.models.list_models() names them; a timm name needs library: timm)") from None
    load_weights(module, config["checkpoint"])
    return Built(module.eval(), metadata)


@contextlib.contextmanager
def on_python_path(folders: list[str]) -> Iterator[None]:
    """``folders`` (made absolute) first on ``sys.path`` while the user's package is imported."""
    added = [str(Path(folder).resolve()) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def build_factory(config: dict) -> Built:
    """``factory: package.module:function`` called with ``kwargs``; it must return the ``nn.Module``.
    ``python_path`` folders are searched first; ``checkpoint`` (optional) is a state dict for it."""
    module_name, _, function_name = str(config["factory"]).partition(":")
    with on_python_path(config.get("python_path") or []):
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"factory {config['factory']}: {type(error).__name__}: {error} (python_path: {config.get('python_path') or []})") from None
        module = function(**(config.get("kwargs") or {}))
    if not isinstance(module, nn.Module):
        raise ValueError(f"factory {config['factory']} returned a {type(module).__name__}, not a torch.nn.Module")
    metadata = load_weights(module, config["checkpoint"]) if config.get("checkpoint") else {}
    return Built(module.eval(), metadata)


def build_export(config: dict) -> Built:
    """A ``torch.export`` program (``.pt2``, saved with ``torch.export.save``), unflattened into its
    original module hierarchy so that forward hooks on named modules fire; its ``camfaith.json``
    extra file is its metadata."""
    extra = {METADATA_NAME: ""}
    program = torch.export.load(config["checkpoint"], extra_files=extra)
    module = torch.export.unflatten(program)
    return Built(module.eval(), _parse_metadata(extra[METADATA_NAME], config["checkpoint"]))


def build_torchscript(config: dict) -> Built:
    """A scripted or traced TorchScript file (``torch.jit.save``); its ``camfaith.json`` extra file is its metadata."""
    extra = {METADATA_NAME: ""}
    module = torch.jit.load(config["checkpoint"], map_location="cpu", _extra_files=extra)
    return Built(module.eval(), _parse_metadata(extra[METADATA_NAME], config["checkpoint"]))


def build_onnx(config: dict) -> Built:
    """An ONNX file (:class:`OnnxModule`); its ``camfaith.json`` metadata property is its metadata."""
    module = OnnxModule(config["checkpoint"])
    return Built(module.eval(), module.metadata())


def build(config: dict) -> Built:
    """The network of a ``model:`` config of any source but torchvision (:mod:`camfaith.models.sources`)."""
    source = sources.source_of(config)
    if source.trained_here:
        raise ValueError("a torchvision-source model is built by camfaith.models.build_model and trained by the train stage")
    module_name, _, function_name = source.loader.partition(":")
    return getattr(importlib.import_module(module_name), function_name)(config)


def wrap_as_is(module: nn.Module, image_size: int) -> OwnModel:
    """``module`` wrapped with its outputs in their own order (no class matching): for looking at a
    model (``camfaith layers``) before it meets any data."""
    output, fixed = probe_forward(module.eval(), image_size, getattr(module, "declared_batch", None))
    kind = output_kind(output)
    return OwnModel(module, list(range(unwrap_output(output, kind).shape[1])), kind, fixed).eval()


# --- the import stage ---------------------------------------------------------------------------------------


def match_classes(model_classes: list[str], data_classes: list[str], where: str,
                  locate: Callable[[set[str]], dict[str, list[str]]] | None = None) -> list[int]:
    """``permutation [K]`` with ``model_classes[permutation[i]] == data_classes[i]``: the model's outputs
    re-ordered into the dataset's class order, matched by name. A data class the model does not know,
    or a model class the data lacks, is a ValueError naming them (and, with ``locate``, where in the
    data each unknown label comes from: a file and its lines, :func:`camfaith.data.own.label_locations`)."""
    if len(set(model_classes)) != len(model_classes):
        raise ValueError(f"{where}: the model's class names repeat: {sorted({c for c in model_classes if model_classes.count(c) > 1})}")
    unknown = [c for c in data_classes if c not in model_classes]
    extra = [c for c in model_classes if c not in data_classes]
    if unknown:
        locations = locate(set(unknown)) if locate is not None else {}
        found = "; ".join(f"{label!r}: {', '.join(locations.get(label, [])) or 'in the index'}" for label in unknown[:5])
        raise ValueError(f"{where}: the model does not know the label(s) {unknown} of the data ({found}). Its classes, in output order: "
                         f"{model_classes}. Fix the labels, or give the model's class names (model.classes) if they are spelled otherwise")
    if extra:
        raise ValueError(f"{where}: the model has class(es) {extra} the data does not have (the data's: {data_classes}). Declare them "
                         "under datasets.<dataset>.classes (a class may have no image), so every output of the model has its class")
    return [model_classes.index(name) for name in data_classes]


def resolve_preprocessing(config: dict, built: Built, dataset: dict) -> tuple[dict, dict]:
    """``(preprocessing, where each value came from)``: ``image_size`` from the model config, else the
    dataset's (the size the images are fed at); ``mean`` and ``std`` from the model config, else the
    checkpoint's metadata, else timm's data config, else the dataset's."""
    own, meta = config.get("preprocessing") or {}, built.metadata.get("preprocessing") or {}
    timm_values = {}
    if built.timm_config:
        timm_values = {"mean": list(built.timm_config["mean"]), "std": list(built.timm_config["std"]),
                       "image_size": int(built.timm_config["input_size"][-1])}
    chosen, origin = {}, {}
    for key in PREPROCESSING_KEYS:
        order = [("model config", own), ("dataset config", dataset)] if key == "image_size" else \
                [("model config", own), ("checkpoint metadata", meta), ("timm data config", timm_values), ("dataset config", dataset)]
        for name, values in order:
            if values.get(key) is not None:
                chosen[key], origin[key] = values[key], name
                break
    for name, values in (("checkpoint metadata", meta), ("timm data config", timm_values)):
        if values.get("image_size") and int(values["image_size"]) != int(chosen["image_size"]):
            log.warning("the %s says the model takes %s px inputs; they are fed at %s px (%s). Set model.preprocessing.image_size "
                        "to feed them at the model's size", name, values["image_size"], chosen["image_size"], origin["image_size"])
    chosen["mean"], chosen["std"] = [float(v) for v in chosen["mean"]], [float(v) for v in chosen["std"]]
    chosen["image_size"] = int(chosen["image_size"])
    return chosen, origin


def probe_forward(module: nn.Module, image_size: int, declared_batch: int | None = None) -> tuple[object, int | None]:
    """``(output of a forward of zeros [2, 3, S, S], fixed batch)``: the batch of 2 first; a program
    that takes one batch size only (an export or ONNX file without a dynamic batch) is tried at the
    sizes its error or its input declares; the fixed size is returned (None: any batch size)."""
    candidates = [declared_batch] if declared_batch else [2]
    errors = []
    with torch.no_grad():
        for attempt in range(3):
            size = candidates[attempt] if attempt < len(candidates) else None
            if size is None:
                break
            try:
                output = module(torch.zeros(size, 3, image_size, image_size))
                return output, (None if size == 2 and not declared_batch else size)
            except Exception as error:  # noqa: BLE001 - any failure is reported below with the others
                errors.append(f"batch {size}: {type(error).__name__}: {str(error)[:300]}")
                stated = [int(n) for n in re.findall(r"equal to (\d+)", str(error))]
                candidates += [n for n in (stated or [1]) if n not in candidates]
    raise ValueError(f"a forward of zeros [N, 3, {image_size}, {image_size}] fails: " + " | ".join(errors))


def last_conv(root: nn.Module) -> str | None:
    """The name of the last convolution module: an ``nn.Conv2d``, or an unflattened export module whose
    own graph calls ``aten.conv2d`` (its modules are interpreters, not Conv2d)."""
    found = None
    for name, module in root.named_modules():
        if isinstance(module, nn.Conv2d):
            found = name
        elif hasattr(module, "graph") and not any(True for _ in module.children()) and name:
            targets = {str(getattr(node, "target", "")) for node in module.graph.nodes}
            if any("conv2d" in target or "convolution" in target for target in targets):
                found = name
    return found


def default_layer(root: nn.Module) -> str | None:
    """The layer the layer methods read when the config names none: a vision transformer's (timm's
    ``blocks``) first LayerNorm of its last block — the last place where the patch tokens still reach
    the class token, pytorch-grad-cam's choice — else the last convolution."""
    blocks = getattr(root, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and getattr(root, "patch_embed", None) is not None:
        last = len(blocks) - 1
        return f"blocks.{last}.norm1" if hasattr(blocks[last], "norm1") else f"blocks.{last}"
    return last_conv(root)


def token_grid(root: nn.Module, output: torch.Tensor) -> tuple[int, int, int] | None:
    """``(prefix tokens, h, w)`` when a layer's ``output [N, T, C]`` is a transformer's tokens: the
    patch grid from timm's ``patch_embed.grid_size`` (prefix: ``num_prefix_tokens``, the class and
    register tokens), else the smallest prefix (0-8) that leaves a square; None for ``[N, C, h, w]``."""
    if output.dim() != 3:
        return None
    tokens = int(output.shape[1])
    grid = getattr(getattr(root, "patch_embed", None), "grid_size", None)
    if grid is not None and tokens - int(grid[0]) * int(grid[1]) >= 0:
        return tokens - int(grid[0]) * int(grid[1]), int(grid[0]), int(grid[1])
    for prefix in range(0, 9):
        side = int(round((tokens - prefix) ** 0.5))
        if side > 0 and side * side == tokens - prefix:
            return prefix, side, side
    raise ValueError(f"a layer output of {tuple(output.shape)} is neither [N, C, h, w] nor tokens on a square grid")


def layer_output(model: nn.Module, layer: nn.Module, image_size: int) -> torch.Tensor:
    """The output of ``layer`` for one image of zeros."""
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.__setitem__("A", output))
    try:
        with torch.no_grad():
            model(torch.zeros(1 if model.fixed_batch is None else model.fixed_batch, 3, image_size, image_size))
    finally:
        handle.remove()
    if "A" not in captured:
        raise ValueError("the target layer is not called by the model's forward")
    if not isinstance(captured["A"], torch.Tensor):
        raise ValueError(f"the target layer returns a {type(captured['A']).__name__}, not a tensor")
    return captured["A"]


def activation_types(root: nn.Module) -> list[str]:
    """The activation module types the network holds (``nn.ReLU``, ``nn.GELU``, …, and timm's own), sorted."""
    return sorted({type(m).__name__ for m in root.modules() if type(m).__name__ in ACTIVATION_TYPES})


def guided_problem(activations: list[str]) -> str | None:
    """Why Guided Backpropagation cannot run on a network with these activation modules, or None."""
    if activations == ["ReLU"]:
        return None
    if "ReLU" not in activations:
        return ("Guided Backpropagation rewrites the backward pass of nn.ReLU modules, and the network has none "
                f"(its activation modules: {activations or 'none; a ReLU called as a function cannot be guided'})")
    return (f"Guided Backpropagation rewrites the backward pass of nn.ReLU modules only, and the network also uses "
            f"{[a for a in activations if a != 'ReLU']}, whose gradients it would pass unguided")


def import_model(params: dict, classes: list[str], out_path: str | Path, where: str,
                 locate: Callable[[set[str]], dict[str, list[str]]] | None = None) -> dict:
    """The import stage: build the model of ``params["model"]`` (a ``model:`` config of a source other
    than torchvision), check it against the data's ``classes`` (label-index order) and the model's
    ``methods``, and write the import record (JSON, :data:`IMPORT_FORMAT`) to ``out_path``; returns it.
    ``params`` also holds the dataset's ``preprocessing``; ``where`` names the model in errors
    (``models.<dataset>.<name>``)."""
    config = dict(params["model"])
    source = sources.source_of(config)
    built = build(config)
    model_classes = [str(c) for c in (config.get("classes") or built.metadata.get("classes") or [])]
    if not model_classes:
        raise ValueError(f"config {where}.model.classes: the class names of the model's outputs are needed (in output order), and the "
                         f"checkpoint carries no {METADATA_NAME} metadata with them")
    permutation = match_classes(model_classes, list(classes), f"config {where}", locate)
    preprocessing, origin = resolve_preprocessing(config, built, params["preprocessing"])
    output, fixed = probe_forward(built.module, preprocessing["image_size"], getattr(built.module, "declared_batch", None))
    kind = output_kind(output)
    logits = unwrap_output(output, kind)
    if logits.dim() != 2 or logits.shape[1] != len(model_classes):
        raise ValueError(f"config {where}: the model returns {tuple(logits.shape)} for 2 images; model.classes names {len(model_classes)} "
                         "classes, so the output must be [N, that many]")
    if kind != "tensor":
        log.info("the model's forward returns a %s; camfaith reads its logits as %s", type(output).__name__,
                 {"first": "its first element", "logits": "its .logits", "logits_key": "its 'logits' entry"}[kind])
    if fixed is not None:
        log.info("the model takes batches of %d only: camfaith feeds it zero-padded chunks of %d", fixed, fixed)
    model = OwnModel(built.module, permutation, kind, fixed).eval()
    root = layer_root(model)
    layer, grids, activations = config.get("target_layer"), {}, []
    methods = list(params.get("methods") or [])
    if source.hooks:
        layer = layer or default_layer(root)
        modules = dict(root.named_modules())
        if layer is not None and layer not in modules:
            raise ValueError(f"config {where}.model.target_layer: {layer!r} is not a module of the model (camfaith layers lists them)")
        if layer is not None:
            grid = token_grid(root, layer_output(model, modules[layer], preprocessing["image_size"]))
            if grid is not None:
                grids[layer] = list(grid)
                log.info("target layer %s outputs transformer tokens: %d prefix token(s) dropped, %dx%d patch grid", layer, *grid)
    if source.modules:
        activations = activation_types(root)
        problem = guided_problem(activations)
        refused = [m for m in methods if m in GUIDED_METHODS]
        if problem and refused:
            raise ValueError(f"config {where}: method(s) {refused} do not apply to this model: {problem}. Remove them from "
                             f"{where}.methods (or from explain.methods)")
    checkpoint = config.get("checkpoint")
    from camfaith.models.builder import weights_sha256

    record = {
        "format": IMPORT_FORMAT, "source": source.name, "model": config, "where": where,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "python_path": [str(Path(p).resolve()) for p in config.get("python_path") or []],
        "classes": list(classes), "model_classes": model_classes, "permutation": permutation,
        "preprocessing": preprocessing, "preprocessing_from": origin, "output": kind, "fixed_batch": fixed,
        "target_layer": layer, "token_grids": grids, "activations": activations,
        "capabilities": {"gradients": source.gradients, "hooks": source.hooks, "modules": source.modules},
        "weights_sha256": weights_sha256(model),
    }
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    log.info("imported %s (%s) from %s: %d classes, preprocessing %s (%s), target layer %s", where, source.name, checkpoint or config.get("factory"),
             len(model_classes), preprocessing, origin, layer)
    return record


# --- loading, for every stage -----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """What a stage needs of a model: the module (eval mode, on its device; logits in the dataset's
    class order), the target layer (None: the default), the input side, the class names, the
    preprocessing (``image_size``, ``mean``, ``std``) and the source."""

    model: nn.Module
    target_layer: str | None
    input_size: int
    classes: list[str]
    preprocessing: dict
    source: str = "torchvision"


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of ``path``: a camfaith checkpoint of a model trained here (``model.pt``) or an
    import record of a model brought from elsewhere (``model.json``, :func:`import_model`), whose
    checkpoint must still have the SHA-256 it had when imported."""
    path = Path(path)
    if path.suffix != ".json":
        model, spec, classes, preprocessing = load_checkpoint(path, device)
        return LoadedModel(model, spec.target_layer, spec.input_size, classes, preprocessing)
    record = json.loads(path.read_text())
    if record.get("format") != IMPORT_FORMAT:
        raise ValueError(f"{path}: not a camfaith import record (format {IMPORT_FORMAT}); delete it and run again (rule import_model writes it)")
    checkpoint = record.get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{path}: the model file {checkpoint} it was imported from is gone")
        if sha256_file(checkpoint) != record["checkpoint_sha256"]:
            raise ValueError(f"{path}: the model file {checkpoint} changed since it was imported (SHA-256 differs); run snakemake again, "
                             "which re-imports it (or --forcerun import_model)")
    config = {**record["model"], **({"checkpoint": checkpoint} if checkpoint else {}), "python_path": record["python_path"]}
    if not record["python_path"]:
        config.pop("python_path")
    built = build(config)
    model = OwnModel(built.module, record["permutation"], record["output"], record["fixed_batch"])
    model.camfaith_token_grids = {name: tuple(grid) for name, grid in record["token_grids"].items()}
    if record["target_layer"]:
        model.camfaith_target = record["target_layer"]
    return LoadedModel(model.to(device).eval(), record["target_layer"], int(record["preprocessing"]["image_size"]), record["classes"],
                       record["preprocessing"], record["source"])

