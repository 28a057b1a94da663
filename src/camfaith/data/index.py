"""The index stage: one row per image, unreadable files quarantined (never silently dropped)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from camfaith.data.adapters import ADAPTERS as DATASET_ADAPTERS
from camfaith.data.own import folder_adapter, table_adapter
from camfaith.data.pixels import image_problem

log = logging.getLogger(__name__)

INDEX_COLUMNS = (
    "image_id", "path", "label", "label_index", "group", "mask_path",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "official_split",
)
OFFICIAL_SPLITS = ("train", "val", "test", "trainval")


class QuarantineLimitError(RuntimeError):
    """More images were unreadable than the configured threshold tolerates."""


def read_metadata_csv(root: Path) -> pd.DataFrame:
    """Adapter for datasets described by ``root/metadata.csv`` (the synthetic dataset's layout).

    Required columns: ``image`` (path relative to root), ``label``, ``group``. Optional: ``mask``,
    ``bbox_x0..bbox_y1`` (pixels, x1/y1 exclusive) and ``split`` (an official split).
    """
    csv_path = root / "metadata.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: metadata CSV missing; is {root} a dataset folder?")
    table = pd.read_csv(csv_path, dtype={"image": str, "label": str, "group": str, "mask": str, "split": str})
    missing = {"image", "label", "group"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
    rename = {"image": "path", "mask": "mask_path", "split": "official_split"}
    return table.rename(columns=rename)


# One adapter per on-disk layout: the generic metadata.csv one here, the published datasets' own in
# camfaith.data.adapters, a researcher's own images (source folder, table) in camfaith.data.own. Each
# takes the dataset folder and, for table, its options (build_index's adapter_options).
ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "metadata_csv": read_metadata_csv,
    **DATASET_ADAPTERS,
    "folder": folder_adapter,
    "table": table_adapter,
}


def check_image(path: Path) -> str | None:
    """``None`` if the image decodes completely and its pixels map to [0, 1] (:func:`image_problem`), else the reason not."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.width == 0 or image.height == 0:
                return "empty image"
            # at index time, so that an image training could not interpret is quarantined rather than failing an epoch
            return image_problem(image)
    except FileNotFoundError:
        return "file missing"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return f"{type(error).__name__}: {error}"


BOX_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


def has_box(row: pd.Series) -> bool:
    """Whether an index row has a whole box (every one of :data:`BOX_COLUMNS` filled)."""
    return all(column in row and pd.notna(row[column]) for column in BOX_COLUMNS)


def has_ground_truth(row: pd.Series) -> bool:
    """Whether an index row has a mask path or a whole box."""
    return has_box(row) or ("mask_path" in row and pd.notna(row["mask_path"]))


def ground_truth_problem(root: Path, row: pd.Series, kind: str, scope: str = "all") -> str | None:
    """``None`` if the image's ground truth is usable for a dataset that declares ``kind`` (``mask``,
    ``box`` or ``none``), else why not: a missing or unreadable mask, a missing box, or a box that is
    empty or reaches outside its image (box coordinates are pixels of the original image, x1/y1 exclusive).
    With ``scope`` ``some`` an image without any ground truth is fine (it is not scored by the
    localisation metrics); one that has some must have it valid."""
    if kind == "none":
        return None
    boxed = has_box(row)
    if scope == "some" and not has_ground_truth(row):
        return None
    if boxed:
        x0, y0, x1, y1 = (float(row[column]) for column in BOX_COLUMNS)
        with Image.open(root / str(row["path"])) as image:
            width, height = image.size
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            return f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or outside the {width}×{height} image"
    if kind == "box" and not boxed:
        return "no box (bbox_x0..bbox_y1), though the dataset declares ground_truth: box"
    if kind == "mask":
        mask = row.get("mask_path")
        if mask is None or pd.isna(mask):
            return "no mask, though the dataset declares ground_truth: mask"
        try:
            with Image.open(root / str(mask)) as image:
                image.load()
        except FileNotFoundError:
            return f"mask {mask}: file missing"
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            return f"mask {mask}: {type(error).__name__}: {error}"
    return None


def build_index(root: str | Path, adapter: str, max_quarantine_fraction: float,
                classes: list[str] | None = None, ground_truth: str = "none",
                ground_truth_scope: str = "all", adapter_options: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index the dataset under ``root``.

    Returns ``(index, quarantine)``: ``index`` has :data:`INDEX_COLUMNS` (``label_index`` follows the
    sorted class names; ``image_id`` is the path without suffix), ``quarantine`` has ``path, reason``
    for every image that could not be decoded or whose pixel values have no known scale
    (:func:`check_image`). Raises :class:`QuarantineLimitError` when the quarantined fraction exceeds
    ``max_quarantine_fraction``. With ``classes`` (the declared class names) ``label_index`` follows
    their sorted order, a label outside them is a ``ValueError`` and a class without images a
    warning. Two images with the same ``image_id`` (``x.png`` and ``x.jpg``) are a ``ValueError``.
    With ``ground_truth`` ``mask`` or ``box`` an image whose ground truth is missing or invalid
    (:func:`ground_truth_problem`) is quarantined too, with the reason; with ``ground_truth_scope``
    ``some`` only an image that has ground truth needs it valid. ``adapter_options`` are passed to the
    adapter as keywords (``table``'s ``table`` and ``columns``: :func:`camfaith.data.own.adapter_options`).
    """
    root = Path(root)
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown dataset adapter {adapter!r}; known: {sorted(ADAPTERS)}")
    table = ADAPTERS[adapter](root, **(adapter_options or {}))
    duplicated = table["path"][table["path"].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"{root}: image path(s) listed twice: {sorted(duplicated)[:5]}")
    if "official_split" in table:
        bad = sorted(set(table["official_split"].dropna()) - set(OFFICIAL_SPLITS))
        if bad:
            raise ValueError(f"{root}: unknown official split value(s) {bad}; allowed {OFFICIAL_SPLITS}")

    reasons = {path: check_image(root / path) for path in table["path"]}
    for _, row in table.iterrows():
        if reasons[row["path"]] is None:
            reasons[row["path"]] = ground_truth_problem(root, row, ground_truth, ground_truth_scope)
    quarantined = [(path, reason) for path, reason in reasons.items() if reason is not None]
    quarantine = pd.DataFrame(quarantined, columns=["path", "reason"])
    for path, reason in quarantined:
        log.warning("quarantined %s: %s", path, reason)
    fraction = len(quarantined) / max(len(table), 1)
    log.info("indexed %d images under %s; quarantined %d (%.2f%%)", len(table), root, len(quarantined), 100 * fraction)
    if fraction > max_quarantine_fraction:
        raise QuarantineLimitError(
            f"{len(quarantined)} of {len(table)} images under {root} are unreadable ({fraction:.1%} > "
            f"max_quarantine_fraction {max_quarantine_fraction:.1%}); first: {quarantined[:3]}"
        )

    index = table[~table["path"].isin(quarantine["path"])].copy()
    found = sorted(index["label"].unique())
    if classes is not None:
        unknown = index[~index["label"].isin(classes)]
        if not unknown.empty:
            counts = unknown["label"].value_counts().to_dict()
            raise ValueError(f"{root}: {len(unknown)} image(s) have a label outside the declared classes {list(classes)}: "
                             f"{counts} (e.g. {unknown['path'].iloc[0]}); fix the labels or declare the class in datasets.<name>.classes")
        empty = sorted(set(classes) - set(found))
        if empty:
            log.warning("declared class(es) %s have no image under %s: the model still gets an output for each", empty, root)
    names = sorted(classes) if classes is not None else found
    index["label_index"] = index["label"].map({name: i for i, name in enumerate(names)}).astype("int64")
    index["image_id"] = index["path"].map(lambda p: Path(p).with_suffix("").as_posix())
    twice = index[index["image_id"].duplicated(keep=False)].sort_values("image_id")
    if not twice.empty:
        pairs = twice.groupby("image_id")["path"].apply(list).head(5).to_dict()
        raise ValueError(f"{root}: {twice['image_id'].nunique()} image id(s) are shared by two or more files (the id is the path "
                         f"without its suffix, and every table is keyed by it): {pairs}; rename or remove one of each")
    for column in INDEX_COLUMNS:
        if column not in index:
            index[column] = None
    index = index[list(INDEX_COLUMNS)].sort_values("image_id", kind="stable").reset_index(drop=True)
    for column in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
        index[column] = index[column].astype("Int64")
    for column in ("mask_path", "official_split", "group", "path", "label", "image_id"):
        index[column] = index[column].astype("string")
    return index, quarantine


def class_names(index: pd.DataFrame, declared: list[str] | None = None) -> list[str]:
    """Class names in ``label_index`` order: the sorted ``declared`` classes when given (a declared
    class may have no image), else the labels of the index."""
    if declared is not None:
        return sorted(declared)
    pairs = index[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    return [str(name) for name in pairs["label"]]
