"""On-disk formats: attribution maps in HDF5, tables in Parquet (layouts in docs/formats.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from camfaith.io import atomic_path, canonical_json, unreadable

MAPS_FORMAT = "camfaith.maps/2"
# Attributes every maps file carries (format 2: the explainer's resolution and settings are recorded;
# ``layer`` only where the method reads one).
REQUIRED_MAP_ATTRS = ("method", "resolution", "settings", "map_shape")
PARQUET_METADATA_KEY = b"camfaith"


@dataclass
class MapSet:
    """The content of one maps file. Arrays are indexed by image position ``n`` (``N`` images, ``K`` classes)."""

    maps: np.ndarray  # [N, h, w] float32, raw (signed, before ReLU/scaling), at the method's resolution (layer or input)
    image_ids: list[str]
    labels: np.ndarray  # [N] int64
    predictions: np.ndarray  # [N] int64, argmax of logits
    targets: np.ndarray  # [N] int64, the class each map explains
    logits: np.ndarray  # [N, K] float32
    probabilities: np.ndarray  # [N, K] float32, softmax of logits
    attrs: dict = field(default_factory=dict)


def write_maps(path: str | Path, maps: MapSet) -> None:
    """Write ``maps`` atomically to ``path`` (HDF5, layout ``camfaith.maps/2``, docs/formats.md)."""
    n = len(maps.image_ids)
    missing = [key for key in REQUIRED_MAP_ATTRS if key not in maps.attrs]
    if missing:
        raise ValueError(f"{path}: maps attributes {missing} are required ({MAPS_FORMAT})")
    shapes = {"maps": maps.maps.shape[0], "labels": len(maps.labels), "predictions": len(maps.predictions),
              "targets": len(maps.targets), "logits": maps.logits.shape[0], "probabilities": maps.probabilities.shape[0]}
    wrong = {name: size for name, size in shapes.items() if size != n}
    if wrong:
        raise ValueError(f"{path}: arrays disagree with {n} image ids: {wrong}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        chunks = (1, *maps.maps.shape[1:]) if n else None
        handle.create_dataset("maps", data=maps.maps.astype(np.float32), chunks=chunks)
        handle.create_dataset("image_id", data=np.array(maps.image_ids, dtype=object), dtype=h5py.string_dtype())
        handle.create_dataset("label", data=maps.labels.astype(np.int64))
        handle.create_dataset("prediction", data=maps.predictions.astype(np.int64))
        handle.create_dataset("target", data=maps.targets.astype(np.int64))
        handle.create_dataset("logits", data=maps.logits.astype(np.float32))
        handle.create_dataset("probabilities", data=maps.probabilities.astype(np.float32))
        handle.attrs["format"] = MAPS_FORMAT
        for key, value in maps.attrs.items():
            handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def read_maps(path: str | Path) -> MapSet:
    """Read a file written by :func:`write_maps`; a wrong format is an error naming the file, a
    truncated or corrupt one an :class:`~camfaith.io.UnreadableInputError` naming the file and the rule."""
    try:
        with h5py.File(path, "r") as handle:
            found = handle.attrs.get("format")
            if found != MAPS_FORMAT:
                older = isinstance(found, str) and found.startswith("camfaith.maps/")
                hint = " (written by an older camfaith: re-run its explain job, e.g. snakemake --forcerun explain)" if older else ""
                raise ValueError(f"{path}: not a camfaith maps file of format {MAPS_FORMAT}, found {found!r}{hint}")
            return MapSet(
                maps=handle["maps"][...],
                image_ids=[s.decode() if isinstance(s, bytes) else str(s) for s in handle["image_id"][...]],
                labels=handle["label"][...], predictions=handle["prediction"][...], targets=handle["target"][...],
                logits=handle["logits"][...], probabilities=handle["probabilities"][...],
                attrs={key: handle.attrs[key] for key in handle.attrs},
            )
    except (OSError, KeyError) as error:  # h5py: truncated file, bad superblock, missing dataset
        if isinstance(error, FileNotFoundError):
            raise
        raise unreadable(path, error) from error


def finite_maps(maps: np.ndarray) -> np.ndarray:
    """``[N]`` bool: True where the raw map ``maps [N, h, w]`` has only finite values."""
    return np.isfinite(maps.reshape(len(maps), -1)).all(axis=1) if len(maps) else np.zeros(0, dtype=bool)


def map_settings(maps: MapSet) -> dict:
    """The explainer settings recorded in a maps file (format 2)."""
    return json.loads(str(maps.attrs["settings"]))


def write_table(frame: pd.DataFrame, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``frame`` atomically as Parquet, with ``metadata`` as JSON under the ``camfaith`` key."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_METADATA_KEY: canonical_json(metadata).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | Path) -> pd.DataFrame:
    """``pandas.read_parquet`` of a stage's input; a truncated or corrupt file is an
    :class:`~camfaith.io.UnreadableInputError` naming the file and the rule that writes it."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise unreadable(path, error) from error


def read_table_metadata(path: str | Path) -> dict:
    """The ``camfaith`` metadata written by :func:`write_table` ({} if absent)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise unreadable(path, error) from error
    return json.loads(raw) if raw else {}

