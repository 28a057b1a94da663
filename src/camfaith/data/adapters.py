"""Read each dataset's own on-disk layout into the index's rows, and convert binary formats to images.

An adapter takes the extracted dataset folder and returns one row per image with ``path`` (relative
to the folder, POSIX), ``label``, ``group`` and, where the dataset has them, ``mask_path``,
``official_split`` (``train``/``val``/``test``/``trainval``) and a box ``bbox_x0..bbox_y1`` (pixels
of the image, x1/y1 exclusive). Layouts are the publishers' (or
Kaggle's) as unpacked; folders are found wherever they sit under the root, because Kaggle archives
often nest the dataset one or two folders deep. The ``group`` is what must never straddle splits
(patient, lesion, or the image itself where nothing better is published).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
COLUMNS = ["path", "label", "group", "mask_path", "official_split", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _frame(rows: list[dict], root: Path, what: str) -> pd.DataFrame:
    if not rows:
        raise FileNotFoundError(f"{root}: no {what} found; is this the extracted dataset? (docs/datasets.md shows the layout)")
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[COLUMNS]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _first_by_name(paths: list[Path], root: Path, what: str) -> list[Path]:
    """One path per file name (Kaggle copies of some datasets hold every image twice)."""
    chosen: dict[str, Path] = {}
    for path in paths:
        chosen.setdefault(path.name, path)
    if len(chosen) < len(paths):
        log.info("%s: %d duplicate %s file names ignored (kept the first in sorted order)", root, len(paths) - len(chosen), what)
    return sorted(chosen.values())


# --- CRC: <source>/<CLASS>/<name>.tif; NCT-CRC-HE-100K = train+val, CRC-VAL-HE-7K = test -----------------

CRC_SOURCES = {"NCT-CRC-HE-100K": "trainval", "CRC-VAL-HE-7K": "test"}


def crc_folders(root: Path) -> pd.DataFrame:
    rows = []
    for path in _images(root):
        source = next((part for part in path.relative_to(root).parts[:-1] if part in CRC_SOURCES), None)
        if source is None:
            continue  # e.g. the NONORM variant or stray files
        rows.append({"path": _rel(path, root), "label": path.parent.name, "group": _rel(path, root), "official_split": CRC_SOURCES[source]})
    return _frame(rows, root, "NCT-CRC-HE-100K/<class>/ or CRC-VAL-HE-7K/<class>/ images")


# --- Covid-19 Radiography: <CLASS>/images/<CLASS>-<n>.png with <CLASS>/masks/<same name> -----------------


def covid_folders(root: Path) -> pd.DataFrame:
    rows = []
    for path in _images(root):
        if path.parent.name != "images":
            continue
        mask = path.parent.parent / "masks" / path.name
        # the expected mask path even where the file is missing: the index stage quarantines such an
        # image with that path in the reason, rather than scoring it without ground truth
        rows.append({"path": _rel(path, root), "label": path.parent.parent.name, "group": _rel(path, root), "mask_path": _rel(mask, root)})
    return _frame(rows, root, "<class>/images/*.png files")


# --- HAM10000: HAM10000_metadata.csv (lesion_id, image_id, dx, …) + HAM10000_images_part_{1,2}/<image_id>.jpg


def ham10000_csv(root: Path) -> pd.DataFrame:
    tables = sorted(root.rglob("HAM10000_metadata.csv"))
    if not tables:
        raise FileNotFoundError(f"{root}: HAM10000_metadata.csv not found; is this the extracted HAM10000 archive?")
    metadata = pd.read_csv(tables[0], dtype=str)
    missing = {"lesion_id", "image_id", "dx"} - set(metadata.columns)
    if missing:
        raise ValueError(f"{tables[0]}: missing column(s) {sorted(missing)}")
    images = {p.stem: p for p in _first_by_name([p for p in _images(root) if p.suffix.lower() == ".jpg"], root, "HAM10000 image")}
    rows = []
    for record in metadata.itertuples(index=False):
        path = images.get(record.image_id)
        # A listed image with no file is kept with its expected path, so the index stage quarantines it by name.
        relative = _rel(path, root) if path is not None else f"HAM10000_images_part_1/{record.image_id}.jpg"
        rows.append({"path": relative, "label": record.dx, "group": record.lesion_id})
    return _frame(rows, root, "HAM10000 metadata rows")


# --- BreakHis: …/{benign,malignant}/SOB/<subtype>/<slide>/<mag>X/SOB_<B|M>_<T>-<yy>-<id><slides>-<mag>-<n>.png

BREAKHIS_NAME = re.compile(r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d+)-(?P<patient>\d+)(?P<slide>[A-Z]*)-(?P<mag>\d+)-(?P<seq>\d+)\.png$")


def breakhis_patient(file_name: str) -> str:
    """``SOB_B_A-14-22549AB-40-001.png`` → ``14-22549``: the patient, without the slide letters."""
    match = BREAKHIS_NAME.match(file_name)
    if match is None:
        raise ValueError(f"{file_name!r} is not a BreakHis file name (SOB_<B|M>_<type>-<yy>-<id><slides>-<mag>-<n>.png)")
    return f"{match['year']}-{match['patient']}"


def breakhis_folders(root: Path) -> pd.DataFrame:
    rows = []
    for path in _first_by_name([p for p in _images(root) if p.name.startswith("SOB_")], root, "BreakHis image"):
        match = BREAKHIS_NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: not a BreakHis file name (SOB_<B|M>_<type>-<yy>-<id><slides>-<mag>-<n>.png)")
        rows.append({"path": _rel(path, root), "label": "benign" if match["kind"] == "B" else "malignant",
                     "group": breakhis_patient(path.name)})
    return _frame(rows, root, "SOB_*.png images")


# --- APTOS 2019: train.csv (id_code, diagnosis) + train_images/<id_code>.png --------------------------------


def aptos_csv(root: Path) -> pd.DataFrame:
    tables = sorted(p for p in root.rglob("train.csv"))
    if not tables:
        raise FileNotFoundError(f"{root}: train.csv not found; is this the extracted APTOS 2019 archive?")
    table = pd.read_csv(tables[0], dtype=str)
    missing = {"id_code", "diagnosis"} - set(table.columns)
    if missing:
        raise ValueError(f"{tables[0]}: missing column(s) {sorted(missing)}")
    folder = tables[0].parent / "train_images"
    rows = [{"path": _rel(folder / f"{record.id_code}.png", root), "label": record.diagnosis, "group": record.id_code}
            for record in table.itertuples(index=False)]
    return _frame(rows, root, "train.csv rows")


# --- NIH ChestX-ray14: Data_Entry_2017*.csv + BBox_List_2017.csv + {train_val,test}_list.txt + images*/…png ---

# BBox_List_2017.csv spells one finding differently from Data_Entry_2017.csv
CHESTXRAY14_BOX_FINDINGS = {"Infiltrate": "Infiltration"}


def _chestxray14_table(root: Path, pattern: str, what: str) -> Path:
    tables = sorted(root.rglob(pattern))
    if not tables:
        raise FileNotFoundError(f"{root}: {what} not found; is this the extracted ChestX-ray14 download (docs/datasets.md)?")
    return tables[0]


def chestxray14_boxes(path: Path) -> pd.DataFrame:
    """``BBox_List_2017.csv`` → ``image, finding, bbox_x0, bbox_y0, bbox_x1, bbox_y1`` in file order.

    The file's header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``) splits its box over four
    columns, so they are read by position: x, y, w, h in pixels of the 1024 px image. A box is widened
    to whole pixels (x0 = floor x, x1 = ceil(x + w)), never clipped: one outside its image is then
    quarantined by the index stage. A row that is not four numbers is a ``ValueError`` naming it."""
    table = pd.read_csv(path, dtype=str)
    if table.shape[1] < 6 or table.columns[0] != "Image Index":
        raise ValueError(f"{path}: expected the columns Image Index, Finding Label, Bbox [x,y,w,h]; got {list(table.columns)[:6]}")
    numbers = table.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1) | (numbers.iloc[:, 2] <= 0) | (numbers.iloc[:, 3] <= 0)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise ValueError(f"{path}: line {line}: the box is not four numbers x, y, w > 0, h > 0: {table.iloc[line - 2].tolist()[:6]}")
    x, y, w, h = (numbers.iloc[:, i].to_numpy(dtype=float) for i in range(4))
    finding = table.iloc[:, 1].map(lambda name: CHESTXRAY14_BOX_FINDINGS.get(name, name))
    return pd.DataFrame({"image": table.iloc[:, 0], "finding": finding, "bbox_x0": np.floor(x).astype(int), "bbox_y0": np.floor(y).astype(int),
                         "bbox_x1": np.ceil(x + w).astype(int), "bbox_y1": np.ceil(y + h).astype(int)})


def chestxray14_csv(root: Path) -> pd.DataFrame:
    """One row per usable image of ChestX-ray14 (NIH's release or Kaggle's ``nih-chest-xrays/data``).

    Labels: an image with a box is labelled by its box's finding (the box belongs to its finding,
    whatever else the image shows) and keeps its first box in file order; an image without a box
    is labelled by its single finding or ``No Finding``; an image with several findings and no box
    has no single true class and is left out. The boxes not kept and the images left out are counted
    in warnings. ``group``: Patient ID; ``official_split``: ``test`` for ``test_list.txt``,
    ``trainval`` for ``train_val_list.txt``."""
    entries_path = _chestxray14_table(root, "Data_Entry_2017*.csv", "Data_Entry_2017.csv")
    entries = pd.read_csv(entries_path, dtype=str)
    missing = {"Image Index", "Finding Labels", "Patient ID"} - set(entries.columns)
    if missing:
        raise ValueError(f"{entries_path}: missing column(s) {sorted(missing)}")
    boxes = chestxray14_boxes(_chestxray14_table(root, "BBox_List_2017.csv", "BBox_List_2017.csv"))
    official = {}
    for name, split in (("train_val_list.txt", "trainval"), ("test_list.txt", "test")):
        for line in _chestxray14_table(root, name, name).read_text().split():
            official[line] = split
    images = {p.name: p for p in _first_by_name([p for p in _images(root) if p.suffix.lower() == ".png"], root, "ChestX-ray14 image")}
    unlisted = sorted(set(boxes["image"]) - set(entries["Image Index"]))
    if unlisted:
        raise ValueError(f"{root}: BBox_List_2017.csv has box(es) for {len(unlisted)} image(s) that {entries_path.name} does not list: {unlisted[:5]}")
    first_box = boxes.drop_duplicates("image", keep="first").set_index("image")
    rows, several = [], 0
    for name, labels, patient in entries[["Image Index", "Finding Labels", "Patient ID"]].itertuples(index=False, name=None):
        findings = str(labels).split("|")
        if name in first_box.index:
            box = first_box.loc[name]
            label, extra = box["finding"], {f"bbox_{c}": int(box[f"bbox_{c}"]) for c in ("x0", "y0", "x1", "y1")}
        elif len(findings) == 1:
            label, extra = findings[0], {}
        else:
            several += 1
            continue
        path = images.get(name)
        # a listed image with no file keeps its expected path, so the index stage quarantines it by name
        relative = _rel(path, root) if path is not None else f"images/{name}"
        rows.append({"path": relative, "label": label, "group": patient, "official_split": official.get(name), **extra})
    if several:
        log.warning("%s: left out %d of %d images: several findings and no box, so no single true class", root, several, len(entries))
    if len(boxes) > len(first_box):
        log.warning("%s: %d of %d boxes not used: each image keeps its first box (%d images have more than one)", root,
                    len(boxes) - len(first_box), len(boxes), int((boxes["image"].value_counts() > 1).sum()))
    return _frame(rows, root, "Data_Entry_2017.csv rows")


# --- Imagenette: imagenette2/{train,val}/<wnid>/*.JPEG; val = test -------------------------------------------


def imagenette_folders(root: Path) -> pd.DataFrame:
    rows = []
    for path in _images(root):
        parts = path.relative_to(root).parts
        if len(parts) < 3 or parts[-3] not in ("train", "val"):
            continue
        rows.append({"path": _rel(path, root), "label": parts[-2], "group": _rel(path, root),
                     "official_split": "trainval" if parts[-3] == "train" else "test"})
    return _frame(rows, root, "{train,val}/<wnid>/ images")


ADAPTERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "crc_folders": crc_folders,
    "covid_folders": covid_folders,
    "ham10000_csv": ham10000_csv,
    "breakhis_folders": breakhis_folders,
    "aptos_csv": aptos_csv,
    "imagenette_folders": imagenette_folders,
    "chestxray14_csv": chestxray14_csv,
}


# --- converters: binary datasets → PNG files + metadata.csv (read by the metadata_csv adapter) -------------
# torchvision's CIFAR10/STL10 classes read these formats too, but they re-check every file against the
# original md5s, which rules out mirrors and the tests' fixtures; the archive's own hash is checked on download.


def _write_images(root: Path, images: np.ndarray, labels: list[str], split: str, prefix: str) -> list[dict]:
    """``images [N, H, W, 3]`` uint8 → ``images/<split>/<label>/<prefix>_<i>.png`` rows."""
    rows = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        relative = Path("images") / split / label / f"{prefix}_{i:05d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / relative)
        rows.append({"image": relative.as_posix(), "label": label, "group": relative.as_posix(), "split": split})
    return rows


def cifar10_batches(root: Path) -> None:
    """``cifar-10-batches-py`` (pickled batches of 10,000 × 3072 uint8) → PNGs; test_batch is the test set."""
    folders = sorted(root.rglob("batches.meta"))
    if not folders:
        raise FileNotFoundError(f"{root}: cifar-10-batches-py/batches.meta not found")
    folder = folders[0].parent

    def load(name: str) -> dict:
        with open(folder / name, "rb") as handle:
            return pickle.load(handle, encoding="latin1")  # the published format; the archive's md5 was checked

    names = [str(n) for n in load("batches.meta")["label_names"]]
    rows = []
    for batch, split in [*((f"data_batch_{i}", "trainval") for i in range(1, 6)), ("test_batch", "test")]:
        if not (folder / batch).is_file():
            raise FileNotFoundError(f"{folder / batch}: missing CIFAR-10 batch")
        data = load(batch)
        images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        rows += _write_images(root, images, [names[i] for i in data["labels"]], split, batch)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def stl10_binary(root: Path) -> None:
    """``stl10_binary/{train,test}_{X,y}.bin`` (uint8 N×3×96×96 column-major, labels 1..10) → PNGs."""
    names_files = sorted(root.rglob("class_names.txt"))
    if not names_files:
        raise FileNotFoundError(f"{root}: stl10_binary/class_names.txt not found")
    folder = names_files[0].parent
    names = [line.strip() for line in names_files[0].read_text().splitlines() if line.strip()]
    rows = []
    for part, split in (("train", "trainval"), ("test", "test")):
        pixels = np.fromfile(folder / f"{part}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
        labels = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(int) - 1
        if len(labels) != len(pixels):
            raise ValueError(f"{folder}: {part}_X.bin holds {len(pixels)} images but {part}_y.bin {len(labels)} labels")
        rows += _write_images(root, np.ascontiguousarray(pixels), [names[i] for i in labels], split, part)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def ilsvrc_val_annotation(path: Path) -> tuple[str, tuple[int, int], list[tuple[int, int, int, int]]]:
    """One ILSVRC 2012 validation box file (PASCAL VOC XML) → ``(wnid, (width, height), boxes)``.

    Boxes are ``(x0, y0, x1, y1)``: the file's ``xmin, ymin, xmax, ymax`` taken as the box's edges in
    pixels (the VOC convention of 1-based inclusive corners differs by at most one pixel; a box
    ending at the image's last column then ends at its width, as the files have it). Objects of
    different classes in one file, a file without objects or a non-integer coordinate are a
    ``ValueError`` naming the file."""
    from xml.etree import ElementTree

    try:
        tree = ElementTree.parse(path)  # ImageNet's own annotation files, unpacked from the checked archive
        size = tree.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        objects = [(item.findtext("name"), [int(item.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
                   for item in tree.iter("object")]
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not an ILSVRC box file (size/width, size/height, object/name, object/bndbox/xmin..ymax): {error}") from error
    names = sorted({name for name, _ in objects})
    if len(names) != 1:
        raise ValueError(f"{path}: a validation image's boxes must name one class, found {names or 'no object'}")
    return names[0], (width, height), [tuple(box) for _, box in objects]


def ilsvrc_val_boxes(root: Path) -> None:
    """ILSVRC 2012 validation images (``images/ILSVRC2012_val_<n>.JPEG``) and their box files
    (``boxes/val/ILSVRC2012_val_<n>.xml``) → ``masks/<n>.png`` (the union of the image's boxes,
    0/255, at the size the file gives) and ``metadata.csv`` (label: the boxes' WordNet id; mask; the
    largest box as ``bbox_*``, ties to the first; split ``test``). An image without a box file is a
    ``ValueError`` naming how many and which: its label is in that file."""
    annotations = {p.stem: p for p in root.rglob("*.xml")}
    images = [p for p in _images(root) if p.name.startswith("ILSVRC2012_val_")]
    if not images:
        raise FileNotFoundError(f"{root}: no ILSVRC2012_val_*.JPEG images; is this ILSVRC2012_img_val.tar unpacked?")
    without = sorted(p.name for p in images if p.stem not in annotations)
    if without:
        raise ValueError(f"{root}: {len(without)} of {len(images)} validation images have no box file (ILSVRC2012_bbox_val_v3.tgz, "
                         f"val/<name>.xml), which also holds their label: {without[:5]}")
    (root / "masks").mkdir(exist_ok=True)
    rows, several = [], 0
    for image in images:
        label, (width, height), boxes = ilsvrc_val_annotation(annotations[image.stem])
        mask = np.zeros((height, width), dtype=np.uint8)
        for x0, y0, x1, y1 in boxes:
            mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 255  # a box outside the image is quarantined by the index stage
        relative = Path("masks") / f"{image.stem}.png"
        Image.fromarray(mask, "L").save(root / relative)
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # max keeps the first of equal areas
        several += len(boxes) > 1
        rows.append({"image": _rel(image, root), "label": label, "group": image.stem, "mask": relative.as_posix(), "split": "test",
                     **dict(zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), largest))})
    log.info("%s: %d validation images, %d with more than one box (mask: their union; box: the largest)", root, len(rows), several)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


CONVERTERS: dict[str, Callable[[Path], None]] = {"cifar10_batches": cifar10_batches, "stl10_binary": stl10_binary,
                                                 "ilsvrc_val_boxes": ilsvrc_val_boxes}
