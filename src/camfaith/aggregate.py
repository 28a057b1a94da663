"""The study's tables from the score files: means with bootstrap intervals, winners, paired tests.

"How sure are we" is answered per cell: a 95 % bootstrap interval of the mean over images, and for
every pair of methods a Wilcoxon signed-rank test on the per-image differences (the same images and,
by construction, the same noise for both methods).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from camfaith.metrics import REGISTRY
from camfaith.metrics.registry import direction
from camfaith.store import read_parquet

# metric → (per-image quantity, True if higher is better), from the metric registry
DIRECTION = direction()
CELL = ["dataset", "model", "metric", "parameter", "parameter_value"]


def read_scores(paths: list[str | Path]) -> pd.DataFrame:
    """All score files concatenated (same schema, see docs/formats.md). ``attrs["left_out"]`` maps
    ``(dataset, model, method, metric)`` to the file's ``images_left_out`` (images the metric did
    not select, e.g. the misclassified ones); ``attrs["token_layers"]`` maps ``(dataset, model)`` to the
    transformer layer its layer methods read, where a score file says so (``token_grid``)."""
    from camfaith.store import read_table_metadata

    if not paths:
        return pd.DataFrame()
    frames, left_out, accuracy, token_layers = [], {}, {}, {}
    for path in paths:
        frame = read_parquet(path)
        frames.append(frame)
        if len(frame):
            meta = read_table_metadata(path)
            identity = tuple(str(frame[column].iloc[0]) for column in ("dataset", "model", "method", "metric"))
            if "methods" in meta:  # a ground-truth metric's file: every method of one model (docs/formats.md §8)
                for method, counts in meta["methods"].items():
                    left_out[(identity[0], identity[1], method, identity[3])] = int(counts["images_left_out"])
                continue
            left_out[identity] = int(meta.get("images_left_out", meta.get("images_total", 0) - meta.get("images_selected", 0)))
            if meta.get("token_grid"):
                token_layers[identity[:2]] = str(meta.get("layer"))
            if identity[3] == "haas":
                accuracy[identity[:3]] = str((meta.get("settings") or {}).get("accuracy", "plain"))
    scores = pd.concat(frames, ignore_index=True)
    scores.attrs["left_out"] = left_out
    scores.attrs["haas_accuracy"] = accuracy
    scores.attrs["token_layers"] = token_layers
    return scores


def classification_table(paths: list[str | Path], identities: list[dict]) -> pd.DataFrame:
    """``dataset, model, balanced_accuracy, mean_auc, accuracy`` from evaluate outputs."""
    rows = []
    for path, identity in zip(paths, identities, strict=True):
        frame = read_parquet(path)
        values = frame[frame["class_true"].isna()].set_index("metric")["value"]
        rows.append({**identity, **{k: float(values[k]) for k in ("balanced_accuracy", "mean_auc", "accuracy")}})
    return pd.DataFrame(rows)


def bootstrap_interval(values: np.ndarray, seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of the finite values. With fewer than 2 of them,
    or all equal, the interval collapses to the mean (NaN when there is no finite value)."""
    values = values[np.isfinite(values)]
    if len(values) < 2 or np.ptp(values) == 0:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, mean
    result = stats.bootstrap((values,), np.mean, n_resamples=resamples, method="percentile", random_state=seed, vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_image(scores: pd.DataFrame) -> pd.DataFrame:
    """The per-image score rows of every metric whose table shows a mean over images (all but HAAS,
    whose value is a dataset-level ratio), each metric's own quantity only."""
    if scores.empty:
        return scores
    wanted = {(m.name, m.quantity) for m in REGISTRY.values() if m.dataset_quantity is None}
    keys = pd.Series(list(zip(scores["metric"], scores["quantity"])), index=scores.index)
    return scores[keys.isin(wanted)]


def summary_table(scores: pd.DataFrame, seed: int = 0, paired_table: pd.DataFrame | None = None,
                  groups: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Per cell (dataset, model, metric, parameter) and method: ``n, n_undefined, mean, ci_low, ci_high, best``
    (``n``: finite per-image values; ``n_undefined``: NaN ones, e.g. of non-finite maps, left out of the mean).

    HAAS is a dataset-level ratio, so its cell has the ratio as ``mean`` and no interval. ``best_mean``
    marks the method with the better mean in its cell (higher AOPC/HAAS, lower Max-Sensitivity);
    ``best`` the same, and with ``paired_table`` (:func:`paired_tests`) only when that method is
    also significantly better (Holm) than every other method of the cell.
    """
    from camfaith import paired

    def groups_of(dataset: str, image_ids) -> np.ndarray | None:
        return np.array([groups.get((dataset, str(i)), f"image:{i}") for i in image_ids]) if groups else None

    rows = []
    for key, group in per_image(scores).groupby(CELL + ["method"], dropna=False, observed=True):
        values = group["value"].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if groups:  # whole patients resampled, as in the paired intervals
            low, high = paired.bootstrap_difference_interval(values[finite], groups_of(key[0], group["image_id"][finite]), seed=seed)
        else:
            low, high = bootstrap_interval(values, seed)
        mean = float(values[finite].mean()) if finite.any() else float("nan")  # undefined values are counted, never averaged
        rows.append(dict(zip(CELL + ["method"], key), n=int(finite.sum()), n_undefined=int((~finite).sum()), mean=mean, ci_low=low, ci_high=high))
    haas = scores[(scores["metric"] == "haas") & (scores["quantity"] == REGISTRY["haas"].dataset_quantity)]
    for _, row in haas.iterrows():
        same_cell = (scores["dataset"] == row["dataset"]) & (scores["model"] == row["model"]) & (scores["method"] == row["method"])
        images = scores[(scores["quantity"] == "correct_ha") & same_cell]
        correct_ha = images["value"].to_numpy(dtype=np.float64)
        finite = np.isfinite(correct_ha)
        # plain-accuracy HAAS = Σ correct HA / Σ correct originals: a ratio interval over (grouped) images
        correct = (images["label"] == images["prediction"]).to_numpy(dtype=np.float64)
        low, high = paired.bootstrap_ratio_interval(correct_ha[finite], correct[finite], groups_of(row["dataset"], images["image_id"][finite]),
                                                    seed=seed) if haas_accuracy(scores, row) == "plain" else (np.nan, np.nan)
        rows.append({**{c: row[c] for c in CELL + ["method"]}, "n": int(finite.sum()), "n_undefined": int((~finite).sum()),
                     "mean": float(row["value"]), "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["parameter_value"] = table["parameter_value"].astype("float64")
    table = table.merge(diagnostics_table(scores), on=["dataset", "model", "method", "metric"], how="left")
    for quantity, column, how in (("tied_regions", "tied_share", "mean"), ("reference_floored", "n_floored", "sum")):
        part = scores[scores["quantity"] == quantity]
        values = part.groupby(CELL + ["method"], dropna=False, observed=True)["value"].agg(how).rename(column).reset_index()
        table = table.merge(values, on=CELL + ["method"], how="left") if len(part) else table.assign(**{column: np.nan})
    higher = table["metric"].map(lambda m: DIRECTION[m][1])
    signed = np.where(higher, table["mean"], -table["mean"])
    table["signed"] = signed
    best = table.groupby(CELL, dropna=False)["signed"].transform("max")
    table["best_mean"] = table["signed"] == best
    table["best"] = table["best_mean"]
    if paired_table is not None:
        significant = np.array([significantly_better_than_all(paired_table, row) for _, row in table.iterrows()], dtype=bool)
        table["best"] = table["best_mean"].to_numpy(dtype=bool) & significant
    return table.drop(columns="signed").sort_values(CELL + ["method"]).reset_index(drop=True)


def haas_accuracy(scores: pd.DataFrame, row: pd.Series) -> str:
    """The accuracy a HAAS score file used (``plain`` or ``balanced``), from ``scores.attrs["haas_accuracy"]``
    (:func:`read_scores`); ``plain`` when unknown."""
    return scores.attrs.get("haas_accuracy", {}).get((str(row["dataset"]), str(row["model"]), str(row["method"])), "plain")


def diagnostics_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model, method and metric: ``n_map_zero, n_map_constant, n_map_nonfinite`` (images
    whose map has that state, :data:`camfaith.metrics.common.MAP_STATES`), ``n_degenerate`` (their
    sum) and ``n_left_out`` (test images the metric's ``images`` setting left out: the misclassified
    ones with ``images: correct``; from the score files' ``images_left_out``, see :func:`read_scores`)."""
    from camfaith.metrics.common import MAP_STATES

    keys = ["dataset", "model", "method", "metric"]
    states = scores[scores["quantity"].isin(MAP_STATES)]
    if states.empty:
        table = scores[keys].drop_duplicates().reset_index(drop=True)
        for state in MAP_STATES:
            table[f"n_{state}"] = 0
    else:
        table = (states.assign(flag=states["value"] > 0).pivot_table(index=keys, columns="quantity", values="flag", aggfunc="sum", fill_value=0)
                 .reindex(columns=list(MAP_STATES), fill_value=0).rename(columns=lambda state: f"n_{state}").reset_index())
        table.columns.name = None
    table["n_degenerate"] = table[[f"n_{state}" for state in MAP_STATES]].sum(axis=1).astype(int)
    left_out = scores.attrs.get("left_out", {})
    table["n_left_out"] = [left_out.get(tuple(row), np.nan) for row in table[keys].itertuples(index=False)]
    return table


def significantly_better_than_all(paired_table: pd.DataFrame, row: pd.Series) -> bool:
    """Whether ``row``'s method is the ``better`` one (Holm-corrected) of every pair of its cell."""
    if paired_table.empty:
        return False
    same = np.ones(len(paired_table), dtype=bool)
    for column in CELL:
        same &= (paired_table[column] == row[column]).to_numpy() | (paired_table[column].isna() & pd.isna(row[column])).to_numpy()
    involved = paired_table[same & ((paired_table["method_a"] == row["method"]) | (paired_table["method_b"] == row["method"])).to_numpy()]
    return bool(len(involved)) and bool((involved["better"] == row["method"]).all())


def image_groups(indexes: dict[str, pd.DataFrame]) -> dict[tuple[str, str], str]:
    """``(dataset, image_id) → group`` from each dataset's index (images without a group are their own)."""
    groups = {}
    for dataset, index in indexes.items():
        for image_id, group in zip(index["image_id"].astype(str), index["group"], strict=True):
            groups[(dataset, image_id)] = str(group) if pd.notna(group) else f"image:{image_id}"
    return groups


def paired_tests(scores: pd.DataFrame, seed: int = 0, groups: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """Every method pair in every cell of AOPC and Max-Sensitivity, paired by image id
    (:mod:`camfaith.paired`, docs/statistics.md).

    Columns: cell, ``method_a, method_b, n_pairs`` (images finite for both), ``mean_difference``
    (a − b; for HAAS the difference of HA-image accuracy) with its bootstrap 95 % interval
    ``ci_low, ci_high`` (resampling whole groups when ``groups``, ``(dataset, image_id) → group``, are
    given), ``p_value`` (Wilcoxon signed-rank with Pratt's zero handling, NaN with fewer than 2 pairs
    or no non-zero difference; HAAS: exact McNemar on the paired correctness of the HA images, or,
    where images share groups, Wilcoxon–Pratt on each group's mean correctness difference),
    ``effect_size`` (matched-pairs rank-biserial), ``p_holm`` (Holm over every test of the same
    metric in this study) and ``better``: the better method's name, or ``no difference`` unless
    ``p_holm`` < 0.05.
    """
    from camfaith import paired

    rows = []
    keys = pd.Series(list(zip(scores["metric"], scores["quantity"])), index=scores.index)
    per_image_rows = scores[keys.isin({(m.name, m.quantity) for m in REGISTRY.values()})]
    per_image_rows = per_image_rows[per_image_rows["image_id"].notna()]
    for key, group in per_image_rows.groupby(CELL, dropna=False, observed=True):
        wide = group.pivot_table(index="image_id", columns="method", values="value", aggfunc="first", dropna=False)
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            pair = wide[[a, b]].replace([np.inf, -np.inf], np.nan).dropna()
            diff = (pair[a] - pair[b]).to_numpy(dtype=np.float64)
            image_groups_of_pair = None
            if groups:  # patients, lesions: resample whole groups, so their images count once, not many times
                image_groups_of_pair = np.array([groups.get((key[0], str(i)), f"image:{i}") for i in pair.index])
            low, high = paired.bootstrap_difference_interval(diff, image_groups_of_pair, seed=seed)
            clustered = paired.has_clusters(image_groups_of_pair)
            # the unit of the test: a group (its images' mean difference) where images share groups, else an image
            units = paired.group_means(diff, image_groups_of_pair) if clustered else diff
            binary = REGISTRY[key[2]].binary and np.isin(pair.to_numpy(), (0.0, 1.0)).all()
            if binary and not clustered:  # paired 0/1 outcomes (HA correct, hits): McNemar, on images
                test, p_value = "mcnemar_exact", paired.mcnemar_exact(pair[a] > 0.5, pair[b] > 0.5)
            elif binary:  # McNemar counts images as independent: on patients, their mean difference
                test, p_value = "wilcoxon_pratt_groups", paired.wilcoxon_pratt(units)
            else:
                test, p_value = ("wilcoxon_pratt_groups" if clustered else "wilcoxon_pratt"), paired.wilcoxon_pratt(units)
            rows.append({**dict(zip(CELL, key)), "method_a": a, "method_b": b, "n_pairs": len(diff), "n_units": len(units),
                         "mean_difference": float(diff.mean()) if len(diff) else float("nan"), "ci_low": low, "ci_high": high,
                         "test": test, "p_value": p_value, "effect_size": paired.rank_biserial(units) if len(units) else float("nan")})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    for _, family in table.groupby("metric").groups.items():
        table.loc[family, "p_holm"] = paired.holm(table.loc[family, "p_value"].to_numpy())
    sides = [paired.verdict(d, p, DIRECTION[metric][1]) for d, p, metric in zip(table["mean_difference"], table["p_holm"], table["metric"])]
    table["better"] = [a if side == "a" else b if side == "b" else side for side, a, b in zip(sides, table["method_a"], table["method_b"])]
    return table


def grid_label(scores: pd.DataFrame) -> dict[tuple[str, str, float], str]:
    """AOPC's region sizes as the study names them: ``(dataset, model, region_px) → "4x4"``."""
    curves = scores[scores["quantity"] == "probability"]
    labels = {}
    for (dataset, model, region), group in curves.groupby(["dataset", "model", "parameter_value"], observed=True):
        regions = int(group["step"].max())
        side = int(round(np.sqrt(regions)))
        labels[(dataset, model, region)] = f"{side}x{side}" if side * side == regions else f"{regions} regions"
    return labels


def markdown_by_model(table: pd.DataFrame, metric: str, parameter_label: str, skipped: list[dict] | None = None,
                      decimals: int = 2, notes: dict[tuple[str, str], str] | None = None) -> str:
    """One metric as Markdown: a section per dataset / model, a row per method (in registry order,
    controls last, each named by its registry title), a column per parameter value (AOPC's region
    size with its grid, Max-Sensitivity's radius; one column for HAAS), the best mean of each column
    in bold. A method the metric left out gets a row that says "not run" and why (``skipped``:
    dicts with ``dataset, model, method, metric, reason``); ``notes`` holds a paragraph under a model's heading."""
    from camfaith import explainers

    part = table[table["metric"] == metric] if not table.empty else table
    left_out = [s for s in (skipped or []) if s["metric"] == metric]
    keys = sorted({(r.dataset, r.model) for r in part.itertuples()} | {(s["dataset"], s["model"]) for s in left_out})
    order = {name: i for i, name in enumerate(explainers.names())}
    sections = []
    for dataset, model in keys:
        cells = part[(part["dataset"] == dataset) & (part["model"] == model)]
        # AOPC: the coarsest grid first, as the study's tables (largest regions first); radii ascending
        values = sorted(cells["parameter_value"].dropna().unique(), reverse=REGISTRY[metric].descending) or [np.nan]
        header = [parameter_label] + [_column_label(cells, v) for v in values] + ["images"]
        note = (notes or {}).get((dataset, model))
        lines = [f"## {dataset} / {model}", "", *([note, ""] if note else []), "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        reasons = {s["method"]: s["reason"] for s in left_out if (s["dataset"], s["model"]) == (dataset, model)}
        methods = sorted(set(cells["method"]) | set(reasons), key=lambda m: (explainers.get(m).is_control, order.get(m, len(order))))
        for method in methods:
            row = [explainers.get(method).title]
            if method in reasons:
                row += [f"not run: {reasons[method]}"] + [""] * (len(values) - 1)
            for value in values if method not in reasons else []:
                match = cells[(cells["method"] == method) & ((cells["parameter_value"] == value) | (pd.isna(value) & cells["parameter_value"].isna()))]
                row.append(_cell(match.iloc[0], decimals) if len(match) else "")
            row.append("" if method in reasons else _images_cell(cells[cells["method"] == method], metric))
            lines.append("| " + " | ".join(row) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections) if sections else "not run\n"


PER_CLASS_LIMIT = 30  # classes a per-class table shows (columns); beyond, the score files hold the values


def per_class_markdown(scores: pd.DataFrame, metric: str, classes: dict[str, list[str]], decimals: int = 2) -> str:
    """A localisation metric per true class: a section per dataset / model, a row per method and
    setting (methods in registry order, controls last), a column per class (``name (n)``, n the
    images of that class with a finite value) and one for all images. Cells are the mean of the
    metric's per-image quantity over that class's images (the pointing game's accuracy per class);
    "" where a class has no scored image. ``classes``: dataset → class names by label index (the
    index's metadata); a label without a name is shown by its index. A model scored on more than
    ``PER_CLASS_LIMIT`` classes (ImageNet's 1,000) gets a sentence pointing to the score files
    instead of a table no one can read. Empty string when ``scores`` holds no row of ``metric``."""
    from camfaith import explainers

    entry = REGISTRY[metric]
    rows = scores[(scores["metric"] == metric) & (scores["quantity"] == entry.quantity)] if not scores.empty else scores
    if rows.empty:
        return ""
    order = {name: i for i, name in enumerate(explainers.names())}
    sections = []
    for (dataset, model), cell in rows.groupby(["dataset", "model"], observed=True, sort=True):
        names = classes.get(str(dataset), [])
        labels = sorted(int(label) for label in cell["label"].dropna().unique())
        if len(labels) > PER_CLASS_LIMIT:
            sections.append(f"### {dataset} / {model}\n\n{len(labels)} classes, more than a table can show ({PER_CLASS_LIMIT}): "
                            f"the per-image values and their `label` are in results/score/<protocol>/{dataset}/{model}/{metric}.parquet.\n")
            continue
        finite = cell[np.isfinite(cell["value"].to_numpy(dtype=float))]
        counts = finite.drop_duplicates(["image_id"])["label"].value_counts()
        named = [f"{names[label] if label < len(names) else label} ({int(counts.get(label, 0))})" for label in labels]
        header = ["method", entry.column if entry.parameter else "setting", *named, f"all ({finite['image_id'].nunique()})"]
        lines = [f"### {dataset} / {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        methods = sorted(cell["method"].unique(), key=lambda m: (explainers.get(m).is_control, order.get(m, len(order))))
        settings = sorted(cell["parameter_value"].dropna().unique(), reverse=entry.descending) or [np.nan]
        for method in methods:
            for value in settings:
                chosen = finite[(finite["method"] == method) & ((finite["parameter_value"] == value) | (pd.isna(value) & finite["parameter_value"].isna()))]
                means = chosen.groupby("label")["value"].mean()
                row = [explainers.get(method).title, entry.label(None if pd.isna(value) else float(value)) if entry.parameter else entry.short]
                row += [f"{means[label]:.{decimals}f}" if label in means.index else "" for label in labels]
                row.append(f"{chosen['value'].mean():.{decimals}f}" if len(chosen) else "")
                lines.append("| " + " | ".join(row) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _images_cell(rows: pd.DataFrame, metric: str) -> str:
    """What a method's row rests on: ``22 scored; 2 left out; 1 undefined; 3 degenerate; tied 44 %/33 %``
    (undefined: the most of any setting; tied: AOPC's share of tied regions per setting, as the columns)."""
    if rows.empty:
        return ""
    first = rows.iloc[0]
    parts = [f"{int(first['n'])} scored"]
    for column, word in (("n_left_out", "left out"), ("n_undefined", "undefined"), ("n_degenerate", "degenerate")):
        count = rows[column].max() if column in rows else np.nan
        if pd.notna(count) and count > 0:
            parts.append(f"{int(count)} {word}")
    if metric == "aopc" and "tied_share" in rows and rows["tied_share"].notna().any():
        ordered = rows.sort_values("parameter_value", ascending=False)["tied_share"]
        parts.append("tied " + "/".join(f"{100 * v:.0f} %" for v in ordered if pd.notna(v)))
    return "; ".join(parts)


def _column_label(cells: pd.DataFrame, value: float) -> str:
    if pd.isna(value):
        return "value"
    label = f"{value:g}"
    grids = sorted({g for g in cells.loc[cells["parameter_value"] == value].get("grid", pd.Series(dtype=str)).dropna() if g})
    return label + (f" px ({', '.join(grids)})" if grids else "")


def _cell(row, decimals: int) -> str:
    text = f"{row['mean']:.{decimals}f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.{decimals}f}, {row['ci_high']:.{decimals}f}]"
    return f"**{text}**" if row["best"] else text


def markdown_table(frame: pd.DataFrame, decimals: int = 3) -> str:
    """A plain Markdown rendering of ``frame`` (floats to ``decimals``)."""
    header = list(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.{decimals}f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def study_table(summary: pd.DataFrame, metric: str, decimals: int = 3) -> pd.DataFrame:
    """One metric laid out like the study's tables: a row per dataset / model, a column per
    (setting, method) — region size (coarsest first) or radius, then methods in registry order with
    the controls last — holding the mean; ``best`` cells (significantly better than every other
    method of the cell) are marked by a trailing ``*`` in this text table. Empty without rows."""
    from camfaith import explainers

    part = summary[summary["metric"] == metric]
    if part.empty:
        return pd.DataFrame()
    order = {name: i for i, name in enumerate(explainers.names())}
    methods = sorted(part["method"].unique(), key=lambda m: (explainers.get(m).is_control, order.get(m, len(order))))
    values = sorted(part["parameter_value"].dropna().unique(), reverse=REGISTRY[metric].descending) or [np.nan]
    columns, records = [], {}
    for value in values:
        same = part[(part["parameter_value"] == value) | (pd.isna(value) & part["parameter_value"].isna())]
        grid = next((g for g in same.get("grid", pd.Series(dtype=str)).dropna() if g), "")
        entry = REGISTRY[metric]
        setting = entry.short if pd.isna(value) else (f"{grid} ({value:g} px)" if grid else entry.column_setting.format(value=value))
        for method in methods:
            column = (setting, explainers.get(method).title)
            columns.append(column)
            for row in same[same["method"] == method].itertuples():
                records.setdefault((row.dataset, row.model), {})[column] = f"{row.mean:.{decimals}f}" + ("*" if row.best else "")
    table = pd.DataFrame.from_dict(records, orient="index").reindex(columns=columns).fillna("")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "model"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["setting", "method"])
    return table


def study_markdown(table: pd.DataFrame) -> str:
    """:func:`study_table` as Markdown (one header row: ``setting · method``)."""
    if table.empty:
        return "not run\n"
    header = ["dataset", "model"] + [f"{setting} · {method}" for setting, method in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, model), row in table.iterrows():
        lines.append("| " + " | ".join([dataset, model] + [str(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def study_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """:func:`study_table` as a booktabs LaTeX table (``\\toprule``/``\\midrule``/``\\bottomrule``,
    needs ``\\usepackage{booktabs}``); starred cells in bold."""
    if table.empty:
        return f"% {label}: not run\n"
    bold = table.map(lambda v: f"\\textbf{{{v[:-1]}}}" if isinstance(v, str) and v.endswith("*") else v)
    styled = bold.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styled.to_latex(hrules=True, caption=caption, label=label, multicol_align="c", column_format="ll" + "r" * bold.shape[1],
                               position="htbp", environment="table*")


SEEDS_COLUMNS = ["dataset", "model", "metric", "parameter", "parameter_value", "method_a", "method_b", "seeds", "mean_difference", "sd",
                 "ci_low", "ci_high", "a_better", "b_better", "no_difference"]


def seeds_table(paired: pd.DataFrame, replicates: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """Method differences across training seeds: per dataset, replicated model (``model`` = the
    config entry with ``training.seeds``), cell and method pair, the per-seed mean paired differences
    of ``paired`` (``paired_tests.csv``) summarised over the seeds.

    ``seeds``: replicates with a finite difference; ``mean_difference``: their mean (a − b);
    ``sd``: their standard deviation (ddof 1); ``ci_low, ci_high``: the 95 % t-interval of the mean
    over seeds (each trained model one unit; NaN with fewer than 2); ``a_better, b_better,
    no_difference``: in how many seeds the Holm-corrected test found a better, b better, neither.
    ``replicates``: ``Plan.replicates``, ``{dataset: {member: {"replicate_of", "seed"}}}``."""
    if paired.empty or not replicates:
        return pd.DataFrame(columns=SEEDS_COLUMNS)
    base = [replicates.get(d, {}).get(m, {}).get("replicate_of") for d, m in zip(paired["dataset"], paired["model"])]
    rows = paired.assign(replicate_of=base).dropna(subset=["replicate_of"])
    out = []
    keys = ["dataset", "replicate_of", "metric", "parameter", "parameter_value", "method_a", "method_b"]
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        differences = group["mean_difference"].to_numpy(dtype=np.float64)
        differences = differences[np.isfinite(differences)]
        n = len(differences)
        mean = float(differences.mean()) if n else float("nan")
        sd = float(differences.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
        a, b = key[5], key[6]
        out.append({**dict(zip(["dataset", "model", "metric", "parameter", "parameter_value", "method_a", "method_b"], key)), "seeds": n,
                    "mean_difference": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half,
                    "a_better": int((group["better"] == a).sum()), "b_better": int((group["better"] == b).sum()),
                    "no_difference": int((group["better"] == "no difference").sum())})
    return pd.DataFrame(out, columns=SEEDS_COLUMNS)


def seeds_markdown(table: pd.DataFrame) -> str:
    """``seeds.csv`` as Markdown: a section per replicated model, a row per setting and pair."""
    from camfaith.verdict import title as _title

    lines = ["# Across training seeds", "", "Each replicated model (`training.seeds`) is trained once per seed; per pair of methods: "
             "the mean over seeds of the paired difference a − b with its 95 % t-interval over seeds, its SD, and in how many seeds "
             "the Holm-corrected test found a better, b better, or no difference (docs/statistics.md).", ""]
    if table.empty:
        return "\n".join(lines + ["No model has `training.seeds`: every difference in the other tables is across images of one trained model.", ""])
    for (dataset, model), rows in table.groupby(["dataset", "model"], sort=False):
        lines += [f"## {dataset} / {model} ({int(rows['seeds'].max())} seeds)", "",
                  "| metric | setting | a − b | mean [95 % t-interval] | SD | a better / b better / no difference |", "|---|---|---|---|---|---|"]
        for row in rows.itertuples():
            setting = "" if pd.isna(row.parameter_value) else f"{row.parameter_value:g}"
            lines.append(f"| {row.metric} | {setting} | {_title(row.method_a)} − {_title(row.method_b)} | {row.mean_difference:+.3f} "
                         f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}] | {row.sd:.3f} | {row.a_better} / {row.b_better} / {row.no_difference} |")
        lines.append("")
    return "\n".join(lines)
