"""Tests of the model builders, target layers, offline pretrained weights and checkpoints."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision
from torch import nn

from camfaith import models
from camfaith.models import (
    ModelSpec,
    build_model,
    default_target_layer,
    load_checkpoint,
    pretrained_state_dict,
    resolve_layer,
    save_checkpoint,
)

RESNET18_FILE = "resnet18-f37072fd.pth"


def logits_of(model: nn.Module, size: int, n: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)))


def target_output_shape(model: nn.Module, layer_name: str, size: int) -> torch.Size:
    """Shape of the target layer's output for one ``size`` px image."""
    _, layer = resolve_layer(model, layer_name)
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    try:
        logits_of(model, size, n=1)
    finally:
        handle.remove()
    return seen[0]


# published (the whole torchvision network, 224 px-sized classifiers) has its own tests below; on every
# arch it would add about 12 s to the suite and check nothing those do not
@pytest.mark.parametrize("head", [head for head in models.HEADS if head != "published"])
@pytest.mark.parametrize("arch", models.ARCHS)
def test_build_model_gives_logits(arch, head):
    size = 64 if arch in ("resnet18", "resnet34", "vgg11") else 32
    spec = ModelSpec.from_config({"arch": arch, "head": head}, num_classes=5, input_size=size)
    model = build_model(spec)
    assert not model.training
    assert logits_of(model, size, n=3).shape == (3, 5)


def test_model_spec_rejects_unknown_key_arch_and_head():
    with pytest.raises(ValueError, match="depth"):
        ModelSpec.from_config({"arch": "resnet18", "depth": 3}, 2, 32)
    with pytest.raises(ValueError, match="resnet101"):
        ModelSpec.from_config({"arch": "resnet101"}, 2, 32)
    with pytest.raises(ValueError, match="spp"):
        ModelSpec.from_config({"arch": "vgg11", "head": "spp"}, 2, 32)


@pytest.fixture(scope="module")
def study_vgg19() -> nn.Module:
    return build_model(ModelSpec(arch="vgg19", num_classes=3, input_size=64))


def test_study_target_layers(study_vgg19):
    resnet34 = build_model(ModelSpec(arch="resnet34", num_classes=3, input_size=64, plain_last_block=True))
    resnet50 = build_model(ModelSpec(arch="resnet50", num_classes=3, input_size=64, plain_last_block=True))
    assert default_target_layer(resnet34) == "layer4.2.conv2"
    assert default_target_layer(resnet50) == "layer4.2.conv3"
    assert default_target_layer(study_vgg19) == "features.34"
    name, layer = resolve_layer(study_vgg19, None)
    assert name == "features.34" and isinstance(layer, nn.Conv2d)
    # the VGG trunk ends at that conv: its last ReLU and max-pool are cut
    assert len(study_vgg19.features) == 35


def test_default_target_layer_follows_cut():
    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, cut_after="layer2", plain_last_block=True))
    assert default_target_layer(model) == "layer2.1.conv2"
    vgg = build_model(ModelSpec(arch="vgg11", num_classes=3, input_size=32, cut_after="15"))
    assert default_target_layer(vgg) == "features.13"  # the last conv at or before index 15


def test_resolve_layer_unknown_name_raises_key_error(study_vgg19):
    with pytest.raises(KeyError, match="features.99"):
        resolve_layer(study_vgg19, "features.99")
    name, layer = resolve_layer(study_vgg19, "features.32")
    assert name == "features.32" and layer is study_vgg19.features[32]


def test_plain_basic_block_has_no_skip_connection():
    model = build_model(ModelSpec(arch="resnet34", num_classes=3, input_size=64, plain_last_block=True))
    block = model.layer4[-1]
    assert type(block) is nn.Sequential
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "relu", "conv2"]
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert block.conv1.in_channels == block.conv2.out_channels == 512
    # the other blocks keep their skip connection
    assert isinstance(model.layer4[0], torchvision.models.resnet.BasicBlock)
    # no skip: the block's output is exactly its layers applied in sequence
    block.eval()
    x = torch.randn(1, 512, 2, 2)
    with torch.no_grad():
        assert torch.equal(block(x), block.conv2(block.relu(block.bn1(block.conv1(x)))))


def test_plain_bottleneck_block_has_no_skip_and_no_relu():
    model = build_model(ModelSpec(arch="resnet50", num_classes=3, input_size=32, plain_last_block=True))
    block = model.layer4[-1]
    assert type(block) is nn.Sequential
    assert [name for name, _ in block.named_children()] == ["conv1", "bn1", "conv2", "bn2", "conv3"]
    assert not any(isinstance(m, nn.ReLU) for m in block.modules())
    assert block.conv1.in_channels == block.conv3.out_channels == 2048
    assert isinstance(model.layer4[0], torchvision.models.resnet.Bottleneck)


def test_plain_last_block_refused_for_vgg():
    with pytest.raises(ValueError, match="ResNets only"):
        build_model(ModelSpec(arch="vgg11", num_classes=3, input_size=32, plain_last_block=True))


def test_flatten_head_in_features_is_target_output_size(study_vgg19):
    # vgg19 at 224 px: 512 x 14 x 14; at 64 px four max-pools leave 4 x 4
    assert study_vgg19.classifier.in_features == 512 * 4 * 4
    assert target_output_shape(study_vgg19, "features.34", 64) == (1, 512, 4, 4)
    resnet = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=96, cut_after="layer3", plain_last_block=True))
    # 96 px / 16 (stem stride 4, layer2 and layer3 stride 2) = 6
    assert target_output_shape(resnet, "layer3.1.conv2", 96) == (1, 256, 6, 6)
    assert resnet.fc.in_features == 256 * 6 * 6
    assert isinstance(resnet.avgpool, nn.Identity)


def test_gap_heads_pool_the_target_layer():
    gap = build_model(ModelSpec(arch="resnet18", num_classes=4, input_size=64, head="gap"))
    assert gap.fc.in_features == 512 and isinstance(gap.avgpool, nn.AdaptiveAvgPool2d)
    dense = build_model(ModelSpec(arch="vgg11", num_classes=4, input_size=32, head="gap_dense", dense_hidden=7))
    linears = [m for m in dense.classifier.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 7), (7, 4)]


def test_trainable_prefixes_freeze_the_rest():
    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, trainable=("layer4",)))
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == name.startswith(("layer4", "fc")), name


# --- pretrained weights offline ----------------------------------------------------------------------


class DownloadAttempted(Exception):
    """Raised by the patched downloaders where no download may happen (not caught by the library)."""


def block_downloads(monkeypatch, error: Exception) -> None:
    """Make every download path raise ``error``.

    torchvision binds ``load_state_dict_from_url`` by name in ``torchvision.models._api``, so patching
    ``torch.hub.load_state_dict_from_url`` alone would not stop a real download attempt.
    """
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)


def test_missing_pretrained_weights_name_file_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    block_downloads(monkeypatch, urllib.error.URLError("no network in tests"))
    with pytest.raises(FileNotFoundError) as error:
        pretrained_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    message = str(error.value)
    assert RESNET18_FILE in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/" + RESNET18_FILE in message


def test_missing_pretrained_weights_hint_names_the_right_torch_home_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    block_downloads(monkeypatch, urllib.error.URLError("no network in tests"))
    with pytest.raises(FileNotFoundError) as error:
        pretrained_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    hint = str(error.value).split("TORCH_HOME", 1)[1]
    assert "hub/checkpoints" in hint


@pytest.mark.parametrize("arch, layer, channels", [("efficientnet_b0", "features.8", 1280), ("densenet121", "features.relu5", 1024)])
def test_feature_nets_explain_the_activated_output_the_head_sees(arch, layer, channels):
    model = build_model(ModelSpec(arch=arch, num_classes=5, input_size=64))
    assert default_target_layer(model) == layer
    assert target_output_shape(model, None, 64) == (1, channels, 2, 2)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == channels * 2 * 2


def test_feature_nets_cut_after_a_features_module_and_refuse_unknown_names():
    model = build_model(ModelSpec(arch="efficientnet_b0", num_classes=3, input_size=64, cut_after="6"))
    assert default_target_layer(model) == "features.6"
    assert list(dict(model.features.named_children())) == [str(i) for i in range(7)]
    with pytest.raises(ValueError, match="must name a features module"):
        build_model(ModelSpec(arch="densenet121", num_classes=3, input_size=64, cut_after="denseblock9"))


def test_densenet_published_weight_names_are_mapped_to_the_modules():
    model = torchvision.models.densenet121(weights=None)
    legacy = {key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in key else key: value
              for key, value in model.state_dict().items()}
    assert any(".norm.1." in key for key in legacy)
    assert models._densenet_keys(legacy).keys() == model.state_dict().keys()


def test_cached_pretrained_weights_load_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    block_downloads(monkeypatch, DownloadAttempted("a download was attempted"))
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / RESNET18_FILE)

    loaded = pretrained_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)

    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, weights="ResNet18_Weights.IMAGENET1K_V1"))
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


# --- checkpoints --------------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    spec = ModelSpec(arch="resnet18", num_classes=3, input_size=32, cut_after="layer2", plain_last_block=True,
                     trainable=("layer2",))
    torch.manual_seed(0)
    model = build_model(spec)
    # move BatchNorm running statistics away from their defaults so they must be saved too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    model.eval()
    classes, preprocessing = ["disc", "square", "triangle"], {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, spec, classes, preprocessing, {"fingerprint": "abc"})

    torch.manual_seed(1)  # a different fresh initialisation must not matter
    loaded, loaded_spec, loaded_classes, loaded_prep = load_checkpoint(path)
    assert loaded_spec == spec and loaded_classes == classes and loaded_prep == preprocessing
    assert not loaded.training
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_checkpoint_refuses_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a camfaith model checkpoint"):
        load_checkpoint(path)


class _TouchOnUnpickle:
    """A harmless stand-in for a malicious pickle: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    torch.save({"format": models.CHECKPOINT_FORMAT, "spec": {}, "payload": _TouchOnUnpickle(marker)}, path)
    with pytest.raises(ValueError, match=r"model\.pt: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file through plain pickle semantics would have run the payload: the test is real
    torch.load(path, weights_only=False)
    assert marker.exists()


# --- published models (head: published) ---------------------------------------------------------------


def _cached_resnet18(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """Random ResNet18 weights in a fresh hub cache, under the published file name."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    block_downloads(monkeypatch, DownloadAttempted("a download was attempted"))
    torch.manual_seed(5)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / RESNET18_FILE)
    return reference


def test_a_published_model_is_torchvisions_network_with_its_own_classifier(tmp_path, monkeypatch):
    reference = _cached_resnet18(tmp_path, monkeypatch)
    spec = ModelSpec(arch="resnet18", num_classes=1000, input_size=32, head="published", weights="ResNet18_Weights.IMAGENET1K_V1")
    model = build_model(spec)
    published = torchvision.models.resnet18(weights=None)
    published.load_state_dict(reference)
    assert torch.equal(logits_of(model, 32), logits_of(published.eval(), 32))
    assert default_target_layer(model) == "layer4.1.conv2" and resolve_layer(model, "layer4")[0] == "layer4"
    with pytest.raises(ValueError, match=r"1000 outputs are its classes in torchvision's order; the dataset has 3 classes"):
        build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, head="published", weights="ResNet18_Weights.IMAGENET1K_V1"))
    with pytest.raises(ValueError, match="no cut_after"):
        build_model(ModelSpec(arch="resnet18", num_classes=1000, input_size=32, head="published", cut_after="layer2"))


def test_the_train_stage_saves_a_published_model_untrained_and_its_checkpoint_gives_the_same_logits(tmp_path, monkeypatch):
    """A 1,000-class dataset (one 8 px image per class, all test, as ImageNet's validation set is):
    the train stage reads no train split, writes the weights as published and an empty history."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from camfaith import pipeline
    from camfaith.store import read_parquet

    reference = _cached_resnet18(tmp_path, monkeypatch)
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    rows = []
    for k in range(1000):
        Image.fromarray(np.full((8, 8, 3), k % 256, dtype=np.uint8)).save(raw / "images" / f"{k:04d}.png")
        rows.append({"image": f"images/{k:04d}.png", "label": f"n{k:08d}", "group": str(k), "split": "test"})
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    index, split = tmp_path / "index.parquet", tmp_path / "split.parquet"
    pipeline.index(raw, {"adapter": "metadata_csv", "classes": None, "max_quarantine_fraction": 0.0}, index, tmp_path / "q.parquet")
    pipeline.split(index, {"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0}, split)
    assert set(read_parquet(split)["split"]) == {"test"}
    params = {"model": {"arch": "resnet18", "head": "published", "weights": "ResNet18_Weights.IMAGENET1K_V1", "target_layer": "layer4"},
              "training": {},
              "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3}, "device": "cpu"}
    model_path = tmp_path / "model.pt"
    pipeline.train_model(raw, index, split, params, model_path, tmp_path / "history.parquet", tmp_path / "resume.pt")
    assert read_parquet(tmp_path / "history.parquet").empty
    loaded, spec, classes, _ = load_checkpoint(model_path)
    assert spec.head == "published" and len(classes) == 1000 and classes[0] == "n00000000"
    published = torchvision.models.resnet18(weights=None)
    published.load_state_dict(reference)
    assert torch.equal(logits_of(loaded, 8), logits_of(published.eval(), 8))

    # the KTH ImageNet experiment's methods explain it at layer4, as config/experiments/kth_imagenet.yaml does
    from camfaith import explainers
    from camfaith.store import read_maps

    for method in ("gradcam", "guided_gradcam", "guided_backprop"):
        settings = explainers.resolve_methods([method])[method].as_dict()
        maps_path = tmp_path / f"{method}.h5"
        pipeline.explain(raw, index, split, model_path, method, {"target": "label", "batch_size": 250, "device": "cpu", "seed": 0,
                                                                 "settings": settings},
                         maps_path, {"dataset": "imagenet", "model": "resnet18"})
        maps = read_maps(maps_path)
        assert maps.maps.shape[0] == 1000 and np.isfinite(maps.maps).all() and np.abs(maps.maps).sum() > 0, method


def test_the_config_check_refuses_an_arch_or_head_the_builder_does_not_have():
    from camfaith.models import sources

    assert sources.check_model_config({"arch": "resnet18", "head": "gap"}, "models.d.m.model") == []
    for arch in models.ARCHS:  # every name the check lets through is one the builder builds
        models.ModelSpec.from_config({"arch": arch}, 2, 32)
    [problem] = sources.check_model_config({"arch": "resnet101"}, "models.d.m.model")
    assert problem.startswith("config models.d.m.model.arch: source torchvision builds resnet18,") and "source state_dict" in problem
    [problem] = sources.check_model_config({"arch": "vgg11", "head": "attention"}, "models.d.m.model")
    assert "models.d.m.model.head" in problem and ", ".join(models.HEADS) in problem
