"""A tiny classifier saved in every form a user may bring (tests only), and its factory.

``tiny_cnn`` is also the ``factory:`` of the factory form: the tests put this folder on
``python_path`` and name ``own_model_forms:tiny_cnn``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from camfaith.models.own import METADATA_NAME, metadata_json


def tiny_cnn(width: int = 8, classes: int = 3) -> nn.Module:
    """Conv → ReLU → Conv → ReLU → pool → Conv → Flatten → Linear at 32 px inputs (the study's head:
    the last conv feeds the class scores through one Linear map). Deterministic given torch's seed."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.Flatten(), nn.Linear(width * 16 * 16, classes),
    ).eval()


class TupleOutput(nn.Module):
    """A network whose forward returns ``(logits, features)``, as some training code's models do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), x.mean(dim=(2, 3))


def tuple_output_cnn(width: int = 8, classes: int = 3) -> nn.Module:
    return TupleOutput(tiny_cnn(width, classes)).eval()


# The tiny CNN's last conv layer as each form names it
CNN_LAYER = "5"


def save_forms(net: nn.Module, folder: Path, classes: list[str], image_size: int = 32) -> dict[str, dict]:
    """Save ``net`` (a :func:`tiny_cnn`) as a state dict for the factory, a torch.export program, a
    traced TorchScript file and an ONNX file, each carrying its class names as metadata; returns
    form → ``model:`` config. The ONNX file takes batches of 2 only (a fixed-batch export)."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch deprecates TorchScript and the legacy ONNX exporter; users still bring such files
        warnings.simplefilter("ignore")
        return _save_forms(net, folder, classes, image_size)


def _save_forms(net: nn.Module, folder: Path, classes: list[str], image_size: int) -> dict[str, dict]:
    example = torch.zeros(2, 3, image_size, image_size)
    metadata = metadata_json(classes)
    torch.save({"state_dict": net.state_dict(), "classes": classes}, folder / "cnn.pt")
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "cnn.pt2", extra_files={METADATA_NAME: metadata})
    traced = torch.jit.trace(net, example)
    torch.jit.save(traced, folder / "cnn_traced.pt", _extra_files={METADATA_NAME: metadata})
    torch.onnx.export(net, (example,), folder / "cnn.onnx", input_names=["images"], output_names=["logits"], dynamo=False)
    import onnx

    proto = onnx.load(folder / "cnn.onnx")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, metadata
    onnx.save(proto, folder / "cnn.onnx")
    tests = Path(__file__).parent
    return {
        "factory": {"source": "factory", "factory": "own_model_forms:tiny_cnn", "python_path": [str(tests)], "checkpoint": str(folder / "cnn.pt"),
                    "target_layer": CNN_LAYER},
        "export": {"source": "export", "checkpoint": str(folder / "cnn.pt2"), "target_layer": CNN_LAYER},
        "torchscript": {"source": "torchscript", "checkpoint": str(folder / "cnn_traced.pt")},
        "onnx": {"source": "onnx", "checkpoint": str(folder / "cnn.onnx")},
    }


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
