"""What a model's layers are, and where the theory holds on it: the library behind ``camfaith layers``.

For a layer ``A`` and a target class score ``s``, HiResCAM's map summed over the positions plus the
head's output at ``A = 0`` gives the score back exactly when the head after ``A`` is linear in ``A``
(Conv → Flatten → Linear, or Conv → GAP → Linear; docs/metrics.md §1)::

    residual = |Σ_ij Σ_f (∂s/∂A ⊙ A)_fij + s(A = 0) − s(A)| / |s(A)|

``s(A = 0)`` is measured by replacing the layer's output with zeros; for a Linear head it is the
class's bias ``b``. The residual is float rounding (about 1e-6) where HiResCAM is faithful and of
order 1 where the head is deeper. Where it holds, Grad-CAM equals HiResCAM exactly when the
gradient is constant over the positions (a GAP head); otherwise they differ. Measured on one image,
so it says what the model does, whatever its code looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camfaith.explainers.cam_family import activations_and_gradients
from camfaith.models.builder import layer_root

FAITHFUL_RESIDUAL = 1e-3  # float32 sums over thousands of positions stay far below this where the identity holds
EQUAL_MAPS = 1e-4  # |Grad-CAM − HiResCAM| / max |HiResCAM| below which the two coincide (float rounding)


@dataclass(frozen=True)
class LayerRow:
    """One module: its name, type, output shape for one input (None: not called, or not a tensor),
    parameter count (its own and its children's), and, where measured, HiResCAM's residual, the
    Grad-CAM/HiResCAM difference and what they say about the head after it."""

    name: str
    kind: str
    shape: tuple[int, ...] | None
    parameters: int
    residual: float | None = None
    gradcam_gap: float | None = None
    verdict: str = ""


def module_outputs(model: nn.Module, image: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every named module of ``model``'s network for ``image [1, C, H, W]``, in call order."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in layer_root(model).named_modules():
        if not name:
            continue

        def record(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(output.shape)

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def candidate(shape: tuple[int, ...] | None) -> bool:
    """Whether a layer output can be explained by the layer methods: ``[1, F, h, w]`` or tokens ``[1, T, C]``."""
    return shape is not None and (len(shape) == 4 or (len(shape) == 3 and shape[1] > 1))


def head_residual(model: nn.Module, layer: nn.Module, image: torch.Tensor, target: int) -> tuple[float, float]:
    """``(residual, gap)`` at ``layer`` for ``image [1, C, H, W]`` and class ``target`` (module
    docstring): HiResCAM's relative residual, and max |Grad-CAM − HiResCAM| / max |HiResCAM|."""
    activations, gradients, logits, _ = activations_and_gradients(model, layer, image, torch.tensor([target]))
    score = float(logits[0, target])

    def zero(_module, _inputs, output):
        return torch.zeros_like(output)

    handle = layer.register_forward_hook(zero)
    try:
        with torch.no_grad():
            at_zero = float(model(image)[0, target])
    finally:
        handle.remove()
    hirescam = (gradients * activations).sum(dim=1)
    gradcam = (gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)
    residual = abs(float(hirescam.sum(dtype=torch.float64)) + at_zero - score) / max(abs(score), 1e-12)
    scale = float(hirescam.abs().max())
    gap = float((gradcam - hirescam).abs().max()) / scale if scale > 0 else 0.0
    return residual, gap


def verdict(residual: float, gap: float) -> str:
    """What the measured residual and Grad-CAM/HiResCAM gap say about the head after a layer. A head
    that is piecewise linear without biases (ReLU, max-pool, then Flatten → Linear) also gives a zero
    residual (Euler's theorem for positively homogeneous functions), so the words name the property, not the code."""
    if residual > FAITHFUL_RESIDUAL:
        return "neither sums to the score (a deeper head)"
    if gap <= EQUAL_MAPS:
        return "HiResCAM sums to the score and Grad-CAM = HiResCAM (a GAP → Linear head)"
    return "HiResCAM sums to the score, Grad-CAM differs (a Flatten → Linear head)"


def layer_table(model: nn.Module, image: torch.Tensor, target: int | None = None, measure_last: int = 12) -> list[LayerRow]:
    """Every named module of ``model``'s network with its output shape for ``image [1, C, H, W]`` and
    parameter count; the last ``measure_last`` candidate layers in call order (those nearest the head,
    where maps are taken) also get HiResCAM's residual and the Grad-CAM gap for ``target`` (None: the
    predicted class). The model must be in eval mode; nothing of it changes."""
    root = layer_root(model)
    shapes = module_outputs(model, image)
    if target is None:
        with torch.no_grad():
            target = int(model(image).argmax(dim=1)[0])
    called = [name for name in shapes if candidate(shapes[name])]
    measured = set(called[-measure_last:]) if measure_last > 0 else set()
    grids = getattr(model, "camfaith_token_grids", {})
    rows = []
    for name, module in root.named_modules():
        if not name:
            continue
        shape = shapes.get(name)
        row = LayerRow(name, type(module).__name__, shape, sum(p.numel() for p in module.parameters()))
        if name in measured:
            if len(shape) == 3 and name not in grids:
                from camfaith.models.own import token_grid

                try:
                    module.camfaith_token_grid = token_grid(root, torch.zeros(shape))
                except ValueError:
                    rows.append(row)
                    continue
            try:
                residual, gap = head_residual(model, module, image, target)
                row = LayerRow(row.name, row.kind, shape, row.parameters, residual, gap, verdict(residual, gap))
            except (RuntimeError, ValueError) as error:  # e.g. an in-place op on the layer's output
                row = LayerRow(row.name, row.kind, shape, row.parameters, verdict=f"not measured: {str(error)[:80]}")
            finally:
                if name not in grids and hasattr(module, "camfaith_token_grid"):
                    del module.camfaith_token_grid
        rows.append(row)
    return rows


def markdown(rows: list[LayerRow]) -> str:
    """The layer table as Markdown (what ``camfaith layers`` prints)."""
    lines = ["| module | type | output | parameters | HiResCAM residual | Grad-CAM vs HiResCAM | head after it |", "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        shape = "×".join(map(str, row.shape[1:])) if row.shape else "–"
        residual = f"{row.residual:.1e}" if row.residual is not None else ""
        gap = f"{row.gradcam_gap:.1e}" if row.gradcam_gap is not None else ""
        lines.append(f"| {row.name} | {row.kind} | {shape} | {row.parameters:,} | {residual} | {gap} | {row.verdict} |")
    return "\n".join(lines) + "\n"


__all__ = ["LayerRow", "candidate", "head_residual", "layer_table", "markdown", "module_outputs", "verdict"]
