"""Tests of the data stages: synthetic generator, index (quarantine) and grouped split."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camfaith.data.index import INDEX_COLUMNS, QuarantineLimitError, build_index, class_names
from camfaith.data.split import LeakageError, assign_splits, check_leakage
from camfaith.data.synthetic import CLASS_OBJECTS, SyntheticSpec, generate, render_image
from camfaith.store import write_table

SMALL = {"seed": 0, "image_size": 48, "groups_per_class": 4, "images_per_group": 3, "object_size": [10, 16]}
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def small_spec(**changes) -> SyntheticSpec:
    return SyntheticSpec.from_config({**SMALL, **changes})


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its path relative to ``root``."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.float64)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """48 px, 3 classes x 4 patients x 3 images, distractor on."""
    root = tmp_path_factory.mktemp("small_synthetic")
    metadata_path = generate(small_spec(), root)
    return root, pd.read_csv(metadata_path, dtype={"group": str})


# --- synthetic generator ---------------------------------------------------------------------------


def test_generation_is_deterministic_byte_for_byte(tmp_path, small_dataset):
    root_a, _ = small_dataset
    root_b = tmp_path / "again"
    generate(small_spec(), root_b)
    hashes_a, hashes_b = file_hashes(root_a), file_hashes(root_b)
    assert len(hashes_a) == 1 + 2 * 3 * 4 * 3  # metadata.csv + one image and one mask per row
    assert hashes_a == hashes_b


def test_different_seed_gives_different_images(tmp_path, small_dataset):
    root_a, metadata = small_dataset
    root_b = tmp_path / "seed1"
    generate(small_spec(seed=1), root_b)
    hashes_a, hashes_b = file_hashes(root_a), file_hashes(root_b)
    images = list(metadata["image"])
    assert set(images) <= set(hashes_b)  # same layout
    assert all(hashes_a[path] != hashes_b[path] for path in images)


def test_masks_lie_inside_bbox_and_bbox_is_tight(small_dataset):
    root, metadata = small_dataset
    assert len(metadata) == 3 * 4 * 3
    for row in metadata.itertuples():
        with Image.open(root / row.mask) as handle:
            mask = np.asarray(handle)
        with Image.open(root / row.image) as handle:
            assert handle.size == (48, 48)
        assert mask.shape == (48, 48)
        assert set(np.unique(mask)) == {0, 255}
        rows, cols = np.nonzero(mask)
        bbox = (row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1)
        # every object pixel inside the bbox (x1/y1 exclusive) ...
        assert ((cols >= row.bbox_x0) & (cols < row.bbox_x1) & (rows >= row.bbox_y0) & (rows < row.bbox_y1)).all()
        # ... and the bbox is the mask's tight bounding box
        assert bbox == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        low, high = 10, 16
        assert low - 2 <= row.bbox_x1 - row.bbox_x0 <= high
        assert low - 2 <= row.bbox_y1 - row.bbox_y0 <= high


def test_each_group_has_exactly_one_label(small_dataset):
    _, metadata = small_dataset
    labels_per_group = metadata.groupby("group")["label"].nunique()
    assert len(labels_per_group) == 3 * 4
    assert (labels_per_group == 1).all()
    assert (metadata.groupby("group").size() == 3).all()
    assert (metadata.groupby("label")["group"].nunique() == 4).all()


def test_images_of_one_group_share_background(small_dataset):
    """Per-image background colour (median outside the object's bbox) is much closer within a patient."""
    root, metadata = small_dataset
    colours = []
    for row in metadata.itertuples():
        image = load_rgb(root / row.image)
        outside = np.ones(image.shape[:2], dtype=bool)
        outside[row.bbox_y0 : row.bbox_y1, row.bbox_x0 : row.bbox_x1] = False
        colours.append(np.median(image[outside], axis=0))
    colours = np.array(colours)
    groups = metadata["group"].to_numpy()
    distance = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    same = (groups[:, None] == groups[None]) & ~np.eye(len(groups), dtype=bool)
    other = groups[:, None] != groups[None]
    assert distance[same].mean() < 0.2 * distance[other].mean()
    for group in np.unique(groups):
        rows = groups == group
        within = distance[np.ix_(rows, rows)][~np.eye(rows.sum(), dtype=bool)].mean()
        between = distance[np.ix_(rows, ~rows)].mean()
        assert within < between, group


def test_at_least_three_distinct_classes():
    assert len(CLASS_OBJECTS) >= 3
    shapes = [shape for shape, _ in CLASS_OBJECTS.values()]
    textures = [texture for _, texture in CLASS_OBJECTS.values()]
    assert len(set(shapes)) == len(shapes) and len(set(textures)) == len(textures)
    assert len(SyntheticSpec().classes) >= 3


def test_all_known_classes_can_be_generated(tmp_path):
    spec = small_spec(classes=sorted(CLASS_OBJECTS), groups_per_class=1, images_per_group=1)
    metadata = pd.read_csv(generate(spec, tmp_path))
    assert sorted(metadata["label"]) == sorted(CLASS_OBJECTS)


def test_distractor_draws_a_ring_outside_the_object():
    """On a flat background, only the distractor puts bright pixels outside the class-object mask, in
    one compact patch (at most object_size wide) away from the object."""
    flat = (np.full(3, 0.3), np.zeros((3, 48, 48)))
    for distractor in (False, True):
        spec = small_spec(distractor=distractor)
        for seed, label in enumerate(spec.classes * 3):
            pixels, mask, (x0, y0, x1, y1) = render_image(spec, label, flat, seed)
            deviation = np.abs(pixels.astype(np.float64) - 0.3 * 255).max(axis=-1)
            assert (deviation[mask] > 60).any()  # the class object itself is bright
            outside = (deviation > 60) & ~mask
            if not distractor:
                assert not outside.any()  # background noise (sd 0.03) never deviates by 60/255
                continue
            rows, cols = np.nonzero(outside)
            assert len(rows) >= 5, (label, seed)
            assert cols.max() - cols.min() < 16 and rows.max() - rows.min() < 16
            apart = cols.min() >= x1 or cols.max() < x0 or rows.min() >= y1 or rows.max() < y0
            assert apart, (label, seed)


def test_distractor_flag_changes_images(tmp_path, small_dataset):
    root_on, metadata = small_dataset
    generate(small_spec(distractor=False), tmp_path)
    on, off = file_hashes(root_on), file_hashes(tmp_path)
    assert all(on[path] != off[path] for path in metadata["image"])


def test_from_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"colour.*sead|sead.*colour"):
        SyntheticSpec.from_config({**SMALL, "sead": 3, "colour": "red"})


def test_from_config_rejects_unknown_class_names():
    with pytest.raises(ValueError, match="hexagon"):
        SyntheticSpec.from_config({**SMALL, "classes": ["disc", "hexagon"]})


def test_from_config_builds_tuples():
    spec = SyntheticSpec.from_config(SMALL)
    assert spec.object_size == (10, 16) and isinstance(spec.classes, tuple)
    assert spec == SyntheticSpec(image_size=48, groups_per_class=4, images_per_group=3, object_size=(10, 16))


# --- index -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("corrupt_synthetic")
    metadata_path = generate(small_spec(corrupt_images=2), root)
    return root, pd.read_csv(metadata_path, dtype={"group": str})


def test_index_quarantines_truncated_images(corrupt_dataset, small_dataset):
    root, metadata = corrupt_dataset
    clean_root, _ = small_dataset
    index, quarantine = build_index(root, "metadata_csv", max_quarantine_fraction=0.1)
    # the truncated files are exactly the ones differing from the clean dataset of the same seed
    truncated = sorted(
        path for path in metadata["image"] if (root / path).read_bytes() != (clean_root / path).read_bytes()
    )
    assert len(truncated) == 2
    assert list(quarantine.columns) == ["path", "reason"]
    assert sorted(quarantine["path"]) == truncated
    assert all(isinstance(reason, str) and reason for reason in quarantine["reason"])
    # never dropped silently: every metadata row is either indexed or quarantined
    assert len(index) + len(quarantine) == len(metadata)
    assert set(index["path"]) | set(quarantine["path"]) == set(metadata["image"])
    assert not set(index["path"]) & set(quarantine["path"])


def test_index_raises_when_quarantine_exceeds_limit(corrupt_dataset):
    root, _ = corrupt_dataset
    with pytest.raises(QuarantineLimitError, match="2 of 36"):
        build_index(root, "metadata_csv", max_quarantine_fraction=0.01)
    build_index(root, "metadata_csv", max_quarantine_fraction=2 / 36)  # exactly at the limit is allowed


def test_index_columns_and_order(small_dataset):
    root, metadata = small_dataset
    index, quarantine = build_index(root, "metadata_csv", max_quarantine_fraction=0.0)
    assert quarantine.empty
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert len(index) == len(metadata)
    assert list(index["image_id"]) == sorted(index["image_id"])
    assert all(i == str(Path(p).with_suffix("").as_posix()) for i, p in zip(index["image_id"], index["path"]))
    merged = index.merge(metadata, left_on="path", right_on="image")
    assert len(merged) == len(metadata)
    for column in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
        assert (merged[f"{column}_x"].astype(int) == merged[f"{column}_y"]).all()
    assert (merged["mask_path"] == merged["mask"]).all()
    assert (merged["group_x"] == merged["group_y"]).all()


def test_label_index_follows_sorted_class_names(tmp_path):
    spec = small_spec(classes=["triangle", "disc", "square"], groups_per_class=2, images_per_group=1)
    generate(spec, tmp_path)
    index, _ = build_index(tmp_path, "metadata_csv", max_quarantine_fraction=0.0)
    mapping = dict(zip(index["label"], index["label_index"]))
    assert mapping == {"disc": 0, "square": 1, "triangle": 2}
    assert class_names(index) == ["disc", "square", "triangle"]


# --- split -----------------------------------------------------------------------------------------


def test_split_keeps_groups_whole_and_is_stratified(tiny_dataset):
    index = tiny_dataset.index
    frame = assign_splits(index, FRACTIONS, seed=0)
    assert list(frame.columns) == ["image_id", "group", "label", "split"]
    assert sorted(frame["image_id"]) == sorted(index["image_id"]) and frame["image_id"].is_unique
    assert set(frame["split"]) == {"train", "val", "test"}
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    classes = set(index["label"])
    for name, part in frame.groupby("split"):
        assert set(part["label"]) == classes, name
    shares = frame["split"].value_counts(normalize=True)
    assert 0.45 <= shares["train"] <= 0.75
    assert 0.1 <= shares["val"] <= 0.3 and 0.1 <= shares["test"] <= 0.3


def test_split_is_byte_identical_for_the_same_seed(tiny_dataset, tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_table(assign_splits(tiny_dataset.index, FRACTIONS, seed=7), first)
    write_table(assign_splits(tiny_dataset.index, FRACTIONS, seed=7), second)
    assert first.read_bytes() == second.read_bytes()


def test_split_depends_on_seed(tiny_dataset):
    a = assign_splits(tiny_dataset.index, FRACTIONS, seed=0)
    b = assign_splits(tiny_dataset.index, FRACTIONS, seed=1)
    assert list(a["image_id"]) == list(b["image_id"])
    assert (a["split"] != b["split"]).any()


def test_check_leakage_names_the_leaking_group():
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"], "group": ["p1", "p1", "p2", "p2"], "label": ["x"] * 4,
        "split": ["train", "test", "val", "val"],
    })
    with pytest.raises(LeakageError, match="p1") as error:
        check_leakage(frame)
    assert "p2" not in str(error.value)
    check_leakage(frame.assign(split=["train", "train", "val", "val"]))


def test_official_test_split_is_honoured_exactly(tiny_dataset):
    index = tiny_dataset.index.copy()
    first_groups = index.groupby("label")["group"].apply(lambda g: sorted(set(g))[:2])
    official_groups = set(itertools.chain.from_iterable(first_groups))
    official = index["group"].isin(official_groups)
    index["official_split"] = pd.Series(np.where(official, "test", None), dtype="string")
    frame = assign_splits(index, FRACTIONS, seed=0).set_index("image_id")
    test_ids = set(frame.index[frame["split"] == "test"])
    assert test_ids == set(index.loc[official, "image_id"])
    assert set(frame.loc[list(index.loc[~official, "image_id"]), "split"]) == {"train", "val"}
    assert (frame.groupby("group")["split"].nunique() == 1).all()


def test_official_split_ignored_when_not_honoured(tiny_dataset):
    index = tiny_dataset.index.copy()
    index["official_split"] = pd.Series(["test"] * len(index), dtype="string")
    honoured = assign_splits(index, FRACTIONS, seed=0)
    assert set(honoured["split"]) == {"test"}
    ignored = assign_splits(index, FRACTIONS, seed=0, honour_official=False)
    assert set(ignored["split"]) == {"train", "val", "test"}
