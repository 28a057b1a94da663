"""The localisation metrics on hand-computed cases: ties, all-zero maps, full and empty ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camfaith.metrics import localisation as loc


def _maps(*planes) -> torch.Tensor:
    return torch.tensor(np.array(planes, dtype=np.float32))


def _region(size: int, cells) -> torch.Tensor:
    region = torch.zeros(size, size, dtype=torch.bool)
    for r, c in cells:
        region[r, c] = True
    return region


def test_a_box_covers_the_pixels_whose_centre_lies_inside_it():
    region = loc.box_region(torch.tensor([[1.0, 1.0, 3.0, 2.0], [0.6, 0.0, 1.4, 4.0], [math.nan] * 4]), (4, 4))
    assert region[0].nonzero().tolist() == [[1, 1], [1, 2]]
    # pixel centres 0.5, 1.5: only column 0's centre (0.5) is outside [0.6, 1.4), column 1's (1.5) too, so none
    assert not region[1].any()
    assert not region[2].any()


def test_tolerance_reaches_pixels_within_its_euclidean_distance():
    near = loc.within(_region(5, [(2, 2)]).unsqueeze(0), 1.0)[0]
    assert near.sum() == 5 and near[1, 2] and near[2, 1] and not near[1, 1]  # the diagonal is sqrt(2) away
    assert loc.within(_region(5, [(2, 2)]).unsqueeze(0), 1.5)[0].sum() == 9
    assert torch.equal(loc.within(_region(5, [(0, 0)]).unsqueeze(0), 0)[0], _region(5, [(0, 0)]))


def test_pointing_game_hits_misses_ties_and_constant_maps():
    region = _region(4, [(0, 0), (0, 1)])
    peak_inside = np.zeros((4, 4))
    peak_inside[0, 1] = 1
    peak_outside = np.zeros((4, 4))
    peak_outside[3, 3] = 1
    tie = np.zeros((4, 4))
    tie[0, 0] = tie[3, 3] = 1  # two maxima, one inside: half a hit, not a first-index hit
    next_to = np.zeros((4, 4))
    next_to[1, 1] = 1  # one pixel below the region
    maps = _maps(peak_inside, peak_outside, tie, np.zeros((4, 4)), np.full((4, 4), 0.3), next_to)
    regions = region.expand(6, 4, 4)
    hit, tied = loc.pointing_game(maps, regions)
    assert hit.tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]  # all zero and constant: no point, a miss
    assert tied.tolist() == [1, 1, 2, 16, 16, 1]
    assert loc.pointing_game(maps, regions, tolerance_px=1)[0].tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 1.0]
    empty = loc.pointing_game(maps[:1], torch.zeros(1, 4, 4, dtype=torch.bool))[0]
    assert torch.isnan(empty).all()
    assert loc.pointing_game(maps[:1], torch.ones(1, 4, 4, dtype=torch.bool))[0].tolist() == [1.0]


def test_pointing_recall_abstains_below_the_threshold():
    maps = _maps(np.eye(3) * 0.3, np.eye(3) * 0.7, np.eye(3) * 0.2)
    hit = torch.tensor([1.0, 1.0, float("nan")])
    recall = loc.pointing_recall(maps, hit, 0.5)
    assert recall[:2].tolist() == [0.0, 1.0] and torch.isnan(recall[2])


def test_the_box_bounds_the_largest_eight_connected_region_above_the_threshold():
    plane = np.zeros((6, 6), dtype=np.float32)
    plane[0, 0] = 1.0  # a single strong pixel: the maximum, but a small region
    plane[3, 2] = plane[4, 3] = plane[5, 4] = 0.5  # diagonal neighbours: one 8-connected region of 3
    plane[3, 5] = 0.1  # below 15 % of the maximum
    boxes = loc.largest_region_boxes(_maps(plane, np.zeros((6, 6))), 0.15)
    assert boxes[0].tolist() == [2.0, 3.0, 5.0, 6.0]
    assert torch.isnan(boxes[1]).all()  # no positive maximum: no box


def test_box_iou_of_equal_half_overlapping_disjoint_and_missing_boxes():
    first = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 4)
    second = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0], [math.nan] * 4])
    assert loc.box_iou(first, second).tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])


def test_the_ilsvrc_rule_asks_less_of_small_boxes():
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 200.0, 100.0]])
    assert loc.iou_needed(truth, 0.5, "ilsvrc").tolist() == pytest.approx([100 / 400, 0.5])
    assert loc.iou_needed(truth, 0.5, "fixed").tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="iou_rule"):
        loc.iou_needed(truth, 0.5, "voc")


def test_top_k_correct():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [1.0, 1.0, 0.0]])
    labels = np.array([1, 2, 1])
    assert loc.top_k_correct(logits, labels, 1).tolist() == [True, False, False]  # a tie goes to the lower index
    assert loc.top_k_correct(logits, labels, 2).tolist() == [True, True, True]


def test_relevance_mass_counts_positive_attribution_only():
    region = _region(2, [(0, 0)]).expand(4, 2, 2)
    maps = _maps([[3.0, 1.0], [-5.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[-1.0, 2.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]])
    mass = loc.relevance_mass(maps, region)
    assert mass[0] == pytest.approx(0.75) and torch.isnan(mass[1]) and mass[2] == 0 and mass[3] == pytest.approx(0.25)
    assert loc.relevance_mass(maps[:1], torch.ones(1, 2, 2, dtype=torch.bool)).tolist() == [1.0]
    assert torch.isnan(loc.relevance_mass(maps[:1], torch.zeros(1, 2, 2, dtype=torch.bool))).all()


def test_pixels_inside_at_each_threshold():
    plane = np.array([[1.0, 0.6], [0.3, 0.0]], dtype=np.float32)
    region = _region(2, [(0, 0), (1, 0)]).unsqueeze(0)
    maps = _maps(plane)
    assert loc.pixels_inside(maps, region, 0.85).tolist() == [1.0]  # only the maximum is above
    assert loc.pixels_inside(maps, region, 0.5).tolist() == [0.5]  # 1.0 inside, 0.6 outside
    assert loc.pixels_inside(maps, region, 0.2).tolist() == pytest.approx([2 / 3])
    assert torch.isnan(loc.pixels_inside(_maps(np.zeros((2, 2))), region, 0.5)).all()  # nothing above: undefined
    assert torch.isnan(loc.pixels_inside(maps, torch.zeros(1, 2, 2, dtype=torch.bool), 0.5)).all()


def test_relevance_rank_without_ties_with_ties_and_all_zero():
    region = _region(3, [(0, 0), (0, 1)]).unsqueeze(0)  # K = 2
    ranked = _maps([[0.9, 0.1, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert loc.relevance_rank(ranked, region).tolist() == [0.5]  # top 2: 0.9 (inside), 0.8 (outside)
    tied = _maps([[0.9, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5]])
    # place 1: 0.9 inside; place 2 shared by three 0.5s, one inside: 1 + 1/3 of 2 places
    assert loc.relevance_rank(tied, region).tolist() == pytest.approx([(1 + 1 / 3) / 2])
    assert loc.relevance_rank(_maps(np.zeros((3, 3))), region).tolist() == pytest.approx([2 / 9])  # a random pointer's
    assert loc.relevance_rank(ranked, torch.ones(1, 3, 3, dtype=torch.bool)).tolist() == [1.0]
    assert torch.isnan(loc.relevance_rank(ranked, torch.zeros(1, 3, 3, dtype=torch.bool))).all()


def test_on_the_default_synthetic_run_real_methods_beat_the_controls_at_the_pointing_game(tmp_path):
    """The default config's dataset and resnet18, trained as `make run` trains them, every method of
    explain.methods explained as there, then the pointing game as configured: every real method
    beats the `random` control by at least MARGIN, and `centre` (a fixed blob in the middle of an
    image whose object lies anywhere) reaches none of them."""
    from pathlib import Path

    import yaml

    from camfaith import explainers, pipeline
    from camfaith.store import read_parquet

    margin = 0.5  # measured: real methods 0.88-1.00, random 0.10, centre 0.04 (2026-12-02)
    config = yaml.safe_load(Path(__file__).parents[1].joinpath("config", "config.yaml").read_text())
    dataset = config["datasets"]["synthetic"]
    raw, index, split = tmp_path / "raw", tmp_path / "index.parquet", tmp_path / "split.parquet"
    pipeline.download({**dataset, "name": "synthetic"}, raw)
    pipeline.index(raw, {"adapter": "metadata_csv", "classes": None, "ground_truth": "mask", **dataset["index"]}, index, tmp_path / "q.parquet")
    pipeline.split(index, dataset["split"], split)
    entry = config["models"]["synthetic"]["resnet18"]
    model = tmp_path / "model.pt"
    pipeline.train_model(raw, index, split, {"model": entry["model"], "training": entry["training"], "preprocessing": dataset["preprocessing"],
                                             "device": "cpu"}, model, tmp_path / "history.parquet", tmp_path / "resume.pt")
    methods = explainers.parse_methods(config["explain"]["methods"], "explain.methods")
    maps = {}
    for method, settings in methods.items():
        if method == "cam":
            continue  # CAM needs a GAP head
        maps[method] = tmp_path / f"{method}.h5"
        params = {"target": "label", "batch_size": 32, "device": "cpu", "seed": 0, "settings": settings}
        pipeline.explain(raw, index, split, model, method, params, maps[method], {"dataset": "synthetic", "model": "resnet18"})
    settings = {k: v for k, v in config["metrics"]["pointing_game"].items() if k != "enabled"}
    out = tmp_path / "pointing_game.parquet"
    pipeline.score_ground_truth(raw, index, split, {m: str(p) for m, p in maps.items()}, "pointing_game",
                                {"settings": settings, "protocol": "default", "seed": 0, "ground_truth": "mask"}, out,
                                {"dataset": "synthetic", "model": "resnet18"})
    scores = read_parquet(out)
    hits = scores[(scores["quantity"] == "hit") & (scores["parameter_value"] == 0)].groupby("method")["value"].mean()
    print("pointing game, 0 px:", hits.round(3).to_dict())  # shown with pytest -s
    real = [m for m in maps if not explainers.get(m).is_control]
    assert len(real) >= 10
    for method in real:
        assert hits[method] >= hits["random"] + margin, (method, hits.to_dict())
        assert hits["centre"] < hits[method], (method, hits.to_dict())


# --- the ground truth through the config, the index and the loader ----------------------------------------


def _config(edit=None) -> dict:
    import copy
    from pathlib import Path

    import yaml

    from camfaith import configuration

    root = Path(__file__).parents[1]
    config = configuration.merge(yaml.safe_load((root / "config/config.yaml").read_text()),
                                 yaml.safe_load((root / "tests/tiny_config.yaml").read_text()))
    config = copy.deepcopy(config)
    if edit:
        edit(config)
    return config


def _prepare(config):
    from pathlib import Path

    from camfaith import configuration

    return configuration.prepare(config, Path(__file__).parents[1] / "config/schema.yaml")


def test_a_dataset_without_ground_truth_plans_no_localisation_and_its_tables_say_why():
    def no_ground_truth(config):
        config["datasets"]["synthetic"]["ground_truth"] = "none"

    plan = _prepare(_config(no_ground_truth))
    assert "pointing_game" in plan.metrics and plan.scored("synthetic", "tinyres", "pointing_game", "default") == []
    assert plan.scored("synthetic", "tinyres", "aopc", "default")
    reasons = {s.reason for s in plan.protocol_skips("default") if s.metric == "pointing_game"}
    assert reasons == {"no ground truth: dataset synthetic has no masks or boxes (datasets.synthetic.ground_truth)"}
    with_truth = _prepare(_config())
    assert with_truth.scored("synthetic", "tinyres", "pointing_game", "default") == list(with_truth.methods[("synthetic", "tinyres")])


def test_asking_for_a_localisation_metric_on_a_dataset_without_ground_truth_is_a_config_error():
    from camfaith.configuration import ConfigError

    def explicit(config):
        config["datasets"]["synthetic"]["ground_truth"] = "none"
        config["datasets"]["synthetic"]["metrics"] = {"pointing_game": {"tolerance_px": [15]}}

    with pytest.raises(ConfigError, match=r"datasets\.synthetic\.metrics\.pointing_game: Pointing game needs ground truth, and dataset synthetic has none"):
        _prepare(_config(explicit))

    def mask_of_boxes(config):
        config["datasets"]["synthetic"]["ground_truth"] = "box"
        config["metrics"]["pointing_game"]["region"] = "mask"

    with pytest.raises(ConfigError, match=r"metrics\.pointing_game\.region: mask, but dataset synthetic has boxes only"):
        _prepare(_config(mask_of_boxes))


def test_the_thesis_protocol_has_no_localisation_and_says_so():
    def thesis(config):
        config["protocol"] = ["default", "thesis"]

    plan = _prepare(_config(thesis))
    assert plan.scored("synthetic", "tinyres", "pointing_game", "thesis") == []
    skipped = [s for s in plan.protocol_skips("thesis") if s.metric == "pointing_game"]
    assert skipped and all(s.reason.startswith("not part of the thesis protocol (the study did not compute Pointing game") for s in skipped)
    from camfaith.metrics import resolve

    with pytest.raises(ValueError, match="not part of the thesis protocol"):
        resolve("pointing_game", {}, "thesis")


def test_the_index_quarantines_a_box_outside_its_image_and_an_image_without_its_mask(tiny_dataset, tmp_path):
    import shutil

    import pandas as pd

    from camfaith.data.index import build_index

    root = tmp_path / "raw"
    shutil.copytree(tiny_dataset.root, root)
    metadata = pd.read_csv(root / "metadata.csv")
    outside, maskless = metadata["image"].iloc[0], metadata["image"].iloc[1]
    metadata.loc[0, "bbox_x1"] = 99  # the images are 32 px wide
    (root / metadata.loc[1, "mask"]).unlink()
    metadata.to_csv(root / "metadata.csv", index=False)
    index, quarantine = build_index(root, "metadata_csv", 0.5, ground_truth="mask")
    reasons = dict(zip(quarantine["path"], quarantine["reason"]))
    assert reasons[outside].startswith("box (") and reasons[outside].endswith("is empty or outside the 32×32 image")
    assert reasons[maskless] == f"mask {metadata.loc[1, 'mask']}: file missing"
    assert outside not in set(index["path"]) and maskless not in set(index["path"])
    # without declared ground truth the same rows are images like any other
    plain, none = build_index(root, "metadata_csv", 0.5)
    assert none.empty and len(plain) == len(metadata)


def test_masks_and_boxes_reach_the_metric_at_input_resolution(tmp_path):
    import pandas as pd
    from PIL import Image

    from camfaith.data.images import ImageTable, Preprocessing

    image = np.zeros((8, 16, 3), dtype=np.uint8)  # 16 wide, 8 high: a square resize halves x only
    Image.fromarray(image).save(tmp_path / "a.png")
    mask = np.zeros((4, 4), dtype=np.uint8)  # another size than the image, as Covid-19 Radiography's lung masks
    mask[0:2, 2:4] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    rows = pd.DataFrame({"image_id": ["a", "b"], "path": ["a.png", "a.png"], "label_index": [0, 0], "mask_path": ["a_mask.png", None],
                         "bbox_x0": [pd.NA, 4], "bbox_y0": [pd.NA, 2], "bbox_x1": [pd.NA, 12], "bbox_y1": [pd.NA, 6]})
    table = ImageTable(tmp_path, rows, Preprocessing(8))
    region, box = table.load_ground_truth(0, "mask")
    assert region.shape == (8, 8) and region[:4, 4:].all() and region.sum() == 16
    assert box.tolist() == [4.0, 0.0, 8.0, 4.0]  # the resized mask's bounds
    region, box = table.load_ground_truth(1, "box")
    assert box.tolist() == [2.0, 2.0, 6.0, 6.0]  # x scaled by 8/16, y by 8/8
    assert region.nonzero().tolist() == [[r, c] for r in range(2, 6) for c in range(2, 6)]
    with pytest.raises(ValueError, match="has no mask, though its dataset declares ground_truth: mask"):
        table.load_ground_truth(1, "mask")


def test_the_pointing_game_table_gives_the_accuracy_per_class():
    import pandas as pd

    from camfaith import aggregate
    from camfaith.metrics import SCORE_COLUMNS

    # class 0: hits 1, 1, 0 (accuracy 0.67); class 1: hits 0, 1 (0.5); class 2: only an undefined image
    hits = [(0, 1.0), (0, 1.0), (0, 0.0), (1, 0.0), (1, 1.0), (2, float("nan"))]
    rows = [{"dataset": "synthetic", "model": "tinyres", "method": "gradcam", "metric": "pointing_game", "protocol": "default",
             "image_id": f"img{i}", "label": label, "target": label, "prediction": label, "parameter": "tolerance_px",
             "parameter_value": 0.0, "quantity": "hit", "step": pd.NA, "value": value} for i, (label, value) in enumerate(hits)]
    rows.append({**rows[0], "quantity": "tied_maxima", "value": 5.0})  # not the metric's quantity: not averaged
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    text = aggregate.per_class_markdown(scores, "pointing_game", {"synthetic": ["circle", "square", "triangle"]})
    lines = text.splitlines()
    assert lines[0] == "### synthetic / tinyres"
    assert lines[2] == "| method | tolerance in px | circle (3) | square (2) | triangle (0) | all (5) |"
    assert lines[4] == "| Grad-CAM | pointing game within 0 px | 0.67 | 0.50 |  | 0.60 |"
    assert aggregate.per_class_markdown(scores, "relevance_mass", {}) == ""


def test_a_model_with_more_classes_than_a_table_shows_gets_a_pointer_to_its_score_file():
    import pandas as pd

    from camfaith import aggregate
    from camfaith.metrics import SCORE_COLUMNS

    labels = range(aggregate.PER_CLASS_LIMIT + 1)
    rows = [{"dataset": "imagenet", "model": "vgg16", "method": "gradcam", "metric": "pointing_game", "protocol": "default",
             "image_id": f"img{label}", "label": label, "target": label, "prediction": label, "parameter": "tolerance_px",
             "parameter_value": 0.0, "quantity": "hit", "step": pd.NA, "value": 1.0} for label in labels]
    text = aggregate.per_class_markdown(pd.DataFrame(rows, columns=list(SCORE_COLUMNS)), "pointing_game", {})
    limit = aggregate.PER_CLASS_LIMIT
    assert text.startswith(f"### imagenet / vgg16\n\n{limit + 1} classes, more than a table can show ({limit})")
    assert "results/score/<protocol>/imagenet/vgg16/pointing_game.parquet" in text and "|" not in text
