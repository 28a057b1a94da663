"""Results must not depend on how the work is cut: batch size, image blocks, memory format."""

import numpy as np
import pytest
import torch
from conftest import frozen_tiny_resnet18

from camfaith import postprocess, scoring
from camfaith.data.images import Preprocessing
from camfaith.explainers import cam_family as cams
from camfaith.metrics import aopc, max_sensitivity
from camfaith.store import MapSet


@pytest.fixture(scope="module")
def setup():
    model, layer = frozen_tiny_resnet18()
    images = torch.randn(5, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 0, 1])
    raw = cams.compute(model, layer, images, targets, ["hirescam"])["hirescam"]
    return model, layer, images, targets, raw


IDS = [f"img{i}" for i in range(5)]


def test_cams_do_not_depend_on_batch_size_or_memory_format(setup):
    model, layer, images, targets, raw = setup
    one_by_one = torch.cat([cams.compute(model, layer, images[i : i + 1], targets[i : i + 1], ["hirescam"])["hirescam"] for i in range(5)])
    torch.testing.assert_close(one_by_one, raw, rtol=1e-4, atol=1e-5)
    model_cl = model.to(memory_format=torch.channels_last)
    channels_last = cams.compute(model_cl, layer, images.to(memory_format=torch.channels_last), targets, ["hirescam"])["hirescam"]
    model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(channels_last, raw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("noise", ["per_step", "per_image"])
def test_morf_curves_do_not_depend_on_batch_size(setup, noise):
    model, _, images, targets, raw = setup
    saliency = postprocess.apply(raw, postprocess.PostProcess(), (32, 32))
    curves = [aopc.morf_curves(model, images, saliency, targets, IDS, 8, False, noise, 0, batch_size) for batch_size in (3, 17, 200)]
    for other in curves[1:]:
        torch.testing.assert_close(other, curves[0], rtol=1e-4, atol=1e-6)
    # one image at a time (a different image block) gives the same curves: noise is seeded per image
    alone = torch.cat([aopc.morf_curves(model, images[i : i + 1], saliency[i : i + 1], targets[i : i + 1], IDS[i : i + 1], 8, False, noise, 0, 7)
                       for i in range(5)])
    torch.testing.assert_close(alone, curves[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["hirescam", "gradient_shap", "occlusion"])
def test_max_sensitivity_does_not_depend_on_batch_size_or_block(setup, method):
    from camfaith import explainers

    model, layer, images, targets, _ = setup
    explainer = explainers.get(method)
    chosen = explainer.make_settings({"gradient_shap": {"samples": 2}, "occlusion": {"window": 16, "stride": 8}}.get(method, {}))

    def explain(x, t, seeds):
        return explainer.explain(model, layer, x, t, chosen, seeds)

    seeds = [21, 22, 23, 24, 25]
    raw = explain(images, targets, seeds)
    post = postprocess.PostProcess(relu=True, minmax=False, upsample="bilinear")
    common = dict(radius=0.1, samples=3, post=post, normalise=True, seed=0)
    values = [max_sensitivity.max_sensitivity(explain, images, raw, targets, IDS, seeds, batch_size=batch_size, **common) for batch_size in (1, 6, 64)]
    for other in values[1:]:
        torch.testing.assert_close(other, values[0], rtol=1e-4, atol=1e-6, equal_nan=True)
    alone = torch.cat([max_sensitivity.max_sensitivity(explain, images[i : i + 1], raw[i : i + 1], targets[i : i + 1], IDS[i : i + 1], seeds[i : i + 1],
                                                       batch_size=2, **common) for i in range(5)])
    torch.testing.assert_close(alone, values[0], rtol=1e-4, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("metric", ["aopc", "max_sensitivity", "haas"])
def test_score_rows_do_not_depend_on_images_per_block(setup, metric):
    model, layer, images, targets, raw = setup
    with torch.no_grad():
        logits = model(images)
    maps = MapSet(maps=raw.numpy(), image_ids=IDS, labels=targets.numpy(), predictions=logits.argmax(1).numpy(),
                  targets=targets.numpy(), logits=logits.numpy(), probabilities=logits.softmax(1).numpy(), attrs={"method": "hirescam"})
    settings = {
        "aopc": {"region_px": [16, 8], "zero_pad": False, "noise": "per_step", "batch_size": 9},
        "max_sensitivity": {"radii": [{"radius": 0.1, "samples": 3}], "normalise": True, "clip": True, "batch_size": 4},
        "haas": {"accuracy": "plain", "batch_size": 2},
    }[metric]
    settings["postprocess"] = {"relu": True, "minmax": True, "upsample": "bilinear"}
    selected = np.arange(5)

    def rows(block_size):
        from camfaith import explainers

        context = scoring.Context(model=model, maps=maps, settings=settings, preprocessing=Preprocessing(32), device=torch.device("cpu"),
                                  seed=0, amp=False, explainer=explainers.get("hirescam"), explainer_settings=explainers.get("hirescam").settings(),
                                  layer=layer)
        blocks = [scoring.Block(images[s : s + block_size], raw[s : s + block_size], targets[s : s + block_size],
                                IDS[s : s + block_size], selected[s : s + block_size], list(range(s, s + block_size))[: 5 - s])
                  for s in range(0, 5, block_size)]
        return scoring.run(metric, context, blocks, selected)

    reference, other = rows(5), rows(2)
    order = lambda r: sorted(zip(r["image_id"], r["parameter_value"], r["quantity"], r["step"], r["value"]), key=lambda t: tuple(map(str, t[:4])))
    for a, b in zip(order(reference), order(other), strict=True):
        assert a[:4] == b[:4]
        assert a[4] == pytest.approx(b[4], rel=1e-4, abs=1e-6, nan_ok=True)
