"""The Grad-CAM family: hand-computed values, the theory identities, the one-pass contract, and the
numbers of the implementation before the explainer registry."""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from camfaith.explainers import cam_family as cams
from camfaith.models import ModelSpec, build_model, resolve_layer


def hand_model() -> tuple[nn.Module, nn.Module]:
    """x [1,1,2,2] → A = (x, −x) by a 1×1 conv → Flatten → Linear whose class-0 row is known."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    linear = nn.Linear(8, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        # class 0: G_0 = [[1, 0], [0, 1]], G_1 = [[0, 2], [0, 0]]
        linear.weight.copy_(torch.tensor([[1, 0, 0, 1, 0, 2, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32))
        linear.bias.copy_(torch.tensor([0.25, 0.0]))
    model = nn.Sequential(OrderedDict(conv=conv, flatten=nn.Flatten(), fc=linear)).eval()
    return model, conv


HAND_INPUT = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)


def test_hand_computed_maps():
    model, layer = hand_model()
    maps = cams.compute(model, layer, HAND_INPUT, torch.tensor([0]), cams.METHODS)
    A0 = HAND_INPUT[0, 0]
    expected = {
        # Σ_f G_f ⊙ A_f = [[1,0],[0,4]] + [[0,-4],[0,0]]
        "hirescam": torch.tensor([[1.0, -4.0], [0.0, 4.0]]),
        # weights mean(G_0) = mean(G_1) = 0.5 → 0.5·A0 + 0.5·(−A0) = 0
        "gradcam": torch.zeros(2, 2),
        # w_0 = (1+4)/10 = 0.5, w_1 = (−4)/(−10) = 0.4 → 0.1·A0
        "xgradcam": 0.1 * A0,
        # f0: α = 1/(2+10) where G=1 → w_0 = 2/12; f1: α = 4/(8 − 10·8) = −1/18 at G=2 → w_1 = −1/9
        "gradcampp": (1 / 6 + 1 / 9) * A0,
        # Σ_f ReLU(G_f) ⊙ A_f: both gradients are non-negative here, so it equals HiResCAM
        "layercam": torch.tensor([[1.0, -4.0], [0.0, 4.0]]),
    }
    for method, value in expected.items():
        torch.testing.assert_close(maps[method][0], value, rtol=1e-5, atol=1e-6, msg=method)


def test_maps_are_raw_signed_at_layer_resolution():
    model, layer = hand_model()
    maps = cams.compute(model, layer, HAND_INPUT, torch.tensor([0]), ["hirescam"])
    assert maps["hirescam"].shape == (1, 2, 2)
    assert maps["hirescam"].min() < 0  # no ReLU applied


def test_hirescam_sums_to_score_minus_bias_on_hand_model():
    model, layer = hand_model()
    score = model(HAND_INPUT)[0, 0]
    total = cams.compute(model, layer, HAND_INPUT, torch.tensor([0]), ["hirescam"])["hirescam"].sum()
    torch.testing.assert_close(total + 0.25, score)


def test_predicted_target_when_none():
    model, layer = hand_model()
    _, _, logits, targets = cams.activations_and_gradients(model, layer, HAND_INPUT, None)
    assert targets.tolist() == logits.argmax(1).tolist()


def test_unknown_method_is_named():
    model, layer = hand_model()
    with pytest.raises(ValueError, match="gradcam_typo"):
        cams.compute(model, layer, HAND_INPUT, torch.tensor([0]), ["gradcam_typo"])


def test_training_mode_is_refused():
    model, layer = hand_model()
    with pytest.raises(ValueError, match="eval mode"):
        cams.compute(model.train(), layer, HAND_INPUT, torch.tensor([0]), ["gradcam"])


FLATTEN_MODELS = [
    {"arch": "resnet18", "plain_last_block": True},
    {"arch": "resnet34", "plain_last_block": True},
    {"arch": "resnet50", "plain_last_block": True},
    {"arch": "vgg11"},
    {"arch": "vgg19"},
    {"arch": "efficientnet_b0"},
    {"arch": "densenet121"},
]


def _random_model(config: dict, head: str, size: int = 64) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = build_model(ModelSpec.from_config({**config, "head": head}, num_classes=4, input_size=size)).double()
    _, layer = resolve_layer(model, None)
    return model, layer


@pytest.mark.parametrize("config", FLATTEN_MODELS, ids=lambda c: c["arch"])
def test_flatten_head_hirescam_is_faithful_and_differs_from_gradcam(config):
    """Conv → Flatten → Linear: Σ_ij HiResCAM + b_m = s_m for every class m; Grad-CAM differs."""
    model, layer = _random_model(config, "flatten")
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    bias = model.fc.bias if config["arch"].startswith("resnet") else model.classifier.bias
    with torch.no_grad():
        logits = model(images)
    for m in range(4):
        targets = torch.full((3,), m)
        maps = cams.compute(model, layer, images, targets, ["hirescam", "gradcam"])
        recovered = maps["hirescam"].sum(dim=(1, 2)) + bias[m]
        relative = (recovered - logits[:, m]).abs() / logits[:, m].abs().clamp(min=1e-12)
        assert relative.max() <= 1e-4, f"class {m}: relative error {relative.max():.2e}"
        scale = maps["hirescam"].abs().max().item()  # random EfficientNet maps are ~1e-15: compare relatively
        assert not torch.allclose(maps["gradcam"], maps["hirescam"], rtol=1e-3, atol=1e-6 * scale)


@pytest.mark.parametrize("config", FLATTEN_MODELS, ids=lambda c: c["arch"])
def test_gap_head_gradcam_equals_hirescam(config):
    model, layer = _random_model(config, "gap")
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    maps = cams.compute(model, layer, images, torch.tensor([1, 3]), ["gradcam", "hirescam"])
    torch.testing.assert_close(maps["gradcam"], maps["hirescam"], rtol=1e-9, atol=1e-12)


def test_gap_dense_head_is_not_faithful():
    """A hidden ReLU layer after GAP breaks the HiResCAM sum identity (theory: neither is faithful)."""
    model, layer = _random_model({"arch": "resnet18", "plain_last_block": True}, "gap_dense")
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        logits = model(images)
    maps = cams.compute(model, layer, images, torch.zeros(3, dtype=torch.long), ["hirescam"])
    recovered = maps["hirescam"].sum(dim=(1, 2)) + model.fc[2].bias[0]
    assert not torch.allclose(recovered, logits[:, 0], rtol=1e-3)


def test_one_pass_leaves_parameter_grads_empty_and_matches_separate_calls():
    model, layer = _random_model({"arch": "resnet18", "plain_last_block": True}, "flatten")
    model = model.float()
    images = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 3])
    together = cams.compute(model, layer, images, targets, cams.METHODS)
    assert all(p.grad is None for p in model.parameters())
    for method in cams.METHODS:
        alone = cams.compute(model, layer, images, targets, [method])[method]
        torch.testing.assert_close(together[method], alone)
    assert all(p.grad is None for p in model.parameters())


def test_one_pass_gradients_match_full_autograd():
    """A and ∂s/∂A from the stopped backward equal those of an ordinary full backward."""
    model, layer = _random_model({"arch": "vgg11"}, "flatten")
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    targets = torch.tensor([2, 0])
    stored = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: stored.setdefault("A", out))
    logits = model(images)
    handle.remove()
    (reference,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), stored["A"])
    model.zero_grad(set_to_none=True)
    activations, gradients, _, _ = cams.activations_and_gradients(model, layer, images, targets)
    torch.testing.assert_close(activations, stored["A"].detach())
    torch.testing.assert_close(gradients, reference)


def test_target_layer_followed_by_inplace_relu():
    """A target layer whose output is modified in place downstream (VGG conv → ReLU(inplace))."""
    model, _ = _random_model({"arch": "vgg11"}, "flatten")
    layer = dict(model.named_modules())["features.0"]
    maps = cams.compute(model, layer, torch.randn(1, 3, 64, 64, dtype=torch.float64), torch.tensor([0]), ["hirescam"])
    assert maps["hirescam"].shape == (1, 64, 64)


REFERENCE = Path(__file__).with_name("data") / "cam_family_reference.npz"
PRE_REGISTRY_METHODS = ("gradcam", "hirescam", "gradcampp", "xgradcam")


def _reference_net(stored) -> nn.Module:
    """The small Conv-BN-ReLU-MaxPool-Conv-Flatten-Linear net whose weights the reference file holds."""
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(8, 16, 3, padding=1), flatten=nn.Flatten(), fc=nn.Linear(16 * 8 * 8, 3)))
    net.load_state_dict({key[len("small_"):]: torch.from_numpy(stored[key]) for key in stored.files
                         if key.startswith("small_") and not key.startswith(("small_map_", "small_input", "small_targets"))})
    return net.eval()


def test_the_four_methods_give_the_numbers_of_the_code_before_the_registry():
    """Maps stored by ``camfaith.cams.compute`` at commit 48b1fa1 (before the explainer registry) for
    a small net with stored weights and for the tests' frozen ResNet18 (weights from seed 0)."""
    from conftest import frozen_tiny_resnet18

    stored = np.load(REFERENCE)
    net = _reference_net(stored)
    resnet, resnet_layer = frozen_tiny_resnet18()
    cases = [("small", net, net.conv2), ("resnet", resnet, resnet_layer)]
    for prefix, model, layer in cases:
        images, targets = torch.from_numpy(stored[f"{prefix}_input"]), torch.from_numpy(stored[f"{prefix}_targets"])
        maps = cams.compute(model, layer, images, targets, PRE_REGISTRY_METHODS)
        for method in PRE_REGISTRY_METHODS:
            expected = torch.from_numpy(stored[f"{prefix}_map_{method}"])
            # XGrad-CAM divides by each channel's activation sum, which amplifies the last-bit differences
            # between CPUs' convolution kernels (measured 2e-5 of the map's scale on another CPU than the one
            # that stored the reference): its tolerance is relative to the map's scale
            atol = 1e-4 * float(expected.abs().max()) if method == "xgradcam" else 1e-6
            torch.testing.assert_close(maps[method], expected, rtol=1e-5, atol=atol, msg=f"{prefix} {method}")
