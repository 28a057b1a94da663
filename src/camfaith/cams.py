"""Class activation maps of the Grad-CAM family, all from one forward and one partial backward pass.

Why our own code rather than pytorch-grad-cam or torchcam: both run one backward per method, through
the whole network and into parameter gradients, and pytorch-grad-cam does its arithmetic in NumPy on
the CPU. All four maps here are functions of the same two tensors, the activation ``A`` of the target
layer and the gradient ``G = ∂s/∂A`` of the target class score, so one pass gives them all. The
backward starts at the class scores and stops at ``A``: the layer's output is detached and
re-attached as a leaf, so nothing upstream is differentiated, and ``torch.autograd.grad`` fills no
parameter's ``.grad``.

Maps are returned raw: ``[N, h, w]`` at the target layer's resolution, signed, before ReLU or any
scaling. Post-processing belongs to the metric that uses the map (:mod:`camfaith.postprocess`).

With ``A, G`` of shape ``[N, F, h, w]`` (sums over i, j run over the h×w positions):

- ``gradcam``:   w_f = mean_ij G_fij;                       map = Σ_f w_f A_f
- ``hirescam``:  map = Σ_f G_f ⊙ A_f
- ``gradcampp``: α_fij = G² / (2G² + Σ_ij A_f · G³) (0 where the denominator is 0);
                 w_f = Σ_ij α_fij ReLU(G_fij);              map = Σ_f w_f A_f
  (the closed form for an exponential of the score, as in pytorch-grad-cam and the Grad-CAM++ paper)
- ``xgradcam``:  w_f = Σ_ij G_fij A_fij / (Σ_ij A_fij + ε); map = Σ_f w_f A_f
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

METHODS = ("gradcam", "hirescam", "gradcampp", "xgradcam")
XGRADCAM_EPS = 1e-7


def _gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients * activations).sum(dim=1)


def _gradcampp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    grad_2 = gradients.pow(2)
    grad_3 = grad_2 * gradients
    denominator = 2 * grad_2 + activations.sum(dim=(2, 3), keepdim=True) * grad_3
    alpha = torch.where(denominator != 0, grad_2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _xgradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    norm = activations.sum(dim=(2, 3), keepdim=True) + XGRADCAM_EPS
    weights = (gradients * activations / norm).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
}


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods as a tuple, or a ValueError naming the unknown ones."""
    unknown = [m for m in methods if m not in COMBINE]
    if unknown or not methods:
        raise ValueError(f"unknown or no CAM method(s) {unknown}; known: {list(METHODS)}")
    return tuple(methods)


def activations_and_gradients(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of ``images [N, C, H, W]`` and one backward from the target scores to ``layer``.

    ``targets [N]`` are class indices; ``None`` explains each image's predicted class. Returns
    ``(A, G, logits, targets)``: ``A`` and ``G = ∂(Σ_n s_n,target_n)/∂A`` of shape ``[N, F, h, w]``
    (detached), ``logits [N, K]`` and the targets used. Samples do not interact in eval mode, so the gradient of the
    summed scores is each sample's own. Everything before ``layer`` runs without autograd; no
    parameter ``.grad`` is touched. ``model`` must be in eval mode.
    """
    if model.training:
        raise ValueError("CAMs need the model in eval mode (batch statistics would mix samples)")
    captured: dict[str, torch.Tensor] = {}
    previous_grad_mode = torch.is_grad_enabled()

    def start_graph_here(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer must output a tensor, got {type(output).__name__}")
        torch.set_grad_enabled(True)  # the head after the layer needs a graph; the trunk before it does not
        leaf = output.detach().requires_grad_(True)
        captured["A"] = leaf
        # A clone, so that an in-place op after the layer (ReLU(inplace=True)) does not touch the leaf.
        return leaf.clone()

    handle = layer.register_forward_hook(start_graph_here)
    try:
        torch.set_grad_enabled(False)
        logits = model(images)
        if "A" not in captured:
            raise RuntimeError("the target layer was not called during the forward pass")
        if captured["A"].dim() != 4:
            raise ValueError(f"target layer output must be [N, F, h, w], got {tuple(captured['A'].shape)}")
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        scores = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (gradients,) = torch.autograd.grad(scores, captured["A"])
    finally:
        handle.remove()
        torch.set_grad_enabled(previous_grad_mode)
    return captured["A"].detach(), gradients.detach(), logits.detach(), targets


def combine(activations: torch.Tensor, gradients: torch.Tensor, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Raw maps ``{method: [N, h, w]}`` from ``A, G [N, F, h, w]``, in float32 or wider (half
    precision activations from mixed-precision forwards are promoted, so the sums do not overflow)."""
    dtype = torch.promote_types(activations.dtype, torch.float32)
    activations, gradients = activations.to(dtype), gradients.to(dtype)
    return {method: COMBINE[method](activations, gradients) for method in check_methods(methods)}


def compute(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Raw maps of every requested method for ``images [N, C, H, W]`` and class ``targets [N]``.

    Returns ``{method: [N, h, w]}`` float32 at the target layer's resolution, signed, before ReLU or
    scaling, on the images' device; all from ONE forward and ONE backward stopping at ``layer``.
    """
    methods = check_methods(methods)
    activations, gradients, _, _ = activations_and_gradients(model, layer, images, targets)
    return combine(activations, gradients, methods)
