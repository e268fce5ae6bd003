"""`memsweep report`: a sweep dir in, tidy tables + PNG figures + a Markdown report out.

`build_report` only computes (tables, fitted numbers, what is missing); `write_report` writes the
files, leaving every file whose bytes would not change untouched (so a rerun over an unchanged
sweep rewrites nothing); memsweep.analysis.wandb_report sends the same Report to W&B. A partial
sweep reports what it has and lists what it lacks; a section that needs more cells than there are,
or whose fit would be exact or undetermined, says so instead of printing the numbers.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis import plots, text_plots
from memsweep.analysis.capacity import (DATA_CEILING, MIN_MODELS_FOR_INTERCEPT, MIN_SEEDS_FOR_T, capacities,
                                        capacity_summary, fit_alpha)
from memsweep.analysis.cells import load_sweep
from memsweep.analysis.double_descent import double_descent_points, resolution_line, test_loss_curves
from memsweep.analysis.membership import GPT2_SIZES, PAPER_LAW, TARGET_F1, LawFit, fit_law, samples_for_f1
from memsweep.analysis.text import TEXT_CHARS, build_text_part, split_by_kind
from memsweep.analysis.paper import (PAPER_INCONSISTENCIES, TABLE1_MEAN_ALPHA, appendix_a1_comparison, grid_facts,
                                     table1_comparison, verdict_lines)
from memsweep.analysis.throughput import pack_throughput, throughput_summary, throughput_table
from memsweep.analysis.time_to_capacity import decayed_points, growth_laws, growth_lines, stable_curves
from memsweep.cell import PER_SAMPLE_FILE

REPORT_DIR = "report"
"""Default output: <sweep dir>/report/."""
WORDS = (
    "**bracketed**: a maximum over N with measured N on both sides of it.",
    "**at grid edge**: a maximum at the smallest or largest N measured; the true maximum may lie "
    "outside the grid. A test-loss maximum at the grid edge is not called a peak.",
    "**peak**: a bracketed test-loss maximum, interpolated between its neighbours.",
    "**hit max_steps**: the cell stopped at `trainer.max_steps`, not on its plateau.",
    f"**at the data ceiling**: the maximum holds ≥ {DATA_CEILING:.0%} of the data ceiling N (S log2 V − log2 N), "
    "the most a model that assigns probabilities to N distinct sequences can memorize of them (Gibbs' "
    "inequality: their code lengths sum to at least N log2 N bits).",
    "**seed range**: the lowest and highest α fitted to one seed at a time; a range, not a confidence interval.",
    "**resolution-limited**: a peak's interval no wider than half a grid step each side (the grid resolution, "
    "a factor): the grid, not the seeds, sets it.",
    "**lower bound** (≥ in the tables, an upward triangle in the figures): a capacity at grid edge, "
    "from a cell that hit max_steps, or at the data ceiling; the true capacity may be higher.",
)
"""The report's vocabulary, each word defined once and used for nothing else."""
T_WORD = f"**t-interval**: a Student-t 95% interval over seeds, given only with {MIN_SEEDS_FOR_T} or more seeds."
"""Defined only in a report that has one: with fewer seeds nothing in it may read "95%"."""


@dataclass
class Report:
    sweep_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tidy tables by name; each is written as <name>.csv."""
    summary: dict = field(default_factory=dict)
    """The headline numbers (alpha per precision, gap, peaks, law, grid, verdict), also report.json."""
    notes: list[str] = field(default_factory=list)
    """What could not be computed, and why (a partial sweep, too few sizes, ...)."""
    plots: dict[str, tuple] = field(default_factory=dict)
    """Figures to draw: name -> (function, its arguments); the function is named as in
    memsweep.analysis.plots, or as text_plots.<name> for one in memsweep.analysis.text_plots."""
    figures: dict[str, Path] = field(default_factory=dict)
    """Drawn figures: name -> PNG path (filled by write_report)."""
    written: list[str] = field(default_factory=list)
    """The files write_report changed (empty: the report on disk was already this one)."""


def _membership_law(cells: pd.DataFrame, report: Report) -> LawFit | None:
    if "mi_f1" not in cells:
        report.summary["membership_law"]["not_fitted"] = f"no done cell kept its {PER_SAMPLE_FILE}"
        return None
    scored = cells.dropna(subset=["mi_f1"])
    try:
        return fit_law(scored["samples_per_param"].to_numpy(), scored["mi_f1"].to_numpy())
    except (ValueError, RuntimeError) as err:  # too few cells, a degenerate F1 range, or curve_fit gave up
        report.summary["membership_law"]["not_fitted"] = str(err)
        return None


def _predicted_sizes(law: LawFit | None) -> pd.DataFrame:
    rows = []
    for label, constants in [("paper (text)", PAPER_LAW), ("this sweep", (law.c1, law.c2, law.c3) if law else None)]:
        if constants is None:
            continue
        for model, n_params in GPT2_SIZES.items():
            for target in TARGET_F1:
                n = samples_for_f1(target, n_params, *constants)
                rows.append({"law": label, "model": model, "n_params": n_params, "target_f1": target,
                             "training_sequences": round(n) if n is not None else None})
    return pd.DataFrame(rows)


def build_report(sweep_dir: Path, n_boot: int = 2000, peak_flops: float | None = None) -> Report:
    sweep = load_sweep(sweep_dir)
    report = Report(Path(sweep_dir))
    cells = sweep.done
    report.tables["missing"] = pd.DataFrame(
        [{"cell_id": s.cell_id, "state": s.state, "detail": s.detail, "overrides": " ".join(s.overrides)}
         for s in sweep.missing], columns=["cell_id", "state", "detail", "overrides"])
    report.summary["cells_done"], report.summary["cells_missing"] = len(cells), len(sweep.missing)
    if cells.empty:
        report.notes.append("no cell has finished: nothing to analyse yet")
        return report
    cells, text_cells = split_by_kind(cells)
    if cells.empty:
        report.notes.append("no uniform-token cell: the capacity, α, double-descent, membership and throughput "
                            "sections, which are about random tokens, are left out; the text sections follow")
    else:
        _uniform_part(report, cells, n_boot, peak_flops)
    if len(text_cells):
        alpha = {p: f["alpha"] for p, f in report.summary.get("alpha", {}).items()}
        part = build_text_part(text_cells, report.sweep_dir, alpha)
        report.tables.update(part.tables)
        report.tables["text_membership_predictions"] = _predicted_sizes(part.law)
        report.summary["text"] = part.summary
        report.plots.update(part.plots)
    return report


def _uniform_part(report: Report, cells: pd.DataFrame, n_boot: int, peak_flops: float | None) -> None:
    """The uniform-token sections (capacity, alpha, double descent, membership, throughput)."""
    report.tables["cells"] = cells
    report.summary["grid"] = grid = grid_facts(cells)

    caps = capacities(cells)
    summary = capacity_summary(caps)
    report.tables["capacity"], report.tables["capacity_summary"] = caps, summary
    fits = {p: fit_alpha(caps, p) for p in sorted(caps["precision"].unique())}
    report.tables["alpha"] = pd.DataFrame([asdict(f) for f in fits.values()])
    report.summary["alpha"] = {p: asdict(f) for p, f in fits.items()}
    if "fp32" in fits and "bf16" in fits:
        report.summary["alpha_bf16_minus_fp32"] = fits["bf16"].alpha - fits["fp32"].alpha
        report.summary["mean_bits_per_param_bf16_minus_fp32"] = \
            fits["bf16"].mean_bits_per_param - fits["fp32"].mean_bits_per_param
    report.summary["verdict"] = verdict_lines(grid, summary, caps, fits)

    alpha = {p: f.alpha for p, f in fits.items()}
    report.tables["loss_curves"] = test_loss_curves(cells, alpha)
    points = double_descent_points(cells, alpha, n_boot=min(n_boot, 1000))
    report.tables["double_descent"] = points
    if line := resolution_line(points):
        report.summary["verdict"].append(line)
    if points.empty:
        report.notes.append("double descent: no (model, precision) has the 3 dataset sizes a maximum needs")
    report.summary["double_descent"] = (points.drop(columns=["n_params"]).astype(object)
                                        .where(points.notna(), None).to_dict("records")  # no interval: null, not NaN
                                        if len(points) else [])

    report.summary["membership_law"] = {"paper": dict(zip(("c1", "c2", "c3"), PAPER_LAW))}
    law = _membership_law(cells, report)
    report.summary["membership_law"]["fit"] = asdict(law) if law else None
    report.tables["membership_predictions"] = _predicted_sizes(law)

    report.tables["table1_comparison"] = table1_comparison(summary)
    report.tables["appendix_a1_comparison"] = appendix_a1_comparison(cells)
    throughput = throughput_table(cells, peak_flops)
    report.tables["throughput"], report.tables["throughput_summary"] = throughput, throughput_summary(throughput)
    report.tables["throughput_packs"] = pack_throughput(throughput)

    decays = decayed_points(cells, report.sweep_dir)
    if len(decays):
        laws = growth_laws(decays, cells)
        report.tables["time_to_capacity"], report.tables["growth_laws"] = decays, laws
        report.summary["growth"] = growth_lines(laws)
        report.plots["time_to_capacity"] = ("time_to_capacity", decays, stable_curves(cells, report.sweep_dir), laws)

    report.plots["capacity_curves"] = ("capacity_curves", cells, summary)
    report.plots["alpha_fit"] = ("alpha_fit", caps, fits)
    report.plots["double_descent"] = ("double_descent", report.tables["loss_curves"], points)
    if "mi_f1" in cells:
        report.plots["membership"] = ("membership", cells.dropna(subset=["mi_f1"]), law)
    if len(throughput):
        report.plots["throughput"] = ("throughput", throughput)


def _number(v: float) -> str:
    """A float for people: integers with thousands separators, else 3 significant digits."""
    if not np.isfinite(v):
        return str(v)
    if v == int(v) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _md_cell(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        return _number(float(v))
    if isinstance(v, tuple):
        return "–".join(_number(x) for x in v)
    return str(v)


def _md_table(df: pd.DataFrame | None, columns: list[str] | None = None) -> str:
    """A Markdown table of `columns` (all by default); capacities that are lower bounds get ≥."""
    if df is None or df.empty:
        return "_none_\n"
    rows = df[[c for c in (columns or df.columns) if c in df.columns]]
    bounded = df["lower_bound"].to_numpy(bool) if "lower_bound" in df else np.zeros(len(df), bool)
    lines = ["| " + " | ".join(rows.columns) + " |", "|" + "---|" * len(rows.columns)]
    for lower, row in zip(bounded, rows.itertuples(index=False)):
        cells = [("≥ " if lower and name in ("capacity_bits", "bits_per_param") else "") + _md_cell(v)
                 for name, v in zip(rows.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval_words(seed_range, t95, n_seeds: int) -> str:
    """'seed range a–b over 2 seeds' and, from MIN_SEEDS_FOR_T seeds, the t-interval beside it."""
    if not seed_range:
        return "no spread over seeds (one seed)"
    words = f"seed range {seed_range[0]:.2f}–{seed_range[1]:.2f} over {n_seeds} seeds"
    if t95:
        return words + f", 95% t-interval over {n_seeds} seeds {t95[0]:.2f}–{t95[1]:.2f}"
    return words + f" (not a confidence interval; a t-interval needs {MIN_SEEDS_FOR_T} seeds)"


def _alpha_lines(report: Report) -> list[str]:
    lines = []
    for p, f in report.summary.get("alpha", {}).items():
        bound = " (a lower bound: some capacity in it is one)" if f["lower_bound"] else ""
        paper = TABLE1_MEAN_ALPHA.get(p)
        seeds = _interval_words(f["alpha_seed_range"], f["alpha_t95"], f["n_seeds"])
        if f["n_models"] == 1:
            line = (f"- **{p}: α = {f['alpha']:.2f} bits/param**{bound}: one model, so α is its capacity / P, "
                    f"not a fit, {seeds}")
        else:
            low, high = f["model_bits_per_param_range"]
            line = (f"- **{p}: α = {f['alpha']:.2f} bits/param**{bound}, fitted through the origin over "
                    f"{f['n_models']} models (P²-weighted, so mostly the largest model; comparable to a fitted "
                    f"slope such as the paper's Figure 6 α = 3.64), {seeds}. "
                    f"Unweighted mean of per-model bits/param: **{f['mean_bits_per_param']:.2f}** (comparable to "
                    f"Table 1's column means{f', {p}: {paper}' if paper else ''}, themselves unweighted over 16 "
                    f"configs); across models {low:.2f}–{high:.2f}, residuals around α with standard deviation "
                    f"{f['model_residual_std']:.2f} bits/param")
            if f["slope"] is None:
                line += (f". No fit with an intercept: it needs {MIN_MODELS_FOR_INTERCEPT} or more models "
                         f"(through {f['n_models']} points a 2-parameter line is exact)")
            else:
                line += (f". With an intercept: {f['slope']:.2f} bits/param {f['intercept']:+,.0f} bits, slope "
                         + _interval_words(f["slope_seed_range"], f["slope_t95"], f["n_seeds"]))
        lines.append(line + ".")
    if "alpha_bf16_minus_fp32" in report.summary:
        paper = TABLE1_MEAN_ALPHA["bf16"] - TABLE1_MEAN_ALPHA["fp32"]
        lines.append(f"- bf16 − fp32: {report.summary['mean_bits_per_param_bf16_minus_fp32']:+.2f} bits/param in the "
                     f"unweighted mean (paper's Table 1 means: {paper:+.2f}), "
                     f"{report.summary['alpha_bf16_minus_fp32']:+.2f} in α through the origin")
    return lines


def _double_descent_text(points: pd.DataFrame) -> list[str]:
    text = ("Test loss against dataset bits / (α·P), α fitted above per precision; the paper puts the peak at 1. "
            "A peak's interval is a bootstrap over seeds, never narrower than half a grid step each side: the "
            "grid resolution, a factor (×1.41 for 2× spacing), so any peak within that factor of 1 has an "
            "interval that contains 1. Where the bootstrap is narrower still the interval is marked "
            "resolution-limited: it shows the grid, not the seeds' uncertainty")
    if len(points) and points["n_seeds"].min() < 2:
        text += " (with one seed every interval is resolution-limited)"
    return [text + ". A maximum at grid edge is not a peak and has no interval.", "",
            _md_table(points, ["model", "precision", "maximum", "ratio_at_max", "ratio_low", "ratio_high",
                               "grid_resolution", "resolution_limited", "n_samples_at_max", "test_loss_at_max",
                               "n_sizes", "n_seeds"])]


def _membership_text(report: Report) -> list[str]:
    law = report.summary["membership_law"]
    if law["fit"]:
        f = law["fit"]
        head = (f"Fitted law F1 = ½[1 + c1 σ(c2 (|D|/P − c3))] over {f['n_cells']} cells: c1 = {f['c1']:.3g}, "
                f"c2 = {f['c2']:.4g}, c3 = {f['c3']:.4g} (RMSE {f['rmse']:.3f}); the paper's, fitted on text: "
                "1.34, −33.14, 0.034.")
    else:
        head = (f"No law fitted to this sweep, and so no predictions from it: {law['not_fitted']}. "
                "Only the paper's law (fitted on text) is used below.")
    return [head, "", "Training sequences |D| predicted for a target F1 at the sizes of the paper's Table 2:", "",
            _md_table(report.tables["membership_predictions"])]


def _capacity_columns(summary: pd.DataFrame) -> list[str]:
    spread = ["capacity_std", "capacity_min", "capacity_max"] if summary["n_seeds"].max() >= 2 else []
    return ["model", "precision", "n_params", "n_seeds", "capacity_bits", *spread, "bits_per_param",
            "seeds_at_grid_edge", "seeds_hit_max_steps", "seeds_at_data_ceiling", "lower_bound"]


def _figure(report: Report, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name}.png)", ""] if name in report.plots else []


def _uniform_markdown(report: Report) -> list[str]:
    t, s = report.tables, report.summary
    fig = lambda name, alt: _figure(report, name, alt)  # noqa: E731
    out = ["## Verdict", ""] + [f"- {line}" for line in s["verdict"]] + [""]
    has_t = any(f["alpha_t95"] for f in s["alpha"].values())
    out += ["## Words used in this report", ""] + [f"- {w}" for w in (*WORDS, *[T_WORD] * has_t)] + [""]
    out += ["## Capacity", ""] + fig("capacity_curves", "capacity curves") + fig("alpha_fit", "alpha fit")
    out += _alpha_lines(report) + ["", _md_table(t["capacity_summary"], _capacity_columns(t["capacity_summary"]))]
    out += ["## Against the paper", "",
            "Morris et al. 2025, Table 1 (its rows and means are in docs/papers.md):", "",
            _md_table(t["table1_comparison"]), "App. A.1's expected memorization min(3.642 P, H), here with the data "
            "ceiling N (S log2 V − log2 N) in place of H, beside the measured "
            f"({'mean over seeds' if t['cells']['seed'].nunique() >= 2 else 'one seed'}):", "",
            _md_table(t["appendix_a1_comparison"]),
            "Where the paper disagrees with itself:", ""] + [f"- {n}" for n in PAPER_INCONSISTENCIES] + [""]
    if "time_to_capacity" in t:
        out += ["## Time to capacity (schedule=wsd cells)", "", "Memorized bits after each decay branch and the final "
                "decay, against the training tokens behind that model (branch steps included):", ""]
        out += fig("time_to_capacity", "time to capacity") + [f"- {line}" for line in s["growth"]] + [""]
        out += [_md_table(t["time_to_capacity"], ["model", "precision", "n_samples", "seed", "overrides", "stable_steps",
                                                  "decay_steps", "tokens", "memorized_bits", "bits_per_param",
                                                  "gain_per_doubling", "final"])]
    out += ["## Double descent", ""] + fig("double_descent", "double descent") + _double_descent_text(t["double_descent"])
    out += ["## Membership inference", ""] + fig("membership", "membership inference") + _membership_text(report)
    out += ["## Throughput", ""] + fig("throughput", "throughput") + [_md_table(t["throughput_summary"])]
    if len(t["throughput_packs"]):
        out += ["Per pack (memsweep.pack: the pack's tokens/s and MFU, and the median of its cells' own):", "",
                _md_table(t["throughput_packs"])]
    return out


def _text_section(report: Report, key: str, table: pd.DataFrame, columns: list[str]) -> list[str]:
    """A text section's sentences and table, or, when it cannot be computed, why not instead."""
    text = report.summary["text"]
    if key in text["not_computed"]:
        return [f"Not computed: {text['not_computed'][key]}.", ""]
    return [f"- {line}" for line in text["findings"][key]] + ["", _md_table(table, columns)]


def _text_law_lines(report: Report) -> list[str]:
    law = report.summary["text"]["membership_law"]
    paper = ", ".join(f"{v:g}" for v in law["paper"].values())
    if law["fit"]:
        f = law["fit"]
        return [f"Law F1 = ½[1 + c1 σ(c2 (|D|/P − c3))] fitted over {f['n_cells']} text cells: c1 = {f['c1']:.3g}, "
                f"c2 = {f['c2']:.4g}, c3 = {f['c3']:.4g} (RMSE {f['rmse']:.3f}); the paper's, fitted on text: {paper}.", ""]
    return [f"No law fitted to the text cells, and so no predictions from them: {law['not_fitted']}. "
            f"Only the paper's law ({paper}) is used below.", ""]


def _text_markdown(report: Report) -> list[str]:
    """The "# Text" part: every section compares with the paper in words built from the numbers."""
    t, text = report.tables, report.summary["text"]
    fig = lambda name, alt: _figure(report, name, alt)  # noqa: E731
    out = ["# Text", "", f"{text['cells']} text cells, {text['references']} of them reference cells: the model trained "
           "on its whole pool, which unintended memorization is measured against (so never a point of a memorization "
           "curve). Per-seed values are in the `text_*.csv` files beside this one.", ""]
    if "cells" not in t:
        out += ["## Words used in this report", ""] + [f"- {w}" for w in WORDS[:3]] + [""]
    out += ["## Corpus", "", _md_table(t["text_corpora"])]
    out += ["## Unintended memorization", ""] + fig("text_memorization", "unintended memorization of text")
    out += ["Unintended bits: Σ max(0, NLL_reference − NLL_model) over the training sequences; total: the same "
            "against the uniform code S log2 V; generalization: total − unintended.", ""]
    out += _text_section(report, "memorization", t["text_memorization_mean"],
                         ["model", "n_samples", "unintended_bits", "unintended_bits_per_sequence", "total_memorized_bits",
                          "generalization_bits", "n_seeds"])
    if "memorization" not in text["not_computed"]:
        out += ["Reference cells:", "", _md_table(t["text_references"]), "### Against the oracle", ""]
        out += [f"- {line}" for line in text["findings"]["oracle"]] + [""]
        out += [_md_table(t["text_memorization_mean"], ["model", "n_samples", "oracle_unintended_bits",
                                                        "oracle_unintended_bits_per_sequence",
                                                        "oracle_generalization_bits", "n_seeds"])]
    out += ["## Text capacity", "", "The maximum over N of the mean unintended bits, per model; ≥ marks one at grid edge, a "
            "lower bound.", ""]
    out += _text_section(report, "capacity", t["text_capacity"],
                         ["model", "n_params", "capacity_bits", "bits_per_param", "maximum", "n_samples_at_max",
                          "largest_n_keeps", "n_sizes", "n_seeds"])
    out += ["## Extraction", ""] + fig("text_extraction", "extraction rates")
    out += ["Exact extraction: greedy decoding from the first k tokens reproduces the whole rest of the sequence.", ""]
    out += _text_section(report, "extraction", t["text_extraction"],
                         ["model", "n_samples", "seed", "prefix", "train_rate", "n_train", "heldout_rate", "n_heldout",
                          "train_minus_heldout"])
    out += ["## Membership inference (text)", ""] + fig("text_membership", "membership inference on text")
    out += _text_law_lines(report) + [f"- {line}" for line in text["findings"]["membership"]] + [""]
    out += [_md_table(t["text_membership"], ["model", "n_samples", "seed", "samples_per_param", "mi_f1", "mi_auc"]),
            "Training sequences |D| predicted for a target F1 at the sizes of the paper's Table 2:", "",
            _md_table(t["text_membership_predictions"])]
    out += ["## TF-IDF and the most memorized sequences", ""] + fig("text_tfidf", "TF-IDF against memorization")
    out += _text_section(report, "tfidf", t["text_tfidf"],
                         ["model", "n_samples", "seed", "unintended_bits", "tfidf_spearman", "tfidf_spearman_p", "tfidf_n"])
    top_cell = text["top_memorized_cell"]
    if top_cell and t["text_top_memorized"].empty:
        out += [f"Cell {top_cell}, the non-reference cell with the most unintended bits, kept no list of its most "
                "memorized sequences (top_memorized.json).", ""]
    elif top_cell:
        out += [f"The most memorized sequences of cell {top_cell} (the non-reference cell with the most "
                f"unintended bits), cut to {TEXT_CHARS} characters, ⏎ a line break:", "",
                _md_table(t["text_top_memorized"], ["rank", "unintended_bits", "tfidf", "script", "extracted_from", "text"])]
    out += ["## Double descent (text)", ""] + fig("text_loss", "train and test loss on text")
    out += _text_section(report, "double_descent", t["text_double_descent"],
                         ["model", "n_params", "maximum", "n_samples_at_max", "test_loss_bits_at_max",
                          "capacity_ratio_at_max", "n_sizes"])
    return out


def markdown(report: Report) -> str:
    t, s = report.tables, report.summary
    out = [f"# memsweep report: {report.sweep_dir.name}", "",
           f"Sweep dir `{report.sweep_dir}`: {s['cells_done']} cells done, {s['cells_missing']} not done.", ""]
    if s["cells_missing"]:
        missing = t["missing"]
        by_state = ", ".join(f"{n} {state}" for state, n in missing["state"].value_counts().items())
        out += ["## Missing cells (this report is partial)", "",
                f"{by_state}; every one is listed in `missing.csv`. Not pending:", "",
                _md_table(missing[missing["state"] != "pending"])]
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if "cells" not in t and "text" not in s:
        return "\n".join(out)
    if "cells" in t:
        out += _uniform_markdown(report)
    if "text" in s:
        out += _text_markdown(report)
    if "text" not in s:
        out += ["## Files", "", "Every table above is a CSV beside this file, at full precision; `cells.csv` has one row "
                "per finished cell (result.json plus the attack's scores), `report.json` the headline numbers.", ""]
    else:
        out += ["## Files", "", "Every table above is a CSV beside this file, at full precision; `text_cells.csv` has one "
                "row per finished text cell" + (" and `cells.csv` one per uniform-token cell" if "cells" in t else "")
                + " (result.json plus the attack's scores), `report.json` the headline numbers (the text ones under "
                "\"text\").", ""]
    return "\n".join(out)


def _integral(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns that hold only whole numbers (counts next to a missing value) as integers."""
    out = df.copy()
    for name in out.columns:
        col = out[name]
        if col.dtype.kind == "f" and col.notna().any() and (col.dropna() % 1 == 0).all():
            out[name] = col.astype("Int64")
    return out


def figure_function(name: str):
    """The function a report.plots entry names: `capacity_curves` in plots, `text_plots.loss` in text_plots."""
    module, _, function = name.rpartition(".")
    return getattr({"": plots, "text_plots": text_plots}[module], function)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None})  # no version: same bytes
    plots.plt.close(figure)
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes, report: Report) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)
    report.written.append(path.name)


def write_report(report: Report, out_dir: Path) -> Path:
    """Write the figures, the CSVs, report.json and report.md into out_dir, each only if its
    bytes differ from the file there; returns report.md (report.written lists what changed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.written = []
    for name, (function, *args) in report.plots.items():
        report.figures[name] = out_dir / f"{name}.png"
        _write_if_changed(report.figures[name], _png(figure_function(function)(*args)), report)
    for name, table in report.tables.items():
        _write_if_changed(out_dir / f"{name}.csv", _integral(table).to_csv(index=False).encode(), report)
    summary = json.dumps({**report.summary, "notes": report.notes}, indent=2, default=str)
    _write_if_changed(out_dir / "report.json", summary.encode(), report)
    path = out_dir / "report.md"
    _write_if_changed(path, markdown(report).encode(), report)
    return path
