"""Fit a score job's batches into a memory budget.

A metric's working memory is the model, a block of loaded images with their per-image buffers
(noise fills, region ranks), and one forward batch of perturbed inputs with the activations it
creates. The forward batch dominates, so the budget is met by shrinking ``batch_size`` (and, if the
block alone would not fit, ``images_per_block``). Results do not depend on either
(``tests/test_invariance.py``), so a budget changes speed, never scores.

Activation memory is estimated from one probe forward of a single image: under ``no_grad`` the live
tensors at any moment are roughly one layer's input and output, so the peak is the largest
``input + output`` over leaf modules, doubled to cover tensors held across a block (ResNet's
identity branch) and allocator slack; the model counts twice (oneDNN keeps a re-laid-out copy of
the weights). Measured on the CPU (``benchmarks/memory.md``): ResNet50 and VGG19 at 224 px used
0.29–0.83 of their budget. The budget covers tensors; the interpreter and libraries (about 0.5 GB of
resident memory for torch) come on top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from camfaith.explainers.base import Explainer, Probe, Settings

MIB = 2**20
ACTIVATION_SAFETY = 2.0
# Activation bytes per input byte assumed for a model whose layers cannot be seen (TorchScript, ONNX):
# ResNet50 at 224 px keeps about 40× its input in its largest layer input + output under no_grad
OPAQUE_ACTIVATIONS = 64
BLOCK_SHARE = 0.25  # at most this part of the budget holds the loaded block; the rest feeds forwards


@dataclass(frozen=True)
class Footprint:
    """Bytes a metric needs: ``fixed`` once, ``per_block_image`` for each loaded image, ``per_sample``
    for each input in one forward batch."""

    fixed: int
    per_block_image: int
    per_sample: int


@dataclass(frozen=True)
class Plan:
    """The batch sizes a job runs with, and why (``budget_mb`` None: as configured)."""

    batch_size: int
    images_per_block: int
    budget_mb: float | None
    estimated_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def _bytes(value: object) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_bytes(v) for v in value)
    return 0


@torch.no_grad()
def probe(model: nn.Module, sample: torch.Tensor, layer: nn.Module | None = None) -> Probe:
    """Sizes from one forward of ``sample [1, C, H, W]`` (:class:`camfaith.explainers.Probe`), per image.

    ``peak`` is the largest input + output of a leaf module; ``after_layer`` sums the outputs of the
    leaves that run after ``layer`` (the target layer), which a head-only backward keeps alive (0 if
    None); ``total`` sums every leaf output (what a backward to the input keeps); ``layer`` and
    ``channels`` describe the target layer's output (0 if None).
    """
    peak, after, total, seen_layer, at_layer = [0], [0], [0], [layer is None], {"bytes": 0, "channels": 0}

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if module in leaves:
            peak[0] = max(peak[0], _bytes(inputs) + _bytes(output))
            total[0] += _bytes(output)
            if seen_layer[0] and layer is not None and module is not layer:
                after[0] += _bytes(output)
        if module is layer:
            seen_layer[0] = True
            at_layer["bytes"] = _bytes(output)
            at_layer["channels"] = int(output.shape[1]) if torch.is_tensor(output) and output.dim() > 1 else 0

    # A TorchScript module calls no Python hooks (registering one raises); an ONNX session is one leaf
    # whose inside is not seen: for such opaque models the sizes are estimated from the input below.
    leaves = {m for m in model.modules() if not any(True for _ in m.children()) and not isinstance(m, torch.jit.ScriptModule)}
    hooked = leaves | ({layer} if layer is not None else set())
    handles = [m.register_forward_hook(record) for m in hooked]
    try:
        output = model(sample)
    finally:
        for handle in handles:
            handle.remove()
    image = _bytes(sample)
    if not leaves or any(getattr(m, "camfaith_opaque", False) or isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        peak[0] = max(peak[0], OPAQUE_ACTIVATIONS * image)
        total[0] = max(total[0], 2 * OPAQUE_ACTIVATIONS * image + _bytes(output))
    return Probe(image=image, peak=peak[0], after_layer=after[0], total=total[0],
                 layer=at_layer["bytes"], plane=int(sample.shape[-2] * sample.shape[-1]), channels=at_layer["channels"])


def footprint(metric: str, model: nn.Module, sample: torch.Tensor, layer: nn.Module | None = None,
              explainer: Explainer | None = None, settings: Settings | None = None) -> Footprint:
    """Memory model of ``metric`` for ``model`` on inputs shaped like ``sample [1, C, H, W]``: the
    probe's sizes (:func:`probe`) put into the formula of the metric's runner (its ``footprint``,
    named by :mod:`camfaith.metrics.registry`). Max-Sensitivity needs the ``explainer`` (and its
    ``settings``) that re-explains."""
    from camfaith import scoring

    sizes = probe(model, sample, layer)
    params = sum(_bytes(t) for t in model.parameters()) + sum(_bytes(t) for t in model.buffers())
    return scoring.runner_class(metric).footprint(sizes, params, explainer, settings)


def fit(need: Footprint, batch_size: int, images_per_block: int, budget_mb: float | None) -> Plan:
    """The largest ``batch_size`` and ``images_per_block`` (at most the configured ones) whose
    estimate fits ``budget_mb``; None keeps them. Raises ValueError when one image does not fit."""

    def estimate(batch: int, block: int) -> float:
        return (need.fixed + block * need.per_block_image + batch * need.per_sample) / MIB

    if budget_mb is None:
        return Plan(batch_size, images_per_block, None, estimate(batch_size, images_per_block))
    budget = budget_mb * MIB
    if estimate(1, 1) > budget_mb:
        raise ValueError(f"memory_mb={budget_mb:g} is too small: one image needs about {estimate(1, 1):.0f} MB "
                         f"({need.fixed / MIB:.0f} MB model, {need.per_sample / MIB:.1f} MB per forward input); raise memory_mb")
    block = max(1, min(images_per_block, int(BLOCK_SHARE * (budget - need.fixed) // max(need.per_block_image, 1))))
    batch = max(1, min(batch_size, int((budget - need.fixed - block * need.per_block_image) // max(need.per_sample, 1))))
    return Plan(batch, block, budget_mb, estimate(batch, block))
