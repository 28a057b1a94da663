"""The Grad-CAM family from one forward and one partial backward pass, and CAM from the head's weights.

Why our own code rather than pytorch-grad-cam or torchcam: both run one backward per method, through
the whole network and into parameter gradients, and pytorch-grad-cam does its arithmetic in NumPy on
the CPU. Grad-CAM, HiResCAM, Grad-CAM++, XGradCAM and LayerCAM are all functions of the same two
tensors, the activation ``A`` of the target layer and the gradient ``G = ∂s/∂A`` of the target class
score, so one pass gives them all. The backward starts at the class scores and stops at ``A``: the
layer's output is detached and re-attached as a leaf, so nothing upstream is differentiated, and
``torch.autograd.grad`` fills no parameter's ``.grad``.

Maps are returned raw: ``[N, h, w]`` at the target layer's resolution, signed, before ReLU or any
scaling. With ``A, G`` of shape ``[N, F, h, w]`` (sums over i, j run over the h×w positions):

- ``gradcam``:   w_f = mean_ij G_fij;                       map = Σ_f w_f A_f
- ``hirescam``:  map = Σ_f G_f ⊙ A_f
- ``gradcampp``: α_fij = G² / (2G² + Σ_ij A_f · G³) (0 where the denominator is 0);
                 w_f = Σ_ij α_fij ReLU(G_fij);              map = Σ_f w_f A_f
  (the closed form for an exponential of the score, as in pytorch-grad-cam and the Grad-CAM++ paper)
- ``xgradcam``:  w_f = Σ_ij G_fij A_fij / (Σ_ij A_fij + ε); map = Σ_f w_f A_f
- ``layercam``:  map = Σ_f ReLU(G_f) ⊙ A_f
- ``cam``:       map = Σ_f W_mf A_f with ``A`` the input of the GAP module and ``W`` the Linear
                 head's weights (no backward; GAP → Linear heads only)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from camfaith.explainers.base import Footprint, Probe, Settings

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


def _layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients.clamp(min=0) * activations).sum(dim=1)


COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
}
METHODS = tuple(COMBINE)  # the methods one pass serves


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods as a tuple, or a ValueError naming those one pass cannot serve."""
    unknown = [m for m in methods if m not in COMBINE]
    if unknown or not methods:
        raise ValueError(f"unknown or no Grad-CAM-family method(s) {unknown}; one pass serves {list(METHODS)}")
    return tuple(methods)


def as_grid(tensor: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A layer's output as ``[N, F, h, w]``: as it is for a convolution; for a vision transformer's
    tokens ``[N, prefix + h·w, C]`` (the layer carries ``camfaith_token_grid = (prefix, h, w)``, set
    when the model is loaded) the prefix tokens (class, register) are dropped and the patch tokens laid
    on their grid, ``[N, C, h, w]`` — pytorch-grad-cam's ``reshape_transform`` for ViTs."""
    grid = getattr(layer, "camfaith_token_grid", None)
    if grid is None or tensor.dim() != 3:
        return tensor
    prefix, height, width = grid
    return tensor[:, prefix:, :].reshape(tensor.shape[0], height, width, tensor.shape[2]).permute(0, 3, 1, 2)


def activations_and_gradients(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                              targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of ``images [N, C, H, W]`` and one backward from the target scores to ``layer``.

    ``targets [N]`` are class indices; ``None`` explains each image's predicted class. Returns
    ``(A, G, logits, targets)``: ``A`` and ``G = ∂(Σ_n s_n,target_n)/∂A`` of shape ``[N, F, h, w]``
    (detached; a transformer layer's tokens laid on their grid, :func:`as_grid`), ``logits [N, K]``
    and the targets used. Samples do not interact in eval mode, so the gradient of the summed scores
    is each sample's own. Everything before ``layer`` runs without autograd; no parameter ``.grad`` is touched. ``model`` must be in eval mode.
    """
    require_eval(model)
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
        if as_grid(captured["A"], layer).dim() != 4:
            raise ValueError(f"target layer output must be [N, F, h, w] (or a transformer's tokens on a grid), got {tuple(captured['A'].shape)}")
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        scores = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (gradients,) = torch.autograd.grad(scores, captured["A"])
    finally:
        handle.remove()
        torch.set_grad_enabled(previous_grad_mode)
    return as_grid(captured["A"].detach(), layer), as_grid(gradients.detach(), layer), logits.detach(), targets


def require_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("attribution maps need the model in eval mode (batch statistics would mix samples)")


def combine(activations: torch.Tensor, gradients: torch.Tensor, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Raw maps ``{method: [N, h, w]}`` from ``A, G [N, F, h, w]``, in float32 or wider (half
    precision activations from mixed-precision forwards are promoted, so the sums do not overflow)."""
    dtype = torch.promote_types(activations.dtype, torch.float32)
    activations, gradients = activations.to(dtype), gradients.to(dtype)
    return {method: COMBINE[method](activations, gradients) for method in check_methods(methods)}


def compute(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Raw maps of every requested family method for ``images [N, C, H, W]`` and ``targets [N]``.

    Returns ``{method: [N, h, w]}`` at the target layer's resolution, signed, before ReLU or scaling,
    on the images' device; all from ONE forward and ONE backward stopping at ``layer``.
    """
    methods = check_methods(methods)
    activations, gradients, _, _ = activations_and_gradients(model, layer, images, targets)
    return combine(activations, gradients, methods)


def _member(method: str) -> Callable:
    def explain(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor, _settings: Settings,
                _seeds: Sequence[int]) -> torch.Tensor:
        return compute(model, layer, images, targets, [method])[method]

    explain.__name__ = method
    explain.__doc__ = f"Raw {method} maps ``[N, h, w]`` at the target layer (the explainer signature)."
    return explain


gradcam, hirescam, gradcampp, xgradcam, layercam = (_member(m) for m in METHODS)


def footprint(probe: Probe, _settings: Settings) -> Footprint:
    """Beyond a plain forward: the leaf ``A`` and its clone, ``G``, and the head's graph with its gradients."""
    return Footprint(fixed=0, per_image=3 * probe.layer + 2 * probe.after_layer)


# --- CAM -------------------------------------------------------------------------------------------

def gap_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(pool, linear)`` of a Conv → GAP → Linear model as :mod:`camfaith.models` builds it."""
    pool = getattr(model, "avgpool", None)
    linear = getattr(model, "fc", None)
    if linear is None:
        linear = getattr(model, "classifier", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or not isinstance(linear, nn.Linear):
        raise ValueError("CAM needs a Conv → GAP → Linear head (model.avgpool an AdaptiveAvgPool2d, then one nn.Linear)")
    return pool, linear


@torch.no_grad()
def cam(model: nn.Module, _layer: nn.Module | None, images: torch.Tensor, targets: torch.Tensor, _settings: Settings,
        _seeds: Sequence[int]) -> torch.Tensor:
    """Raw CAM ``[N, h, w]``: Σ_f W_{t,f} A_f, with ``A`` the feature maps the GAP pools (read at its
    input, whatever the target layer) and ``W`` the class weights of the Linear after it; no bias,
    no backward. On such a head, Grad-CAM = HiResCAM = CAM / (h·w) at that layer."""
    require_eval(model)
    pool, linear = gap_head(model)
    captured: dict[str, torch.Tensor] = {}

    def keep_input(_module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        captured["A"] = inputs[0]  # returns None: the module's output is left as it is

    handle = pool.register_forward_hook(keep_input)
    try:
        model(images)
    finally:
        handle.remove()
    activations = captured["A"]
    weights = linear.weight[targets.to(linear.weight.device)]  # [N, F]
    dtype = torch.promote_types(activations.dtype, torch.float32)
    return torch.einsum("nf,nfhw->nhw", weights.to(dtype), activations.to(dtype))


def cam_footprint(probe: Probe, _settings: Settings) -> Footprint:
    return Footprint(fixed=0, per_image=2 * probe.layer)
