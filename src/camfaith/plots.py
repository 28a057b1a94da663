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
from camfaith.metrics import REGISTRY  # noqa: E402
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


def _curve_panels(scores: pd.DataFrame, draw, ylabel: str) -> plt.Figure:
    """A panel per dataset × model × region size (coarse grids first, as the tables) of the AOPC
    ``probability`` curves; ``draw(ax, method, rows)`` draws one method's curves in it."""
    curves = scores[scores["quantity"] == "probability"]
    if curves.empty:
        return _empty("no AOPC curves")
    keys = sorted(curves.groupby(["dataset", "model", "parameter_value"]).groups, key=lambda k: (k[0], k[1], -k[2]))
    figure, axes = _panels(len(keys), min(4, len(keys)))
    for ax, (dataset, model, region) in zip(axes.flat, keys):
        part = curves[(curves["dataset"] == dataset) & (curves["model"] == model) & (curves["parameter_value"] == region)]
        for method, group in part.groupby("method"):
            draw(ax, method, group)
        ax.set_title(f"{dataset} / {model}\nregions of {region:g} px", fontsize=9)
        ax.set_xlabel("fraction of regions perturbed (MoRF)")
        ax.set_ylabel(ylabel)
    _legend(figure, axes)
    return figure


def morf_curves(scores: pd.DataFrame) -> plt.Figure:
    """Mean target probability against the fraction of regions perturbed, with a ±1.96 SE band, a
    panel per model × region size."""
    def draw(ax, method, group):
        by_step = group.groupby("step")["value"]
        mean, spread = by_step.mean(), 1.96 * by_step.sem().fillna(0.0)  # normal 95 % band of the mean curve
        fraction = mean.index / mean.index.max()
        style = method_style(method)
        ax.plot(fraction, mean.to_numpy(), **style)
        ax.fill_between(fraction, (mean - spread).to_numpy(), (mean + spread).to_numpy(), color=style["color"], alpha=0.12, linewidth=0)
        ax.set_ylim(0, 1.02)

    return _curve_panels(scores, draw, "mean p(target)")


def running_aopc_curve(curves: pd.DataFrame) -> np.ndarray:
    """``[L+1]``: the running AOPC after each step of one method's MoRF curves (``probability`` rows
    of one cell, a curve per image, steps 0…L): ``1/(k+1) Σ_{j≤k} mean_images(f(x⁰) − f(x^j))``."""
    wide = curves.pivot_table(index="image_id", columns="step", values="value", aggfunc="first").to_numpy(dtype=np.float64)
    # per step, the mean over images of f(x⁰) − f(x^j); an undefined curve (NaN) counts nowhere
    drop = np.nanmean(wide[:, :1] - wide, axis=0)
    return np.cumsum(drop) / np.arange(1, drop.size + 1)


def running_aopc(scores: pd.DataFrame) -> plt.Figure:
    """The study's per-step AOPC (its ``plot_aopc_per_step``): after ``k`` of ``L`` regions,
    ``AOPC_k = 1/(k+1) Σ_{j=0..k} mean_images(f(x⁰) − f(x^j))``, so the last point is the AOPC of the
    tables (before any rounding); a panel per model × region size, x the fraction of regions perturbed."""
    def draw(ax, method, group):
        running = running_aopc_curve(group)
        ax.plot(np.arange(running.size) / max(running.size - 1, 1), running, **method_style(method))

    return _curve_panels(scores, draw, "AOPC so far")


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


SETTING_MARKERS = ("o", "s", "^", "D", "v", "P", "*")


def accuracy_vs_metric(summary: pd.DataFrame, classification: pd.DataFrame, metric: str = "aopc") -> plt.Figure:
    """Balanced accuracy of each model (y) against a metric's mean (x): colour = method, marker =
    setting (AOPC region size, Max-Sensitivity radius; the legend says which), one point per
    method, setting and model, each model's points labelled once."""
    part = summary[summary["metric"] == metric].merge(classification, on=["dataset", "model"])
    entry = REGISTRY[metric]
    if part.empty:
        return _empty(f"no {entry.short} scores")
    figure, ax = plt.subplots(figsize=(6, 4.5))
    values = sorted(part["parameter_value"].dropna().unique(), reverse=entry.descending)
    marker_of = {value: SETTING_MARKERS[i % len(SETTING_MARKERS)] for i, value in enumerate(values)}
    for method, group in part.groupby("method"):
        style = method_style(method)
        for value, points in group.groupby("parameter_value"):
            ax.scatter(points["mean"], points["balanced_accuracy"], color=style["color"], alpha=0.8, marker=marker_of[value],
                       label=style["label"], facecolors="none" if explainers.get(method).is_control else style["color"])
    for row in part.drop_duplicates(["dataset", "model"]).itertuples():
        ax.annotate(f"{row.dataset}/{row.model}", (row.mean, row.balanced_accuracy), fontsize=7, alpha=0.7)
    if not entry.higher_is_better:  # an unstable method's mean would squeeze the others into one point
        shown = part["mean"].to_numpy()
        shown = shown[np.isfinite(shown) & (shown > 0)]
        if len(shown) and shown.max() / shown.min() > 100:
            ax.set_xscale("symlog", linthresh=float(shown.min()))
    ax.set_xlabel(f"mean {entry.heading}")
    ax.set_ylabel("balanced accuracy (test)")
    setting_handles = [plt.Line2D([], [], marker=marker_of[v], linestyle="", color="grey", label=entry.column_setting.format(value=v)) for v in values]
    ax.legend(handles=setting_handles, title=entry.parameter or "setting", fontsize=7, title_fontsize=7, loc="best")
    _legend(figure, np.array([ax]))
    return figure


def localisation(summary: pd.DataFrame) -> plt.Figure:
    """The localisation metrics at a glance: a panel per dataset / model, a group of bars per metric
    (at its first setting: the pointing game without tolerance, top-1 error, the lowest threshold),
    a bar per method with its 95 % interval; the axis of each metric reads "higher is better"
    (localisation error is shown as 1 − error, localisation accuracy)."""
    names = [m for m in REGISTRY if REGISTRY[m].family == "localisation"]
    part = summary[summary["metric"].isin(names)]
    if part.empty:
        return _empty("no localisation scores (no dataset with ground truth, or the metrics are disabled)")
    keys = sorted(part.groupby(["dataset", "model"]).groups)
    figure, axes = _panels(len(keys), min(3, len(keys)), size=4.2)
    order = {name: i for i, name in enumerate(explainers.names())}
    for ax, (dataset, model) in zip(axes.flat, keys):
        cell = part[(part["dataset"] == dataset) & (part["model"] == model)]
        shown = [m for m in names if (cell["metric"] == m).any()]
        methods = sorted(cell["method"].unique(), key=lambda m: (explainers.get(m).is_control, order.get(m, len(order))))
        width = 0.8 / max(len(methods), 1)
        for j, method in enumerate(methods):
            style = method_style(method)
            heights, errors = [], [[], []]
            for metric in shown:
                rows = cell[(cell["metric"] == metric) & (cell["method"] == method)]
                first = rows.sort_values("parameter_value").iloc[:1]
                mean, low, high = (first[c].iloc[0] if len(first) else np.nan for c in ("mean", "ci_low", "ci_high"))
                if not REGISTRY[metric].higher_is_better:
                    mean, low, high = 1 - mean, 1 - high, 1 - low
                heights.append(mean)
                errors[0].append(max(mean - low, 0) if np.isfinite(low) else 0)
                errors[1].append(max(high - mean, 0) if np.isfinite(high) else 0)
            x = np.arange(len(shown)) + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, heights, width, yerr=errors, color=style["color"], label=style["label"], error_kw={"elinewidth": 0.6},
                   hatch="//" if explainers.get(method).is_control else None, alpha=0.9)
        ax.set_xticks(np.arange(len(shown)))
        ax.set_xticklabels([("1 − " if not REGISTRY[m].higher_is_better else "") + REGISTRY[m].short for m in shown], fontsize=7, rotation=15)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean (higher is better)")
        ax.set_title(f"{dataset} / {model}", fontsize=9)
    _legend(figure, axes)
    return figure


def accuracy_vs_aopc(summary: pd.DataFrame, classification: pd.DataFrame) -> plt.Figure:
    """Balanced accuracy against mean AOPC (:func:`accuracy_vs_metric`)."""
    return accuracy_vs_metric(summary, classification, "aopc")


# The per-image score each overlay panel shows: each metric's with a ``panel`` label in the registry,
# at its smallest setting (AOPC's finest grid, Max-Sensitivity's smallest radius, the pointing game
# without tolerance: the settings that separate methods best on the default run).
PANEL_SCORES = {name: metric.panel for name, metric in REGISTRY.items() if metric.panel}


def panel_scores(scores: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(method, image_id) → "AOPC 8 px: 0.412\\nMS r=0.05: 0.103"``: each image's own value of every
    metric of :data:`PANEL_SCORES` found in ``scores`` (long score rows, one model), for the overlays."""
    notes: dict[tuple[str, str], list[str]] = {}
    for metric, short in PANEL_SCORES.items():
        rows = scores[(scores["metric"] == metric) & (scores["quantity"] == REGISTRY[metric].quantity) & scores["image_id"].notna()]
        if rows.empty:
            continue
        setting = min(rows["parameter_value"].dropna()) if rows["parameter_value"].notna().any() else None
        chosen = rows if setting is None else rows[rows["parameter_value"] == setting]
        label = (short.split(" ")[0] if setting is None else short.format(value=setting)) + ":"
        for method, image_id, value in zip(chosen["method"], chosen["image_id"], chosen["value"]):
            notes.setdefault((method, str(image_id)), []).append(f"{label} {value:.3f}" if np.isfinite(value) else f"{label} n/a")
    return {key: "\n".join(parts) for key, parts in notes.items()}


def _load_picture(raw_dir: str | Path, row: pd.Series, image_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    with Image.open(Path(raw_dir) / str(row["path"])) as image:
        picture = np.asarray(image.convert("RGB").resize((image_size, image_size)))
    mask = None
    if pd.notna(row["mask_path"]):
        with Image.open(Path(raw_dir) / str(row["mask_path"])) as image:
            mask = np.asarray(image.convert("L").resize((image_size, image_size), Image.NEAREST)) > 127
    return picture, mask


def _overlay_grid(loaded: dict, positions: list[int], index: pd.DataFrame, raw_dir: str | Path, image_size: int,
                  notes: dict[tuple[str, str], str], row_notes: list[str] | None = None) -> plt.Figure:
    """A row per position of the map files (the same images in every file), the input then a column
    per method: the map (ReLU, min-max, bilinear to the input) over the image, the ground truth
    outlined, the image's scores (``notes``) under each map, a colour bar."""
    first = next(iter(loaded.values()))
    rows = index.set_index("image_id")
    classes = json.loads(first.attrs["classes"])
    side = 2.2 if len(loaded) <= 6 else 1.6
    figure, axes = plt.subplots(len(positions), len(loaded) + 1, figsize=(side * (len(loaded) + 1), (side + 0.25) * len(positions)), squeeze=False)
    post = postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear")
    shown = None
    for r, position in enumerate(positions):
        image_id = first.image_ids[position]
        picture, mask = _load_picture(raw_dir, rows.loc[image_id], image_size)
        label = classes[int(first.labels[position])] if classes else int(first.labels[position])
        predicted = classes[int(first.predictions[position])] if classes else int(first.predictions[position])
        for c, (name, mapset) in enumerate([("input", None), *loaded.items()]):
            ax = axes[r, c]
            ax.imshow(picture)
            if mapset is not None:
                heat = postprocess.apply(torch.from_numpy(mapset.maps[position : position + 1]), post, (image_size, image_size))[0]
                shown = ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                ax.set_xlabel(notes.get((name, str(image_id)), ""), fontsize=6)
            if mask is not None:
                ax.contour(mask, levels=[0.5], colors="white", linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name if mapset is None else explainers.get(name).title, fontsize=8)
            if c == 0:
                extra = f"\n{row_notes[r]}" if row_notes else ""
                ax.set_ylabel(f"true {label}\npredicted {predicted}{extra}", fontsize=7)
    figure.tight_layout()
    if shown is not None:
        bar = figure.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label("attribution (ReLU, min-max)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return figure


def _load_in_registry_order(maps_paths: dict[str, str | Path]) -> dict:
    order = {name: i for i, name in enumerate(explainers.names())}
    return {method: read_maps(path) for method, path in sorted(maps_paths.items(), key=lambda item: order[item[0]])}


def overlays(maps_paths: dict[str, str | Path], index: pd.DataFrame, raw_dir: str | Path, examples: int, image_size: int,
             scores: pd.DataFrame | None = None) -> plt.Figure:
    """A grid: a row per example test image (evenly spaced through the test split), the input then
    one column per method, each map over the image with the ground-truth mask outlined and, from
    ``scores`` (the model's long score rows), the image's own scores under it (:func:`panel_scores`)."""
    loaded = _load_in_registry_order(maps_paths)
    first = next(iter(loaded.values()))
    count = min(examples, len(first.image_ids))
    picks = [int(p) for p in np.linspace(0, len(first.image_ids) - 1, count).round().astype(int)] if count else []
    if not picks:
        return _empty("no test images")
    notes = panel_scores(scores) if scores is not None and not scores.empty else {}
    return _overlay_grid(loaded, picks, index, raw_dir, image_size, notes)


def largest_differences(scores: pd.DataFrame, pair: list[str], count: int) -> tuple[float, pd.Series]:
    """The finest region size of the per-image ``aopc`` rows in ``scores`` and, on it, the ``count``
    images with the largest ``|AOPC_a − AOPC_b|`` for ``pair = [a, b]`` (image id → a − b, largest
    first, ties in image order); images undefined for either method are left out."""
    rows = scores[scores["quantity"] == "aopc"]
    finest = float(rows["parameter_value"].min())
    wide = rows[rows["parameter_value"] == finest].pivot_table(index="image_id", columns="method", values="value", aggfunc="first")
    wide = wide.reindex(columns=pair).replace([np.inf, -np.inf], np.nan).dropna()
    difference = wide[pair[0]] - wide[pair[1]]
    return finest, difference.sort_values(key=np.abs, ascending=False, kind="stable").head(count)


def disagreement(maps_paths: dict[str, str | Path], scores: pd.DataFrame, index: pd.DataFrame, raw_dir: str | Path, examples: int,
                 image_size: int, pair: list[str] | None) -> plt.Figure:
    """The test images on which the two methods of ``pair`` disagree most: the largest
    ``|AOPC_a − AOPC_b|`` per image on the finest grid (the paired difference the tests are built
    on), largest first, each row labelled with the difference; the pair's maps side by side."""
    if not pair or len(pair) != 2 or not set(pair) <= set(maps_paths):
        return _empty(f"aggregate.compare {pair} is not a pair of this model's methods")
    rows = scores[(scores["quantity"] == "aopc") & scores["method"].isin(pair) & scores["image_id"].notna()] if not scores.empty else scores
    if rows.empty:
        return _empty("no per-image AOPC to compare")
    finest, difference = largest_differences(rows, pair, examples)
    if difference.empty:
        return _empty(f"no image with a defined AOPC for both {pair[0]} and {pair[1]}")
    loaded = {method: read_maps(maps_paths[method]) for method in pair}  # the pair's order, as the difference
    position = {str(image_id): p for p, image_id in enumerate(next(iter(loaded.values())).image_ids)}
    positions = [position[str(image_id)] for image_id in difference.index]
    a, b = (explainers.get(m).title for m in pair)
    row_notes = [f"AOPC {finest:g} px: {a} − {b}\n= {value:+.3f}" for value in difference]
    figure = _overlay_grid(loaded, positions, index, raw_dir, image_size, panel_scores(rows), row_notes)
    figure.suptitle(f"largest per-image AOPC differences, {a} − {b}", fontsize=9, y=1.01)
    return figure


def _cd_title(identity: dict) -> str:
    """'dataset / model · metric parameter=value' from a cell of :func:`camfaith.ranking.friedman_table`."""
    head = " / ".join(str(identity[c]) for c in ("dataset", "model") if c in identity)
    tail = str(identity.get("metric", ""))
    parameter, value = identity.get("parameter"), identity.get("parameter_value")
    if parameter is not None and pd.notna(parameter) and parameter != "none" and value is not None and pd.notna(value):
        tail += f" {parameter}={value:g}"
    others = [str(v) for c, v in identity.items() if c not in ("dataset", "model", "metric", "parameter", "parameter_value")]
    return " · ".join(part for part in (head, tail.strip(), *others) if part)


def critical_difference(table: pd.DataFrame, labels: dict | None = None, alpha: float | None = None) -> plt.Figure:
    """Critical-difference diagrams (Demšar 2006), a panel per cell of :func:`camfaith.ranking.friedman_table`.

    Each panel has a rank axis from 1 to k with the best method at the left. Each method is a dot at
    its mean rank, joined by a line to its name (the registry title, or ``labels[method]`` when
    given) and its mean rank. The better half of the methods is named at the left, the other half at
    the right. Above the axis, a segment one Nemenyi critical difference long is labelled "CD". Thick
    bars join each clique (:func:`camfaith.ranking.cliques`), a group of methods whose mean ranks are
    closer than the CD. The title gives the cell, the Friedman p-value and the number of images.
    The bars are drawn grey, and the title says they are not to be read, when the Friedman test is
    not significant at ``alpha`` (default :data:`camfaith.ranking.ALPHA`).
    """
    from camfaith import ranking

    alpha = ranking.ALPHA if alpha is None else alpha
    if table.empty:
        return _empty("no Friedman tests")
    labels = labels or {}
    cell = [c for c in table.columns if c not in ranking.COLUMNS]
    panels = [(dict(zip(cell, key if isinstance(key, tuple) else (key,))), part.sort_values(["mean_rank", "method"]))
              for key, part in table.groupby(cell, dropna=False, sort=False)] if cell else [({}, table.sort_values(["mean_rank", "method"]))]
    columns = min(2, len(panels))
    row_step, bar_step = 0.22, 0.12  # inches between label rows and between clique bars
    layouts = []
    for _, part in panels:
        ranks = part["mean_rank"].to_numpy(dtype=np.float64)
        cd = float(part["critical_difference"].iloc[0])
        groups = ranking.cliques(ranks, cd)
        layouts.append((ranks, cd, groups))
    depth = max(0.3 + bar_step * len(groups) + row_step * -(-len(ranks) // 2) for ranks, _, groups in layouts)
    width, height = 6.5, 1.1 + depth  # inches per panel: title, CD segment and axis, then bars and labels
    figure, axes = _panels(len(panels), columns)
    figure.set_size_inches(width * columns, height * axes.shape[0])
    for ax, (identity, part), (ranks, cd, groups) in zip(axes.flat, panels, layouts):
        p_value, n = float(part["friedman_p"].iloc[0]), int(part["n_images"].iloc[0])
        significant = bool(p_value < alpha)
        if np.isnan(p_value):
            verdict = "Friedman test undefined (fewer than 3 methods, fewer than 2 images or all tied)"
        else:
            verdict = f"Friedman p = {p_value:.2g}" + ("" if significant else f" (not significant at α = {alpha:g}: bars not to be read)")
        ax.set_title(f"{_cd_title(identity)}\n{verdict}, n = {n} images", fontsize=8)
        ax.axis("off")
        k = len(ranks)
        if not np.all(np.isfinite(ranks)):
            ax.text(0.5, 0.5, "no image with a finite score for every method", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        names = [labels.get(m) or explainers.get(m).title for m in part["method"]]
        colours = [explainers.get(m).colour if m in explainers.REGISTRY else "black" for m in part["method"]]
        # leave room at each side for the names: margin / (axis span + 2 margins) = label room / panel width
        room = min(2.0, 0.15 + 0.05 * max(len(f"{name} ({r:.2f})") for name, r in zip(names, ranks)))
        span = max(k - 1, 1)
        margin = room * span / (width - 2 * room)
        low, high = 1 - margin, max(k, 1 + (cd if np.isfinite(cd) else 0)) + margin
        ax.set_xlim(low, high)
        ax.set_ylim(-(depth + 0.1), 0.75)  # y in inches below (−) and above (+) the axis
        ax.plot([1, max(k, 1)], [0, 0], color="black", linewidth=1)
        for tick in range(1, k + 1):
            ax.plot([tick, tick], [0, 0.06], color="black", linewidth=1)
            ax.text(tick, 0.1, str(tick), ha="center", va="bottom", fontsize=7)
        for tick in np.arange(1.5, k, 1.0):
            ax.plot([tick, tick], [0, 0.03], color="black", linewidth=0.6)
        if np.isfinite(cd):
            ax.plot([1, 1 + cd], [0.45, 0.45], color="black", linewidth=1)
            for end in (1, 1 + cd):
                ax.plot([end, end], [0.41, 0.49], color="black", linewidth=1)
            ax.text(1 + cd / 2, 0.51, "CD", ha="center", va="bottom", fontsize=7)
        for c, group in enumerate(groups):
            y = -(0.12 + bar_step * c)
            ax.plot([ranks[group[0]] - 0.03, ranks[group[-1]] + 0.03], [y, y], color="black" if significant else "0.7",
                    linewidth=3.5, solid_capstyle="round", zorder=3)
        first_row = -(0.3 + bar_step * len(groups))
        left = -(-k // 2)
        for i, (name, r, colour) in enumerate(zip(names, ranks, colours)):
            # the left half from the best down, the right half from the worst down: no lines cross
            if i < left:
                y, joint, align, gap = first_row - row_step * i, 1 - 0.1 * margin, "right", -0.04 * margin
            else:
                y, joint, align, gap = first_row - row_step * (k - 1 - i), max(k, 1) + 0.1 * margin, "left", 0.04 * margin
            ax.plot([r, r, joint], [0, y, y], color=colour, linewidth=0.9)
            ax.plot([r], [0], marker="o", markersize=3.5, color=colour, zorder=4)
            ax.text(joint + gap, y, f"{name} ({r:.2f})", ha=align, va="center", fontsize=7, color=colour)
    figure.tight_layout()
    return figure
