"""Hyperparameter grids: one config model entry with a ``grid:`` becomes one model per combination.

The study trained 16 VGG19s per non-medical dataset (learning rate × weight decay × batch size ×
scheduler) and reported the models with the highest and lowest HAAS. A model entry

    vgg19:
      model: {...}
      training: {...}                      # the shared settings
      grid: {lr: [1.0e-4, 1.0e-6], batch_size: [32, 64]}

expands to ``vgg19-no01`` … ``vgg19-no04`` in ``itertools.product`` order of the keys as written
(the study's numbering: the first key varies slowest), each with its values put into ``training``.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd

MEMBER_SEPARATOR = "-no"
SEED_SEPARATOR = "-seed"
STUDY_METHOD = "hirescam"  # the study's sweep reported HAAS of HiResCAM maps (a registry name: tests/test_explainers.py)


def haas_method(methods_per_model: list) -> str:
    """The method whose HAAS the min/max table reports: the study's, when every model has it, else
    the first method every model has."""
    shared = [m for m in methods_per_model[0] if all(m in chosen for chosen in methods_per_model)]
    if not shared:
        raise ValueError("the HAAS sweep table needs a method that every model has")
    return STUDY_METHOD if STUDY_METHOD in shared else shared[0]


def expand(models: dict[str, dict[str, dict]]) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, dict]]]:
    """``(models, members)``: every grid entry replaced by its members; ``members[dataset][model]``
    holds each member's grid values (only for expanded models). Entries without a grid are kept."""
    expanded: dict[str, dict[str, dict]] = {}
    members: dict[str, dict[str, dict]] = {}
    for dataset, entries in models.items():
        expanded[dataset] = {}
        for name, entry in entries.items():
            grid = entry.get("grid")
            if not grid:
                expanded[dataset][name] = {k: v for k, v in entry.items() if k != "grid"}
                continue
            keys = list(grid)
            combos = list(itertools.product(*(grid[key] for key in keys)))
            width = max(2, len(str(len(combos))))
            for number, values in enumerate(combos, start=1):
                member = f"{name}{MEMBER_SEPARATOR}{number:0{width}d}"
                if member in entries:
                    raise ValueError(f"models.{dataset}: grid member {member!r} collides with a model of that name")
                settings = {k: copy.deepcopy(v) for k, v in entry.items() if k != "grid"}
                settings["training"] = {**settings.get("training", {}), **dict(zip(keys, copy.deepcopy(values)))}
                expanded[dataset][member] = settings
                members.setdefault(dataset, {})[member] = {"grid_model": name, **dict(zip(keys, values))}
    return expanded, members


def expand_seeds(models: dict[str, dict[str, dict]]) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, dict]]]:
    """``(models, replicates)``: every entry with ``training.seeds: [s0, s1, …]`` replaced by one model
    per seed, ``<name>-seed<s>``, trained with ``training.seed: s`` (nothing else differs);
    ``replicates[dataset][member] = {"replicate_of": name, "seed": s}``. Run after :func:`expand`:
    a grid entry with seeds is refused (its members' names are the sweep table's)."""
    expanded: dict[str, dict[str, dict]] = {}
    replicates: dict[str, dict[str, dict]] = {}
    for dataset, entries in models.items():
        expanded[dataset] = {}
        for name, entry in entries.items():
            seeds = (entry.get("training") or {}).get("seeds")
            if not seeds:
                expanded[dataset][name] = entry
                continue
            for seed in seeds:
                member = f"{name}{SEED_SEPARATOR}{seed}"
                if member in entries:
                    raise ValueError(f"models.{dataset}: seed replicate {member!r} collides with a model of that name")
                settings = copy.deepcopy(entry)
                settings["training"] = {**{k: v for k, v in settings["training"].items() if k != "seeds"}, "seed": seed}
                expanded[dataset][member] = settings
                replicates.setdefault(dataset, {})[member] = {"replicate_of": name, "seed": seed}
    return expanded, replicates


def _describe(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)


def extremes(summary: pd.DataFrame, classification: pd.DataFrame, members: dict[str, dict[str, dict]], method: str) -> pd.DataFrame:
    """Per dataset and grid: the members with the highest and the lowest HAAS of ``method``, with
    their hyperparameters and test scores (the study's min/max table).

    ``summary``: ``summary.csv`` (metric ``haas`` rows, ``mean`` = the dataset-level HAAS);
    ``classification``: ``classification.csv``. Ties go to the lower member number.
    """
    haas = summary[(summary["metric"] == "haas") & (summary["method"] == method)]
    rows = []
    for dataset, grid_members in members.items():
        for grid_model in sorted({m["grid_model"] for m in grid_members.values()}):
            names = sorted(n for n, m in grid_members.items() if m["grid_model"] == grid_model)
            values = haas[(haas["dataset"] == dataset) & haas["model"].isin(names)].set_index("model")["mean"].sort_index()
            if values.empty:
                continue
            for which, name in (("max", values.idxmax()), ("min", values.idxmin())):
                scores = classification[(classification["dataset"] == dataset) & (classification["model"] == name)]
                parameters = {k: v for k, v in grid_members[name].items() if k != "grid_model"}
                rows.append({
                    "dataset": dataset, "grid": grid_model, "extreme": which, "model": name, "method": method,
                    "haas": float(values[name]), "members": len(names),
                    **{f"test_{c}": float(scores[c].iloc[0]) if not scores.empty and c in scores else np.nan
                       for c in ("balanced_accuracy", "mean_auc", "accuracy")},
                    "hyperparameters": "; ".join(f"{k} {_describe(v)}" for k, v in parameters.items()),
                })
    return pd.DataFrame(rows, columns=["dataset", "grid", "extreme", "model", "method", "haas", "members", "test_balanced_accuracy",
                                       "test_mean_auc", "test_accuracy", "hyperparameters"])
