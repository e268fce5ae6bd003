"""The report of `memsweep perspectives`: Chen, Han & Miyao 2024's analyses over a scoring out dir.

build_perspectives_report only computes (tables, sentences, figures to draw, and for each section
that cannot be computed, why); write_perspectives_report writes the PNGs, one CSV per table,
perspectives.json and perspectives.md, leaving every file whose bytes would not change untouched.
The sections follow the paper: distributions and scaling, transitions, dynamics and the boundary
effect, embeddings, the predictor. Each finding is a sentence built from the measured numbers
beside Chen et al.'s, never a claim typed in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from memsweep.analysis import perspectives_plots
from memsweep.analysis.perspectives_data import ScoreSet, load_perspectives
from memsweep.analysis.perspectives_dynamics import MAX_ROWS_PER_GROUP, dynamics, dynamics_words
from memsweep.analysis.perspectives_embeddings import embedding_distances, embedding_words, row_mean_pca
from memsweep.analysis.perspectives_predictor import (PAPER_CONFIG, PredictorConfig, fit_and_evaluate,
                                                      predictor_inputs, predictor_words)
from memsweep.analysis.perspectives_repeats import repeat_words, scores_by_repeat_count
from memsweep.analysis.perspectives_scaling import (histogram, memorized_counts, scaling, scaling_words,
                                                    size_effect_words)
from memsweep.analysis.perspectives_transitions import LEVELS, transition_words, transitions, wide
from memsweep.analysis.report import _integral, _md_table, _png, _write_if_changed

SECTIONS = {"distributions": "Distributions and scaling", "transitions": "Transitions between model sizes",
            "dynamics": "Dynamics and the boundary effect", "embeddings": "Embeddings", "predictor": "Predictor"}
FIGURES = {"distributions": ("histograms", "scaling", "sizes"), "transitions": ("transitions",),
           "dynamics": ("dynamics",), "embeddings": ("embedding_distances", "pca"), "predictor": ()}


@dataclass
class PerspectivesReport:
    scores_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tidy tables by name; each is written as <name>.csv."""
    summary: dict = field(default_factory=dict)
    """perspectives.json: the configuration, per-section findings (sentences) and not_computed (why)."""
    plots: dict[str, tuple] = field(default_factory=dict)
    """Figures to draw: name -> (function name in memsweep.analysis.perspectives_plots, its arguments)."""
    figures: dict[str, Path] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    """The files write_perspectives_report changed (empty: the report on disk was already this one)."""

    def skip(self, section: str, why: str) -> None:
        self.summary["not_computed"][section] = why

    def say(self, section: str, lines: list[str]) -> None:
        self.summary["findings"].setdefault(section, []).extend(lines)


def _distributions(report: PerspectivesReport, all_sets: list[ScoreSet], sets: list[ScoreSet], k: int, n: int) -> None:
    report.tables["histograms"] = hist = histogram(all_sets)
    report.tables["memorized_counts"] = counts = memorized_counts(all_sets)
    result = scaling(sets)
    report.tables["scaling_fits"], report.tables["decade_slopes"] = result.fits, result.slopes
    report.summary["capacity_reading"] = result.reading
    report.say("distributions", scaling_words(result, k, n))
    effects = {"n": counts[counts["k"] == k], "k": counts[counts["n"] == n]}  # continuation at this k, context at this n
    for vary, fixed, value, what in (("n", "k", k, "continuation"), ("k", "n", n, "context")):
        if effects[vary][vary].nunique() < 2:
            report.say("distributions", [f"The {what} effect is not computed: only {vary} = "
                                         f"{', '.join(map(str, sorted(effects[vary][vary].unique())))} was scored at "
                                         f"{fixed} = {value}."])
            effects[vary] = effects[vary].iloc[:0]
        else:
            report.say("distributions", size_effect_words(counts, vary, fixed, value))
    report.tables["repeats"] = repeats = scores_by_repeat_count(sets, report.tables["models"])
    report.say("distributions", repeat_words(repeats))
    report.plots["histograms"] = ("histograms", hist[(hist["k"] == k) & (hist["n"] == n)])
    if len(sets) >= 2:
        report.plots["scaling"] = ("scaling", counts[(counts["k"] == k) & (counts["n"] == n)], result.fits)
    if len(effects["n"]) or len(effects["k"]):
        report.plots["sizes"] = ("sizes", effects["n"], effects["k"])


def _transitions(report: PerspectivesReport, sets: list[ScoreSet], k: int, n: int) -> None:
    if len(sets) < 2:
        report.skip("transitions", f"one model only ({sets[0].model}) at {k}/{n}: a transition needs two model sizes")
        return
    report.tables["transitions"] = table = transitions(sets)
    report.say("transitions", transition_words(table))
    report.plots["transitions"] = ("transitions", table)


def _dynamics(report: PerspectivesReport, unigram, sets: list[ScoreSet], max_rows: int, seed: int) -> None:
    if unigram is None:
        report.skip("dynamics", "the out dir has no unigram.npy, the corpus token counts the frequency curves need")
        return
    curves, effects = dynamics(sets, unigram, max_rows, seed)
    report.tables["dynamics_curves"], report.tables["boundary_effects"] = curves, effects
    report.say("dynamics", dynamics_words(effects, curves))
    report.plots["dynamics"] = ("dynamics", curves)


def _embeddings(report: PerspectivesReport, sets: list[ScoreSet], k: int, n: int, seed: int) -> None:
    pairs, by_step = embedding_distances(sets)
    if by_step.empty:
        report.skip("embeddings", f"no model at {k}/{n} kept a hidden dump (*.hidden.npy) with two or more score groups")
        return
    report.tables["embedding_pairs"], report.tables["embedding_steps"] = pairs, by_step
    report.tables["embedding_pca"] = points = pd.concat([row_mean_pca(s, seed=seed) for s in sets if s.hidden is not None],
                                                        ignore_index=True)
    report.say("embeddings", embedding_words(by_step))
    report.plots["embedding_distances"] = ("embedding_distances", by_step)
    report.plots["pca"] = ("pca", points)


def _predictor(report: PerspectivesReport, sets: list[ScoreSet], k: int, n: int, config: PredictorConfig) -> None:
    summaries, comparisons, untrained = [], [], []
    for s in sets:
        if s.hidden is None:
            untrained.append(f"{s.model}: no hidden dump (*.hidden.npy) to train on")
            continue
        entropy, labels = predictor_inputs(s)
        try:
            summary, comparison = fit_and_evaluate(s.hidden, entropy, labels, s.n, config)
        except ValueError as err:  # too few hidden rows for a split
            untrained.append(f"{s.model}: {err}")
            continue
        summaries.append({"model": s.model, "n_params": s.n_params, "k": s.k, **summary})
        comparisons.append(comparison.assign(model=s.model))
    if not summaries:
        report.skip("predictor", f"no model at {k}/{n} could be trained on ({'; '.join(untrained)})")
        return
    report.tables["predictor"] = summary = pd.DataFrame(summaries)
    report.tables["predictor_baselines"] = comparison = pd.concat(comparisons, ignore_index=True)
    scaled = ", ".join(f"{name} {getattr(config, name)} (paper {paper})" for name, paper in PAPER_CONFIG.items()
                       if getattr(config, name) != paper)
    report.say("predictor", [f"Scaled down for a CPU: {scaled or 'none'}; inputs standardised with the training rows' "
                             "mean and sd (hidden states per dimension, and the entropy); early stopping on a validation part of the "
                             "training split; the encoder sees the n generated steps only (the dump holds no context "
                             "states; Chen et al.'s runs over the whole sequence and keeps the continuation positions)."]
               + predictor_words(summary, comparison) + [f"Not trained: {why}." for why in untrained])


def build_perspectives_report(scores_dir: Path, predictor: PredictorConfig = PredictorConfig(),
                              max_rows_per_group: int = MAX_ROWS_PER_GROUP, seed: int = 0) -> PerspectivesReport:
    """Every section at Chen et al.'s 32/16 (or the configuration with the most models); the score
    histograms and the context/continuation effects over every configuration scored."""
    data = load_perspectives(scores_dir)
    report = PerspectivesReport(Path(scores_dir))
    report.summary = {"models": data.models.to_dict("records"), "configs": data.configs, "not_computed": {},
                      "findings": {}}
    report.tables["models"] = data.models
    if (config := data.default_config()) is None:
        for section in SECTIONS:
            report.skip(section, "the out dir has no score file (scores/<model>__k<k>_n<n>.npz)")
        return report
    k, n = config
    report.summary["context"], report.summary["continuation"] = k, n
    sets = data.at(k, n)
    _distributions(report, list(data.sets.values()), sets, k, n)
    _transitions(report, sets, k, n)
    _dynamics(report, data.unigram, sets, max_rows_per_group, seed)
    _embeddings(report, sets, k, n, seed)
    _predictor(report, sets, k, n, predictor)
    return report


def _matrix_markdown(table: pd.DataFrame, a: str, b: str) -> str:
    """A transition matrix with each fraction and its count: 0.923 (1,234)."""
    fractions, counts = wide(table, a, b, "fraction"), wide(table, a, b, "count")
    lines = [f"| {a} ↓ / {b} → | " + " | ".join(LEVELS) + " |", "|" + "---|" * (len(LEVELS) + 1)]
    for level in LEVELS:
        cells = ["–" if pd.isna(f) else f"{f:.3f}" for f in fractions.loc[level]]
        lines.append(f"| {level} | " + " | ".join(f"{c} ({int(n):,})" for c, n in zip(cells, counts.loc[level])) + " |")
    return "\n".join(lines) + "\n"


def _paper_groups(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["score"].isin([0.0, 0.5, 1.0])]


def _first_and_last_step(table: pd.DataFrame) -> pd.DataFrame:
    steps = table.groupby("model")["step"]
    return table[(table["step"] == steps.transform("min")) | (table["step"] == steps.transform("max"))]


SECTION_TABLES = {
    "distributions": [("memorized_counts", ["model", "n_params", "k", "n", "n_rows", "fully_memorized", "half_or_more",
                                            "unmemorized", "fully_memorized_share"], None),
                      ("scaling_fits", ["measure", "n_sizes", "intercept", "slope", "share_per_decade", "r"], None),
                      ("decade_slopes", ["measure", "from_model", "to_model", "slope_per_decade", "slope_se"], None),
                      ("repeats", ["model", "repeat_count", "n_rows", "mean_score", "fully_memorized_share"], None)],
    "dynamics": [("boundary_effects", ["model", "score", "quantity", "boundary", "position", "before", "after", "change",
                                       "change_se", "relative", "relative_se", "n_rows"], _paper_groups)],
    "embeddings": [("embedding_steps", ["model", "d_model", "step", "cosine", "euclidean", "sampling_floor", "n_pairs"],
                    _first_and_last_step)],
    "predictor": [("predictor", ["model", "n", "levels", "train_rows", "test_rows", "test_tokens", "token_accuracy",
                                 "sentence_accuracy", "test_match_share", "epochs"], None),
                  ("predictor_baselines", ["model", "metric", "baseline", "baseline_accuracy", "predictor_accuracy",
                                           "difference", "difference_se", "beats"], None)],
}
"""The tables each section shows: name, columns, and which rows (None: all; the CSV always has all)."""


def _section_markdown(report: PerspectivesReport, number: int, section: str) -> list[str]:
    out = [f"## {number}. {SECTIONS[section]}", ""]
    if section in report.summary["not_computed"]:
        return out + [f"Not computed: {report.summary['not_computed'][section]}.", ""]
    out += [f"![{name}]({name}.png)\n" for name in FIGURES[section] if name in report.plots]
    out += [f"- {line}" for line in report.summary["findings"].get(section, [])] + [""]
    if section == "transitions":
        table = report.tables["transitions"]
        for (a, b), _ in table.groupby(["from_model", "to_model"], sort=False):
            out += [f"P(level in {b} | level in {a}), with the rows in each cell:", "", _matrix_markdown(table, a, b)]
    for name, columns, rows in SECTION_TABLES.get(section, []):
        table = report.tables[name]
        if rows is not None:
            out += [f"{len(rows(table))} of the {len(table)} rows of `{name}.csv`:", ""]
        out += [_md_table(table if rows is None else rows(table), columns)]
    return out


def perspectives_markdown(report: PerspectivesReport) -> str:
    s = report.summary
    out = ["# Memorization from several perspectives (Chen, Han & Miyao 2024)", "",
           f"Out dir `{report.scores_dir}`: {len(s['models'])} model(s); configurations scored (k/n): "
           + (", ".join(f"{k}/{n}" for k, n in s["configs"]) or "none") + ".", ""]
    if "context" in s:
        out += [f"Every section is at context {s['context']}, continuation {s['continuation']} (the context and "
                "continuation effects compare the other configurations); the score is the share of the continuation "
                "positions where the greedy token equals the true one.", ""]
    out += [_md_table(report.tables["models"])]
    for number, section in enumerate(SECTIONS, 1):
        out += _section_markdown(report, number, section)
    out += ["## Files", "", "Every table is a CSV beside this file at full precision (`histograms.csv`, "
            "`dynamics_curves.csv`, `embedding_pairs.csv` and `embedding_pca.csv` hold what the figures show); "
            "`perspectives.json` has the findings and what was not computed.", ""]
    return "\n".join(out)


def _json_safe(value):
    """NaN and infinities as null (JSON has neither), numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_perspectives_report(report: PerspectivesReport, out_dir: Path) -> Path:
    """Write the figures, the CSVs, perspectives.json and perspectives.md into out_dir, each only if
    its bytes differ from the file there; returns perspectives.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.written = []
    for name, (function, *args) in report.plots.items():
        report.figures[name] = out_dir / f"{name}.png"
        _write_if_changed(report.figures[name], _png(getattr(perspectives_plots, function)(*args)), report)
    for name, table in report.tables.items():
        _write_if_changed(out_dir / f"{name}.csv", _integral(table).to_csv(index=False).encode(), report)
    _write_if_changed(out_dir / "perspectives.json", json.dumps(_json_safe(report.summary), indent=2).encode(), report)
    path = out_dir / "perspectives.md"
    _write_if_changed(path, perspectives_markdown(report).encode(), report)
    return path
