"""Shared fixtures. Keep them generic and clearly named: several test modules use them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from camfaith.data.index import build_index, class_names
from camfaith.data.split import assign_splits
from camfaith.data.synthetic import SyntheticSpec, generate
from camfaith.models import ModelSpec, build_model, resolve_layer
from camfaith.store import write_table

# A small synthetic dataset: 3 classes x 10 patients x 2 images of 32 px. Ten groups per class are
# enough for a 0.6/0.2/0.2 grouped split to keep every class in every split.
TINY_SYNTHETIC_CONFIG = {
    "seed": 0,
    "image_size": 32,
    "classes": ["disc", "square", "triangle"],
    "groups_per_class": 10,
    "images_per_group": 2,
    "object_size": [6, 10],
    "distractor": True,
    "corrupt_images": 0,
}
TINY_SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def frozen_tiny_resnet18() -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, target layer)``: the study's ResNet18 variant cut after layer2 for 3 classes at
    32 px, random weights from seed 0, parameters frozen as in a score job. Seeds torch's global
    generator, so a caller's draws after it are reproducible."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18", num_classes=3, input_size=32, cut_after="layer2", plain_last_block=True))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _, layer = resolve_layer(model, None)
    return model, layer


@dataclass(frozen=True)
class TinyDataset:
    """A generated synthetic dataset with its index and split, as the pipeline stages would leave them."""

    spec: SyntheticSpec
    root: Path  # raw dataset folder (metadata.csv, images/, masks/)
    metadata: pd.DataFrame  # metadata.csv as written by the generator
    index: pd.DataFrame
    splits: pd.DataFrame
    index_path: Path  # index.parquet
    split_path: Path  # split.parquet
    classes: list[str]


@pytest.fixture(scope="session")
def tiny_synthetic_spec() -> SyntheticSpec:
    return SyntheticSpec.from_config(TINY_SYNTHETIC_CONFIG)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_synthetic_spec) -> TinyDataset:
    """Session-wide tiny synthetic dataset (60 images of 32 px), indexed and split 0.6/0.2/0.2 with seed 0.

    Treat it as read-only: tests that modify files must copy it first.
    """
    base = tmp_path_factory.mktemp("tiny_dataset")
    root = base / "raw"
    metadata_path = generate(tiny_synthetic_spec, root)
    index, quarantine = build_index(root, "metadata_csv", max_quarantine_fraction=0.0)
    assert quarantine.empty
    splits = assign_splits(index, TINY_SPLIT_FRACTIONS, seed=0)
    index_path, split_path = base / "index.parquet", base / "split.parquet"
    write_table(index, index_path, {"classes": class_names(index)})
    write_table(splits, split_path)
    return TinyDataset(
        spec=tiny_synthetic_spec, root=root, metadata=pd.read_csv(metadata_path), index=index, splits=splits,
        index_path=index_path, split_path=split_path, classes=class_names(index),
    )
