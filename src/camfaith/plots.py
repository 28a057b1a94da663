"""Figures: MoRF curves, Max-Sensitivity against radius, accuracy against AOPC, example overlays."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from camfaith import explainers, postprocess  # noqa: E402
from camfaith.io import atomic_path  # noqa: E402
from camfaith.store import read_maps  # noqa: E402


def method_style(method: str) -> dict:
    """Line style of a method, from the explainer registry: its colour and title; controls dashed."""
    explainer = explainers.get(method)
    return {"color": explainer.colour, "label": explainer.title, "linestyle": "--" if explainer.is_control else "-"}


def save(figure: plt.Figure, *paths: str | Path) -> None:
    """Save ``figure`` to each path (format from the suffix), atomically, then close it."""
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(figure)


def _panels(count: int, columns: int, size: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return figure, axes


def _empty(message: str) -> plt.Figure:
    figure, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.axis("off")
    return figure


def morf_curves(scores: pd.DataFrame) -> plt.Figure:
    """Mean target probability against the fraction of regions perturbed, a panel per model × region size."""
    curves = scores[scores["quantity"] == "probability"]
    if curves.empty:
        return _empty("no AOPC curves")
    # coarse grids (large regions) first, as the tables
    keys = sorted(curves.groupby(["dataset", "model", "parameter_value"]).groups, key=lambda k: (k[0], k[1], -k[2]))
    figure, axes = _panels(len(keys), min(4, len(keys)))
    for ax, (dataset, model, region) in zip(axes.flat, keys):
        part = curves[(curves["dataset"] == dataset) & (curves["model"] == model) & (curves["parameter_value"] == region)]
        for method, group in part.groupby("method"):
            mean = group.groupby("step")["value"].mean()
            ax.plot(mean.index / mean.index.max(), mean.to_numpy(), **method_style(method))
        ax.set_title(f"{dataset} / {model}\nregions of {region:g} px", fontsize=9)
        ax.set_xlabel("fraction of regions perturbed (MoRF)")
        ax.set_ylabel("mean p(target)")
        ax.set_ylim(0, 1.02)
    _legend(figure, axes)
    return figure


def _legend(figure: plt.Figure, axes: np.ndarray) -> None:
    """One legend for the whole figure, below the panels (a dozen methods do not fit inside one), in
    registry order with the controls last."""
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    order = {e.title: (e.is_control, i) for i, e in enumerate(explainers.REGISTRY.values())}
    labels = sorted(handles, key=lambda label: order.get(label, (True, len(order))))
    figure.tight_layout()
    if handles:
        figure.legend([handles[label] for label in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                      ncol=min(5, len(labels)), fontsize=8, frameon=False)


def sensitivity_vs_radius(summary: pd.DataFrame) -> plt.Figure:
    """Mean Max-Sensitivity (95 % bootstrap band) against the noise radius, a panel per model."""
    part = summary[summary["metric"] == "max_sensitivity"]
    if part.empty:
        return _empty("no Max-Sensitivity scores")
    keys = sorted(part.groupby(["dataset", "model"]).groups)
    figure, axes = _panels(len(keys), min(4, len(keys)))
    for ax, (dataset, model) in zip(axes.flat, keys):
        for method, group in part[(part["dataset"] == dataset) & (part["model"] == model)].groupby("method"):
            group = group.sort_values("parameter_value")
            style = method_style(method)
            ax.plot(group["parameter_value"], group["mean"], marker="o", **style)
            ax.fill_between(group["parameter_value"], group["ci_low"], group["ci_high"], alpha=0.15, color=style["color"])
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        ax.set_xlabel("radius r (L∞, normalised input)")
        ax.set_ylabel("Max-Sensitivity (lower is better)")
        shown = part[(part["dataset"] == dataset) & (part["model"] == model)][["mean", "ci_low", "ci_high"]].to_numpy().ravel()
        shown = shown[np.isfinite(shown) & (shown > 0)]
        if len(shown) and shown.max() / shown.min() > 100:  # one unstable method would flatten the others
            ax.set_yscale("log")
    _legend(figure, axes)
    return figure


def accuracy_vs_aopc(summary: pd.DataFrame, classification: pd.DataFrame) -> plt.Figure:
    """Balanced accuracy of each model against its mean AOPC, one point per method and region size."""
    part = summary[summary["metric"] == "aopc"].merge(classification, on=["dataset", "model"])
    if part.empty:
        return _empty("no AOPC scores")
    figure, ax = plt.subplots(figsize=(5, 4))
    for method, group in part.groupby("method"):
        style = method_style(method)
        ax.scatter(group["mean"], group["balanced_accuracy"], label=style["label"], color=style["color"], alpha=0.8,
                   marker="x" if explainers.get(method).is_control else "o")
    for row in part.drop_duplicates(["dataset", "model"]).itertuples():
        ax.annotate(f"{row.dataset}/{row.model}", (row.mean, row.balanced_accuracy), fontsize=7, alpha=0.7)
    ax.set_xlabel("mean AOPC (MoRF)")
    ax.set_ylabel("balanced accuracy (test)")
    _legend(figure, np.array([ax]))
    return figure


def overlays(maps_paths: dict[str, str | Path], index: pd.DataFrame, raw_dir: str | Path, examples: int, image_size: int) -> plt.Figure:
    """A grid: a row per example test image, the input then one column per method, each map
    (ReLU, min-max, bilinear to the input) over the image, with the ground-truth mask outlined."""
    order = {name: i for i, name in enumerate(explainers.names())}
    loaded = {method: read_maps(path) for method, path in sorted(maps_paths.items(), key=lambda item: order[item[0]])}
    first = next(iter(loaded.values()))
    count = min(examples, len(first.image_ids))
    picks = np.linspace(0, len(first.image_ids) - 1, count).round().astype(int) if count else []
    rows = index.set_index("image_id")
    classes = json.loads(first.attrs["classes"])
    side = 2.2 if len(loaded) <= 6 else 1.6
    figure, axes = plt.subplots(count, len(loaded) + 1, figsize=(side * (len(loaded) + 1), side * count), squeeze=False)
    post = postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear")
    for r, position in enumerate(picks):
        image_id = first.image_ids[position]
        row = rows.loc[image_id]
        with Image.open(Path(raw_dir) / str(row["path"])) as image:
            picture = np.asarray(image.convert("RGB").resize((image_size, image_size)))
        mask = None
        if pd.notna(row["mask_path"]):
            with Image.open(Path(raw_dir) / str(row["mask_path"])) as image:
                mask = np.asarray(image.convert("L").resize((image_size, image_size), Image.NEAREST)) > 127
        label = classes[int(first.labels[position])] if classes else int(first.labels[position])
        panels = [("input", None), *loaded.items()]
        for c, (title, mapset) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(picture)
            if mapset is not None:
                heat = postprocess.apply(torch.from_numpy(mapset.maps[position : position + 1]), post, (image_size, image_size))[0]
                ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if mask is not None:
                ax.contour(mask, levels=[0.5], colors="white", linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title if mapset is None else explainers.get(title).title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{label}", fontsize=8)
    figure.tight_layout()
    return figure
