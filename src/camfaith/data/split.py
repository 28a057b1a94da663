"""The split stage: stratified, grouped, deterministic; official splits honoured; leakage refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


class LeakageError(RuntimeError):
    """A group (patient, lesion, slide) appears in more than one split."""


def _grouped_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out part of about ``fraction`` of the rows, whole groups only.

    StratifiedGroupKFold with ``round(1/fraction)`` folds keeps class proportions as far as whole
    groups allow; its first fold is the holdout. ``fraction`` 0 holds out nothing and 1 everything
    (a dataset that is only a test set), where no number of folds would.
    """
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    if fraction >= 1:
        return np.ones(len(labels), dtype=bool)
    n_splits = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"cannot hold out {fraction:.0%} as whole groups: only {n_groups} groups")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(index: pd.DataFrame, fractions: dict[str, float], seed: int, honour_official: bool = True) -> pd.DataFrame:
    """Assign every image of ``index`` to train/val/test.

    ``fractions`` holds ``train``, ``val``, ``test`` (summing to 1). Rows whose ``official_split`` is
    ``train``/``val``/``test`` keep it; ``trainval`` rows are split into train and val. A fraction of 0
    leaves its split empty and one of 1 takes every row not officially assigned (``test: 1``: a
    dataset that is only a test set, for a model trained elsewhere). Returns a
    frame ``image_id, group, label, split`` sorted by ``image_id``; raises :class:`LeakageError`
    naming the groups if any group ends up in two splits.
    """
    if set(fractions) != set(SPLITS) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must give train, val and test summing to 1, got {fractions}")
    frame = index[["image_id", "group", "label"]].copy()
    official = index["official_split"] if "official_split" in index else pd.Series(pd.NA, index=index.index)
    split = pd.Series(pd.NA, index=index.index, dtype="string")
    if honour_official:
        fixed = official.isin(SPLITS)
        split[fixed] = official[fixed]
    else:
        fixed = pd.Series(False, index=index.index)

    has_official_test = bool((split == "test").any())
    remaining = ~fixed
    labels = index["label_index"].to_numpy()
    groups = index["group"].astype(str).to_numpy()
    if not has_official_test and remaining.any():
        rows = np.flatnonzero(remaining.to_numpy())
        held = _grouped_holdout(labels[rows], groups[rows], fractions["test"], seed)
        split.iloc[rows[held]] = "test"
        remaining = remaining & split.isna()
    if not (split == "val").any() and remaining.any():
        rows = np.flatnonzero(remaining.to_numpy())
        train_and_val = fractions["train"] + fractions["val"]
        val_share = fractions["val"] / train_and_val if train_and_val > 0 else 0.0
        held = _grouped_holdout(labels[rows], groups[rows], val_share, seed + 1)
        split.iloc[rows[held]] = "val"
    split[split.isna()] = "train"
    frame["split"] = split.astype("string")
    check_leakage(frame)
    return frame.sort_values("image_id", kind="stable").reset_index(drop=True)


def check_leakage(frame: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` naming every group found in more than one split."""
    per_group = frame.groupby("group", observed=True)["split"].nunique()
    leaking = per_group[per_group > 1]
    if not leaking.empty:
        detail = {
            group: sorted(frame.loc[frame["group"] == group, "split"].unique())
            for group in leaking.index[:20]
        }
        raise LeakageError(f"{len(leaking)} group(s) appear in more than one split: {detail}")


def split_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per split and class, for the log."""
    return frame.groupby(["split", "label"], observed=True).size().unstack(fill_value=0)


def missing_classes(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per split, the classes of the dataset with no image in it (a class absent from the test split
    has no recall; one absent from train cannot be learnt)."""
    labels = set(frame["label"].astype(str))
    return {split: sorted(labels - set(frame.loc[frame["split"] == split, "label"].astype(str)))
            for split in SPLITS if labels - set(frame.loc[frame["split"] == split, "label"].astype(str))}
