"""A researcher's own images: source folder and source table (camfaith.data.own), their refusals, the
manifest and fingerprint of the download stage, data_root, label_locations, the test-only split and
the config checks of each source's keys."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from camfaith import configuration, pipeline
from camfaith.data import own, registry
from camfaith.data.images import Preprocessing
from camfaith.data.index import build_index
from camfaith.data.own import OwnDataError
from camfaith.data.split import assign_splits
from camfaith.store import read_parquet

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
DEFAULTS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
SIZE = (20, 16)  # width, height of every fixture image


def make_image(path: Path, colour: tuple[int, int, int] = (120, 40, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZE, colour).save(path)
    return path


def make_mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle((4, 4, 11, 9), fill=255)
    mask.save(path)
    return path


def folder_tree(root: Path) -> Path:
    """``cat/a.jpg``, ``cat/deep/b.jpg`` (deeper: still class cat), ``dog/c.png``, ``dog/d.png`` with
    groups.csv, masks/ (a .png for a.jpg, the image's own suffix for b.jpg) and boxes.csv for a and c."""
    for relative in ("cat/a.jpg", "cat/deep/b.jpg", "dog/c.png", "dog/d.png"):
        make_image(root / relative)
    for relative in ("masks/cat/a.png", "masks/cat/deep/b.jpg", "masks/dog/c.png", "masks/dog/d.png"):
        make_mask(root / relative)
    (root / "groups.csv").write_text("image,group\ncat/a.jpg,p1\ncat/deep/b.jpg,p1\ndog/c.png,p2\ndog/d.png,p3\n")
    (root / "boxes.csv").write_text("image,x0,y0,x1,y1\ncat/a.jpg,1,2,10,12\ndog/c.png,0,0,20,16\n")
    return root


def labels_table(root: Path, rows: list[str], header: str = "file_name,diagnosis,patient_id,fold", name: str = "labels.csv") -> Path:
    """Images ``img/<i>.png`` under ``root`` and a CSV of ``rows`` under the renamed header."""
    for i in range(6):
        make_image(root / "img" / f"{i}.png", (40 * i, 10, 10))
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


RENAMED = {"path": "file_name", "label": "diagnosis", "group": "patient_id", "split": "fold"}
GOOD_ROWS = ["img/0.png,benign,p0,train", "img/1.png,benign,p0,train", "img/2.png,malignant,p1,val", "img/3.png,malignant,p2,test",
             "img/4.png,benign,p3,", "img/5.png,malignant,p4,"]


def refused(call, *fragments: str) -> str:
    """Run ``call``, expect an OwnDataError, check every fragment is in its message; return it."""
    with pytest.raises(OwnDataError) as error:
        call()
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- source: folder --------------------------------------------------------------------------------------


def test_a_folder_with_groups_masks_and_boxes_indexes_with_its_labels_groups_masks_and_boxes(tmp_path):
    root = folder_tree(tmp_path / "mine")
    index, quarantine = build_index(root, "folder", 0.0, ground_truth=registry.ground_truth({"source": "folder", "local_path": str(root)}))
    assert quarantine.empty
    rows = index.set_index("path")
    assert list(rows.index) == ["cat/a.jpg", "cat/deep/b.jpg", "dog/c.png", "dog/d.png"]  # masks/ is never a class
    assert rows["label"].to_dict() == {"cat/a.jpg": "cat", "cat/deep/b.jpg": "cat", "dog/c.png": "dog", "dog/d.png": "dog"}
    assert rows["group"].to_dict() == {"cat/a.jpg": "p1", "cat/deep/b.jpg": "p1", "dog/c.png": "p2", "dog/d.png": "p3"}
    assert rows["mask_path"].to_dict() == {"cat/a.jpg": "masks/cat/a.png", "cat/deep/b.jpg": "masks/cat/deep/b.jpg",
                                           "dog/c.png": "masks/dog/c.png", "dog/d.png": "masks/dog/d.png"}
    boxes = rows[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]]
    assert boxes.loc["cat/a.jpg"].tolist() == [1, 2, 10, 12] and boxes.loc["dog/c.png"].tolist() == [0, 0, 20, 16]
    assert boxes.loc["dog/d.png"].isna().all()
    assert list(index["image_id"]) == ["cat/a", "cat/deep/b", "dog/c", "dog/d"]


def test_a_folder_without_groups_csv_splits_by_image_and_says_so(tmp_path, caplog):
    root = tmp_path / "mine"
    for relative in ("cat/a.png", "dog/b.png", "x.png"):
        make_image(root / relative)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    frame = own.folder_adapter(root)
    assert frame["group"].tolist() == frame["path"].tolist() == ["cat/a.png", "dog/b.png"]
    assert "every image is its own group and the split is by image" in caplog.text and "may leak across splits" in caplog.text
    assert "left out 1 images directly in local_path" in caplog.text and "left out 1 files without an image suffix" in caplog.text
    assert "folder empty/ holds no image" in caplog.text


@pytest.mark.parametrize(("content", "line", "fragment"), [
    ("image,group\ncat/a.jpg,p1\n../outside.png,p2\n", 3, "leaves local_path"),
    ("image,group\ncat/a.jpg,p1\n/etc/passwd,p2\n", 3, "is absolute"),
    ("image,group\ncat/a.jpg,p1\ncat/gone.jpg,p2\n", 3, "'cat/gone.jpg' not found under local_path"),
    ("image,group\ncat/a.jpg,p1\ncat/deep/b.jpg,\n", 3, "empty group for image cat/deep/b.jpg"),
    ("image,group\ncat/a.jpg,p1\ncat/a.jpg,p2\n", 3, "listed twice (also line 2)"),
], ids=["dotdot", "absolute", "missing-image", "empty-group", "twice"])
def test_a_bad_groups_csv_line_is_refused_naming_the_file_and_line(tmp_path, content, line, fragment):
    root = folder_tree(tmp_path / "mine").resolve()
    (root / "groups.csv").write_text(content + "dog/c.png,p2\ndog/d.png,p3\n")
    refused(lambda: own.folder_adapter(root), f"{root / 'groups.csv'}: line {line}:", fragment)


def test_an_image_groups_csv_does_not_list_is_refused_naming_up_to_five_and_the_count(tmp_path):
    root = folder_tree(tmp_path / "mine").resolve()
    for i in range(6):
        make_image(root / "dog" / f"extra{i}.png")
    message = refused(lambda: own.folder_adapter(root), f"{root / 'groups.csv'}: 6 image(s)", "are not listed", "and 1 more")
    assert "dog/extra0.png" in message and "dog/extra5.png" not in message


@pytest.mark.parametrize(("row", "fragment"), [
    ("../cat/a.jpg,1,2,3,4", "leaves local_path"),
    ("cat/none.jpg,1,2,3,4", "'cat/none.jpg' not found under local_path"),
    ("dog/d.png,1,2,,4", "a box needs all of"),
    ("dog/d.png,1,2,3.5,4", "'3.5' is not a whole number"),
], ids=["dotdot", "missing-image", "partial-box", "fractional"])
def test_a_bad_boxes_csv_line_is_refused_naming_the_file_and_line(tmp_path, row, fragment):
    root = folder_tree(tmp_path / "mine").resolve()
    (root / "boxes.csv").write_text(f"image,x0,y0,x1,y1\ncat/a.jpg,1,2,10,12\n{row}\n")
    refused(lambda: own.folder_adapter(root), f"{root / 'boxes.csv'}: line 3:", fragment)


def test_an_image_without_its_mask_is_refused_naming_it(tmp_path):
    root = folder_tree(tmp_path / "mine").resolve()
    (root / "masks" / "dog" / "d.png").unlink()
    refused(lambda: own.folder_adapter(root), f"{root / 'masks'}: no mask for 1 of 4 image(s)", "dog/d.png")


def test_a_symlink_out_of_local_path_is_refused_and_one_inside_accepted(tmp_path):
    root = folder_tree(tmp_path / "mine").resolve()
    outside = make_image(tmp_path / "elsewhere" / "e.png")
    (root / "cat" / "inside.jpg").symlink_to(root / "dog" / "c.png")  # inside local_path: read like any file
    (root / "masks" / "cat" / "inside.png").symlink_to(root / "masks" / "dog" / "c.png")
    (root / "groups.csv").write_text((root / "groups.csv").read_text() + "cat/inside.jpg,p4\n")
    assert "cat/inside.jpg" in set(own.folder_adapter(root)["path"])
    (root / "dog" / "linked").symlink_to(outside.parent, target_is_directory=True)  # a folder link leaving local_path
    refused(lambda: own.folder_adapter(root), f"{root / 'dog' / 'linked'}: a symlink to {outside.parent}, outside local_path {root}")
    (root / "dog" / "linked").unlink()
    (root / "dog" / "e.png").symlink_to(outside)  # a file link leaving it
    refused(lambda: own.folder_adapter(root), f"{root / 'dog' / 'e.png'}: a symlink to {outside}, outside local_path")
    refused(lambda: own.fingerprint(root), "outside local_path")  # the download stage's walk refuses it too


# --- source: table ---------------------------------------------------------------------------------------


def test_a_table_with_renamed_columns_and_a_split_column_is_indexed_and_its_split_honoured(tmp_path):
    root = tmp_path / "mine"
    table = labels_table(root, GOOD_ROWS, name="meta/labels.csv")
    index, _ = build_index(root, "table", 0.0, adapter_options={"table": str(table), "columns": RENAMED})
    rows = index.set_index("path")
    assert rows["label"].tolist() == ["benign", "benign", "malignant", "malignant", "benign", "malignant"]
    assert rows["group"].tolist() == ["p0", "p0", "p1", "p2", "p3", "p4"]
    assert rows["official_split"].tolist()[:4] == ["train", "train", "val", "test"] and rows["official_split"].iloc[4:].isna().all()
    splits = assign_splits(index, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0).set_index("image_id")["split"]
    assert splits[["img/0", "img/1", "img/2", "img/3"]].tolist() == ["train", "train", "val", "test"]
    assert set(splits[["img/4", "img/5"]]) <= {"train"}  # official test and val exist: the rest is train


def test_a_parquet_table_with_masks_and_boxes_reads_as_the_csv_does(tmp_path):
    root = tmp_path / "mine"
    labels_table(root, [])
    make_mask(root / "m" / "0.png")
    frame = pd.DataFrame({"path": ["img/0.png", "img/1.png"], "label": [1, 2], "mask_path": ["m/0.png", None],
                          "x0": [1.0, None], "y0": [2, None], "x1": [10, None], "y1": [12, None]})
    frame.to_parquet(root / "labels.parquet")
    rows = own.table_adapter(root, root / "labels.parquet")
    assert rows["label"].tolist() == ["1", "2"] and rows.loc[0, "mask_path"] == "m/0.png" and pd.isna(rows.loc[1, "mask_path"])
    assert rows.loc[0, ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].tolist() == [1, 2, 10, 12] and pd.isna(rows.loc[1, "bbox_x0"])
    assert rows["group"].tolist() == ["img/0.png", "img/1.png"]
    frame.loc[1, "path"] = "../x.png"
    frame.to_parquet(root / "labels.parquet")
    refused(lambda: own.table_adapter(root, root / "labels.parquet"), f"{root / 'labels.parquet'}: row 2:", "leaves local_path")
    dataset = {"source": "table", "local_path": str(root), "table": str(root / "labels.parquet")}
    assert registry.ground_truth(dataset) == "mask"  # from the Parquet schema


def test_a_tab_separated_table_reads_by_its_suffix(tmp_path):
    root = tmp_path / "mine"
    table = labels_table(root, [row.replace(",", "\t") for row in GOOD_ROWS], header="path\tlabel\tgroup\tsplit", name="labels.tsv")
    assert own.table_adapter(root, table)["group"].tolist() == ["p0", "p0", "p1", "p2", "p3", "p4"]


@pytest.mark.parametrize(("row", "fragment"), [
    ("../mine2/img/0.png,benign,p9,train", "leaves local_path"),
    ("/tmp/img/0.png,benign,p9,train", "is absolute"),
    ("img/9.png,benign,p9,train", "image 'img/9.png' not found under local_path"),
    ("img/5.png,benign,,train", "empty group (patient_id column) for image img/5.png"),
    ("img/5.png,benign,p9,training", "split 'training' (fold column) is none of ['train', 'val', 'test']"),
    ("img/5.png,,p9,train", "empty label (diagnosis column) for image img/5.png"),
    ("img/0.png,benign,p9,train", "image img/0.png is listed twice (also line 2)"),
    (",benign,p9,train", "empty image path (file_name column)"),
], ids=["dotdot", "absolute", "missing-image", "empty-group", "bad-split", "empty-label", "twice", "empty-path"])
def test_a_bad_table_row_is_refused_naming_the_table_and_its_line(tmp_path, row, fragment):
    root = tmp_path / "mine"
    table = labels_table(root, [*GOOD_ROWS[:3], "", row])  # a blank line is counted: the row is line 6
    refused(lambda: own.table_adapter(root, table, RENAMED), f"{table}: line 6:", fragment)


def test_a_missing_mask_a_symlink_out_and_a_box_outside_the_image_in_a_table(tmp_path):
    root = (tmp_path / "mine").resolve()
    table = labels_table(root, ["img/0.png,a,m/0.png", "img/1.png,b,m/1.png"], header="path,label,mask_path")
    make_mask(root / "m" / "0.png")
    refused(lambda: own.table_adapter(root, table), f"{table}: line 3:", "mask 'm/1.png' not found under local_path")
    make_image(tmp_path / "out" / "x.png")
    (root / "m" / "1.png").symlink_to(tmp_path / "out" / "x.png")
    refused(lambda: own.table_adapter(root, table), f"{table}: line 3:", "symlink resolving to", "outside local_path")
    (root / "m" / "1.png").unlink()
    make_mask(root / "m" / "1.png")
    boxed = labels_table(root, ["img/0.png,a,1,1,30,5", "img/1.png,b,0,0,5,5"], header="path,label,x0,y0,x1,y1", name="boxes.csv")
    index, quarantine = build_index(root, "table", 1.0, ground_truth="box", adapter_options={"table": str(boxed)})
    assert quarantine["path"].tolist() == ["img/0.png"] and "outside the 20×16 image" in quarantine["reason"].iloc[0]  # not own data's fault: quarantined


def test_a_missing_required_column_names_the_table_the_columns_found_and_the_mapping(tmp_path):
    root = tmp_path / "mine"
    table = labels_table(root, GOOD_ROWS)
    refused(lambda: own.table_adapter(root, table, {"path": "file_name"}), f"{table}: missing column(s) ['label']",
            "the table has ['file_name', 'diagnosis', 'patient_id', 'fold']", "the columns: mapping in use is {'path': 'file_name'}")
    refused(lambda: own.table_adapter(root, table, {**RENAMED, "group": "patient"}), "missing column(s) [\"group (as 'patient')\"]")
    partial = labels_table(root, ["img/0.png,a,1"], header="path,label,x0", name="partial.csv")
    refused(lambda: own.table_adapter(root, partial), f"{partial}: a box needs all four columns")


# --- the download stage: manifest, fingerprint, data_root ------------------------------------------------


def test_download_writes_only_a_manifest_and_data_root_points_at_local_path(tmp_path):
    root = tmp_path / "mine"
    table = labels_table(root, GOOD_ROWS)
    raw = tmp_path / "results" / "download" / "mine"
    dataset = {"name": "mine", "source": "table", "local_path": str(root), "table": str(table), "columns": RENAMED}
    pipeline.download(dataset, raw)
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json"] and not raw.with_name("mine.partial").exists()
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest == {"source": "table", "root": str(root.resolve()), "table": str(table.resolve()), "columns": RENAMED,
                        "files": 7, "fingerprint": own.fingerprint(root, table)}
    assert own.data_root(raw) == root.resolve()
    assert own.data_root(tmp_path / "a_registry_download") == tmp_path / "a_registry_download"  # no manifest of own images: itself
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "manifest.json").write_text(json.dumps({"source": "crc", "files": []}))
    assert own.data_root(tmp_path / "synthetic") == tmp_path / "synthetic"

    # index, split and the image loader of the later stages read the images where they are
    params = {"adapter": "table", "max_quarantine_fraction": 0.0, "adapter_options": own.adapter_options(dataset)}
    pipeline.index(raw, params, tmp_path / "index.parquet", tmp_path / "quarantine.parquet")
    pipeline.split(tmp_path / "index.parquet", {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}, tmp_path / "split.parquet")
    test = pipeline._test_table(raw, tmp_path / "index.parquet", tmp_path / "split.parquet", Preprocessing(8))
    assert test.paths == ["img/3.png"] and test.load_unit(0).shape == (3, 8, 8)
    assert read_parquet(tmp_path / "index.parquet")["path"].tolist()[0] == "img/0.png"


def test_the_fingerprint_changes_when_a_file_is_added_or_touched(tmp_path):
    root = folder_tree(tmp_path / "mine")
    first = own.fingerprint(root)
    assert own.fingerprint(root) == first and len(first) == 64
    make_image(root / "dog" / "e.png")
    added = own.fingerprint(root)
    stat = (root / "cat" / "a.jpg").stat()
    os.utime(root / "cat" / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = own.fingerprint(root)
    table = root / "boxes.csv"
    assert len({first, added, touched, own.fingerprint(root, table)}) == 4  # the table file counts too


# --- where a label comes from ----------------------------------------------------------------------------


def test_label_locations_name_the_table_lines_or_the_class_folder(tmp_path, tiny_dataset):
    root = tmp_path / "mine"
    rows = [f"img/{i}.png,{'benign' if i != 2 else 'other'},p{i},train" for i in range(6)]
    for i in range(6, 9):
        make_image(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,benign,p{i},")
    table = labels_table(root, rows)
    raw = tmp_path / "raw_table"
    pipeline.download({"name": "t", "source": "table", "local_path": str(root), "table": str(table), "columns": RENAMED}, raw)
    where = own.label_locations(raw, ["benign", "other", "unknown"])
    assert where == {"benign": [f"{table.resolve()}: lines 2, 3, 5, 6, 7, … (8 rows)"], "other": [f"{table.resolve()}: line 4 (1 row)"],
                     "unknown": []}
    tree = folder_tree(tmp_path / "tree")
    pipeline.download({"name": "f", "source": "folder", "local_path": str(tree)}, tmp_path / "raw_folder")
    assert own.label_locations(tmp_path / "raw_folder", {"cat", "cow"}) == {"cat": [f"{tree.resolve()}/cat/ (2 images)"], "cow": []}
    synthetic = own.label_locations(tiny_dataset.root, ["disc"])["disc"]  # a download folder with a metadata.csv: its lines
    assert synthetic == [f"{tiny_dataset.root / 'metadata.csv'}: lines 2, 3, 4, 5, 6, … (20 rows)"]


# --- the split: a dataset that is only a test set --------------------------------------------------------


def test_fractions_of_zero_and_one_give_a_test_only_split_and_empty_splits(tiny_dataset):
    only_test = assign_splits(tiny_dataset.index, {"train": 0, "val": 0, "test": 1}, seed=0)
    assert set(only_test["split"]) == {"test"} and len(only_test) == len(tiny_dataset.index)
    no_val = assign_splits(tiny_dataset.index, {"train": 0.8, "val": 0, "test": 0.2}, seed=0)
    assert set(no_val["split"]) == {"train", "test"}
    no_train = assign_splits(tiny_dataset.index, {"train": 0, "val": 0.5, "test": 0.5}, seed=0)
    assert set(no_train["split"]) == {"val", "test"}
    no_test = assign_splits(tiny_dataset.index, {"train": 0.75, "val": 0.25, "test": 0}, seed=0)
    assert set(no_test["split"]) == {"train", "val"}
    as_before = assign_splits(tiny_dataset.index, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert as_before.equals(tiny_dataset.splits)  # other fractions split exactly as they did


# --- the config: the keys each source reads, paths that exist, ground truth ------------------------------


def own_config(**dataset) -> dict:
    """The default config with its dataset replaced by ``dataset`` (preprocessing, index and split kept)."""
    config = copy.deepcopy(DEFAULTS)
    entry = config["datasets"]["synthetic"]
    config["datasets"]["synthetic"] = {key: entry[key] for key in ("preprocessing", "index", "split")} | dataset
    return config


def refused_config(config: dict, *fragments: str) -> None:
    with pytest.raises(configuration.ConfigError) as error:
        configuration.prepare(config, SCHEMA, None)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} not in {error.value}"


def test_synthetic_with_a_local_path_is_refused_pointing_at_the_own_image_sources(tmp_path):
    config = copy.deepcopy(DEFAULTS)
    config["datasets"]["synthetic"]["local_path"] = str(tmp_path)
    refused_config(config, "datasets.synthetic.local_path: source synthetic generates its images and reads no folder; "
                           "for your own images use source: folder (", "or source: table (")
    config = copy.deepcopy(DEFAULTS)
    config["datasets"]["synthetic"]["adapter"] = "ham10000_csv"
    refused_config(config, "datasets.synthetic.adapter: source synthetic is read with adapter metadata_csv, not ham10000_csv")


@pytest.mark.parametrize(("dataset", "fragments"), [
    ({"source": "folder", "local_path": "{tmp}/nowhere"}, ["datasets.synthetic.local_path: {tmp}/nowhere does not exist",
                                                           "read from the working directory"]),
    ({"source": "folder", "local_path": "{tmp}/file.txt"}, ["datasets.synthetic.local_path: {tmp}/file.txt is not a folder"]),
    ({"source": "folder"}, ["datasets.synthetic.local_path: source folder needs local_path"]),
    ({"source": "ham10000", "local_path": "{tmp}/nowhere"}, ["datasets.synthetic.local_path: {tmp}/nowhere does not exist"]),
    ({"source": "table", "local_path": "{tmp}"}, ["datasets.synthetic.local_path: table {tmp}/labels.csv does not exist (the default table"]),
    ({"source": "table", "local_path": "{tmp}", "table": "{tmp}/mine.parquet"}, ["datasets.synthetic.table: table {tmp}/mine.parquet does not exist"]),
    ({"source": "folder", "local_path": "{tmp}", "mirror": "https://example.org"},
     ["datasets.synthetic.mirror: source folder reads your images in place", "settings of a registry source's download"]),
    ({"source": "folder", "local_path": "{tmp}", "cache_dir": "c"}, ["datasets.synthetic.cache_dir: source folder"]),
    ({"source": "table", "local_path": "{tmp}", "checksums": {}}, ["datasets.synthetic.checksums: source table"]),
    ({"source": "folder", "local_path": "{tmp}", "retries": 2}, ["datasets.synthetic.retries: source folder"]),
    ({"source": "folder", "local_path": "{tmp}", "synthetic": {"seed": 1}}, ["datasets.synthetic.synthetic: source folder",
                                                                            "read by source: synthetic only"]),
    ({"source": "folder", "local_path": "{tmp}", "table": "t.csv"}, ["datasets.synthetic.table: source folder", "no other source reads them"]),
    ({"source": "folder", "local_path": "{tmp}", "adapter": "metadata_csv"}, ["datasets.synthetic.adapter: source folder is read with adapter folder"]),
    ({"source": "crc", "columns": {"path": "file"}}, ["datasets.synthetic.columns: source crc downloads"]),
    ({"source": "crc", "table": "t.csv"}, ["datasets.synthetic.table: source crc"]),
    ({"source": "crc", "synthetic": {"seed": 1}}, ["datasets.synthetic.synthetic: source crc"]),
    ({"source": "crc", "adapter": "folder"}, ["datasets.synthetic.adapter: adapter folder reads your own images"]),
], ids=["local-path-missing", "local-path-a-file", "local-path-not-given", "registry-local-path-missing", "default-table-missing",
        "table-missing", "folder-mirror", "folder-cache-dir", "table-checksums", "folder-retries", "folder-synthetic", "folder-table",
        "folder-other-adapter", "registry-columns", "registry-table", "registry-synthetic", "registry-own-adapter"])
def test_a_key_a_source_ignores_or_a_path_that_does_not_exist_is_refused_naming_the_key(tmp_path, dataset, fragments):
    (tmp_path / "file.txt").write_text("x")
    filled = {key: value.format(tmp=tmp_path) if isinstance(value, str) else value for key, value in dataset.items()}
    refused_config(own_config(**filled), *(fragment.format(tmp=tmp_path) for fragment in fragments))


def test_valid_own_configs_plan_with_the_ground_truth_their_files_hold(tmp_path, monkeypatch):
    tree = folder_tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)  # relative paths are read from the working directory
    config = own_config(source="folder", local_path="tree")
    plan = configuration.prepare(config, SCHEMA, None)
    assert registry.ground_truth(config["datasets"]["synthetic"]) == "mask" and not any(s.reason.startswith("no ground truth") for s in plan.skips)
    os.rename(tree / "masks", tmp_path / "masks")
    assert registry.ground_truth({"source": "folder", "local_path": "tree"}) == "box"
    (tree / "boxes.csv").unlink()
    assert registry.ground_truth({"source": "folder", "local_path": "tree"}) == "none"
    assert registry.ground_truth({"source": "folder", "local_path": "tree", "ground_truth": "mask"}) == "mask"  # an explicit one wins
    table = labels_table(tmp_path / "t", GOOD_ROWS, header="file,label,group,split,left,top,right,bottom")
    boxes = {"path": "file", "x0": "left", "y0": "top", "x1": "right", "y1": "bottom"}
    assert registry.ground_truth({"source": "table", "local_path": "t", "columns": boxes}) == "box"
    assert registry.ground_truth({"source": "table", "local_path": "t", "columns": {"path": "file"}}) == "none"
    config = own_config(source="table", local_path="t", table=str(table.relative_to(tmp_path)), columns=boxes)
    configuration.prepare(config, SCHEMA, None)
    assert registry.default_adapter("table") == "table" and registry.default_adapter("folder") == "folder"


def test_the_schema_lists_the_own_sources_and_the_table_columns(tmp_path):
    dataset = yaml.safe_load(SCHEMA.read_text())["properties"]["datasets"]["additionalProperties"]["properties"]
    assert set(registry.OWN_SOURCES) <= set(dataset["source"]["enum"]) and set(registry.OWN_SOURCES) <= set(dataset["adapter"]["enum"])
    assert tuple(dataset["columns"]["properties"]) == own.TABLE_COLUMNS
    assert set(registry.SOURCE_SPECIFIC_KEYS) == set().union(*(kind.keys for kind in registry.SOURCE_KEYS.values())) <= set(dataset)


# --- through snakemake: a changed folder re-runs download and what follows -------------------------------


@pytest.mark.workflow
def test_a_changed_folder_reruns_download_index_and_split(tmp_path):
    from test_workflow import planned_jobs, snakemake, write_config

    tree = tmp_path / "tree"
    for label in ("cat", "dog"):
        for i in range(8):
            make_image(tree / label / f"{i}.png", (20 * i, 100 if label == "cat" else 0, 0))

    def mine(config):
        entry = config["datasets"].pop("synthetic")
        config["datasets"]["mine"] = {key: entry[key] for key in ("preprocessing", "index", "split")} | {"source": "folder", "local_path": "tree"}
        config["models"] = {"mine": config["models"]["synthetic"]}

    config = str(write_config(tmp_path / "config.yaml", mine))
    target = "results/split/mine/split.parquet"
    snakemake(tmp_path, "--cores", "1", target, "--configfile", config)
    assert json.loads((tmp_path / "results" / "download" / "mine" / "manifest.json").read_text())["files"] == 16
    assert "Nothing to be done" in snakemake(tmp_path, "-n", target, "--configfile", config).stdout
    make_image(tree / "dog" / "new.png")
    result = snakemake(tmp_path, "-n", target, "--configfile", config)
    assert planned_jobs(result.stdout) == {"download": 1, "index": 1, "split": 1} and "Params have changed" in result.stdout
