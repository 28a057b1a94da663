"""Model builders: torchvision ResNet/VGG cut to Conv→Flatten→Linear (the study), →GAP→Linear, or a deeper head.

The study's models are torchvision networks whose classifier is replaced: ResNet's average pool by a
Flatten and VGG19 cut before its last ReLU and max-pool, so the target layer feeds the class scores
through one linear map. That is the one setting where HiResCAM is provably faithful and differs from
Grad-CAM; ``gap`` and ``gap_dense`` heads give the settings where they coincide or neither is faithful.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

# The architectures and heads of the torchvision source: defined once, in camfaith.models.sources
# (read when the workflow plans, without torch); ``published`` is torchvision's network with its own
# classifier and classes (ImageNet's 1,000), used as it is: the KTH reproduction's pretrained VGG16 and ResNet50
from camfaith.models.sources import ARCHS, FEATURE_NETS, HEADS, RESNETS, VGGS  # noqa: E402, F401

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
CHECKPOINT_FORMAT = "camfaith.model/1"


@dataclass(frozen=True)
class ModelSpec:
    """What to build. ``cut_after`` names the last trunk module kept: a ResNet stage (``layer3``) or a
    VGG ``features`` index (``"15"``); ``None`` keeps the whole trunk (VGG: up to its last conv).
    ``plain_last_block`` replaces the last residual block of the kept trunk by a freshly initialised
    plain block without skip connection (the study's ResNet variant). ``trainable`` lists module-name
    prefixes to train (``None``: all); the head is always trained."""

    arch: str
    num_classes: int
    input_size: int
    head: str = "flatten"
    cut_after: str | None = None
    plain_last_block: bool = False
    target_layer: str | None = None
    weights: str | None = None
    dense_hidden: int = 256
    trainable: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, config: dict, num_classes: int, input_size: int) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)} - {"num_classes", "input_size"}
        if config.get("source", "torchvision") != "torchvision":
            raise ValueError(f"a model of source {config['source']} is not built by camfaith.models.build_model")
        config = {key: value for key, value in config.items() if key != "source"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown model key(s) {unknown}; known: {sorted(known)}")
        values = {k: v for k, v in config.items() if k in known}
        if values.get("cut_after") is not None:
            values["cut_after"] = str(values["cut_after"])
        if values.get("trainable") is not None:
            values["trainable"] = tuple(values["trainable"])
        spec = cls(num_classes=num_classes, input_size=input_size, **values)
        if spec.arch not in ARCHS:
            raise ValueError(f"unknown arch {spec.arch!r}; known: {ARCHS}")
        if spec.head not in HEADS:
            raise ValueError(f"unknown head {spec.head!r}; known: {HEADS}")
        return spec


def pretrained_state_dict(weights_name: str) -> dict[str, torch.Tensor]:
    """State dict of torchvision weights ``weights_name`` (e.g. ``ResNet34_Weights.IMAGENET1K_V1``).

    Uses the torch hub cache; when the file is absent and cannot be downloaded, the error names the
    file, the cache folder and the URL, so it can be placed there by hand on an offline machine.
    """
    weights = torchvision.models.get_weight(weights_name)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / Path(urlparse(weights.url).path).name
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as error:
        raise FileNotFoundError(
            f"pretrained weights {weights_name}: file {path.name} is not in the torch hub cache folder {cache} "
            f"and could not be downloaded ({error}). Fetch {weights.url} where there is internet and place it at "
            f"{path} (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)."
        ) from error


def _plain_block(block: nn.Module) -> nn.Sequential:
    """The study's replacement for a ResNet block: same channels, no skip connection, fresh weights.

    BasicBlock → conv3x3-bn-relu-conv3x3 (ResNet34 in the study); Bottleneck → conv1x1-bn-conv3x3-bn-
    conv1x1 with no ReLU at all (ResNet50 in the study).
    """
    if isinstance(block, torchvision.models.resnet.BasicBlock):
        c_in, c_out = block.conv1.in_channels, block.conv2.out_channels
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(inplace=True), conv2=nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        ))
    c_in, width, c_out = block.conv1.in_channels, block.conv2.out_channels, block.conv3.out_channels
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(c_in, width, 1, bias=False), bn1=nn.BatchNorm2d(width),
        conv2=nn.Conv2d(width, width, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(width),
        conv3=nn.Conv2d(width, c_out, 1, bias=False),
    ))


def _head(spec: ModelSpec, channels: int, height: int, width: int) -> tuple[nn.Module, nn.Module]:
    """(pool, classifier) pair for the head named in ``spec``."""
    if spec.head == "flatten":
        return nn.Identity(), nn.Linear(channels * height * width, spec.num_classes)
    if spec.head == "gap":
        return nn.AdaptiveAvgPool2d(1), nn.Linear(channels, spec.num_classes)
    return nn.AdaptiveAvgPool2d(1), nn.Sequential(
        nn.Linear(channels, spec.dense_hidden), nn.ReLU(inplace=True), nn.Linear(spec.dense_hidden, spec.num_classes)
    )


@torch.no_grad()
def _trunk_shape(trunk_forward, input_size: int) -> tuple[int, int, int]:
    out = trunk_forward(torch.zeros(1, 3, input_size, input_size))
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


class FeatureNet(nn.Module):
    """``classifier(flatten(avgpool(features(x))))`` — VGG's and EfficientNet's forward, for networks
    whose own forward hard-codes the pooling (DenseNet), so the study's flatten head can replace it."""

    def __init__(self, features: nn.Module, avgpool: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features, self.avgpool, self.classifier = features, avgpool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_DENSENET_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published DenseNet weights name layers ``norm.1``; the modules are ``norm1``."""
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _feature_net(spec: ModelSpec, model: nn.Module) -> nn.Module:
    """EfficientNet-B0 / DenseNet121 cut after ``features[cut_after]`` and re-headed. DenseNet's
    forward applies a ReLU after ``features``; it becomes ``features.relu5`` so the target layer
    (by default the last ``features`` module) is the tensor the head sees."""
    features = model.features
    if spec.arch.startswith("densenet"):
        features.add_module("relu5", nn.ReLU())
    if spec.plain_last_block:
        raise ValueError("plain_last_block applies to ResNets only")
    names = [name for name, _ in features.named_children()]
    cut = names[-1] if spec.cut_after is None else str(spec.cut_after)
    if cut not in names:
        raise ValueError(f"cut_after for {spec.arch} must name a features module ({names}), got {cut!r}")
    kept = nn.Sequential(OrderedDict(list(features.named_children())[: names.index(cut) + 1]))
    net = FeatureNet(kept, nn.Identity(), nn.Identity()).eval()
    net.avgpool, net.classifier = _head(spec, *_trunk_shape(kept, spec.input_size))
    net.camfaith_target = f"features.{cut}"
    return net


def published_classes(weights_name: str) -> list[str]:
    """The class names of torchvision weights ``weights_name``, in the order of its classifier's outputs."""
    return list(torchvision.models.get_weight(weights_name).meta["categories"])


def build_model(spec: ModelSpec) -> nn.Module:
    """A torchvision model cut and re-headed as ``spec`` says, in eval mode on the CPU.

    ``head: published`` keeps the whole network and its own classifier: ``num_classes`` must be the
    weights' class count (a ValueError otherwise); without weights (the planner's check on the meta
    device, or a checkpoint's rebuild) it has ``num_classes`` outputs."""
    if spec.head == "published":
        if spec.cut_after is not None or spec.plain_last_block or spec.trainable is not None:
            raise ValueError("head: published uses the network as published: no cut_after, plain_last_block or trainable")
        if spec.weights and len(published_classes(spec.weights)) != spec.num_classes:
            raise ValueError(f"head: published keeps the classifier of {spec.weights}, whose {len(published_classes(spec.weights))} outputs "
                             f"are its classes in torchvision's order; the dataset has {spec.num_classes} classes. Use a dataset "
                             "with all of them (ImageNet: the 1,000 WordNet ids, sorted) or train a new head (flatten, gap)")
        model = torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
        if spec.weights:
            state = pretrained_state_dict(spec.weights)
            model.load_state_dict(_densenet_keys(state) if spec.arch.startswith("densenet") else state)
        return model.eval()
    model = torchvision.models.get_model(spec.arch, weights=None)
    if spec.weights:
        state = pretrained_state_dict(spec.weights)
        model.load_state_dict(_densenet_keys(state) if spec.arch.startswith("densenet") else state)
    if spec.arch in FEATURE_NETS:
        model = _feature_net(spec, model)
    elif spec.arch in RESNETS:
        cut = spec.cut_after or "layer4"
        if cut not in RESNET_STAGES:
            raise ValueError(f"cut_after for {spec.arch} must be one of {RESNET_STAGES}, got {cut!r}")
        for stage in RESNET_STAGES[RESNET_STAGES.index(cut) + 1 :]:
            setattr(model, stage, nn.Identity())
        if spec.plain_last_block:
            stage = getattr(model, cut)
            stage[-1] = _plain_block(stage[-1])
        model.avgpool, model.fc = nn.Identity(), nn.Identity()
        model.eval()
        flat = _trunk_shape(lambda x: _resnet_trunk(model, x), spec.input_size)
        model.avgpool, model.fc = _head(spec, *flat)
    else:
        if spec.plain_last_block:
            raise ValueError("plain_last_block applies to ResNets only")
        convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
        cut = int(spec.cut_after) if spec.cut_after is not None else convs[-1]
        if not 0 <= cut < len(model.features):
            raise ValueError(f"cut_after for {spec.arch} must index features (0..{len(model.features) - 1}), got {cut}")
        model.features = model.features[: cut + 1]
        flat = _trunk_shape(model.features, spec.input_size)
        model.avgpool, model.classifier = _head(spec, *flat)
    if spec.trainable is not None:
        head = ("fc",) if spec.arch in RESNETS else ("classifier",)
        prefixes = tuple(spec.trainable) + head
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(prefixes))
    return model.eval()


def _resnet_trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def layer_root(model: nn.Module) -> nn.Module:
    """The module whose ``named_modules`` names the layers a config refers to: the user's own network
    inside camfaith's wrapper (:class:`camfaith.models.own.OwnModel`), else the model itself."""
    return getattr(model, "camfaith_inner", model)


def default_target_layer(model: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` in module order (the study's target layer); for EfficientNet and
    DenseNet the last ``features`` module (the activated output the head sees, as Grad-CAM users pick);
    for a model loaded from elsewhere, the layer its import chose (a vision transformer: the first
    LayerNorm of its last block, where the patch tokens still reach the class token)."""
    if getattr(model, "camfaith_target", None):
        return model.camfaith_target
    names = [name for name, module in layer_root(model).named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError("model has no Conv2d layer to explain; name one with model.target_layer (camfaith layers lists them)")
    return names[-1]


def resolve_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the target layer; ``None`` means :func:`default_target_layer`. Names are
    those of the user's own network for a wrapped model (:func:`layer_root`)."""
    name = name or default_target_layer(model)
    modules = dict(layer_root(model).named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-5:]
        raise KeyError(f"target layer {name!r} not found in the model; its last conv layers are {convs} (camfaith layers lists every module)")
    module = modules[name]
    grid = getattr(model, "camfaith_token_grids", {}).get(name)
    if grid is not None:
        module.camfaith_token_grid = grid  # the explainers reshape this layer's [N, prefix + h·w, C] tokens to [N, C, h, w]
    return name, module


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, classes: list[str], preprocessing: dict, extra: dict | None = None) -> None:
    """Write the trained model: spec, class names, preprocessing and weights (see docs/formats.md)."""
    from camfaith.io import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT, "spec": dataclasses.asdict(spec), "classes": list(classes),
        "preprocessing": dict(preprocessing), "state_dict": model.state_dict(), "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def safe_load(path: str | Path) -> object:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    camfaith's checkpoints hold only dicts, lists, strings, numbers and tensors. A pickle that would
    build any other object (and could run code while doing so) is refused with an error naming the
    file; nothing in it is executed.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers, which "
            f"could run code when unpickled (camfaith never writes such files; was it replaced?). Details: {error}"
        ) from error
    except (RuntimeError, EOFError) as error:  # torch: "PytorchStreamReader failed reading zip archive" and kin
        from camfaith.io import unreadable

        raise unreadable(path, error) from error


def weights_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of the model's weights and buffers themselves: each entry's name, dtype, shape and
    bytes, in name order. Unlike the checkpoint file's hash it is the same for two identical runs
    (``torch.save`` writes a random ``serialization_id`` and a temporary file name into the archive)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec, list[str], dict]:
    """``(model in eval mode on device, spec, class names, preprocessing)`` from :func:`save_checkpoint`'s file."""
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a camfaith model checkpoint (format {CHECKPOINT_FORMAT})")
    spec_values = dict(payload["spec"])
    spec_values["weights"] = None  # the trained weights below replace any pretrained start
    if spec_values.get("trainable") is not None:
        spec_values["trainable"] = tuple(spec_values["trainable"])
    spec = ModelSpec(**spec_values)
    model = build_model(spec)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), spec, payload["classes"], payload["preprocessing"]


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def memory_format(name: str | None) -> torch.memory_format:
    """``contiguous`` (default) or ``channels_last`` (NHWC, often faster for convolutions)."""
    if name not in (None, *MEMORY_FORMATS):
        raise ValueError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got {name!r}")
    return MEMORY_FORMATS[name or "contiguous"]


def autocast(device: torch.device, enabled: bool):
    """Mixed precision (float16) for forwards on CUDA when ``enabled``; float32 everywhere else."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
