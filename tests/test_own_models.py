"""A researcher's own model in every form: built from its source, checked at import, matched to the
data's classes by name, planned by what its source can do, and explained exactly as the same weights
built in memory are."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from own_model_forms import CNN_LAYER, save_forms, tiny_cnn, tuple_output_cnn
from torch import nn

from camfaith import configuration, explainers, postprocess
from camfaith.explainers.runtime import layer_for
from camfaith.models import own, resolve_layer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
CLASSES = ["disc", "square", "triangle"]  # the data's classes (the index's sorted order)
MODEL_CLASSES = ["triangle", "disc", "square"]  # the model's output order, another one
PREPROCESSING = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
MAP_TOLERANCE = 1e-5  # of the map's largest magnitude
VIT = {"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> tuple[nn.Module, dict[str, dict], Path]:
    """The tiny CNN (random weights, seed 0) and its factory, export, TorchScript and ONNX forms,
    whose metadata names :data:`MODEL_CLASSES`."""
    folder = tmp_path_factory.mktemp("forms")
    torch.manual_seed(0)
    net = tiny_cnn()
    return net, save_forms(net, folder, MODEL_CLASSES), folder


def imported(config: dict, folder: Path, name: str, methods=("gradcam",)) -> own.LoadedModel:
    record = folder / f"{name}.json"
    own.import_model({"model": config, "methods": list(methods), "preprocessing": PREPROCESSING}, CLASSES, record, f"models.synthetic.{name}")
    return own.load_model(record)


def facts(config: dict) -> explainers.ModelFacts:
    return explainers.ModelFacts.from_config(config, 32)


def in_data_order(net: nn.Module) -> nn.Module:
    """``net`` with its outputs re-ordered from :data:`MODEL_CLASSES` to :data:`CLASSES`, as the import does."""
    return own.OwnModel(net, [MODEL_CLASSES.index(c) for c in CLASSES]).eval()


def maps(method: str, model: nn.Module, target_layer: str | None, images, targets) -> torch.Tensor:
    explainer = explainers.get(method)
    settings = explainer.make_settings({"steps": 4} if method == "integrated_gradients" else {"window": 8, "stride": 8} if method == "occlusion"
                                       else {"samples": 4} if method == "gradient_shap" else {})
    return explainer.explain(model, layer_for(explainer, model, target_layer)[1], images, targets, settings, list(range(len(images))))


@pytest.mark.parametrize("form", ["factory", "export", "torchscript", "onnx"])
def test_each_form_gives_the_maps_of_the_same_weights_built_in_memory(forms, form, tmp_path):
    net, configs, _ = forms
    loaded = imported(configs[form], tmp_path, form)
    reference = in_data_order(copy.deepcopy(net))
    torch.manual_seed(1)
    images, targets = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])  # 5: not a multiple of the ONNX file's batch of 2
    torch.testing.assert_close(loaded.model(images), reference(images), atol=1e-5, rtol=1e-5)
    applicable = [m for m in explainers.names() if explainers.get(m).why_not(facts(configs[form])) is None]
    # all but CAM; then less Guided Backprop and Guided Grad-CAM; less the layer methods (6); less the gradient ones (2)
    expected = {"factory": 13, "export": 11, "torchscript": 5, "onnx": 3}[form]
    assert len(applicable) == expected, applicable
    for method in applicable:
        ours = maps(method, loaded.model, loaded.target_layer, images, targets)
        theirs = maps(method, reference, CNN_LAYER, images, targets)
        scale = float(theirs.abs().max())
        assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= MAP_TOLERANCE * scale, (form, method)


def test_a_torchvision_state_dict_and_a_timm_checkpoint_give_the_maps_of_their_networks(tmp_path):
    import timm
    import torchvision

    torch.manual_seed(0)
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([2, 0, 1])
    vision = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    torch.save(vision.state_dict(), tmp_path / "resnet18.pth")
    vit = timm.create_model(VIT["arch"], pretrained=False, num_classes=3, **VIT["kwargs"]).eval()
    from safetensors.torch import save_file

    save_file(vit.state_dict(), tmp_path / "vit.safetensors", metadata={own.METADATA_NAME: own.metadata_json(MODEL_CLASSES)})
    cases = {"state_dict": ({"source": "state_dict", "arch": "resnet18", "checkpoint": str(tmp_path / "resnet18.pth"), "classes": MODEL_CLASSES,
                             "target_layer": "layer3"}, vision, "layer3"),
             "timm": ({"source": "timm", "checkpoint": str(tmp_path / "vit.safetensors"), **VIT}, vit, "blocks.1.norm1")}
    for name, (config, net, layer) in cases.items():
        loaded = imported(config, tmp_path, name, ["gradcam", "hirescam"])
        assert loaded.target_layer == layer
        reference = in_data_order(net)
        if name == "timm":
            reference.camfaith_token_grids = {layer: (1, 4, 4)}
        for method in ("gradcam", "hirescam", "integrated_gradients"):
            ours, theirs = maps(method, loaded.model, loaded.target_layer, images, targets), maps(method, reference, layer, images, targets)
            assert float((ours - theirs).abs().max()) <= MAP_TOLERANCE * float(theirs.abs().max()), (name, method)
        assert ours.shape == (3, 32, 32)


def test_vit_cam_family_equals_pytorch_grad_cam_with_its_reshape_transform(tmp_path):
    """pytorch-grad-cam's ViT recipe: ``target_layers=[model.blocks[-1].norm1]`` and a
    ``reshape_transform`` dropping the class token; its post-processing (ReLU, min-max, resize)
    applied to our raw [N, 4, 4] maps gives its output."""
    import timm
    from pytorch_grad_cam import GradCAM, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    vit = timm.create_model(VIT["arch"], pretrained=False, num_classes=3, **VIT["kwargs"]).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    loaded = imported({"source": "timm", "checkpoint": str(tmp_path / "vit.pt"), "classes": CLASSES, **VIT}, tmp_path, "vit", ["gradcam"])
    images, targets = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])

    def reshape(tensor):
        return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).transpose(2, 3).transpose(1, 2)

    for method, oracle in (("gradcam", GradCAM), ("hirescam", HiResCAM)):
        raw = maps(method, loaded.model, loaded.target_layer, images, targets)
        assert raw.shape == (3, 4, 4)
        with oracle(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=reshape) as cam:
            theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        ours = postprocess.minmax_scale(postprocess.apply(raw, postprocess.PostProcess(), (32, 32)).clamp(min=0))
        assert np.abs(ours.numpy() - theirs).max() <= 1e-5, method
    for parameter in vit.parameters():
        parameter.requires_grad_(False)


def test_hirescam_is_not_faithful_at_a_vit_block_but_is_at_the_cnn_flatten_head(forms, tmp_path):
    """The identity Σ HiResCAM + b = s holds for Conv → Flatten → Linear and not at a transformer's tokens."""
    import timm

    from camfaith.models import inspect

    net, _, _ = forms
    image = torch.randn(1, 3, 32, 32)
    cnn = in_data_order(copy.deepcopy(net))
    residual, gap = inspect.head_residual(cnn, resolve_layer(cnn, CNN_LAYER)[1], image, 1)
    assert residual < 1e-5 and gap > 1e-2
    torch.manual_seed(0)
    vit = own.wrap_as_is(timm.create_model(VIT["arch"], pretrained=False, num_classes=3, **VIT["kwargs"]), 32)
    vit.camfaith_token_grids = {"blocks.1.norm1": (1, 4, 4)}
    residual, _ = inspect.head_residual(vit, resolve_layer(vit, "blocks.1.norm1")[1], image, 1)
    assert residual > 1e-2


def test_classes_are_matched_by_name_and_a_missing_or_extra_class_is_named():
    assert own.match_classes(["c", "a", "b"], ["a", "b", "c"], "config models.d.m") == [1, 2, 0]
    with pytest.raises(ValueError, match=r"models\.d\.m: the model does not know the label\(s\) \['zebra'\] of the data \('zebra': labels\.csv: lines 4, 9"):
        own.match_classes(["a", "b"], ["a", "b", "zebra"], "config models.d.m", lambda labels: {"zebra": ["labels.csv: lines 4, 9"]})
    with pytest.raises(ValueError, match=r"the model has class\(es\) \['c'\] the data does not have .*datasets\.<dataset>\.classes"):
        own.match_classes(["a", "b", "c"], ["a", "b"], "config models.d.m")


def test_tuple_and_logits_outputs_are_unwrapped_and_logged(tmp_path, caplog):
    torch.manual_seed(0)
    net = tuple_output_cnn()
    torch.save(net.state_dict(), tmp_path / "tuple.pt")
    config = {"source": "factory", "factory": "own_model_forms:tuple_output_cnn", "python_path": [str(Path(__file__).parent)],
              "checkpoint": str(tmp_path / "tuple.pt"), "classes": CLASSES, "target_layer": f"inner.{CNN_LAYER}"}
    with caplog.at_level("INFO"):
        loaded = imported(config, tmp_path, "tuple")
    assert "returns a tuple; camfaith reads its logits as its first element" in caplog.text
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(images), net(images)[0])

    class Output:
        def __init__(self, logits):
            self.logits = logits

    assert own.output_kind(Output(torch.zeros(1, 2))) == "logits" and own.output_kind({"logits": torch.zeros(1, 2)}) == "logits_key"
    with pytest.raises(ValueError, match="returned a str; camfaith needs the logits"):
        own.output_kind("nope")


def test_black_box_sources_plan_only_what_applies_with_the_reason(forms):
    _, configs, _ = forms
    config = configuration.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), {})
    config["models"]["synthetic"] = {form: {"model": configs[form]} for form in ("export", "torchscript", "onnx")}
    plan = configuration.prepare(config, SCHEMA, None)
    planned = {model: set(methods) for (_, model), methods in plan.methods.items()}
    assert planned["onnx"] == {"occlusion", "random", "centre"}
    assert planned["torchscript"] == {"integrated_gradients", "gradient_shap", "occlusion", "random", "centre"}
    assert planned["export"] == set(explainers.names()) - {"cam", "guided_backprop", "guided_gradcam"}
    reasons = {(s.model, s.method): s.reason for s in plan.skips if s.metric == "aopc" and s.reason.startswith("does not apply")}
    assert reasons[("onnx", "gradcam")].endswith("onnxruntime runs the ONNX graph forward only: no gradients, no hooks")
    assert "calls no Python hooks" in reasons[("torchscript", "scorecam")]
    assert ("torchscript", "integrated_gradients") not in reasons
    assert "has no such modules" in reasons[("export", "guided_backprop")]
    # A method the model's own list names is an error, not a quiet omission
    config = configuration.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), {})
    config["models"]["synthetic"] = {"onnx": {"model": configs["onnx"], "methods": ["gradcam", "occlusion"]}}
    with pytest.raises(configuration.ConfigError, match=r"method 'gradcam' does not apply to models\.synthetic\.onnx \(cnn\.onnx \(onnx\), source onnx\)"):
        configuration.prepare(config, SCHEMA, None)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(checkpoint="nowhere/model.pt2"), r"config models\.synthetic\.mine\.model\.checkpoint: nowhere/model\.pt2 is not a file"),
    (lambda m: m.update(source="onnx"), r"models\.synthetic\.mine\.model\.checkpoint: .*cnn\.pt2: source onnx takes \.onnx files"),
    (lambda m: m.update(cut_after="layer2"), r"config models\.synthetic\.mine\.model\.cut_after: source export .* does not read 'cut_after'"),
    (lambda m: m.update(source="timm"), r"config models\.synthetic\.mine\.model: source timm needs 'arch'"),
    (lambda m: m.update(source="factory", factory="not a reference"), r"models\.synthetic\.mine\.model\.factory"),
])
def test_a_bad_model_config_is_refused_naming_the_key(forms, edit, message):
    _, configs, _ = forms
    config = configuration.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), {})
    model = dict(configs["export"])
    edit(model)
    config["models"]["synthetic"] = {"mine": {"model": model}}
    with pytest.raises(configuration.ConfigError, match=message):
        configuration.prepare(config, SCHEMA, None)


def test_an_own_model_with_training_is_refused(forms):
    _, configs, _ = forms
    config = configuration.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), {})
    config["models"]["synthetic"] = {"mine": {"model": configs["export"], "training": {"epochs": 2}}}
    with pytest.raises(configuration.ConfigError, match=r"config models\.synthetic\.mine\.training: a model of source export is loaded from its "
                                                        r"checkpoint, not trained"):
        configuration.prepare(config, SCHEMA, None)


def test_guided_backprop_on_a_gelu_network_is_refused_at_import_naming_the_activation(tmp_path):
    import timm

    vit = timm.create_model(VIT["arch"], pretrained=False, num_classes=3, **VIT["kwargs"])
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    config = {"source": "timm", "checkpoint": str(tmp_path / "vit.pt"), "classes": CLASSES, **VIT}
    with pytest.raises(ValueError, match=r"models\.synthetic\.vit: method\(s\) \['guided_backprop'\] do not apply to this model: Guided "
                                         r"Backpropagation rewrites the backward pass of nn\.ReLU modules, and the network has none \(its activation "
                                         r"modules: \['GELU'\]"):
        imported(config, tmp_path, "vit", ["gradcam", "guided_backprop"])
    assert not (tmp_path / "vit.json").exists()  # no partial record


def test_a_checkpoint_changed_after_its_import_is_refused(forms, tmp_path):
    net, configs, folder = forms
    copied = tmp_path / "cnn.pt2"
    copied.write_bytes(Path(configs["export"]["checkpoint"]).read_bytes())
    imported({**configs["export"], "checkpoint": str(copied)}, tmp_path, "export")
    with open(copied, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match=r"cnn\.pt2 changed since it was imported \(SHA-256 differs\)"):
        own.load_model(tmp_path / "export.json")


def test_weights_that_do_not_fit_the_network_name_the_mismatch(tmp_path):
    torch.save(tiny_cnn(width=4).state_dict(), tmp_path / "narrow.pt")
    config = {"source": "factory", "factory": "own_model_forms:tiny_cnn", "python_path": [str(Path(__file__).parent)],
              "checkpoint": str(tmp_path / "narrow.pt"), "classes": CLASSES}
    with pytest.raises(ValueError, match=r"narrow\.pt: its weights do not fit the model \(other shapes: \['0\.bias: file \(4,\), model \(8,\)'"):
        imported(config, tmp_path, "narrow")


def test_a_program_with_a_fixed_batch_is_fed_in_padded_chunks(forms, tmp_path):
    net, configs, _ = forms
    record = json.loads(Path(imported(configs["onnx"], tmp_path, "onnx") and tmp_path / "onnx.json").read_text())
    assert record["fixed_batch"] == 2 and record["model_classes"] == MODEL_CLASSES and record["permutation"] == [1, 2, 0]
    assert record["preprocessing_from"] == {"image_size": "dataset config", "mean": "dataset config", "std": "dataset config"}


def test_camfaith_layers_shows_where_hirescam_is_faithful(forms, tmp_path):
    _, configs, _ = forms
    result = subprocess.run([sys.executable, "-m", "camfaith.cli", "layers", configs["export"]["checkpoint"], "--size", "32", "--measure", "3"],
                            capture_output=True, text=True, timeout=300, check=True)
    table = result.stdout
    assert "| 5 | InterpreterModule | 8×16×16 |" in table
    assert "HiResCAM sums to the score, Grad-CAM differs (a Flatten → Linear head)" in table
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"models": {"synthetic": {"mine": {"model": configs["factory"]}}}}))
    result = subprocess.run([sys.executable, "-m", "camfaith.cli", "methods", str(config)], capture_output=True, text=True, timeout=300, check=True)
    assert "## synthetic/mine" in result.stdout and "| CAM | no | CAM reads the class weights of the GAP → Linear head camfaith builds" in result.stdout
    assert "| Guided Backprop | yes | |" in result.stdout
    result = subprocess.run([sys.executable, "-m", "camfaith.cli", "check", "--no-models", str(config)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK: 4 model(s)" in result.stdout  # the default config's three and this one


def test_explain_images_maps_all_the_ground_truth_ones_or_a_seeded_few_per_class(tiny_dataset):
    from camfaith.data.images import select_split
    from camfaith.pipeline import explained_images

    rows = select_split(tiny_dataset.index, tiny_dataset.splits, "test")
    assert explained_images(rows, "all").equals(rows)
    boxed = rows.copy()
    boxed.loc[boxed.index[1:], ["mask_path", "bbox_x0"]] = None  # one image keeps its mask
    assert list(explained_images(boxed, "ground_truth")["image_id"]) == [rows["image_id"].iloc[0]]
    two = explained_images(rows, {"per_class": 2, "seed": 0})
    assert two["label_index"].value_counts().to_dict() == dict.fromkeys(sorted(rows["label_index"].unique()), 2)
    assert list(two["image_id"]) == sorted(two["image_id"])  # image_id order, as every maps file
    assert two.equals(explained_images(rows.iloc[::-1].sort_values("image_id"), {"per_class": 2, "seed": 0}))
    assert not two.equals(explained_images(rows, {"per_class": 2, "seed": 1}))  # another seed, other images (here)
    larger = explained_images(rows, {"per_class": 100, "seed": 0})
    assert larger.equals(rows)  # a class with fewer images gives all of them
    with pytest.raises(ValueError, match="no test image has a mask or a box"):
        explained_images(boxed.assign(mask_path=None, bbox_x0=None), "ground_truth")


def test_a_test_only_dataset_with_a_model_trained_here_is_refused():
    config = configuration.merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), {})
    config["datasets"]["synthetic"]["split"]["fractions"] = {"train": 0, "val": 0, "test": 1}
    with pytest.raises(configuration.ConfigError, match=r"config datasets\.synthetic\.split\.fractions\.train: 0, but models\.synthetic\.resnet18 "
                                                        r"is trained here and needs train and val images"):
        configuration.prepare(config, SCHEMA, None)
