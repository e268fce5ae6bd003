"""The report as a W&B view: one run of job_type "report" in the sweep's group.

The local report dir stays the source of truth; this sends the same tables (as W&B Tables), the
same PNGs (as Images) and native W&B charts (capacity curves and test loss per model, throughput
per model and precision), and the headline numbers to the run summary, so the sweep's group on
the dashboard shows capacity curves, double-descent points and per-GPU throughput with no manual
work. Offline without an API key, as the cells' own runs (sync with `wandb sync`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from memsweep.analysis.report import Report
from memsweep.config import CONFIG_FILE
from memsweep.loggers import wandb_mode

TABLES = ("cells", "capacity_summary", "alpha", "double_descent", "membership_predictions",
          "table1_comparison", "appendix_a1_comparison", "throughput_summary", "missing",
          "text_cells", "text_corpora", "text_memorization_mean", "text_capacity", "text_extraction",
          "text_membership", "text_membership_predictions", "text_tfidf", "text_top_memorized", "text_double_descent")


def _table(df: pd.DataFrame):
    import wandb

    clean = df.astype(object).where(df.notna(), None)  # W&B Tables reject NaN in object columns
    return wandb.Table(columns=[str(c) for c in clean.columns],
                       data=[[v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in row]
                             for row in clean.itertuples(index=False)])


def _series(df: pd.DataFrame, x: str, y: str, title: str, xname: str):
    """One line per (model, precision): W&B's line_series chart."""
    import wandb

    keys, xs, ys = [], [], []
    for (model, precision), g in df.sort_values(x).groupby(["model", "precision"]):
        keys.append(f"{model} {precision}")
        xs.append(g[x].tolist())
        ys.append(g[y].tolist())
    return wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=title, xname=xname)


def destination(sweep_dir: Path) -> tuple[str, str | None, str]:
    """(project, entity, group) of the sweep's own cells (their logger config), so the report
    lands in the same W&B group; memsweep's defaults for a sweep without configs."""
    for config in sorted(Path(sweep_dir).glob(f"*/{CONFIG_FILE}")):
        logger = OmegaConf.load(config).get("logger", {})
        return logger.get("project", "memsweep"), logger.get("entity"), logger.get("group") or Path(sweep_dir).name
    return "memsweep", None, Path(sweep_dir).name


def publish(report: Report, out_dir: Path, mode: str = "auto") -> Path:
    """Log the report to W&B; returns the run's local directory."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    project, entity, group = destination(report.sweep_dir)
    run = wandb.init(project=project, entity=entity, group=group, job_type="report", name=f"report-{group}",
                     dir=str(out_dir), mode=wandb_mode(mode), config={"sweep_dir": str(report.sweep_dir)})
    payload = {f"table/{name}": _table(report.tables[name]) for name in TABLES
               if name in report.tables and not report.tables[name].empty}
    payload.update({f"figure/{name}": wandb.Image(str(path)) for name, path in report.figures.items()})
    if "cells" in report.tables:
        curves = report.tables["cells"].groupby(["model", "precision", "n_samples"], as_index=False)[
            ["dataset_bits", "memorized_bits"]].mean()
        payload["chart/capacity_curves"] = _series(curves, "dataset_bits", "memorized_bits",
                                                   "memorized bits vs dataset bits", "dataset bits")
        payload["chart/test_loss"] = _series(report.tables["loss_curves"], "capacity_ratio", "test_loss",
                                             "test loss vs dataset bits / (alpha P)", "dataset bits / (alpha P)")
    if not report.tables.get("throughput_summary", pd.DataFrame()).empty:
        tp = report.tables["throughput_summary"].assign(
            label=lambda d: d["model"] + " " + d["precision"])[["label", "tokens_per_sec_per_device"]]
        payload["chart/throughput"] = wandb.plot.bar(_table(tp), "label", "tokens_per_sec_per_device",
                                                     title="training tokens/s per device")
    run.log(payload)
    run.summary.update(_flat_summary(report.summary))
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir


def _flat_summary(summary: dict) -> dict:
    """The scalars of report.json under W&B-friendly keys (alpha/fp32, alpha_seed_low/fp32, ...)."""
    flat = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    for precision, fit in summary.get("alpha", {}).items():
        flat[f"alpha/{precision}"] = fit["alpha"]
        flat[f"mean_bits_per_param/{precision}"] = fit["mean_bits_per_param"]
        for name, interval in (("seed", fit["alpha_seed_range"]), ("t95", fit["alpha_t95"])):
            if interval:
                flat[f"alpha_{name}_low/{precision}"], flat[f"alpha_{name}_high/{precision}"] = interval
    law = summary.get("membership_law", {}).get("fit")
    if law:
        flat.update({f"membership_law/{k}": law[k] for k in ("c1", "c2", "c3", "rmse")})
    return flat


def publish_perspectives(report, out_dir: Path, mode: str = "auto") -> Path:
    """Log a `memsweep perspectives` report (every table, every figure) to W&B as a run of its own
    (job_type perspectives) in the group of the sweep its models came from; returns its local dir."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    sweep_dir = Path(report.scores_dir).parent
    project, entity, group = destination(sweep_dir)
    run = wandb.init(project=project, entity=entity, group=group, job_type="perspectives",
                     name=f"perspectives-{group}", dir=str(out_dir), mode=wandb_mode(mode),
                     config={"scores_dir": str(report.scores_dir)})
    payload = {f"table/{name}": _table(table) for name, table in report.tables.items() if not table.empty}
    payload.update({f"figure/{name}": wandb.Image(str(path)) for name, path in report.figures.items()})
    run.log(payload)
    run.summary.update({k: v for k, v in report.summary.items() if isinstance(v, (int, float, str))})
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
