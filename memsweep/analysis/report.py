"""`memsweep report`: a sweep dir in, tidy tables + PNG figures + a Markdown report out.

`build_report` only computes (tables, fitted numbers, what is missing); `write_report` writes the
files; memsweep.analysis.wandb_report sends the same Report to W&B. A partial sweep reports what
it has and lists what it lacks; a section that needs more cells than there are says so instead
of failing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis import plots
from memsweep.analysis.capacity import capacities, capacity_summary, fit_alpha
from memsweep.analysis.cells import load_sweep
from memsweep.analysis.double_descent import double_descent_points, test_loss_curves
from memsweep.analysis.membership import GPT2_SIZES, PAPER_LAW, TARGET_F1, LawFit, fit_law, samples_for_f1
from memsweep.analysis.paper import PAPER_INCONSISTENCIES, TABLE1_MEAN_ALPHA, appendix_a1_comparison, table1_comparison
from memsweep.analysis.throughput import throughput_summary, throughput_table
from memsweep.cell import PER_SAMPLE_FILE

REPORT_DIR = "report"
"""Default output: <sweep dir>/report/."""


@dataclass
class Report:
    sweep_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tidy tables by name; each is written as <name>.csv."""
    summary: dict = field(default_factory=dict)
    """The headline numbers (alpha per precision, gap, peaks, law), also report.json."""
    notes: list[str] = field(default_factory=list)
    """What could not be computed, and why (a partial sweep, too few sizes, ...)."""
    plots: dict[str, tuple] = field(default_factory=dict)
    """Figures to draw: name -> (function in memsweep.analysis.plots, its arguments)."""
    figures: dict[str, Path] = field(default_factory=dict)
    """Drawn figures: name -> PNG path (filled by render_figures)."""


def _membership_law(cells: pd.DataFrame, report: Report) -> LawFit | None:
    if "mi_f1" not in cells:
        report.notes.append(f"membership law not fitted: no done cell kept its {PER_SAMPLE_FILE}")
        return None
    scored = cells.dropna(subset=["mi_f1"])
    try:
        return fit_law(scored["samples_per_param"].to_numpy(), scored["mi_f1"].to_numpy())
    except (ValueError, RuntimeError) as err:  # too few cells, or scipy's curve_fit gave up
        report.notes.append(f"membership law not fitted: {err}")
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
                             "training_sequences": n})
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
    report.tables["cells"] = cells

    caps = capacities(cells)
    summary = capacity_summary(caps)
    report.tables["capacity"], report.tables["capacity_summary"] = caps, summary
    fits = {p: fit_alpha(caps, p, n_boot=n_boot) for p in sorted(caps["precision"].unique())}
    report.tables["alpha"] = pd.DataFrame([asdict(f) for f in fits.values()])
    report.summary["alpha"] = {p: asdict(f) for p, f in fits.items()}
    if "fp32" in fits and "bf16" in fits:
        report.summary["alpha_bf16_minus_fp32"] = fits["bf16"].alpha - fits["fp32"].alpha
    if any(not row.all_bracketed or not row.all_saturated for row in summary.itertuples()):
        report.notes.append("some capacities are lower bounds: their best cell stopped at max_steps, or the "
                            "largest N measured held the most bits (columns all_saturated, all_bracketed)")

    alpha = {p: f.alpha for p, f in fits.items()}
    report.tables["loss_curves"] = test_loss_curves(cells, alpha)
    points = double_descent_points(cells, alpha, n_boot=min(n_boot, 1000))
    report.tables["double_descent"] = points
    if points.empty:
        report.notes.append("double descent: no (model, precision) has the 3 dataset sizes a peak needs")
    report.summary["double_descent_peak_ratios"] = points[["model", "precision", "peak_ratio", "ratio_low",
                                                           "ratio_high", "bracketed"]].to_dict("records") if len(points) else []

    law = _membership_law(cells, report)
    report.summary["membership_law"] = {"fit": asdict(law) if law else None, "paper": dict(zip(("c1", "c2", "c3"), PAPER_LAW))}
    report.tables["membership_predictions"] = _predicted_sizes(law)

    report.tables["table1_comparison"] = table1_comparison(summary)
    report.tables["appendix_a1_comparison"] = appendix_a1_comparison(cells)
    throughput = throughput_table(cells, peak_flops)
    report.tables["throughput"], report.tables["throughput_summary"] = throughput, throughput_summary(throughput)

    report.plots["capacity_curves"] = ("capacity_curves", cells, summary)
    report.plots["alpha_fit"] = ("alpha_fit", caps, fits)
    report.plots["double_descent"] = ("double_descent", report.tables["loss_curves"], points)
    if "mi_f1" in cells:
        report.plots["membership"] = ("membership", cells.dropna(subset=["mi_f1"]), law)
    if len(throughput):
        report.plots["throughput"] = ("throughput", throughput)
    return report


def render_figures(report: Report, out_dir: Path) -> None:
    for name, (function, *args) in report.plots.items():
        report.figures[name] = getattr(plots, function)(*args, out_dir / f"{name}.png")


def _md_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_none_\n"

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "–"
        if isinstance(v, float):
            return format(v, ",.4g")
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            return format(v, ",")
        if isinstance(v, tuple):
            return "–".join(format(x, ".3g") for x in v)
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _alpha_lines(report: Report) -> list[str]:
    lines = []
    for p, f in report.summary.get("alpha", {}).items():
        ci = f"95% CI {f['alpha_ci'][0]:.2f}–{f['alpha_ci'][1]:.2f} (bootstrap over seeds)" if f["alpha_ci"] else "no CI (one seed)"
        line = f"- **{p}: α = {f['alpha']:.2f} bits/param** through the origin, {ci}; {f['n_models']} models, ≥{f['n_seeds']} seeds each"
        if f["slope"] is not None:
            sci = f", slope CI {f['slope_ci'][0]:.2f}–{f['slope_ci'][1]:.2f}" if f["slope_ci"] else ""
            line += f". With an intercept: {f['slope']:.2f} bits/param {f['intercept']:+,.0f} bits{sci}"
        paper = TABLE1_MEAN_ALPHA.get(p)
        lines.append(line + (f". Paper (Table 1 mean, {p}): {paper}." if paper else "."))
    if "alpha_bf16_minus_fp32" in report.summary:
        lines.append(f"- bf16 − fp32: {report.summary['alpha_bf16_minus_fp32']:+.2f} bits/param "
                     f"(paper: {TABLE1_MEAN_ALPHA['bf16'] - TABLE1_MEAN_ALPHA['fp32']:+.2f})")
    return lines


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
    if "cells" not in t:
        return "\n".join(out)
    fig = lambda name, alt: [f"![{alt}]({name}.png)", ""] if name in report.figures else []  # noqa: E731
    out += ["## Capacity", ""] + fig("capacity_curves", "capacity curves") + fig("alpha_fit", "alpha fit")
    out += _alpha_lines(report) + ["", _md_table(t["capacity_summary"])]
    out += ["## Against the paper", "", "Table 1 (Morris et al. 2025; rows via ../shared/reference/morris2025.md):", "",
            _md_table(t["table1_comparison"]), "App. A.1's expected memorization min(3.642 P, H) beside the measured "
            "(mean over seeds):", "", _md_table(t["appendix_a1_comparison"]),
            "Where the paper disagrees with itself:", ""] + [f"- {n}" for n in PAPER_INCONSISTENCIES] + [""]
    out += ["## Double descent", ""] + fig("double_descent", "double descent")
    out += ["Peak of test loss against dataset bits / (α P), α fitted above per precision; the paper puts it at 1.", "",
            _md_table(t["double_descent"])]
    law = s["membership_law"]["fit"]
    out += ["## Membership inference", ""] + fig("membership", "membership inference")
    if law:
        out += [f"Fitted law F1 = ½[1 + c1 σ(c2 (|D|/P − c3))] over {law['n_cells']} cells: c1 = {law['c1']:.3g}, "
                f"c2 = {law['c2']:.4g}, c3 = {law['c3']:.4g} (RMSE {law['rmse']:.3f}); the paper's, fitted on text: "
                f"1.34, −33.14, 0.034.", ""]
    out += ["Training sequences |D| predicted for a target F1 (the paper's Table 2 sizes):", "",
            _md_table(t["membership_predictions"])]
    out += ["## Throughput", ""] + fig("throughput", "throughput") + [_md_table(t["throughput_summary"])]
    out += ["## Files", "", "Every table above is a CSV beside this file; `cells.csv` has one row per finished cell "
            "(result.json plus the attack's scores), `report.json` the headline numbers.", ""]
    return "\n".join(out)


def write_report(report: Report, out_dir: Path) -> Path:
    """Write the figures, the CSVs, report.json and report.md into out_dir; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    render_figures(report, out_dir)
    for name, table in report.tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps({**report.summary, "notes": report.notes}, indent=2, default=str))
    path = out_dir / "report.md"
    path.write_text(markdown(report))
    return path
