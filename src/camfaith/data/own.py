"""A researcher's own images as a dataset: ``source: folder`` and ``source: table``, read in place.

- ``folder``: an ImageFolder tree ``<local_path>/<class>/<image>`` (an image may sit deeper; its class
  is the top-level folder, as torchvision's ImageFolder has it), with, optionally, at the top:
  ``groups.csv`` (``image,group``: the patient of each image), ``masks/`` mirroring the tree (the mask
  of ``<class>/<a>.jpg`` is ``masks/<class>/<a>.png``, or ``masks/<class>/<a>.jpg``) and ``boxes.csv``
  (``image,x0,y0,x1,y1``: pixels of the original image, x1/y1 exclusive). ``masks/`` is never a class.
- ``table``: a CSV or Parquet file (``table:``, default ``<local_path>/labels.csv``) with columns
  ``path, label`` and optionally ``group, split, mask_path, x0, y0, x1, y1``, named as the config's
  ``columns:`` maps them (camfaith's name → the table's). Image and mask paths are relative to
  ``local_path``; a ``split`` cell (train/val/test) becomes the image's official split.

Nothing is copied: the download stage writes only ``results/download/<dataset>/manifest.json``
(:func:`write_manifest`), which names the folder the index's paths are relative to
(:func:`data_root`) and a fingerprint of every file under it (:func:`fingerprint`), so a changed
folder re-runs download → index → .... The adapters (:func:`folder_adapter`, :func:`table_adapter`)
give the index stage its rows; what they cannot use they refuse with an :class:`OwnDataError` naming
the file and line (or the folder entry): a path leaving ``local_path`` (``..``, absolute, or a symlink
resolving outside it), a missing image or mask, an empty label or group, an unknown split value, a
missing column. An image that exists but does not decode is the index stage's to quarantine.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from camfaith.data.adapters import COLUMNS, IMAGE_SUFFIXES
from camfaith.data.registry import OWN_SOURCES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
GROUPS_FILE = "groups.csv"
BOXES_FILE = "boxes.csv"
MASKS_FOLDER = "masks"
DEFAULT_TABLE = "labels.csv"
# camfaith's names of a table's columns; ``columns:`` maps any of them to the table's own names
TABLE_COLUMNS = ("path", "label", "group", "split", "mask_path", "x0", "y0", "x1", "y1")
REQUIRED_TABLE_COLUMNS = ("path", "label")
BOX_KEYS = ("x0", "y0", "x1", "y1")
TABLE_SPLITS = ("train", "val", "test")
PARQUET_SUFFIXES = (".parquet", ".pq")
TAB_SEPARATED_SUFFIXES = (".tsv", ".tab")  # every other suffix is read as comma-separated
MAX_NAMED = 5  # how many offending images or line numbers a message lists before the count


class OwnDataError(ValueError):
    """Own images that cannot be indexed as they are; the message names the file and line, or the entry."""


# --- paths: every file under local_path, and nothing outside it ------------------------------------------


def walk_files(root: str | Path) -> list[tuple[str, os.stat_result]]:
    """Every file under ``root``, as ``(path relative to root, POSIX; its stat)`` sorted by path.

    A symlink (to a file or a folder) is followed when it resolves inside ``root`` and refused with an
    :class:`OwnDataError` naming it and its target otherwise, so no image is read from outside the
    folder the config names. A link to a folder that holds it (a loop) is not walked again; a link to
    nothing is skipped. The stat is the target's (size in bytes, ``st_mtime_ns``)."""
    root = Path(root).resolve()
    found: list[tuple[str, os.stat_result]] = []
    pending = [(root, "")]  # (the folder's real path, its path relative to root with a trailing /)
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for item in entries:
                relative = prefix + item.name
                if item.is_symlink():
                    real = Path(item.path).resolve()
                    if not real.is_relative_to(root):
                        raise OwnDataError(f"{root / relative}: a symlink to {real}, outside local_path {root}; camfaith reads only "
                                           f"files inside local_path: copy it in, or point local_path at a folder holding both")
                    if real.is_dir() and folder.is_relative_to(real):
                        log.warning("%s: a symlink to %s, a folder that holds it (a loop): not walked again", root / relative, real)
                    elif real.is_dir():
                        pending.append((real, relative + "/"))
                    elif real.is_file():  # a link to nothing is skipped
                        found.append((relative, real.stat()))
                elif item.is_dir(follow_symlinks=False):  # the entry's own type, from the listing, without a stat
                    pending.append((Path(item.path), relative + "/"))
                elif item.is_file(follow_symlinks=False):
                    found.append((relative, item.stat(follow_symlinks=False)))
    return sorted(found, key=lambda pair: pair[0])


def inside(root: Path, value: str, where: str, what: str = "image") -> str:
    """``value`` (a path relative to ``root``, a resolved folder, as a table cell gives it) as a POSIX
    relative path, after checking that it stays inside ``root`` (no absolute path, no ``..``, no symlink
    resolving outside) and names an existing file; else an :class:`OwnDataError` starting with
    ``where`` (file and line)."""
    relative = PurePosixPath(value)
    if relative.is_absolute() or PureWindowsPath(value).drive:
        raise OwnDataError(f"{where}: {what} path {value!r} is absolute; give it relative to local_path {root}")
    if ".." in relative.parts:
        raise OwnDataError(f"{where}: {what} path {value!r} leaves local_path {root} ('..'); give it relative to local_path, inside it")
    real = (root / relative).resolve()
    if not real.is_relative_to(root):
        raise OwnDataError(f"{where}: {what} {value!r} is (or lies under) a symlink resolving to {real}, outside local_path {root}")
    if not real.is_file():
        raise OwnDataError(f"{where}: {what} {value!r} not found under local_path {root}")
    return relative.as_posix()


# --- tables: CSV or Parquet, as text cells with the line each row came from --------------------------------


def _text(value: object) -> str:
    """A Parquet cell as the text a CSV would hold: '' for a null, an integral float without '.0'."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in TAB_SEPARATED_SUFFIXES else ","


def read_rows(path: str | Path) -> tuple[pd.DataFrame, list[int], str]:
    """The rows of a CSV or Parquet file: ``(frame of text cells, '' where empty and whitespace
    stripped; each row's number; 'line' or 'row')``. CSV rows are numbered by the line they end on,
    1-based with the header as line 1 (blank lines skipped but counted); Parquet rows 1-based. ``.tsv``
    and ``.tab`` files are tab-separated, any other suffix comma-separated. A CSV
    row with another number of cells than its header is an :class:`OwnDataError` naming the line."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame = pd.read_parquet(path)
        frame.columns = [str(name).strip() for name in frame.columns]
        return frame.map(_text).astype(object), list(range(1, len(frame) + 1)), "row"
    with open(path, newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: a spreadsheet's byte-order mark is not part of a name
        reader = csv.reader(handle, delimiter=_delimiter(path))
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise OwnDataError(f"{path}: line 1: no header; the first line names the columns (e.g. path,label)")
        rows, lines = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise OwnDataError(f"{path}: line {reader.line_num}: {len(row)} cell(s), but the header (line 1) names {len(header)}: {row[:8]}")
            rows.append([cell.strip() for cell in row])
            lines.append(reader.line_num)  # the line the row ends on: a quoted cell may span lines
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise OwnDataError(f"{path}: line 1: column(s) {twice} named twice")
    return pd.DataFrame(rows, columns=header, dtype=object), lines, "line"


def table_header(path: str | Path) -> list[str]:
    """The column names of a CSV (its first line) or Parquet file (its schema), without reading the rows."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        return [str(name).strip() for name in pq.read_schema(path).names]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle, delimiter=_delimiter(path)), [])]


def column_mapping(columns: dict | None) -> dict[str, str]:
    """camfaith's name → the table's for every one of :data:`TABLE_COLUMNS` (the config's ``columns:``
    over the identity)."""
    return {name: str((columns or {}).get(name, name)) for name in TABLE_COLUMNS}


def _listed(items: list[str]) -> str:
    return f"{items[:MAX_NAMED]}" + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def _integer(value: str, where: str, column: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise OwnDataError(f"{where}: {column} {value!r} is not a whole number of pixels")
    return int(number)


def _box(cells: dict[str, str], where: str, names: dict[str, str]) -> dict[str, int | None]:
    """``bbox_x0..bbox_y1`` from a row's four box cells: all empty is no box, some empty an error."""
    given = [key for key in BOX_KEYS if cells[key]]
    if not given:
        return {f"bbox_{key}": None for key in BOX_KEYS}
    if len(given) < len(BOX_KEYS):
        empty = [names[key] for key in BOX_KEYS if not cells[key]]
        raise OwnDataError(f"{where}: a box needs all of {[names[k] for k in BOX_KEYS]}; {empty} empty")
    return {f"bbox_{key}": _integer(cells[key], where, names[key]) for key in BOX_KEYS}


def _rows_frame(rows: list[dict], root: Path, what: str) -> pd.DataFrame:
    if not rows:
        raise OwnDataError(f"{root}: no {what} found (docs/datasets.md, 'Your own images', shows the layouts)")
    return pd.DataFrame(rows, columns=COLUMNS)


# --- source: table -----------------------------------------------------------------------------------


def table_adapter(root: str | Path, table: str | Path | None = None, columns: dict | None = None) -> pd.DataFrame:
    """One index row per row of ``table`` (default ``<root>/labels.csv``; CSV, or Parquet by its suffix),
    its columns named as ``columns`` maps camfaith's names (:data:`TABLE_COLUMNS`) to the table's.

    ``path`` and ``mask_path`` are relative to ``root`` (``local_path``); ``group`` defaults to the
    image's path (every image its own group); ``split`` (train/val/test, any case; empty: split by the
    config's fractions) becomes ``official_split``; ``x0..y1`` a box in pixels of the original image,
    x1/y1 exclusive. Every problem is an :class:`OwnDataError` naming the table and the line."""
    root = Path(root).resolve()
    path = Path(table) if table else root / DEFAULT_TABLE
    names = column_mapping(columns)
    frame, numbers, unit = read_rows(path)
    found = list(frame.columns)
    wanted = [key for key in TABLE_COLUMNS if key in REQUIRED_TABLE_COLUMNS or key in (columns or {})]
    missing = [f"{key} (as {names[key]!r})" if names[key] != key else key for key in wanted if names[key] not in found]
    if missing:
        raise OwnDataError(f"{path}: missing column(s) {missing}; the table has {found}; the columns: mapping in use is "
                           f"{dict(columns or {})} (datasets.<name>.columns maps camfaith's names to the table's)")
    present = {key for key in TABLE_COLUMNS if names[key] in found}
    boxes = [key for key in BOX_KEYS if key in present]
    if boxes and len(boxes) < len(BOX_KEYS):
        raise OwnDataError(f"{path}: a box needs all four columns {[names[k] for k in BOX_KEYS]}; the table has only {[names[k] for k in boxes]}")
    rows, first_line = [], {}
    for number, record in zip(numbers, frame.to_dict("records")):
        where = f"{path}: {unit} {number}"
        cells = {key: record[names[key]] if key in present else "" for key in TABLE_COLUMNS}
        if not cells["path"]:
            raise OwnDataError(f"{where}: empty image path ({names['path']} column)")
        image = inside(root, cells["path"], where)
        if image in first_line:
            raise OwnDataError(f"{where}: image {image} is listed twice (also {unit} {first_line[image]})")
        first_line[image] = number
        if not cells["label"]:
            raise OwnDataError(f"{where}: empty label ({names['label']} column) for image {image}")
        if "group" in present and not cells["group"]:
            raise OwnDataError(f"{where}: empty group ({names['group']} column) for image {image}; every image needs its patient/group")
        split = cells["split"].lower() or None
        if split is not None and split not in TABLE_SPLITS:
            raise OwnDataError(f"{where}: split {cells['split']!r} ({names['split']} column) is none of {list(TABLE_SPLITS)} (or empty: "
                               f"split by the config's fractions)")
        mask = inside(root, cells["mask_path"], where, "mask") if cells["mask_path"] else None
        rows.append({"path": image, "label": cells["label"], "group": cells["group"] or image, "mask_path": mask,
                     "official_split": split, **_box(cells, where, names)})
    if "group" not in present:
        _log_split_by_image(path, f"no {names['group']} column")
    return _rows_frame(rows, root, f"rows in {path}")


def _log_split_by_image(where: Path, why: str) -> None:
    log.warning("%s: %s, so every image is its own group and the split is by image: images of one patient may leak across "
                "splits if there are such (give each image its patient, docs/datasets.md 'Your own images')", where, why)


# --- source: folder ----------------------------------------------------------------------------------


def tree_images(files: list[str]) -> tuple[list[str], dict[str, int]]:
    """The images of an ImageFolder tree among ``files`` (paths relative to its root): a known image
    suffix, inside a top-level class folder other than ``masks/``, no hidden (``.``) part. Returns
    ``(images, counts of what was left out by reason)``."""
    images, left_out = [], defaultdict(int)
    for relative in files:
        parts = relative.split("/")
        if parts[0] == MASKS_FOLDER or relative in (GROUPS_FILE, BOXES_FILE):
            continue
        if any(part.startswith(".") for part in parts):
            left_out["hidden (.name) files"] += 1
        elif Path(relative).suffix.lower() not in IMAGE_SUFFIXES:
            left_out["files without an image suffix"] += 1
        elif len(parts) < 2:
            left_out["images directly in local_path, in no class folder"] += 1
        else:
            images.append(relative)
    return images, dict(left_out)


def _side_table(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame, list[int]]:
    """groups.csv or boxes.csv, with its required columns checked."""
    frame, lines, _ = read_rows(path)
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise OwnDataError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)} (expected {','.join(required)})")
    return frame, lines


def _listed_images(path: Path, root: Path, images: set[str], required: tuple[str, ...]) -> list[tuple[str, str, dict]]:
    """``(image, where, row)`` for every row of a side table of the tree, each image checked (inside
    root, existing, an image of the tree, listed once)."""
    frame, lines = _side_table(path, required)
    listed, first_line = [], {}
    for line, record in zip(lines, frame.to_dict("records")):
        where = f"{path}: line {line}"
        if not record["image"]:
            raise OwnDataError(f"{where}: empty image path")
        image = inside(root, record["image"], where)
        if image not in images:
            raise OwnDataError(f"{where}: {image} is not an image of the tree (<class>/<image> with an image suffix, outside "
                               f"{MASKS_FOLDER}/ and hidden folders)")
        if image in first_line:
            raise OwnDataError(f"{where}: image {image} is listed twice (also line {first_line[image]})")
        first_line[image] = line
        listed.append((image, where, record))
    return listed


def _folder_groups(root: Path, images: list[str]) -> dict[str, str]:
    path = root / GROUPS_FILE
    if not path.is_file():
        _log_split_by_image(root, f"no {GROUPS_FILE}")
        return {image: image for image in images}
    groups = {}
    for image, where, record in _listed_images(path, root, set(images), ("image", "group")):
        if not record["group"]:
            raise OwnDataError(f"{where}: empty group for image {image}; every image needs its patient/group")
        groups[image] = record["group"]
    unlisted = [image for image in images if image not in groups]
    if unlisted:
        raise OwnDataError(f"{path}: {len(unlisted)} image(s) of {root} are not listed, and with {GROUPS_FILE} every image needs its "
                           f"group: {_listed(unlisted)}")
    return groups


def _folder_boxes(root: Path, images: list[str]) -> dict[str, dict[str, int | None]]:
    path = root / BOXES_FILE
    if not path.is_file():
        return {}
    names = {key: key for key in BOX_KEYS}
    return {image: _box({key: record[key] for key in BOX_KEYS}, where, names)
            for image, where, record in _listed_images(path, root, set(images), ("image", *BOX_KEYS))}


def _folder_masks(root: Path, images: list[str], files: set[str]) -> dict[str, str]:
    """Each image's mask under ``masks/``: the same relative path with suffix .png, else with the image's own suffix."""
    if not (root / MASKS_FOLDER).is_dir():
        return {}
    masks, missing = {}, []
    for image in images:
        candidates = (f"{MASKS_FOLDER}/{PurePosixPath(image).with_suffix('.png').as_posix()}", f"{MASKS_FOLDER}/{image}")
        mask = next((c for c in candidates if c in files), None)
        if mask is None:
            missing.append(image)
        masks[image] = mask
    if missing:
        raise OwnDataError(f"{root / MASKS_FOLDER}: no mask for {len(missing)} of {len(images)} image(s) (the mask of <class>/<a>.jpg is "
                           f"{MASKS_FOLDER}/<class>/<a>.png or {MASKS_FOLDER}/<class>/<a>.jpg): {_listed(missing)}")
    return masks


def folder_adapter(root: str | Path) -> pd.DataFrame:
    """One index row per image of the ImageFolder tree under ``root``: its class is its top-level
    folder; its group from ``groups.csv`` (else the image itself, logged); its mask from ``masks/``;
    its box from ``boxes.csv`` (the layout: this module's docstring). Every problem is an
    :class:`OwnDataError` naming the file (and line)."""
    root = Path(root).resolve()
    walked = [relative for relative, _ in walk_files(root)]
    images, left_out = tree_images(walked)
    for reason, count in left_out.items():
        log.warning("%s: left out %d %s", root, count, reason)
    classes = {image.split("/")[0] for image in images}
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != MASKS_FOLDER and not p.name.startswith(".")):
        if folder not in classes:
            log.warning("%s: folder %s/ holds no image, so it is no class", root, folder)
    groups, boxes, masks = _folder_groups(root, images), _folder_boxes(root, images), _folder_masks(root, images, set(walked))
    no_box = {f"bbox_{key}": None for key in BOX_KEYS}
    rows = [{"path": image, "label": image.split("/")[0], "group": groups[image], "mask_path": masks.get(image), "official_split": None,
             **boxes.get(image, no_box)} for image in images]
    return _rows_frame(rows, root, "images in <class>/ folders")


# --- the download stage: a manifest, no copy ---------------------------------------------------------


def table_file(dataset: dict) -> Path | None:
    """The table a ``source: table`` dataset config reads (``table:``, else ``<local_path>/labels.csv``;
    relative to the working directory); None for any other source."""
    if dataset.get("source") != "table":
        return None
    return Path(dataset["table"]) if dataset.get("table") else Path(dataset["local_path"]) / DEFAULT_TABLE


def adapter_options(dataset: dict) -> dict:
    """The adapter's options from a dataset config, for the index stage's params: ``table`` (and
    ``columns`` where configured) for ``source: table``, nothing for the others."""
    path = table_file(dataset)
    if path is None:
        return {}
    return {"table": str(path), **({"columns": dict(dataset["columns"])} if dataset.get("columns") else {})}


def _digest(files: list[tuple[str, os.stat_result]], table: Path | None) -> str:
    digest = hashlib.sha256()
    for relative, stat in files:
        digest.update(os.fsencode(relative) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if table is not None:
        stat = table.stat()
        digest.update(b"table\0" + os.fsencode(str(table)) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint(local_path: str | Path, table: str | Path | None = None) -> str:
    """SHA-256 (hex) over the sorted ``(relative path, size, mtime_ns)`` of every file under
    ``local_path`` (:func:`walk_files`) and of ``table``: changes when a file is added, removed,
    rewritten or touched, without reading any file's bytes (25,000 files: docs/performance.md)."""
    return _digest(walk_files(local_path), Path(table).resolve() if table else None)


def manifest(dataset: dict) -> dict:
    """What the download stage records for a ``folder``/``table`` dataset config: ``source``, ``root``
    (absolute ``local_path``), ``table`` (absolute, or None), ``columns`` (the mapping in use), ``files``
    (how many files lie under root) and ``fingerprint`` (:func:`fingerprint`)."""
    root = Path(dataset["local_path"])
    if not root.is_dir():
        raise FileNotFoundError(f"datasets.{dataset.get('name', '<name>')}.local_path: {root} is not a folder")
    root = root.resolve()
    table = table_file(dataset)
    if table is not None and not table.is_file():
        raise FileNotFoundError(f"datasets.{dataset.get('name', '<name>')}.table: {table} does not exist")
    table = table.resolve() if table is not None else None
    files = walk_files(root)
    return {"source": dataset["source"], "root": str(root), "table": str(table) if table else None,
            "columns": dict(dataset.get("columns") or {}), "files": len(files), "fingerprint": _digest(files, table)}


def write_manifest(dataset: dict, out_dir: str | Path) -> dict:
    """Write ``out_dir/manifest.json`` (:func:`manifest`) for a ``folder``/``table`` dataset; the folder
    appears whole or not at all (built as ``<out_dir>.partial``, then renamed). Returns the manifest."""
    out_dir = Path(out_dir)
    recorded = manifest(dataset)
    if dataset.get("fingerprint") and dataset["fingerprint"] != recorded["fingerprint"]:
        log.info("%s changed since the workflow was planned; recorded its fingerprint now", recorded["root"])
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MANIFEST).write_text(json.dumps(recorded, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log.info("%s: %d files under %s, read in place (nothing copied); fingerprint %s", recorded["source"], recorded["files"],
             recorded["root"], recorded["fingerprint"][:16])
    return recorded


def read_manifest(raw_dir: str | Path) -> dict | None:
    """The manifest of a ``folder``/``table`` dataset's download folder; None for any other source's."""
    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    return recorded if recorded.get("source") in OWN_SOURCES and "root" in recorded else None


def data_root(raw_dir: str | Path) -> Path:
    """The folder the index's ``path`` (and ``mask_path``) column is relative to: the manifest's
    ``root`` (the user's ``local_path``) for ``source: folder``/``table``, else ``raw_dir`` itself."""
    recorded = read_manifest(raw_dir)
    if recorded is None:
        return Path(raw_dir)
    root = Path(recorded["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"{raw_dir}/{MANIFEST}: the images live in {root}, which is not a folder (any more); "
                                f"restore it, or change datasets.<name>.local_path")
    return root


# --- where a label comes from ------------------------------------------------------------------------


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:MAX_NAMED])
    return shown + (", …" if len(numbers) > MAX_NAMED else "")


def _table_locations(path: Path, label_column: str, labels: Iterable[str]) -> dict[str, list[str]]:
    frame, numbers, unit = read_rows(path)
    if label_column not in frame.columns:
        return {label: [] for label in labels}
    at = defaultdict(list)
    for number, label in zip(numbers, frame[label_column]):
        at[label].append(number)
    def words(numbers: list[int]) -> str:
        plural = "s" * (len(numbers) != 1)
        return f"{path}: {unit}{plural} {_numbers(numbers)} ({len(numbers)} row{plural})"

    return {label: [words(at[label])] if at[label] else [] for label in labels}


def label_locations(raw_dir: str | Path, labels: Iterable[str]) -> dict[str, list[str]]:
    """For each of ``labels``, where it comes from, in words, for a message naming the file and line:
    ``"<table>: lines 12, 15, 40 (3 rows)"`` (at most 5 numbers, then "…"; Parquet: rows) for
    ``source: table``, ``"<root>/cat/ (14 images)"`` for ``source: folder``, the lines of
    ``metadata.csv`` for a download folder that has one; an empty list for a label found nowhere.
    Another registry download names its folder."""
    raw_dir = Path(raw_dir)
    recorded = read_manifest(raw_dir)
    if recorded is None:
        if (raw_dir / "metadata.csv").is_file():
            return _table_locations(raw_dir / "metadata.csv", "label", labels)
        return {label: [str(raw_dir)] for label in labels}
    if recorded["source"] == "table":
        return _table_locations(Path(recorded["table"]), column_mapping(recorded.get("columns"))["label"], labels)
    root = Path(recorded["root"])
    images, _ = tree_images([relative for relative, _ in walk_files(root)])
    counts = defaultdict(int)
    for image in images:
        counts[image.split("/")[0]] += 1
    return {label: [f"{root}/{label}/ ({counts[label]} image{'s' * (counts[label] != 1)})"] if counts[label] else [] for label in labels}


# --- config checks -----------------------------------------------------------------------------------


def check_dataset_paths(name: str, dataset: dict) -> None:
    """Refuse, as a ``ValueError`` naming ``datasets.<name>.<key>``, a ``local_path`` that is not an
    existing folder (any source) and a ``source: table`` table file that does not exist, relative to
    the working directory (Snakemake's ``--directory``), before any job runs."""
    cwd = Path.cwd()
    local = dataset.get("local_path")
    if local:
        if not Path(local).exists():
            raise ValueError(f"datasets.{name}.local_path: {local} does not exist (a relative path is read from the working directory, {cwd})")
        if not Path(local).is_dir():
            raise ValueError(f"datasets.{name}.local_path: {local} is not a folder")
    path = table_file(dataset)
    if path is not None and not path.is_file():
        key = "table" if dataset.get("table") else "local_path"
        default = "" if dataset.get("table") else f" (the default table, {DEFAULT_TABLE} in local_path; name yours with datasets.{name}.table)"
        raise ValueError(f"datasets.{name}.{key}: table {path} does not exist{default} (a relative path is read from the working directory, {cwd})")


def detected_ground_truth(dataset: dict) -> str:
    """What ground truth a ``folder``/``table`` dataset's own files hold: folder: ``mask`` when
    ``<local_path>/masks/`` exists, else ``box`` when ``boxes.csv`` does, else ``none``; table: ``mask``
    when the table has the mask column, else ``box`` when it has all of x0..y1, else ``none`` (only the
    header is read: a CSV's first line, a Parquet file's schema)."""
    root = Path(dataset.get("local_path") or ".")
    if dataset.get("source") == "folder":
        if (root / MASKS_FOLDER).is_dir():
            return "mask"
        return "box" if (root / BOXES_FILE).is_file() else "none"
    path = table_file(dataset)
    if path is None or not path.is_file():
        return "none"  # check_dataset_paths says why
    header, names = set(table_header(path)), column_mapping(dataset.get("columns"))
    if names["mask_path"] in header:
        return "mask"
    return "box" if all(names[key] in header for key in BOX_KEYS) else "none"
