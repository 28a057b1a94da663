"""Real datasets end to end on fixtures: download over HTTP from 127.0.0.1 → verify → extract → index → split.

No dataset host is reachable here, so every dataset is a tiny copy in its publisher's layout and
archive format (tests/dataset_fixtures.py), served by a real HTTP server; the code under test is the
same ``camfaith.pipeline`` stage code the Snakemake rules call, with ``mirror:`` pointing at the server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import dataset_fixtures as fx
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from camfaith import pipeline
from camfaith.data import adapters, archives, fetch, registry, split
from camfaith.data.index import QuarantineLimitError
from camfaith.store import read_table_metadata

ROOT = Path(__file__).resolve().parents[1]

# per dataset: the classes the fixture has, images indexed, and what the official split fixes
EXPECTED = {
    "crc": (["ADI", "NORM", "TUM"], 24, {"test": 6}),
    "covid_radiography": (sorted(fx.COVID_CLASSES), 20, {}),
    "ilsvrc2012_val": (list(fx.ILSVRC_WNIDS), 9, {"test": 9}),  # every image is test: published models are scored on it
    "chestxray14": (["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "No Finding"], 18, {"test": 7}),
    "ham10000": (sorted(fx.HAM_CLASSES), 7 * 8, {}),
    "breakhis": (["benign", "malignant"], 16 * 8, {}),
    "aptos2019": (["0", "1", "2", "3", "4"], 30, {}),
    "cifar10": None,  # labels are random draws; checked separately
    "stl10": (sorted(fx.STL_NAMES), 45, {"test": 5}),
    "imagenette": (fx.IMAGENETTE_WNIDS, 21, {"test": 6}),
}


@pytest.fixture
def server():
    with fx.FixtureServer() as running:
        yield running


@pytest.fixture
def kaggle_token(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", fx.KAGGLE_USER)
    monkeypatch.setenv("KAGGLE_KEY", fx.KAGGLE_KEY)


def publish(server, name: str) -> dict[str, bytes]:
    archives_ = fx.BUILDERS[name]()
    server.publish(name, archives_)
    return archives_


def pinned(archives_: dict[str, bytes]) -> dict[str, str]:
    """The fixtures' own checksums, given as a user pins them (they differ from the real archives')."""
    return {name: fx.md5(data) for name, data in archives_.items()}


def run_stages(tmp_path: Path, dataset: dict, max_quarantine: float = 0.0):
    raw = tmp_path / "results" / "download" / dataset["name"]
    pipeline.download(dataset, raw)
    adapter = registry.entry(dataset["source"]).adapter
    index_path, quarantine_path, split_path = (tmp_path / f for f in ("index.parquet", "quarantine.parquet", "split.parquet"))
    params = {"adapter": adapter, "max_quarantine_fraction": max_quarantine, "ground_truth": registry.ground_truth(dataset),
              "ground_truth_scope": registry.ground_truth_scope(dataset)}  # as index_params
    pipeline.index(raw, params, index_path, quarantine_path)
    pipeline.split(index_path, {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}, split_path)
    return raw, pd.read_parquet(index_path), pd.read_parquet(quarantine_path), pd.read_parquet(split_path)


@pytest.mark.parametrize("name", sorted(registry.DATASETS))
def test_each_dataset_downloads_extracts_indexes_and_splits_without_leakage(name, server, kaggle_token, tmp_path):
    archives_ = publish(server, name)
    dataset = {"name": name, "source": name, "mirror": server.url, "cache_dir": str(tmp_path / "cache"), "checksums": pinned(archives_)}
    raw, index, quarantine, splits = run_stages(tmp_path, dataset)

    assert quarantine.empty
    manifest = json.loads((raw / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [r.name for r in registry.entry(name).files]
    for record in manifest["files"]:
        assert record["sha256"] == fetch.file_hash(tmp_path / "cache" / record["name"])
    assert not list((tmp_path / "results" / "download").glob("*.partial"))
    assert set(splits["split"]) == ({"test"} if name == "ilsvrc2012_val" else {"train", "val", "test"})
    assert splits.groupby("group")["split"].nunique().max() == 1
    if EXPECTED[name] is not None:
        classes, count, fixed = EXPECTED[name]
        assert read_table_metadata(tmp_path / "index.parquet")["classes"] == classes
        assert len(index) == count
        for part, size in fixed.items():
            assert (splits["split"] == part).sum() == size
    if name == "crc":
        test_ids = set(splits.loc[splits["split"] == "test", "image_id"])
        assert test_ids == {i for i in index["image_id"] if i.startswith("CRC-VAL-HE-7K/")}
    if name == "imagenette":
        assert set(splits.loc[splits["split"] == "test", "image_id"]) == {i for i in index["image_id"] if "/val/" in i}
    if name == "cifar10":
        assert len(index) == 24 and (splits["split"] == "test").sum() == 4
        assert set(index["label"]) <= set(fx.CIFAR_NAMES)


def test_the_config_schema_names_exactly_the_registrys_datasets_and_adapters():
    from camfaith.data.index import ADAPTERS

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    assert set(dataset["source"]["enum"]) == {"synthetic", *registry.OWN_SOURCES, *registry.DATASETS}
    assert set(dataset["adapter"]["enum"]) == set(ADAPTERS)
    assert {entry.adapter for entry in registry.DATASETS.values()} <= set(ADAPTERS)


def test_covid_lung_masks_reach_the_localisation_metrics_and_a_missing_mask_is_quarantined(server, kaggle_token, tmp_path):
    import torch

    from camfaith.data.images import ImageTable, Preprocessing, select_split
    from camfaith.metrics import localisation

    archive = fx.covid_radiography()["covid19-radiography-database.zip"]
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        files = {name: source.read(name) for name in source.namelist()}
    missing = "COVID-19_Radiography_Dataset/Normal/masks/Normal-1.png"
    del files[missing]
    archives_ = {"covid19-radiography-database.zip": fx.zip_of(files)}
    server.publish("covid_radiography", archives_)
    dataset = {"name": "covid_radiography", "source": "covid_radiography", "mirror": server.url, "cache_dir": str(tmp_path / "cache"),
               "checksums": pinned(archives_)}
    raw, index, quarantine, splits = run_stages(tmp_path, dataset, max_quarantine=0.2)
    assert registry.ground_truth(dataset) == "mask"
    assert quarantine["path"].tolist() == ["COVID-19_Radiography_Dataset/Normal/images/Normal-1.png"]
    assert quarantine["reason"].tolist() == [f"mask {missing}: file missing"]
    # the 16 px masks reach the metric at the 24 px input size, as the images are resized; a map equal to
    # each mask puts all its relevance inside and points at it
    test = ImageTable(raw, select_split(index, splits, "test"), Preprocessing(24))
    masks = torch.stack([test.load_ground_truth(i, "mask")[0] for i in range(len(test))])
    assert masks.shape == (len(test), 24, 24) and masks.flatten(1).any(dim=1).all()
    maps = masks.float()
    assert torch.equal(localisation.relevance_mass(maps, masks), torch.ones(len(test)))
    assert localisation.pointing_game(maps, masks)[0].eq(1).all()


def test_chestxray14_labels_by_the_boxs_finding_and_only_boxed_images_reach_the_localisation_metrics(server, kaggle_token, tmp_path, caplog):
    import numpy as np
    import torch

    from camfaith.data.images import ImageTable, Preprocessing, select_split
    from camfaith.metrics.localisation import box_region
    from camfaith.store import MapSet, read_parquet, write_maps

    archives_ = publish(server, "chestxray14")
    dataset = {"name": "cxr", "source": "chestxray14", "mirror": server.url, "cache_dir": str(tmp_path / "cache"), "checksums": pinned(archives_)}
    with caplog.at_level("WARNING"):
        raw, index, quarantine, splits = run_stages(tmp_path, dataset)
    assert registry.ground_truth(dataset) == "box" and registry.ground_truth_scope(dataset) == "some"
    assert "left out 2 of 20 images: several findings and no box" in caplog.text
    assert "1 of 6 boxes not used: each image keeps its first box" in caplog.text
    by_name = index.assign(name=index["path"].str.rsplit("/", n=1).str[1]).set_index("name")
    assert "00000001_002.png" not in by_name.index and "00000006_002.png" not in by_name.index  # several findings, no box
    # the box belongs to its finding: Effusion|Infiltration with an "Infiltrate" box is an Infiltration image
    assert by_name.loc["00000005_001.png", "label"] == "Infiltration"
    # x 8.5 y 10.25 w 14 h 12.5 widened to whole pixels; the second box of 00000006_000 is not kept
    assert by_name.loc["00000005_000.png", ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].tolist() == [8, 10, 23, 23]
    assert by_name.loc["00000006_000.png", ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].tolist() == [16, 16, 24, 24]
    assert by_name["bbox_x0"].notna().sum() == 5 and by_name.loc[by_name["bbox_x0"].isna(), "label"].ne("").all()
    test_ids = set(splits.loc[splits["split"] == "test", "image_id"])
    assert test_ids == set(index.loc[index["group"].astype(int) >= 5, "image_id"])  # test_list.txt, patient-wise

    # maps equal to each boxed image's box at the 16 px input: the unboxed test images are counted, not scored
    test = ImageTable(raw, select_split(index, splits, "test"), Preprocessing(16))
    has = [test.has_ground_truth(i) for i in range(len(test))]
    assert sum(has) == 5 and len(test) == 7
    maps = torch.stack([box_region(test.load_ground_truth(i, "box")[1].view(1, 4), (16, 16))[0].float() if has[i]
                        else torch.zeros(16, 16) for i in range(len(test))])
    logits = np.zeros((len(test), 15), dtype=np.float32)
    labels = np.array(test.labels)
    logits[np.arange(len(test)), labels] = 1.0
    maps_path = tmp_path / "gradcam.h5"
    write_maps(maps_path, MapSet(maps=maps.numpy(), image_ids=test.image_ids, labels=labels, predictions=labels, targets=labels, logits=logits,
                                 probabilities=logits, attrs={"method": "gradcam", "resolution": "input", "settings": {}, "map_shape": [16, 16],
                                                              "input_size": 16, "weights_sha256": "0" * 64}))
    out = tmp_path / "pointing_game.parquet"
    pipeline.score_ground_truth(raw, tmp_path / "index.parquet", tmp_path / "split.parquet", {"gradcam": str(maps_path)}, "pointing_game",
                                {"settings": {"images": "all", "region": "box", "tolerance_px": [0], "abstain_below": None,
                                              "postprocess": {"relu": True, "minmax": False, "upsample": "bilinear"}},
                                 "protocol": "default", "seed": 0, "ground_truth": "box", "ground_truth_scope": "some"},
                                out, {"dataset": "cxr", "model": "densenet121"})
    scores = read_parquet(out)
    hits = scores[scores["quantity"] == "hit"]
    assert sorted(hits["image_id"]) == sorted(i for i, h in zip(test.image_ids, has) if h)
    assert hits["value"].eq(1.0).all()
    metadata = read_table_metadata(out)
    assert metadata["images_without_ground_truth"] == 2 and metadata["ground_truth_scope"] == "some"
    assert metadata["methods"]["gradcam"]["images_selected"] == 5 and metadata["methods"]["gradcam"]["images_left_out"] == 0


def test_a_chestxray14_box_outside_its_image_is_quarantined_with_the_reason(tmp_path):
    boxes = [*fx.CHESTXRAY14_BOXES[:2], ("00000006_001.png", "Mass", 28.0, 4.0, 10.0, 5.0)]  # x + w = 38 > 32
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "nih-chest-xrays-data.zip").write_bytes(fx.zip_of(fx.chestxray14_files(boxes)))
    dataset = {"name": "cxr", "source": "chestxray14", "local_path": str(manual),
               "checksums": {"nih-chest-xrays-data.zip": fx.md5((manual / "nih-chest-xrays-data.zip").read_bytes())}}
    _, index, quarantine, _ = run_stages(tmp_path, dataset, max_quarantine=0.1)
    assert quarantine["path"].str.endswith("00000006_001.png").tolist() == [True]
    assert quarantine["reason"].tolist() == ["box (28, 4, 38, 9) is empty or outside the 32×32 image"]
    assert not index["path"].str.endswith("00000006_001.png").any()


def test_a_chestxray14_box_that_is_not_four_numbers_is_refused_with_its_line(tmp_path):
    folder = tmp_path / "cxr"
    for name, data in fx.chestxray14_files([*fx.CHESTXRAY14_BOXES[:1], ("00000005_001.png", "Infiltrate", 2.0, 3.0, "", 9.0)]).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with pytest.raises(ValueError, match=r"BBox_List_2017.csv: line 3: the box is not four numbers"):
        adapters.chestxray14_csv(folder)


def test_ilsvrc_boxes_become_a_union_mask_and_the_largest_box_from_a_manual_download(tmp_path):
    import torch

    from camfaith.data.images import ImageTable, Preprocessing, select_split
    from camfaith.metrics import localisation

    manual = tmp_path / "imagenet"
    manual.mkdir()
    archives_ = fx.ilsvrc2012_val()
    for name, data in archives_.items():
        (manual / name).write_bytes(data)
    dataset = {"name": "imagenet", "source": "ilsvrc2012_val", "local_path": str(manual), "checksums": pinned(archives_)}
    raw, index, quarantine, splits = run_stages(tmp_path, dataset)
    assert quarantine.empty and registry.ground_truth(dataset) == "mask" and registry.declared_classes(dataset) is None
    rows = index.set_index("group")
    box = ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
    assert rows.loc["ILSVRC2012_val_00000003", box].tolist() == [25, 10, 38, 28]  # the larger of its two boxes
    assert rows.loc["ILSVRC2012_val_00000007", box].tolist() == [1, 1, 9, 9]  # equal areas: the first
    assert rows.loc["ILSVRC2012_val_00000004", "label"] == fx.ILSVRC_WNIDS[1]
    union = np.asarray(Image.open(raw / rows.loc["ILSVRC2012_val_00000003", "mask_path"])) > 0
    assert union.sum() == 4 * 4 + 13 * 18 and union[5:9, 10:14].all() and union[10:28, 25:38].all()

    # at the 40 px input (the 40 x 30 images are stretched, and their masks with them), a map whose
    # maximum lies in the smaller box of image 3 is a pointing-game hit: the mask is the union
    test = ImageTable(raw, select_split(index, splits, "test"), Preprocessing(40))
    position = test.image_ids.index(rows.loc["ILSVRC2012_val_00000003", "image_id"])
    mask, largest = test.load_ground_truth(position, "mask")
    assert torch.allclose(largest, torch.tensor([25.0, 10 * 40 / 30, 38.0, 28 * 40 / 30]))
    peak = torch.zeros(1, 40, 40)
    peak[0, 9, 12] = 1.0  # row 7 of 30 -> 9.3 of 40, inside the small box (rows 5-9 -> 6.7-12)
    assert localisation.pointing_game(peak, mask.unsqueeze(0))[0].tolist() == [1.0]


def test_an_ilsvrc_box_outside_its_image_is_quarantined_and_a_missing_box_file_refused(tmp_path):
    boxes = {**fx.ILSVRC_BOXES, 5: [(20, 0, 41, 15)]}  # 41 > 40 px wide
    manual = tmp_path / "imagenet"
    manual.mkdir()
    archives_ = fx.ilsvrc2012_val(boxes)
    for name, data in archives_.items():
        (manual / name).write_bytes(data)
    dataset = {"name": "imagenet", "source": "ilsvrc2012_val", "local_path": str(manual), "checksums": pinned(archives_)}
    _, index, quarantine, _ = run_stages(tmp_path, dataset, max_quarantine=0.2)
    assert quarantine["path"].tolist() == ["images/ILSVRC2012_val_00000005.JPEG"]
    assert quarantine["reason"].tolist() == ["box (20, 0, 41, 15) is empty or outside the 40×30 image"]
    assert len(index) == 8

    missing = {number: b for number, b in fx.ILSVRC_BOXES.items() if number != 2}
    archives_ = fx.ilsvrc2012_val(missing)
    for name, data in archives_.items():
        (manual / name).write_bytes(data)
    dataset["checksums"] = pinned(archives_)
    with pytest.raises(ValueError, match=r"1 of 9 validation images have no box file .*ILSVRC2012_val_00000002.JPEG"):
        pipeline.download(dataset, tmp_path / "results" / "download" / "other")
    assert not (tmp_path / "results" / "download" / "other").exists()


def test_imagenet_without_a_manual_download_says_where_to_get_it_and_where_to_put_it(tmp_path):
    with pytest.raises(fetch.MissingManualDownloadError) as raised:
        pipeline.download({"name": "imagenet", "source": "ilsvrc2012_val", "cache_dir": str(tmp_path / "cache")}, tmp_path / "raw")
    message = str(raised.value)
    assert "ILSVRC2012_img_val.tar" in message and "https://image-net.org/download-images.php" in message
    assert "registration" in message and "datasets.imagenet.local_path" in message
    assert str(tmp_path / "cache" / "ILSVRC2012_img_val.tar") in message


def test_kaggle_downloads_send_the_token_as_basic_auth(server, kaggle_token, tmp_path):
    archives_ = publish(server, "ham10000")
    dataset = {"name": "ham", "source": "ham10000", "mirror": server.url, "cache_dir": str(tmp_path / "cache"), "checksums": pinned(archives_)}
    pipeline.download(dataset, tmp_path / "raw")
    path, headers = server.served.requests[-1]
    assert path == "/api/v1/datasets/download/kmader/skin-cancer-mnist-ham10000"
    assert headers["Authorization"].startswith("Basic ")


def test_ham10000_groups_images_by_lesion(server, kaggle_token, tmp_path):
    archives_ = publish(server, "ham10000")
    _, index, _, splits = run_stages(tmp_path, {"name": "ham10000", "source": "ham10000", "mirror": server.url,
                                                "cache_dir": str(tmp_path / "cache"), "checksums": pinned(archives_)})
    metadata = pd.read_csv(io.BytesIO(zipfile.ZipFile(io.BytesIO(archives_["skin-cancer-mnist-ham10000.zip"])).read("HAM10000_metadata.csv")))
    lesion_of = dict(zip(metadata["image_id"], metadata["lesion_id"]))
    assert {Path(i).name: g for i, g in zip(index["image_id"], index["group"])} == lesion_of
    assert all(p.startswith("HAM10000_images_part_") for p in index["path"])  # one copy of the duplicated folders
    two_image_lesions = metadata["lesion_id"].value_counts()
    assert (two_image_lesions == 2).any()
    assert splits.groupby("group")["split"].nunique().max() == 1


# --- BreakHis: patient grouping and the study's cross-slide leak ---------------------------------------


@pytest.mark.parametrize("file_name, patient", [
    ("SOB_B_A-14-22549AB-40-001.png", "14-22549"),
    ("SOB_B_F-14-22549CD-400-017.png", "14-22549"),
    ("SOB_M_DC-14-2523-100-004.png", "14-2523"),
    ("SOB_B_TA-14-16184-200-001.png", "14-16184"),
])
def test_breakhis_patient_is_parsed_from_the_file_name(file_name, patient):
    assert adapters.breakhis_patient(file_name) == patient


def test_breakhis_refuses_a_name_it_cannot_parse():
    with pytest.raises(ValueError, match="not a BreakHis file name"):
        adapters.breakhis_patient("SOB_X-22549.png")


def test_breakhis_slides_of_one_patient_stay_together_and_the_studys_split_is_caught(server, kaggle_token, tmp_path):
    archives_ = publish(server, "breakhis")
    _, index, _, splits = run_stages(tmp_path, {"name": "breakhis", "source": "breakhis", "mirror": server.url,
                                                "cache_dir": str(tmp_path / "cache"), "checksums": pinned(archives_)})
    slides = index["path"].str.extract(r"-(14-\d+[A-Z]*)-")[0]
    assert set(index.loc[slides.isin(["14-22549AB", "14-22549CD", "14-22549G"]), "group"]) == {"14-22549"}
    ours = splits.set_index("image_id")["split"]
    assert ours[index.loc[slides == "14-22549AB", "image_id"]].nunique() == 1
    assert set(ours[index.loc[slides == "14-22549AB", "image_id"]]) == set(ours[index.loc[slides == "14-22549CD", "image_id"]])

    # The study's hand-made allocation: 14-22549AB in val, 14-22549CD (and G) in train, everything else train.
    study = index[["image_id", "group", "label"]].copy()
    study["split"] = ["val" if slide == "14-22549AB" else "train" for slide in slides]
    with pytest.raises(split.LeakageError) as caught:
        split.check_leakage(study)
    message = str(caught.value)
    assert "1 group(s)" in message and "'14-22549': ['train', 'val']" in message


# --- download failures ------------------------------------------------------------------------------------


def test_a_checksum_mismatch_names_the_file_and_both_hashes_and_leaves_nothing(server, tmp_path):
    publish(server, "crc")  # fixture bytes, checked against the real Zenodo md5s
    cache = tmp_path / "cache"
    with pytest.raises(fetch.ChecksumError) as caught:
        pipeline.download({"name": "crc", "source": "crc", "mirror": server.url, "cache_dir": str(cache)}, tmp_path / "raw")
    message = str(caught.value)
    assert "NCT-CRC-HE-100K.zip" in message and "6fd702d11df6292bc054397ae038a464" in message
    assert fx.md5(fx.crc()["NCT-CRC-HE-100K.zip"]).removeprefix("md5:") in message
    assert not (cache / "NCT-CRC-HE-100K.zip").exists()
    assert not list(cache.glob("*.part"))  # a corrupt download is not kept for resuming either
    assert not (tmp_path / "raw").exists()


def test_an_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    archives_ = publish(server, "stl10")  # about 1 MB, so the cut falls after several reads
    data = archives_["stl10_binary.tar.gz"]
    path = server.path_of("stl10", "stl10_binary.tar.gz")
    cut = len(data) * 2 // 3
    server.served.cut_first[path] = cut
    remote = registry.entry("stl10").files[0]
    got = fetch.fetch(remote, "stl10", tmp_path, known_hash=fx.md5(data), mirror=server.url)
    assert got.path.read_bytes() == data and got.sha256 == fetch.file_hash(got.path)
    ranges = [headers.get("Range") for p, headers in server.served.requests if p == path]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert cut - fetch.CHUNK < resumed_at <= cut  # only the last, incomplete read is asked for again
    assert server.served.bytes_sent == cut + len(data) - resumed_at


def test_a_killed_download_resumes_from_its_part_file_on_the_next_run(server, tmp_path):
    archives_ = publish(server, "imagenette")
    data = archives_["imagenette2.tgz"]
    remote = registry.entry("imagenette").files[0]
    half = len(data) // 2
    (tmp_path / "imagenette2.tgz.part").write_bytes(data[:half])
    etag = '"' + __import__("hashlib").sha1(data).hexdigest() + '"'
    (tmp_path / "imagenette2.tgz.part.json").write_text(json.dumps({"validator": etag}))
    got = fetch.fetch(remote, "imagenette", tmp_path, known_hash=fx.md5(data), mirror=server.url)
    assert got.path.read_bytes() == data and server.served.bytes_sent == len(data) - half
    assert not (tmp_path / "imagenette2.tgz.part").exists()


def test_a_part_file_of_an_older_version_is_not_resumed(server, tmp_path):
    archives_ = publish(server, "imagenette")
    data = archives_["imagenette2.tgz"]
    (tmp_path / "imagenette2.tgz.part").write_bytes(b"x" * 100)
    (tmp_path / "imagenette2.tgz.part.json").write_text(json.dumps({"validator": '"an-old-etag"'}))
    got = fetch.fetch(registry.entry("imagenette").files[0], "imagenette", tmp_path, known_hash=fx.md5(data), mirror=server.url)
    assert got.path.read_bytes() == data and server.served.bytes_sent == len(data)


def test_kaggle_without_token_or_local_path_says_what_to_download_and_where(monkeypatch, tmp_path):
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(fetch.MissingCredentialsError) as caught:
        pipeline.download({"name": "xray", "source": "covid_radiography", "cache_dir": str(tmp_path / "cache")}, tmp_path / "raw")
    message = str(caught.value)
    assert "covid19-radiography-database.zip" in message
    assert "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database" in message
    assert "datasets.xray.local_path" in message and str(tmp_path / "cache" / "covid19-radiography-database.zip") in message
    assert "kaggle.json" in message


def test_a_wrong_kaggle_token_is_refused_clearly(server, monkeypatch, tmp_path):
    publish(server, "aptos2019")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    with pytest.raises(PermissionError, match="HTTP 401.*accept its rules"):
        pipeline.download({"name": "aptos", "source": "aptos2019", "mirror": server.url, "cache_dir": str(tmp_path / "c")}, tmp_path / "raw")


def test_a_kaggle_token_file_is_read_and_a_malformed_one_refused(tmp_path):
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert fetch.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path)}) == fetch.Credentials("u", "k")
    (tmp_path / "kaggle.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Kaggle API token"):
        fetch.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path)})
    assert fetch.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(tmp_path / "none")}) is None


def test_a_manual_download_in_local_path_is_used_without_the_network(server, tmp_path):
    archives_ = fx.covid_radiography()
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "covid19-radiography-database.zip").write_bytes(archives_["covid19-radiography-database.zip"])
    dataset = {"name": "covid", "source": "covid_radiography", "local_path": str(manual), "cache_dir": str(tmp_path / "cache"),
               "checksums": pinned(archives_)}
    _, index, _, _ = run_stages(tmp_path, dataset)
    assert len(index) == 20 and index["mask_path"].notna().all()
    assert server.served.requests == []


def test_a_manual_download_that_differs_from_its_pinned_hash_is_refused(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "breakhis.zip").write_bytes(b"not the archive")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(fetch.ChecksumError, match=r"breakhis.zip: sha256 checksum mismatch: expected 0{64}, got [0-9a-f]{64}"):
        pipeline.download({"name": "bh", "source": "breakhis", "local_path": str(manual), "checksums": {"breakhis.zip": wrong}}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.partial").exists()


def test_a_missing_manual_download_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"local_path: .*breakhis.zip does not exist"):
        pipeline.download({"name": "bh", "source": "breakhis", "local_path": str(tmp_path)}, tmp_path / "raw")


# --- extraction ---------------------------------------------------------------------------------------------


def malicious_archives(tmp_path: Path) -> dict[str, Path]:
    made = {}
    made["dotdot.zip"] = fx.zip_of({"ok.txt": b"fine", "../escaped.txt": b"evil"})
    made["absolute.zip"] = fx.zip_of({"ok.txt": b"fine", "/tmp/camfaith-absolute.txt": b"evil"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("ok.txt", b"fine")
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16)
        bundle.writestr(link, "../../outside")
    made["symlink.zip"] = buffer.getvalue()
    for name, info_kwargs in (("dotdot.tar.gz", {"name": "../escaped.txt"}), ("absolute.tar.gz", {"name": "/tmp/camfaith-absolute.txt"}),
                              ("symlink.tar.gz", {"name": "link", "type": tarfile.SYMTYPE, "linkname": "../../../etc/passwd"})):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
            ok = tarfile.TarInfo("ok.txt")
            ok.size = 4
            bundle.addfile(ok, io.BytesIO(b"fine"))
            info = tarfile.TarInfo(info_kwargs["name"])
            for key, value in info_kwargs.items():
                setattr(info, key, value)
            info.size = 0 if "type" in info_kwargs else 4
            bundle.addfile(info, io.BytesIO(b"evil") if "type" not in info_kwargs else None)
        made[name] = buffer.getvalue()
    paths = {}
    for name, data in made.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name", ["dotdot.zip", "absolute.zip", "symlink.zip", "dotdot.tar.gz", "absolute.tar.gz", "symlink.tar.gz"])
def test_a_malicious_archive_is_refused_before_anything_is_written(tmp_path, name):
    archive = malicious_archives(tmp_path)[name]
    target = tmp_path / "target"
    with pytest.raises(archives.UnsafeArchiveError, match=r"nothing was extracted"):
        archives.extract(archive, target, fetch.file_hash(archive))
    assert not list(target.rglob("*"))
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/camfaith-absolute.txt").exists()


def test_a_malicious_download_fails_the_stage_and_leaves_no_dataset(server, kaggle_token, tmp_path):
    evil = malicious_archives(tmp_path)["dotdot.zip"].read_bytes()
    server.publish("breakhis", {"breakhis.zip": evil})
    with pytest.raises(archives.UnsafeArchiveError, match=r"'\.\./escaped\.txt'"):
        pipeline.download({"name": "bh", "source": "breakhis", "mirror": server.url, "cache_dir": str(tmp_path / "c"),
                           "checksums": {"breakhis.zip": fx.md5(evil)}}, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_dataset_re_pointed_to_another_source_does_not_keep_the_old_files(server, kaggle_token, tmp_path):
    cifar, nette = publish(server, "cifar10"), publish(server, "imagenette")
    raw = tmp_path / "raw"
    staging = tmp_path / "raw.partial"
    leftover = _write(tmp_path / "cifar-10-python.tar.gz", cifar["cifar-10-python.tar.gz"])
    archives.extract(leftover, staging, fetch.file_hash(leftover))  # an earlier attempt, for another source, that died
    assert (staging / "cifar-10-batches-py").is_dir()
    pipeline.download({"name": "raw", "source": "imagenette", "mirror": server.url, "cache_dir": str(tmp_path / "c"),
                       "checksums": pinned(nette)}, raw)
    assert not (raw / "cifar-10-batches-py").exists() and (raw / "imagenette2").is_dir()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_extraction_is_idempotent(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(fx.zip_of({"d/x.txt": b"1", "d/y.txt": b"2"}))
    sha = fetch.file_hash(archive)
    assert archives.extract(archive, tmp_path / "t", sha) is True
    stamp = (tmp_path / "t" / "d" / "x.txt").stat().st_mtime_ns
    assert archives.extract(archive, tmp_path / "t", sha) is False
    assert (tmp_path / "t" / "d" / "x.txt").stat().st_mtime_ns == stamp
    archive.write_bytes(fx.zip_of({"d/x.txt": b"changed"}))  # a different archive is unpacked again
    assert archives.extract(archive, tmp_path / "t", fetch.file_hash(archive)) is True
    assert (tmp_path / "t" / "d" / "x.txt").read_bytes() == b"changed"


# --- the index stage on a damaged download ------------------------------------------------------------------


def truncated_covid(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    archives_ = fx.covid_radiography()
    files = {}
    with zipfile.ZipFile(io.BytesIO(archives_["covid19-radiography-database.zip"])) as bundle:
        for name in bundle.namelist():
            files[name] = bundle.read(name)
    victim = "COVID-19_Radiography_Dataset/Normal/images/Normal-3.png"
    files[victim] = files[victim][: len(files[victim]) // 2]
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "covid19-radiography-database.zip").write_bytes(fx.zip_of(files))
    return manual, {"covid19-radiography-database.zip": fx.md5((manual / "covid19-radiography-database.zip").read_bytes())}


def test_a_truncated_image_is_quarantined_with_its_reason(tmp_path):
    manual, checksums = truncated_covid(tmp_path)
    dataset = {"name": "covid", "source": "covid_radiography", "local_path": str(manual), "checksums": checksums}
    _, index, quarantine, _ = run_stages(tmp_path, dataset, max_quarantine=0.1)
    assert list(quarantine["path"]) == ["COVID-19_Radiography_Dataset/Normal/images/Normal-3.png"]
    assert "truncated" in quarantine["reason"][0].lower() or "OSError" in quarantine["reason"][0]
    assert len(index) == 19


def test_too_many_unreadable_images_fail_the_index_stage(tmp_path):
    manual, checksums = truncated_covid(tmp_path)
    dataset = {"name": "covid", "source": "covid_radiography", "local_path": str(manual), "checksums": checksums}
    with pytest.raises(QuarantineLimitError, match="1 of 20 images"):
        run_stages(tmp_path, dataset, max_quarantine=0.0)


# --- through Snakemake ---------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_snakemake_runs_download_index_split_for_a_registry_dataset(server, tmp_path):
    archives_ = publish(server, "imagenette")
    config = yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
    config["datasets"] = {"nette": {
        "source": "imagenette", "mirror": server.url, "checksums": pinned(archives_),
        "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        "index": {"max_quarantine_fraction": 0.0},
        "split": {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0},
    }}
    config["models"] = {"nette": config["models"]["synthetic"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "results/split/nette/split.parquet"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    splits = pd.read_parquet(tmp_path / "results" / "split" / "nette" / "split.parquet")
    assert (splits["split"] == "test").sum() == 6
    assert (tmp_path / "resources" / "downloads" / "imagenette2.tgz").is_file()
    assert "imagenette2.tgz" in (tmp_path / "logs" / "download" / "nette.log").read_text()
