"""Models: where a classifier comes from, what it can do, and how a stage loads it.

- :mod:`camfaith.models.sources` (torch-free, read when the workflow plans): the model sources —
  ``torchvision`` (built and trained here), ``timm``, ``state_dict``, ``factory``, ``export``,
  ``torchscript``, ``onnx`` — each with the config keys it reads and its capabilities (gradients,
  forward hooks on named modules, module types), which the explainer registry's ``applies`` reads.
- :mod:`camfaith.models.builder`: the torchvision builder (ResNet/VGG cut to Conv → Flatten → Linear,
  the study's models), camfaith's checkpoint format, devices and layouts.
- :mod:`camfaith.models.own`: a user's own model loaded from any source, checked and wrapped (class
  order, tuple outputs) at the import stage, and :func:`~camfaith.models.own.load_model`, the one
  loader every stage after training uses.

The builder's names are re-exported here (``from camfaith.models import build_model``) and imported
on first use, so that importing :mod:`camfaith.models.sources` does not import torch.
"""

from __future__ import annotations

import importlib

_BUILDER_NAMES = frozenset({
    "RESNETS", "VGGS", "FEATURE_NETS", "ARCHS", "HEADS", "RESNET_STAGES", "CHECKPOINT_FORMAT", "ModelSpec", "pretrained_state_dict",
    "FeatureNet", "published_classes", "build_model", "default_target_layer", "resolve_layer", "save_checkpoint", "safe_load",
    "weights_sha256", "load_checkpoint", "MEMORY_FORMATS", "memory_format", "autocast", "pick_device", "layer_root",
    "_densenet_keys", "_plain_block", "_head", "_resnet_trunk",
})


def __getattr__(name: str):
    if name in _BUILDER_NAMES:
        return getattr(importlib.import_module("camfaith.models.builder"), name)
    raise AttributeError(f"module 'camfaith.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_BUILDER_NAMES | set(globals()))
