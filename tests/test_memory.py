"""The memory budget of score jobs: the probe's arithmetic, the fitting rule, and the clear error."""

import pandas as pd
import pytest
import torch
from torch import nn

from camfaith import memory
from camfaith.models import ModelSpec, build_model, resolve_layer

MIB = 2**20


def test_probe_counts_the_largest_leaf_input_plus_output_and_what_follows_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)).eval()
    sample = torch.zeros(1, 3, 4, 4)
    sizes = memory.probe(model, sample, layer=model[1])
    # conv: in 3·16 + out 8·16 floats; relu: 8·16 + 8·16 — the largest pair
    assert sizes.peak == (8 * 16 + 8 * 16) * 4
    # after the ReLU: flatten's 128 floats and the linear's 2
    assert sizes.after_layer == (128 + 2) * 4
    # every leaf output: conv 128, relu 128, flatten 128, linear 2
    assert sizes.total == (3 * 128 + 2) * 4
    assert (sizes.layer, sizes.channels, sizes.plane, sizes.image) == (128 * 4, 8, 16, 3 * 16 * 4)
    assert memory.probe(model, sample).after_layer == 0


def test_fit_keeps_the_configured_sizes_without_a_budget():
    need = memory.Footprint(fixed=10 * MIB, per_block_image=MIB, per_sample=4 * MIB)
    plan = memory.fit(need, batch_size=64, images_per_block=16, budget_mb=None)
    assert (plan.batch_size, plan.images_per_block, plan.budget_mb) == (64, 16, None)
    assert plan.estimated_mb == pytest.approx(10 + 16 + 256)


@pytest.mark.parametrize("budget", [40, 100, 300, 10_000])
def test_fit_shrinks_batches_into_the_budget_and_never_grows_them(budget):
    need = memory.Footprint(fixed=10 * MIB, per_block_image=MIB, per_sample=4 * MIB)
    plan = memory.fit(need, batch_size=64, images_per_block=16, budget_mb=budget)
    assert plan.estimated_mb <= budget
    assert 1 <= plan.batch_size <= 64 and 1 <= plan.images_per_block <= 16
    if budget >= 10 + 16 + 256:
        assert (plan.batch_size, plan.images_per_block) == (64, 16)
    else:
        # the forward batch is as large as the rest of the budget allows
        assert plan.estimated_mb + 4 > budget


def test_a_budget_too_small_for_one_image_is_refused_with_the_numbers():
    need = memory.Footprint(fixed=50 * MIB, per_block_image=MIB, per_sample=8 * MIB)
    with pytest.raises(ValueError, match=r"memory_mb=20 is too small: one image needs about 59 MB"):
        memory.fit(need, batch_size=8, images_per_block=8, budget_mb=20)


@pytest.mark.parametrize("metric", ["aopc", "max_sensitivity", "haas"])
def test_footprint_of_a_real_model_grows_with_the_input(metric):
    # a GAP head accepts both input sizes (a flatten head is tied to one)
    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, head="gap")).eval()
    _, layer = resolve_layer(model, None)
    from camfaith import explainers

    hirescam = explainers.get("hirescam")
    small = memory.footprint(metric, model, torch.zeros(1, 3, 32, 32), layer, hirescam)
    large = memory.footprint(metric, model, torch.zeros(1, 3, 64, 64), layer, hirescam)
    assert small.fixed == large.fixed > sum(p.numel() * 4 for p in model.parameters())
    assert large.per_sample > 3 * small.per_sample  # activations scale with the pixels (4×)
    assert large.per_block_image > small.per_block_image


def test_footprint_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'occlusion'; known: "):
        memory.footprint("occlusion", nn.Identity(), torch.zeros(1, 3, 4, 4))


def test_every_metric_with_forwards_has_a_memory_model_and_the_others_need_none():
    from camfaith import explainers
    from camfaith.metrics import registry

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    for name in registry.names(forward=True):
        need = memory.footprint(name, model, torch.zeros(1, 3, 16, 16), explainer=explainers.get("gradcam"))
        assert need.fixed > 0 and need.per_sample > 0 and need.per_block_image > 0, name
    for name in registry.names(forward=False):
        assert memory.footprint(name, model, torch.zeros(1, 3, 16, 16)) == memory.Footprint(0, 0, 0), name


# --- the score stage under a budget --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_maps(tiny_dataset, tmp_path_factory):
    """A one-epoch tiny model and its HiResCAM maps, as the train and explain stages leave them."""
    from camfaith import pipeline

    out = tmp_path_factory.mktemp("budget")
    params = {"model": {"arch": "resnet18", "head": "flatten", "cut_after": "layer1", "plain_last_block": True},
              "training": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "patience": 1, "seed": 0},
              "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "device": "cpu"}
    pipeline.train_model(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, params,
                         model_path=out / "model.pt", history_path=out / "history.parquet", resume_path=out / "resume.pt")
    pipeline.explain(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, out / "model.pt", "hirescam",
                     {"target": "label", "batch_size": 8, "device": "cpu"}, out / "hirescam.h5", {"dataset": "tiny", "model": "m"})
    return out


SETTINGS = {
    "aopc": {"region_px": [8], "noise": "per_step", "images": "all", "zero_pad": False, "batch_size": 64, "images_per_block": 16},
    "max_sensitivity": {"radii": [{"radius": 0.1, "samples": 3}], "images": "all", "normalise": True, "clip": False,
                        "batch_size": 32, "images_per_block": 16},
}


@pytest.mark.parametrize("metric", sorted(SETTINGS))
def test_a_tight_budget_shrinks_batches_and_changes_no_score(tiny_dataset, trained_maps, tmp_path, metric):
    from camfaith import pipeline
    from camfaith.store import read_table_metadata

    def run(budget):
        settings = {**SETTINGS[metric], "postprocess": {"relu": True, "minmax": True, "upsample": "bilinear"}, "memory_mb": budget}
        out = tmp_path / f"{budget}.parquet"
        pipeline.score(tiny_dataset.root, tiny_dataset.index_path, tiny_dataset.split_path, trained_maps / "model.pt",
                       trained_maps / "hirescam.h5", metric, {"settings": settings, "protocol": "default", "seed": 0, "device": "cpu"},
                       out, {"dataset": "tiny", "model": "m"})
        return pd.read_parquet(out), read_table_metadata(out)["memory_plan"]

    unbounded_scores, unbounded = run(None)
    assert unbounded["budget_mb"] is None and unbounded["batch_size"] == SETTINGS[metric]["batch_size"]
    budget = round(unbounded["estimated_mb"] / 3, 1)  # a third of what the configured batches need
    bounded_scores, bounded = run(budget)
    assert bounded["budget_mb"] == budget and bounded["estimated_mb"] <= budget
    assert bounded["batch_size"] < unbounded["batch_size"]
    pd.testing.assert_frame_equal(bounded_scores, unbounded_scores, rtol=1e-5, atol=1e-6)
