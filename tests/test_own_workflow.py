"""The README's "Your own model" path end to end through Snakemake: a folder of images (with groups and
masks) and a tiny model saved by the test in every form, run with config/experiments/own_model.yaml
at tiny sizes; each form's maps equal those of the same weights built in memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from own_model_forms import CNN_LAYER, save_forms, tiny_cnn
from test_workflow import ROOT, snakemake

from camfaith import explainers
from camfaith.data.images import ImageTable, Preprocessing
from camfaith.data.synthetic import SyntheticSpec, generate
from camfaith.explainers.runtime import layer_for
from camfaith.models import own
from camfaith.store import read_maps

pytestmark = pytest.mark.workflow

CLASSES = ["disc", "square", "triangle"]
MODEL_CLASSES = ["triangle", "disc", "square"]  # the models' output order: matched to the folders by name
VIT = {"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}
OCCLUSION = {"window": 16, "stride": 16}
FORMS = ("factory", "export", "torchscript", "onnx", "state_dict", "timm")


def image_folder(root: Path) -> None:
    """``root/<class>/<image>.png`` with ``masks/`` mirroring it and ``groups.csv`` (two images per patient)."""
    spec = SyntheticSpec.from_config({"seed": 0, "image_size": 32, "classes": CLASSES, "groups_per_class": 4, "images_per_group": 2,
                                      "object_size": [10, 14], "distractor": True, "corrupt_images": 0})
    generated = root.parent / "generated"
    metadata = pd.read_csv(generate(spec, generated))
    for column, prefix in (("image", "images/"), ("mask", "")):
        for relative in metadata[column]:
            target = root / relative[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(generated / relative, target)
    groups = pd.DataFrame({"image": metadata["image"].str.removeprefix("images/"), "group": metadata["group"]})
    groups.to_csv(root / "groups.csv", index=False)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> tuple[Path, dict[str, torch.nn.Module]]:
    import timm
    import torchvision
    from safetensors.torch import save_file

    workdir = tmp_path_factory.mktemp("own")
    image_folder(workdir / "my_images")
    torch.manual_seed(0)
    cnn = tiny_cnn()
    models = {form: {"model": config} for form, config in save_forms(cnn, workdir / "models", MODEL_CLASSES).items()}
    resnet = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    torch.save(resnet.state_dict(), workdir / "models" / "resnet18.pth")
    models["state_dict"] = {"model": {"source": "state_dict", "arch": "resnet18", "checkpoint": "models/resnet18.pth", "classes": MODEL_CLASSES,
                                      "target_layer": "layer3"}}
    vit = timm.create_model(VIT["arch"], pretrained=False, num_classes=3, **VIT["kwargs"]).eval()
    save_file(vit.state_dict(), workdir / "models" / "vit.safetensors", metadata={own.METADATA_NAME: own.metadata_json(MODEL_CLASSES)})
    models["timm"] = {"model": {"source": "timm", "checkpoint": "models/vit.safetensors", **VIT}}
    config = yaml.safe_load((ROOT / "config" / "experiments" / "own_model.yaml").read_text())
    dataset = config["datasets"]["mine"]
    dataset["local_path"] = "my_images"
    dataset["preprocessing"]["image_size"] = 32
    config["models"] = {"mine": models}
    config["device"] = "cpu"
    config["explain"]["methods"] = ["gradcam", {"occlusion": OCCLUSION}]
    config["explain"]["images"] = {"per_class": 3, "seed": 0}
    config["metrics"] = {"aopc": {"region_px": [16]}, "max_sensitivity": {"enabled": False}, "haas": {"enabled": False},
                         # The ground-truth metrics read masks through the index, as for any dataset (test_own_data);
                         # left out here to keep this run's 40-odd jobs short.
                         **{m: {"enabled": False} for m in ("localisation_error", "relevance_mass", "pixels_inside", "relevance_rank",
                                                            "pointing_game")}}
    (workdir / "own_model.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "2", "--configfile", str(workdir / "own_model.yaml"))
    nets = {"factory": cnn, "export": cnn, "torchscript": cnn, "onnx": cnn, "state_dict": resnet, "timm": vit}
    return workdir, nets


def reference_maps(net: torch.nn.Module, method: str, layer: str | None, images: torch.Tensor, targets: torch.Tensor, grids=None) -> torch.Tensor:
    model = own.OwnModel(net, [MODEL_CLASSES.index(c) for c in CLASSES]).eval()
    model.camfaith_token_grids = grids or {}
    explainer = explainers.get(method)
    settings = explainer.make_settings(OCCLUSION if method == "occlusion" else {})
    return explainer.explain(model, layer_for(explainer, model, layer)[1], images, targets, settings, [0] * len(images))


def test_every_form_runs_end_to_end_with_the_maps_of_its_weights_in_memory(own_run):
    workdir, nets = own_run
    layers = {"factory": CNN_LAYER, "export": CNN_LAYER, "state_dict": "layer3", "timm": "blocks.1.norm1"}
    index = pd.read_parquet(workdir / "results/index/mine/index.parquet")
    assert sorted(index["label"].unique()) == CLASSES and index["group"].nunique() == 12 and index["mask_path"].notna().all()
    for form in FORMS:
        record = json.loads((workdir / f"results/import/mine/{form}/model.json").read_text())
        assert record["model_classes"] == MODEL_CLASSES and record["permutation"] == [1, 2, 0]
        assert not (workdir / f"results/train/mine/{form}").exists()  # nothing was trained
        methods = ["occlusion"] + (["gradcam"] if form in layers else [])
        for method in methods:
            maps = read_maps(workdir / f"results/explain/mine/{form}/{method}.h5")
            assert len(maps.image_ids) == 9 and int(maps.attrs["test_images"]) == 24  # explain.images: 3 per class of 24
            rows = index.set_index("image_id").loc[maps.image_ids].reset_index()
            table = ImageTable(workdir / "my_images", rows, Preprocessing.from_config(record["preprocessing"]))
            images = torch.stack([table[i][0] for i in range(len(rows))])
            grids = {"blocks.1.norm1": (1, 4, 4)} if form == "timm" else None
            theirs = reference_maps(nets[form], method, layers.get(form), images, torch.from_numpy(maps.targets), grids)
            ours = torch.from_numpy(maps.maps)
            # Occlusion maps are differences of two probabilities near 1/3 (random weights), computed here in
            # other batch shapes than the workflow's: float32 rounding of a probability is ~1e-7 and the
            # cancellation amplifies it relative to the small map, so occlusion's bound is on the probability
            # scale (1e-6); the gradient maps keep 1e-5 of the map's max.
            bound = 1e-6 if method == "occlusion" else 1e-5 * float(theirs.abs().max())
            assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= bound, (form, method)
        assert (workdir / f"results/explain/mine/{form}/gradcam.h5").exists() == (form in layers)


def test_the_tables_say_why_a_black_box_model_has_no_gradcam_and_the_verdict_covers_every_form(own_run):
    workdir, _ = own_run
    aopc = (workdir / "results/aggregate/default/tables/aopc.md").read_text()
    onnx = aopc[aopc.index("## mine / onnx"):].split("\n## ")[0]
    assert "| Grad-CAM | not run: does not apply to this model: Grad-CAM differentiates the model, and a model of source onnx cannot be" in onnx
    torchscript = aopc[aopc.index("## mine / torchscript"):].split("\n## ")[0]
    assert "a model of source torchscript calls none" in torchscript and "| Occlusion | " in torchscript
    vit = aopc[aopc.index("## mine / timm"):].split("\n## ")[0]
    assert "The layer methods read blocks.1.norm1, a transformer block" in vit and "HiResCAM's identity" in vit
    assert "transformer block" not in onnx
    classification = pd.read_csv(workdir / "results/aggregate/default/tables/classification.csv")
    assert sorted(classification["model"]) == sorted(FORMS)
    verdict = (workdir / "results/aggregate/verdict.md").read_text()
    for form in FORMS:
        assert f"## mine / {form} (test balanced accuracy" in verdict
    assert (workdir / "results/aggregate/default/figures/overlays/mine/timm.png").stat().st_size > 1000
