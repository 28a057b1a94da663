"""The result in words: per dataset and model one sentence per metric setting, then a recommendation.

Everything here reads the tables (``summary.csv``, ``paired_tests.csv``, the Friedman table) and
writes sentences; no statistic is computed that the tables do not hold, so every number in the
verdict can be found in a table. The rules (docs/statistics.md "The verdict"):

- a method is "more faithful" than another only where the Holm-corrected paired test says so;
- a method is in a cell's **top group** when no other method is significantly better than it;
- a metric setting is **flagged** where a control (a map that ignores the model) is in the top group
  or significantly beats a real method: that setting does not measure faithfulness there;
- degenerate maps, tie-decided regions, floored Max-Sensitivity denominators, undefined values and
  images left out are listed as caveats beside the numbers they affect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from camfaith.aggregate import CELL, DIRECTION
from camfaith.metrics import REGISTRY

# a method whose regions are tie-decided more often than this gets a caveat under AOPC
TIED_SHARE_CAVEAT = 0.25


def title(method: str) -> str:
    from camfaith import explainers

    return explainers.get(method).title if method in explainers.names() else method


def is_control(method: str) -> bool:
    from camfaith import explainers

    return method in explainers.names() and explainers.get(method).is_control


def setting_label(metric: str, parameter_value: float, grid: str = "") -> str:
    """``AOPC on 8x8 regions (8 px)``, ``Max-Sensitivity at r = 0.05``, ``HAAS`` (the registry's ``label``)."""
    return REGISTRY[metric].label(parameter_value, grid)


def number(value: float, decimals: int = 3) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.{decimals}g}" if 0 < abs(value) < 10 ** -decimals else f"{value:.{decimals}f}"


def signed(value: float, decimals: int = 3) -> str:
    """``+0.012``; a value that rounds to zero prints as ``+0.000``, never ``-0.000``."""
    rounded = round(float(value), decimals) + 0.0
    return f"{rounded:+.{decimals}f}"


def p_text(value: float) -> str:
    if not np.isfinite(value):
        return "no test possible"
    return "p_Holm < 0.001" if value < 0.001 else f"p_Holm = {value:.3f}"


@dataclass
class Cell:
    """One dataset × model × metric setting, as the verdict reads it."""

    dataset: str
    model: str
    metric: str
    parameter_value: float
    label: str
    summary: pd.DataFrame
    paired: pd.DataFrame
    top_group: list[str] = field(default_factory=list)
    flagged_controls: list[str] = field(default_factory=list)


def _same_cell(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in zip(CELL, key, strict=True):
        mask &= (frame[column] == value).to_numpy() | (frame[column].isna().to_numpy() & pd.isna(value))
    return frame[mask]


def cells(summary: pd.DataFrame, paired: pd.DataFrame) -> list[Cell]:
    """Every cell of ``summary`` with its rows, its paired tests, its top group and flagged controls."""
    out = []
    for key, rows in summary.groupby(CELL, dropna=False, sort=True):
        dataset, model, metric, _, value = key
        grid = str(rows["grid"].dropna().iloc[0]) if "grid" in rows and rows["grid"].notna().any() else ""
        tests = _same_cell(paired, key) if not paired.empty else paired
        cell = Cell(dataset, model, metric, value, setting_label(metric, value, grid), rows, tests)
        methods = list(rows["method"])
        beaten = set()
        for test in tests.itertuples():
            if test.better not in ("no difference",):
                beaten.add(test.method_b if test.better == test.method_a else test.method_a)
        cell.top_group = [m for m in methods if m not in beaten]
        real = [m for m in methods if not is_control(m)]
        for control in (m for m in methods if is_control(m)):
            beats_real = any(t.better == control and ({t.method_a, t.method_b} - {control}) <= set(real) for t in tests.itertuples())
            if (control in cell.top_group and len(real) > 0) or beats_real:
                cell.flagged_controls.append(control)
        out.append(cell)
    return out


def pair_sentence(cell: Cell, first: str, second: str) -> str | None:
    """``HiResCAM is more faithful than Grad-CAM by AOPC on 8x8 regions: +0.012 [0.006, 0.018], p_Holm = 0.002``
    or ``AOPC on 8x8 regions cannot tell them apart (...)``; None when a method is missing."""
    a, b = sorted([first, second])
    test = cell.paired[(cell.paired["method_a"] == a) & (cell.paired["method_b"] == b)] if not cell.paired.empty else cell.paired
    if test.empty:
        return None
    row = test.iloc[0]
    sign = 1.0 if a == first else -1.0  # report first − second
    low, high = sorted([sign * row["ci_low"], sign * row["ci_high"]])
    numbers = f"{signed(sign * row['mean_difference'])} [{signed(low)}, {signed(high)}], {p_text(row['p_holm'])}"
    word = REGISTRY[cell.metric].better_word
    if row["better"] == first:
        return f"{title(first)} is {word} than {title(second)} by {cell.label}: {numbers}"
    if row["better"] == second:
        return f"{title(second)} is {word} than {title(first)} by {cell.label}: {title(first)} − {title(second)} = {numbers}"
    return f"{capitalised(cell.label)} cannot tell them apart ({title(first)} − {title(second)} = {numbers})"


def top_group_sentence(cell: Cell) -> str:
    rows = cell.summary.set_index("method")
    higher = DIRECTION[cell.metric][1]
    best = rows["mean"].idxmax() if higher else rows["mean"].idxmin()
    group = sorted(cell.top_group, key=lambda m: -rows.loc[m, "mean"] if higher else rows.loc[m, "mean"])
    names = ", ".join(title(m) for m in group)
    if len(group) == 1:
        text = f"{title(group[0])} is better than every other method ({number(rows.loc[group[0], 'mean'])})"
    elif len(group) == len(rows):
        text = f"no method is significantly better than another (best mean: {title(best)}, {number(rows.loc[best, 'mean'])})"
    else:
        text = f"top group (no method significantly better): {names}; best mean {title(best)} ({number(rows.loc[best, 'mean'])})"
    return f"{capitalised(cell.label)}: {text}"


def capitalised(label: str) -> str:
    """A setting's label at the start of a sentence (``pointing game within 4 px`` → ``Pointing game …``);
    the rest is kept (``Max-Sensitivity``, ``× max``)."""
    return label[:1].upper() + label[1:]


def flagged_note(flagged: list[Cell]) -> str | None:
    """One caveat for every setting of a model whose controls were not ranked last."""
    if not flagged:
        return None
    labels = [c.label for c in flagged]
    controls = list(dict.fromkeys(title(m) for c in flagged for m in c.flagged_controls))
    setting = f"{capitalised(labels[0])} does" if len(labels) == 1 else f"{capitalised(', '.join(labels[:-1]))} and {labels[-1]} do"
    where = "this setting does" if len(labels) == 1 else "these settings do"
    return (f"{setting} not rank the control(s) {', '.join(controls)} last (a map that ignores the model is in the top group "
            f"or beats a real method): {where} not measure faithfulness here")


def caveats(cell: Cell, controls: bool = True) -> list[str]:
    """The things a reader must know beside this cell's numbers (``controls``: with the flagged-control
    note, which :func:`build` instead writes once per model for all its flagged settings)."""
    notes = []
    if controls and cell.flagged_controls:
        notes.append(flagged_note([cell]))
    metric_name = REGISTRY[cell.metric].short
    tied, floored, undefined = [], [], []
    for row in cell.summary.itertuples():
        scored = int(row.n) + int(row.n_undefined)
        degenerate = {"all zero after ReLU": getattr(row, "n_map_zero", 0), "constant": getattr(row, "n_map_constant", 0),
                      "non-finite": getattr(row, "n_map_nonfinite", 0)}
        found = [f"{int(count)} {what}" for what, count in degenerate.items() if pd.notna(count) and count > 0]
        if found:  # the same for every setting of a metric: the caller drops repeats
            notes.append(f"{title(row.method)}: of the {scored} maps {metric_name} scored, {', '.join(found)}")
        share = getattr(row, "tied_share", np.nan)
        if cell.metric == "aopc" and pd.notna(share) and share > TIED_SHARE_CAVEAT:
            tied.append(f"{title(row.method)} {100 * share:.0f} %")
        count = getattr(row, "n_floored", np.nan)
        if cell.metric == "max_sensitivity" and pd.notna(count) and count > 0:
            floored.append(f"{title(row.method)} {int(count)} of {int(row.n)}")
        if row.n_undefined > 0:
            undefined.append(f"{title(row.method)} {int(row.n_undefined)}")
    # one line per kind and setting, naming the methods (a line per method and setting buried the rest)
    if tied:
        notes.append(f"{cell.label}: regions tied (ordered by the seeded tie-break, not by the map): {', '.join(tied)}")
    if floored:
        notes.append(f"{cell.label}: denominators floored (near-zero reference map): {', '.join(floored)}")
    if undefined:
        notes.append(f"{cell.label}: undefined values left out: {', '.join(undefined)}")
    return notes


@dataclass
class Verdict:
    sections: list[tuple[str, list[str], list[str]]]  # heading, sentences, caveats
    recommendation: list[str]

    def markdown(self, heading: str = "Verdict") -> str:
        lines = [f"# {heading}", "", "Which attribution map is more faithful, by how much, and how sure we are "
                 "(docs/statistics.md: every rule behind these sentences). Intervals: 95 % bootstrap of the paired "
                 "difference, resampling patients/groups; p-values Holm-corrected within each metric.", ""]
        for heading, sentences, notes in self.sections:
            lines += [f"## {heading}", ""] + [f"- {s}." for s in sentences]
            if notes:
                lines += ["", "Caveats:", ""] + [f"- {n}." for n in notes]
            lines.append("")
        lines += ["## Recommendation", ""] + [f"- {s}." for s in self.recommendation] + [""]
        return "\n".join(lines)

    def rst(self, heading: str = "Verdict") -> str:
        def underline(text: str, char: str) -> str:
            return f"{text}\n{char * len(text)}\n"

        def escape(text: str) -> str:
            return text.replace("*", r"\*").replace("_", r"\_").replace("`", r"\`")

        parts = [underline(heading, "="), "", "Which attribution map is more faithful, by how much, and how sure we are. Intervals: "
                 "95 % bootstrap of the paired difference, resampling patients/groups; p-values Holm-corrected within each metric.", ""]
        for heading, sentences, notes in self.sections:
            parts += [underline(escape(heading), "-")] + [f"- {escape(s)}." for s in sentences] + [""]
            if notes:
                parts += ["Caveats:", ""] + [f"- {escape(n)}." for n in notes] + [""]
        parts += [underline("Recommendation", "-")] + [f"- {escape(s)}." for s in self.recommendation] + [""]
        return "\n".join(parts)


def win_counts(paired: pd.DataFrame) -> pd.DataFrame:
    """Per metric setting and ordered method pair (a, b) across dataset × model cells: ``cells``,
    ``a_higher`` (cells where a's mean is better by the metric's direction), ``a_significant``
    (where a is ``better`` by the Holm-corrected test) and the same for b — the study's "HiResCAM
    prevails in 7/8 models (significant in k/8)"."""
    if paired.empty:
        return pd.DataFrame(columns=["metric", "parameter_value", "method_a", "method_b", "cells", "a_higher", "a_significant",
                                     "b_higher", "b_significant"])
    rows = []
    for (metric, value, a, b), tests in paired.groupby(["metric", "parameter_value", "method_a", "method_b"], dropna=False):
        higher = DIRECTION[metric][1]
        difference = tests["mean_difference"].to_numpy(dtype=np.float64)
        a_wins = difference > 0 if higher else difference < 0
        b_wins = difference < 0 if higher else difference > 0
        rows.append({"metric": metric, "parameter_value": value, "method_a": a, "method_b": b, "cells": len(tests),
                     "a_higher": int(a_wins.sum()), "a_significant": int((tests["better"] == a).sum()),
                     "b_higher": int(b_wins.sum()), "b_significant": int((tests["better"] == b).sum())})
    return pd.DataFrame(rows)


def seed_sentences(seeds: pd.DataFrame, compare: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """A section per replicated model (``seeds.csv``, :func:`camfaith.aggregate.seeds_table`): the
    compared pair's difference across training seeds, per metric setting, first method first."""
    if seeds is None or seeds.empty or len(compare) != 2:
        return []
    a, b = sorted(compare)
    sign = 1.0 if compare[0] == a else -1.0
    sections = []
    for (dataset, model), rows in seeds.groupby(["dataset", "model"], sort=True):
        rows = rows[(rows["method_a"] == a) & (rows["method_b"] == b)]
        if rows.empty:
            continue
        sentences = []
        for row in rows.itertuples():
            first_wins, second_wins = (row.a_better, row.b_better) if sign > 0 else (row.b_better, row.a_better)
            low, high = sorted([sign * row.ci_low, sign * row.ci_high])
            interval = f" [{signed(low)}, {signed(high)}]" if np.isfinite(low) else ""
            sentences.append(f"{setting_label(row.metric, row.parameter_value)}: {title(compare[0])} − {title(compare[1])} = "
                             f"{signed(sign * row.mean_difference)}{interval} over {row.seeds} seeds (t-interval); {title(compare[0])} "
                             f"significantly better in {first_wins}, {title(compare[1])} in {second_wins}, no difference in {row.no_difference}")
        sections.append((f"{dataset} / {model} across {int(rows['seeds'].max())} training seeds", sentences, []))
    return sections


def build(summary: pd.DataFrame, paired: pd.DataFrame, classification: pd.DataFrame, compare: list[str] | None = None,
          friedman: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None) -> Verdict:
    """The verdict from the tables. ``compare``: the pair of methods the study asks about (first
    one first in every sentence), e.g. ``["hirescam", "gradcam"]``; ``friedman``: the per-cell
    Friedman table (:func:`camfaith.ranking.friedman_table`), whose p-value is quoted; ``seeds``:
    ``seeds.csv``, a section per model trained with several seeds."""
    all_cells = cells(summary, paired)
    compare = [m for m in (compare or []) if m in set(summary["method"])]
    sections = []
    for (dataset, model), group in _by_model(all_cells):
        accuracy = classification[(classification["dataset"] == dataset) & (classification["model"] == model)]
        heading = f"{dataset} / {model}"
        if len(accuracy):
            heading += f" (test balanced accuracy {accuracy['balanced_accuracy'].iloc[0]:.3f})"
        sentences = []
        if len(compare) == 2:
            pair = [pair_sentence(cell, *compare) for cell in group]
            sentences += [s for s in pair if s]
        for cell in group:
            sentence = top_group_sentence(cell)
            p = _friedman_p(friedman, cell)
            if p is not None:
                sentence += f" (Friedman p = {p:.2g} over {len(cell.summary)} methods)"
            sentences.append(sentence)
        flagged = flagged_note([cell for cell in group if cell.flagged_controls])
        notes = ([flagged] if flagged else []) + list(dict.fromkeys(note for cell in group for note in caveats(cell, controls=False)))
        sections.append((heading, sentences, notes))
    sections += seed_sentences(seeds, compare)
    return Verdict(sections, recommendation(all_cells, paired, compare))


def _by_model(all_cells: list[Cell]):
    keys = sorted({(c.dataset, c.model) for c in all_cells})
    return [(key, [c for c in all_cells if (c.dataset, c.model) == key]) for key in keys]


def _friedman_p(friedman: pd.DataFrame | None, cell: Cell) -> float | None:
    if friedman is None or friedman.empty:
        return None
    rows = _same_cell(friedman, (cell.dataset, cell.model, cell.metric, cell.summary["parameter"].iloc[0], cell.parameter_value))
    value = rows["friedman_p"].iloc[0] if len(rows) else np.nan
    return float(value) if np.isfinite(value) else None


def recommendation(all_cells: list[Cell], paired: pd.DataFrame, compare: list[str]) -> list[str]:
    """Overall: how often each real method is in the top group of a faithfulness cell the controls
    did not flag (the recommendation), the same count over the localisation cells (agreement with the
    ground truth, reported beside it: a map can point at the object without being what the model
    used), the focus pair's win counts per metric setting, and what to distrust."""
    lines = []
    if not all_cells:
        return ["nothing was scored"]
    faithfulness = [c for c in all_cells if REGISTRY[c.metric].family == "faithfulness"]
    localisation = [c for c in all_cells if REGISTRY[c.metric].family == "localisation"]
    if faithfulness or not localisation:
        lines += _top_group_counts(faithfulness, "cells whose metric ranked the controls last; this is the recommendation, for these models and data",
                                   "no real method is in the top group of any cell the controls did not flag: the metrics cannot recommend a method here")
    if localisation:
        lines += _top_group_counts(localisation, "localisation cells against the ground truth whose metric ranked the controls last (where the "
                                   "evidence is, not what the model used: beside the recommendation, not part of it)",
                                   "no real method is in the top group of any localisation cell the controls did not flag")
    flagged = [c for c in all_cells if c.flagged_controls]
    if flagged:
        lines.append(f"{len(flagged)} of {len(all_cells)} cells are flagged (a control in the top group or beating a real method) "
                     "and left out of the count: " + "; ".join(sorted({c.label for c in flagged}, key=str)))
    if len(compare) == 2 and not paired.empty:
        counts_table = win_counts(paired)
        a, b = sorted(compare)
        for row in counts_table[(counts_table["method_a"] == a) & (counts_table["method_b"] == b)].itertuples():
            first_is_a = compare[0] == a
            higher, significant = (row.a_higher, row.a_significant) if first_is_a else (row.b_higher, row.b_significant)
            label = setting_label(row.metric, row.parameter_value, "")
            lines.append(f"{title(compare[0])} prevails over {title(compare[1])} by {label} in {higher}/{row.cells} models "
                         f"(significant in {significant}/{row.cells})")
    return lines


def _top_group_counts(group: list[Cell], what: str, none: str) -> list[str]:
    """How often each real method is in the top group of the unflagged cells of ``group``, in words."""
    trusted = [c for c in group if not c.flagged_controls]
    counts: dict[str, int] = {}
    for cell in trusted:
        for method in cell.top_group:
            if not is_control(method):
                counts[method] = counts.get(method, 0) + 1
    if not counts:
        return [none]
    best = max(counts.values())
    leaders = sorted(m for m, c in counts.items() if c == best)
    lines = [f"{' and '.join(title(m) for m in leaders)} {'is' if len(leaders) == 1 else 'are'} in the top group of {best} of "
             f"{len(trusted)} {what}" + (" (a tie: the data cannot separate them)" if len(leaders) > 1 else "")]
    runners_up = sorted(((c, m) for m, c in counts.items() if m not in leaders), reverse=True)[:3]
    if runners_up:
        lines.append("next: " + ", ".join(f"{title(m)} {c}/{len(trusted)}" for c, m in runners_up))
    return lines


PAIR = ["method_a", "method_b"]


def protocol_table(paired: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each protocol's paired tests side by side, for the cells and method pairs that every protocol
    tested (a protocol's ``protocol_methods`` may leave methods out on purpose): ``mean_difference_<p>``,
    ``p_value_<p>``, ``p_holm_<p>`` and ``outcome_<p>`` (``HiResCAM better`` or ``no difference``) per
    protocol ``p``, and ``agree``: every protocol reached the same outcome (NA with one protocol).

    ``p_holm_<p>`` is Holm's correction of ``p_value_<p>`` over the compared pairs of the same
    metric, not the one of ``paired_tests.csv``: every protocol then corrects over the same family.
    A protocol that scores only two methods makes a few tests where another makes hundreds, and the
    two corrections alone would make them disagree."""
    from camfaith import paired as stats_paired

    keys = CELL + PAIR
    merged = None
    for protocol, table in paired.items():
        if table.empty:
            table = pd.DataFrame(columns=keys + ["mean_difference", "p_value"])
        part = table[keys + ["mean_difference", "p_value"]].rename(
            columns={"mean_difference": f"mean_difference_{protocol}", "p_value": f"p_value_{protocol}"})
        merged = part if merged is None else merged.merge(part, on=keys, how="inner")
    if merged is None:
        return pd.DataFrame(columns=keys + ["agree"])
    merged = merged.sort_values(keys, na_position="first").reset_index(drop=True)
    for protocol in paired:
        merged[f"p_holm_{protocol}"] = np.nan
        for _, family in merged.groupby("metric").groups.items():
            merged.loc[family, f"p_holm_{protocol}"] = stats_paired.holm(merged.loc[family, f"p_value_{protocol}"].to_numpy(dtype=np.float64))
        sides = [stats_paired.verdict(d, p, DIRECTION[metric][1]) for d, p, metric in
                 zip(merged[f"mean_difference_{protocol}"], merged[f"p_holm_{protocol}"], merged["metric"])]
        merged[f"outcome_{protocol}"] = [f"{title(a)} better" if side == "a" else f"{title(b)} better" if side == "b" else side
                                         for side, a, b in zip(sides, merged["method_a"], merged["method_b"])]
    outcomes = merged[[f"outcome_{p}" for p in paired]]
    merged["agree"] = outcomes.nunique(axis=1).eq(1).astype("boolean") if len(paired) > 1 else pd.Series(pd.NA, index=merged.index, dtype="boolean")
    return merged


def protocol_markdown(table: pd.DataFrame, protocols: list[str]) -> str:
    """Where the protocols reach different verdicts: a count per metric, then every disagreement."""
    lines = ["# The protocols compared", ""]
    if len(protocols) < 2:
        return "\n".join(lines + [f"One protocol ran ({', '.join(protocols)}): nothing to compare. "
                                  "`--config 'protocol=[default, thesis]'` runs both side by side.", ""])
    lines += [f"Each method pair of each dataset / model / metric setting that every protocol tested ({', '.join(protocols)}; "
              "docs/metrics.md §6 lists how they differ; pairs a protocol did not score, `protocol_methods`, are left out). A pair "
              "disagrees where the paired tests reach different outcomes (one method better, the other, or no difference), each "
              "Holm-corrected over these pairs of its metric, the same family for every protocol (so p_Holm here can differ from "
              "paired_tests.csv).", "", "| metric | pairs compared | agree | disagree |", "|---|---|---|---|"]
    compared = table
    for metric, rows in compared.groupby("metric", sort=False):
        agree = int(rows["agree"].astype(bool).sum())
        lines.append(f"| {metric} | {len(rows)} | {agree} | {len(rows) - agree} |")
    disagreements = compared[~compared["agree"].astype(bool)]
    lines += ["", f"## Where they disagree ({len(disagreements)} of {len(compared)} pairs compared)", ""]
    if disagreements.empty:
        return "\n".join(lines + ["Nowhere: every pair reaches the same outcome under every protocol.", ""])
    header = "| dataset / model | setting | pair | " + " | ".join(protocols) + " |"
    lines += [header, "|" + "---|" * (3 + len(protocols))]
    for row in disagreements.itertuples():
        cells = []
        for protocol in protocols:
            difference = getattr(row, f"mean_difference_{protocol}")
            text = getattr(row, f"outcome_{protocol}")
            cells.append(text if not np.isfinite(difference) else f"{text} ({signed(difference)}, {p_text(getattr(row, f'p_holm_{protocol}'))})")
        lines.append(f"| {row.dataset} / {row.model} | {setting_label(row.metric, row.parameter_value)} | "
                     f"{title(row.method_a)} − {title(row.method_b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def protocol_rst(table: pd.DataFrame, protocols: list[str]) -> str:
    """:func:`protocol_markdown` for the report: the counts, then every disagreement as a bullet."""
    if len(protocols) < 2:
        return ""
    heading = "The protocols compared"
    parts = [heading, "=" * len(heading), "", f"Paired tests of every method pair that {', '.join(protocols)} all tested, each "
             "Holm-corrected over those pairs (``results/aggregate/protocols.csv``).", ""]
    compared = table
    for metric, rows in compared.groupby("metric", sort=False):
        parts.append(f"- {metric.replace('_', ' ')}: {int(rows['agree'].astype(bool).sum())} of {len(rows)} pairs agree")
    parts.append("")
    for row in compared[~compared["agree"].astype(bool)].itertuples():
        outcomes = "; ".join(f"{p}: {getattr(row, f'outcome_{p}')}" for p in protocols)
        parts.append(f"- {row.dataset} / {row.model}, {setting_label(row.metric, row.parameter_value)}, "
                     f"{title(row.method_a)} vs {title(row.method_b)}: {outcomes}".replace("*", r"\*").replace("_", r"\_"))
    return "\n".join(parts + [""])
