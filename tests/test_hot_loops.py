"""The metrics' hot loops stay on the tensors' device: no host round trip per batch.

On a GPU every ``.item()``, ``.tolist()``, ``float(t)``, ``.cpu()`` or ``.numpy()`` inside a loop
stalls the device until its queue drains. This machine has no GPU, so the guard below makes each
of them an error while the code under test runs: scalar reads are caught where they reach the
dispatcher (``aten::_local_scalar_dense``), the others at the ``Tensor`` methods.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import frozen_tiny_resnet18
from torch.utils._python_dispatch import TorchDispatchMode

from camfaith import postprocess
from camfaith.explainers import cam_family as cams
from camfaith.metrics import aopc, common, max_sensitivity


class HostRoundTrip(AssertionError):
    pass


class _RefuseScalarReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostRoundTrip("a tensor was read back to the host as a Python number (.item(), float(), bool(), if tensor)")
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(name: str):
        def method(self, *args, **kwargs):
            raise HostRoundTrip(f"Tensor.{name}() in a hot loop")
        return method

    with monkeypatch.context() as patch:
        for name in ("numpy", "tolist", "cpu"):
            patch.setattr(torch.Tensor, name, refuse(name))
        with _RefuseScalarReads():
            yield


@pytest.fixture(scope="module")
def setup():
    model, layer = frozen_tiny_resnet18()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 1, 2])
    return model, layer, images, targets


IDS = ["a", "b", "c"]


@pytest.mark.parametrize("read_back", [
    lambda t: t.item(), lambda t: float(t), lambda t: bool(t > 0), lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t.cpu(),
], ids=["item", "float", "bool", "tolist", "numpy", "cpu"])
def test_the_guard_catches_every_kind_of_read_back(monkeypatch, read_back):
    with pytest.raises(HostRoundTrip), no_host_round_trips(monkeypatch):
        read_back(torch.tensor(1.5))


def test_all_four_maps_and_their_postprocessing_stay_on_the_device(setup, monkeypatch):
    model, layer, images, targets = setup
    with no_host_round_trips(monkeypatch):
        maps = cams.compute(model, layer, images, targets, cams.METHODS)
        for spec in (postprocess.PostProcess(), postprocess.PostProcess(upsample="bicubic"), postprocess.PostProcess(relu=False, minmax=False)):
            postprocess.apply(maps["gradcampp"], spec, (32, 32))


@pytest.mark.parametrize("noise", ["per_step", "per_image"])
def test_aopc_builds_and_scores_its_perturbations_on_the_device(setup, monkeypatch, noise):
    model, layer, images, targets = setup
    saliency = postprocess.apply(cams.compute(model, layer, images, targets, ["hirescam"])["hirescam"], postprocess.PostProcess(), (32, 32))
    with no_host_round_trips(monkeypatch):
        curves = aopc.morf_curves(model, images, saliency, targets, IDS, 12, False, noise, 0, batch_size=7)
        aopc.aopc_from_curves(curves, decimals=3)
    assert curves.shape == (3, 3 * 3 + 1)


@pytest.mark.parametrize("normalise,clip", [(False, False), (True, True)])
def test_max_sensitivity_draws_noise_and_recomputes_maps_on_the_device(setup, monkeypatch, normalise, clip):
    model, layer, images, targets = setup
    raw = cams.compute(model, layer, images, targets, ["gradcam"])["gradcam"]
    clip_range = (torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0)) if clip else None
    def explain(noisy, noisy_targets, _seeds):
        return cams.compute(model, layer, noisy, noisy_targets, ["gradcam"])["gradcam"]

    with no_host_round_trips(monkeypatch):
        values = max_sensitivity.max_sensitivity(explain, images, raw, targets, IDS, [0, 1, 2], radius=0.1, samples=4,
                                                 post=postprocess.PostProcess(), normalise=normalise, clip_range=clip_range, seed=0, batch_size=5)
    assert values.shape == (3,)


def test_haas_forwards_stay_on_the_device(setup, monkeypatch):
    model, _, images, targets = setup
    with no_host_round_trips(monkeypatch):
        common.predict_classes(model, images, 2, amp=True)
        common.target_probability(model, images, targets, 2, amp=True)


def test_scorecam_masks_and_scores_every_channel_on_the_device(setup, monkeypatch):
    from camfaith import explainers

    model, layer, images, targets = setup
    scorecam = explainers.get("scorecam")
    with no_host_round_trips(monkeypatch):
        maps = scorecam.explain(model, layer, images, targets, scorecam.make_settings({"batch_size": 7}), [0, 1, 2])
    assert maps.shape == (3, 4, 4)
