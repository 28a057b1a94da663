"""Metrics on small hand-computed cases: AOPC, Max-Sensitivity, HAAS, post-processing, protocols."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from camfaith import postprocess
from camfaith.data.images import Preprocessing
from camfaith.metrics import THESIS, aopc, common, haas, max_sensitivity, resolve
from camfaith.metrics.common import select

# ---------- post-processing ----------

def test_minmax_and_relu():
    maps = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])
    out = postprocess.apply(maps, postprocess.PostProcess(relu=True, minmax=True, upsample="none"), (2, 2))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0], [1 / 3, 1.0]]]), atol=1e-6, rtol=1e-6)


def test_constant_map_scales_to_zero():
    out = postprocess.minmax_scale(torch.full((1, 3, 3), 5.0))
    assert torch.equal(out, torch.zeros(1, 3, 3))


def test_bilinear_upsampling_keeps_range_and_size():
    out = postprocess.apply(torch.rand(2, 4, 4), postprocess.PostProcess(relu=False, minmax=True, upsample="bilinear"), (16, 16))
    assert out.shape == (2, 16, 16) and out.min() >= 0 and out.max() <= 1


# ---------- AOPC ----------

def test_region_means_exact_and_zero_padded():
    saliency = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    # 3-px regions on 4 px: a 2×2 grid; the corner region holds one pixel (15)
    exact = aopc.region_means(saliency, 3, zero_pad=False)
    padded = aopc.region_means(saliency, 3, zero_pad=True)
    top_left = (0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9
    torch.testing.assert_close(exact[0], torch.tensor([[top_left, (3 + 7 + 11) / 3], [(12 + 13 + 14) / 3, 15.0]]))
    torch.testing.assert_close(padded[0], torch.tensor([[top_left, (3 + 7 + 11) / 9], [(12 + 13 + 14) / 9, 15 / 9]]))


def test_region_order_descending_with_row_major_ties():
    means = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    assert aopc.region_order(means).tolist() == [[1, 2, 0, 3]]


def test_pixel_ranks_map_regions_to_steps():
    order = torch.tensor([[3, 0, 1, 2]])  # bottom-right region first
    ranks = aopc.pixel_ranks(order, 4, 4, 2)
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]])
    assert torch.equal(ranks[0], expected)


def test_aopc_from_hand_curve_and_study_rounding():
    curves = torch.tensor([[0.9, 0.5, 0.1]])
    torch.testing.assert_close(aopc.aopc_from_curves(curves), torch.tensor([0.4]))
    rounded = aopc.aopc_from_curves(torch.tensor([[0.90049, 0.50051, 0.1]]), decimals=3)
    # probabilities → 0.900, 0.501, 0.100; mean of (0, 0.399, 0.8) = 0.39966… → 0.400
    torch.testing.assert_close(rounded, torch.tensor([0.400]))


class Recorder(nn.Module):
    """Returns fixed logits and keeps every batch it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.stack([x.new_zeros(len(x)), x.new_zeros(len(x))], dim=1)


def test_morf_perturbs_regions_cumulatively_in_order_with_noise_in_range():
    image = torch.arange(48, dtype=torch.float32).view(1, 3, 4, 4) / 47
    saliency = torch.tensor([[[0, 0, 9, 9], [0, 0, 9, 9], [5, 5, 1, 1], [5, 5, 1, 1]]], dtype=torch.float32)
    model = Recorder()
    curves = aopc.morf_curves(model, image, saliency, torch.tensor([0]), ["img"], 2, False, "per_step", seed=1, batch_size=2)
    assert curves.shape == (1, 5)
    torch.testing.assert_close(curves, torch.full((1, 5), 0.5))
    batches = torch.cat(model.seen)
    assert len(batches) == 5
    changed = (batches != image).any(dim=1)  # [5, 4, 4] pixels replaced at each step
    order = [(slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2)), (slice(2, 4), slice(2, 4)), (slice(0, 2), slice(0, 2))]
    assert not changed[0].any()
    for step in range(1, 5):
        expected = torch.zeros(4, 4, dtype=torch.bool)
        for rows, cols in order[:step]:
            expected[rows, cols] = True
        assert torch.equal(changed[step], expected), f"step {step}"
        kept = batches[step][:, expected]
        assert kept.min() >= image.min() and kept.max() <= image.max()
    # cumulative: a region keeps the same noise once perturbed
    assert torch.equal(batches[2][:, 0:2, 2:4], batches[4][:, 0:2, 2:4])


def test_noise_is_shared_across_methods_and_seeded():
    image = torch.rand(3, 8, 8)
    order_a, order_b = torch.arange(4), torch.tensor([3, 2, 1, 0])
    per_image_a = aopc.noise_fill(image, order_a, 4, "per_image", 0, "x")
    per_image_b = aopc.noise_fill(image, order_b, 4, "per_image", 0, "x")
    assert torch.equal(per_image_a, per_image_b)  # same noise whatever the map's order
    step_a = aopc.noise_fill(image, order_a, 4, "per_step", 0, "x")
    step_b = aopc.noise_fill(image, order_b, 4, "per_step", 0, "x")
    # step 1's patch lands on region 0 for a, region 3 for b: the same draw
    assert torch.equal(step_a[:, :4, :4], step_b[:, 4:, 4:])
    assert not torch.equal(aopc.noise_fill(image, order_a, 4, "per_step", 1, "x"), step_a)
    assert torch.equal(aopc.noise_fill(image, order_a, 4, "per_step", 0, "x"), step_a)


def test_per_step_noise_puts_patch_k_on_the_kth_region_cropped_at_the_edges():
    # 10×9 px in 4 px regions: a 3×3 grid whose last row is 2 px high and last column 1 px wide
    image = torch.rand(2, 10, 9)
    order = torch.tensor([8, 0, 5, 2, 7, 1, 4, 6, 3])
    fill = aopc.noise_fill(image, order, 4, "per_step", 3, "edge")
    assert fill.shape == image.shape and fill.is_contiguous()
    for step, region in enumerate(order.tolist(), start=1):
        top, left = (region // 3) * 4, (region % 3) * 4
        patch = common.uniform((2, 4, 4), image.min(), image.max(), common.generator(image.device, 3, "edge", "aopc", 4, step), image.device)
        box = fill[:, top : top + 4, left : left + 4]
        assert torch.equal(box, patch[:, : box.shape[1], : box.shape[2]]), f"step {step}, region {region}"


class ProbabilityOfBrightCorner(nn.Module):
    """Class-0 logit = 10 × mean of the top-left 2×2 block of channel 0."""

    def forward(self, x):
        corner = x[:, 0, :2, :2].mean(dim=(1, 2))
        return torch.stack([10 * corner, torch.zeros_like(corner)], dim=1)


def test_morf_aopc_higher_for_map_that_finds_the_evidence():
    image = torch.zeros(1, 3, 4, 4)
    image[:, 0, :2, :2] = 1.0
    good = torch.tensor([[[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    bad = good.flip(1).flip(2)
    model = ProbabilityOfBrightCorner()
    args = (torch.tensor([0]), ["img"], 2, False, "per_image", 0, 8)
    good_aopc = aopc.aopc_from_curves(aopc.morf_curves(model, image, good, *args))
    bad_aopc = aopc.aopc_from_curves(aopc.morf_curves(model, image, bad, *args))
    assert good_aopc > bad_aopc


# ---------- Max-Sensitivity ----------

def linear_model(size: int = 4) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A = channel 0 of x (1×1 conv), then Flatten → Linear: HiResCAM = W_t ⊙ x₀."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    fc = nn.Linear(size * size, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    model = nn.Sequential(OrderedDict(conv=conv, flatten=nn.Flatten(), fc=fc)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, conv, fc.weight.detach()[0].view(size, size)


def explain_with(model, layer, method):
    """The explanation function Max-Sensitivity re-explains with: the registry's explainer."""
    from camfaith import explainers

    explainer = explainers.get(method)
    return lambda images, targets, seeds: explainer.explain(model, layer, images, targets, explainer.settings(), seeds)


def test_max_sensitivity_matches_hand_computation():
    torch.manual_seed(0)
    model, layer, weight = linear_model()
    image = torch.rand(1, 3, 4, 4)
    raw = weight * image[0, 0]
    post = postprocess.PostProcess(relu=False, minmax=False, upsample="none")
    value = max_sensitivity.max_sensitivity(explain_with(model, layer, "hirescam"), image, raw.unsqueeze(0), torch.tensor([0]), ["a"], [7],
                                            radius=0.1, samples=5, post=post, normalise=False, clip_range=None, seed=3, batch_size=2)
    noisy = max_sensitivity.perturbations(image[0], "a", 0.1, 5, 3)
    expected = max(float((weight * (y[0] - image[0, 0])).norm()) for y in noisy)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    normalised = max_sensitivity.max_sensitivity(explain_with(model, layer, "hirescam"), image, raw.unsqueeze(0), torch.tensor([0]), ["a"], [7],
                                                 radius=0.1, samples=5, post=post, normalise=True, clip_range=None, seed=3, batch_size=5)
    assert normalised.item() == pytest.approx(expected / float(raw.norm()), rel=1e-5)


def test_max_sensitivity_noise_in_linf_ball_and_seeded():
    image = torch.zeros(3, 4, 4)
    noisy = max_sensitivity.perturbations(image, "a", 0.2, 6, 0)
    assert noisy.abs().max() <= 0.2 and noisy.shape == (6, 3, 4, 4)
    assert torch.equal(noisy, max_sensitivity.perturbations(image, "a", 0.2, 6, 0))
    assert not torch.equal(noisy, max_sensitivity.perturbations(image, "b", 0.2, 6, 0))


def test_max_sensitivity_of_input_independent_map_is_zero():
    model, layer, _ = linear_model()
    with torch.no_grad():
        layer.weight.zero_()
    image = torch.rand(2, 3, 4, 4)
    raw = torch.zeros(2, 4, 4)
    post = postprocess.PostProcess(relu=False, minmax=False, upsample="none")
    value = max_sensitivity.max_sensitivity(explain_with(model, layer, "gradcam"), image, raw, torch.tensor([0, 1]), ["a", "b"], [1, 2],
                                            radius=0.3, samples=4, post=post, normalise=False, clip_range=None, seed=0, batch_size=3)
    assert torch.equal(value, torch.zeros(2))


@pytest.mark.parametrize("control", ["random", "centre"])
def test_max_sensitivity_gives_a_control_that_ignores_the_input_a_perfect_score(control):
    """The controls re-explain a noisy copy with the image's own seed, so their map never moves:
    Max-Sensitivity calls them perfectly stable, which is why the tables show the controls."""
    model, layer, _ = linear_model()
    image = torch.rand(2, 3, 4, 4)
    explain = explain_with(model, layer, control)
    raw = explain(image, torch.tensor([0, 1]), [5, 6])
    post = postprocess.PostProcess(relu=True, minmax=True, upsample="none")
    value = max_sensitivity.max_sensitivity(explain, image, raw, torch.tensor([0, 1]), ["a", "b"], [5, 6], radius=0.5, samples=3,
                                            post=post, normalise=True, seed=0, batch_size=4)
    assert torch.equal(value, torch.zeros(2))


# ---------- HAAS ----------

def test_ha_image_hand_case():
    preprocessing = Preprocessing(image_size=1)  # mean = std = 0.5: inputs are x_norm
    images = torch.tensor([0.5, -0.5, 0.8]).view(1, 3, 1, 1)
    # a map of 1 at its only pixel → a_norm = 1 after ReLU + min-max? A constant map scales to 0,
    # so give a 2-pixel map and look at the pixel whose a_norm is 1.
    images = torch.cat([images, images], dim=3)  # [1, 3, 1, 2]
    raw = torch.tensor([[[2.0, 0.0]]])
    post = postprocess.PostProcess(relu=True, minmax=True, upsample="none")
    ha = haas.ha_images(images, raw, preprocessing, post)
    torch.testing.assert_close(ha[0, :, 0, 0], torch.tensor([1.0, -1.0, 1.0]), atol=1e-6, rtol=0)  # clip(x·2)
    torch.testing.assert_close(ha[0, :, 0, 1], torch.tensor([0.5, -0.5, 0.8]))  # a_norm = 0: unchanged


def test_ha_image_with_imagenet_normalisation_goes_through_minus_one_one():
    preprocessing = Preprocessing(image_size=1, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = torch.tensor([0.75, 0.25, 0.9]).view(1, 3, 1, 1)
    images = torch.cat([preprocessing.from_unit(pixels)] * 2, dim=3)
    raw = torch.tensor([[[1.0, 0.0]]])
    ha = haas.ha_images(images, raw, preprocessing, postprocess.PostProcess(relu=True, minmax=True, upsample="none"))
    # x_norm = 2p − 1 = (0.5, −0.5, 0.8) → ×2, clipped → (1, −1, 1) → pixels (1, 0, 1)
    torch.testing.assert_close(preprocessing.to_unit(ha)[0, :, 0, 0], torch.tensor([1.0, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_haas_ratio_plain_balanced_and_study_rounding():
    labels = np.array([0, 0, 0, 1])
    original = np.array([0, 0, 1, 1])  # plain 0.75, balanced (2/3 + 1)/2
    emphasised = np.array([0, 1, 1, 1])  # plain 0.5, balanced (1/3 + 1)/2
    value, acc, acc_ha = haas.haas(labels, original, emphasised, "plain", None)
    assert (value, acc, acc_ha) == pytest.approx((0.5 / 0.75, 0.75, 0.5))
    value, _, _ = haas.haas(labels, original, emphasised, "balanced", None)
    assert value == pytest.approx((2 / 3) / (5 / 6))
    # the study: round(acc_HA, 2) / round(acc, 2), rounded to 2
    labels = np.zeros(1000, dtype=int)
    original = np.where(np.arange(1000) < 846, 0, 1)  # 0.846 → 0.85
    emphasised = np.where(np.arange(1000) < 783, 0, 1)  # 0.783 → 0.78
    value, acc, acc_ha = haas.haas(labels, original, emphasised, "plain", 2)
    assert (acc, acc_ha, value) == (0.85, 0.78, 0.92)


def test_haas_refuses_maps_outside_unit_range():
    images = torch.zeros(1, 3, 1, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        haas.ha_images(images, torch.tensor([[[2.0, -1.0]]]), Preprocessing(image_size=1), postprocess.PostProcess(relu=False, minmax=False, upsample="none"))


# ---------- selection and protocols ----------

def test_select_correct_and_all():
    labels, predictions = np.array([0, 1, 2, 1]), np.array([0, 2, 2, 1])
    assert select(labels, predictions, "correct").tolist() == [0, 2, 3]
    assert select(labels, predictions, "all").tolist() == [0, 1, 2, 3]


def test_thesis_protocol_overrides_config_and_default_keeps_it():
    config = {"images": "all", "zero_pad": False, "round_decimals": None, "noise": "per_image", "region_px": [8],
              "postprocess": {"relu": False, "minmax": False, "upsample": "nearest"}}
    assert resolve("aopc", config, "default") == config
    thesis = resolve("aopc", config, "thesis")
    assert thesis["images"] == "correct" and thesis["zero_pad"] is True and thesis["round_decimals"] == 3
    assert thesis["noise"] == "per_step" and thesis["region_px"] == [8]
    assert thesis["postprocess"] == THESIS["aopc"]["postprocess"]
    assert resolve("max_sensitivity", {"normalise": True}, "thesis")["normalise"] is False
    haas_thesis = resolve("haas", {"images": "correct", "accuracy": "balanced"}, "thesis")
    assert (haas_thesis["images"], haas_thesis["accuracy"], haas_thesis["round_decimals"]) == ("all", "plain", 2)
    with pytest.raises(ValueError, match="protocol"):
        resolve("aopc", config, "paper")
