"""The text sections' figures, in the look of memsweep.analysis.plots (its colours, log axes and
legend keys): one function per figure, each taking a table of memsweep.analysis.text and
returning a Figure. Dataset sizes span decades, so N is on a log axis; bits are on a log axis
when every value is positive (a zero has no place on one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from memsweep.analysis.capacity import BRACKETED
from memsweep.analysis.plots import OKABE_ITO, _colors, _key, _legend, _log_axis, plt


def _bits_axis(ax, values) -> None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) and (values > 0).all():
        ax.set_yscale("log")
        _log_axis(ax.yaxis, values)


def _model_handles(colors: dict) -> list:
    return [Line2D([], [], color=colors[m], lw=1.8, label=m) for m in colors]


def memorization(means: pd.DataFrame) -> plt.Figure:
    """Unintended memorization against N per model (mean over seeds): against the same-size
    reference and against the oracle, with the total against the uniform code dashed."""
    colors = _colors(means)
    fig, axes = plt.subplots(1, 2, figsize=(13.2, 4.2), squeeze=False, sharey=True, layout="constrained")
    panels = {"unintended_bits": "against the reference (same model, whole pool)",
              "oracle_unintended_bits": "against the oracle (lowest test loss)"}
    for ax, (column, title) in zip(axes[0], panels.items()):
        for model, g in means.groupby("model"):
            g = g.sort_values("n_samples")
            ax.plot(g["n_samples"], g[column], "o-", color=colors[model], lw=1.8, ms=5)
            ax.plot(g["n_samples"], g["total_memorized_bits"], "--", color=colors[model], lw=1)
        ax.set(xscale="log", xlabel="training sequences N", title=title)
        _log_axis(ax.xaxis, means["n_samples"])
    axes[0][0].set_ylabel("memorized bits (sum over the training set)")
    _bits_axis(axes[0][0], means[list(panels) + ["total_memorized_bits"]].to_numpy().ravel())
    n_seeds = int(means["n_seeds"].min())
    _legend(fig, _model_handles(colors) + [
        _key("unintended memorization" + (f" (mean over {n_seeds} seeds)" if n_seeds >= 2 else ""), marker="o", lw=1.8),
        _key("total, against the uniform code", ls="--", lw=1)])
    return fig


def extraction(table: pd.DataFrame) -> plt.Figure:
    """Exact extraction rate against N, one panel per prefix length: training sequences solid,
    held-out sequences dashed (the paper: the first falls with N towards the second)."""
    colors = _colors(table)
    prefixes = sorted(table["prefix"].unique())
    fig, axes = plt.subplots(1, len(prefixes), figsize=(5.0 * len(prefixes) + 3.2, 4.2), squeeze=False,
                             sharey=True, layout="constrained")
    means = table.groupby(["model", "prefix", "n_samples"], sort=True)[["train_rate", "heldout_rate"]].mean().reset_index()
    for ax, k in zip(axes[0], prefixes):
        for model, g in means[means["prefix"] == k].groupby("model"):
            ax.plot(g["n_samples"], g["train_rate"], "o-", color=colors[model], lw=1.8, ms=5)
            ax.plot(g["n_samples"], g["heldout_rate"], "x--", color=colors[model], lw=1.2, ms=5)
        ax.set(xscale="log", xlabel="training sequences N", title=f"extraction from {k}-token prefixes",
               ylim=(-0.03, 1.03))
        _log_axis(ax.xaxis, table["n_samples"])
    axes[0][0].set_ylabel("share of sequences extracted exactly")
    _legend(fig, _model_handles(colors) + [_key("training sequences", marker="o", lw=1.8),
                                           _key("held-out sequences", marker="x", ls="--", lw=1.2)])
    return fig


def tfidf(unintended_bits: np.ndarray, tfidf_values: np.ndarray, cell: str, rho: float | None) -> plt.Figure:
    """TF-IDF against unintended memorization for the sequences of one cell that have some (the
    subset the paper's correlation is over)."""
    positive = np.asarray(unintended_bits, float) > 0
    x, y = np.asarray(unintended_bits, float)[positive], np.asarray(tfidf_values, float)[positive]
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    ax.scatter(x, y, s=10, alpha=0.5, color=OKABE_ITO[0])
    words = f"Spearman ρ = {rho:+.2f}" if rho is not None and np.isfinite(rho) else "no Spearman ρ (fewer than 3 sequences)"
    ax.set(xscale="log", xlabel="unintended memorization [bits]", ylabel="TF-IDF of the sequence",
           title=f"TF-IDF against memorization, {cell}: {words}, {len(x):,} sequences")
    _log_axis(ax.xaxis, x)
    return fig


def loss(curves: pd.DataFrame, peaks: pd.DataFrame) -> plt.Figure:
    """Train and test loss in bits per token against N per model (mean over seeds), bracketed
    test-loss peaks starred and maxima at the grid edge circled (not peaks)."""
    colors = _colors(curves)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    marks = set()
    for model, g in curves.groupby("model"):
        ax.plot(g["n_samples"], g["test_loss_bits"], "o-", color=colors[model], lw=1.8, ms=5)
        ax.plot(g["n_samples"], g["train_loss_bits"], "x--", color=colors[model], lw=1.5, ms=5)
        reference = g[g["is_reference"]]
        ax.plot(reference["n_samples"], reference["test_loss_bits"], "s", color=colors[model], ms=8, mfc="none", mew=1.5)
        peak = peaks[peaks["model"] == model] if len(peaks) else peaks
        if len(peak):
            p = peak.iloc[0]
            bracketed = p["maximum"] == BRACKETED
            ax.plot([p["n_samples_at_max"]], [p["test_loss_bits_at_max"]], "*" if bracketed else "o",
                    ms=15 if bracketed else 14, color=colors[model], mfc=colors[model] if bracketed else "none",
                    mec="black" if bracketed else colors[model], mew=0.6 if bracketed else 2)
            marks.add("peak" if bracketed else "edge")
    ax.set(xscale="log", xlabel="training sequences N", ylabel="loss [bits/token]", title="train and test loss on text")
    ax.set_ylim(bottom=0)
    _log_axis(ax.xaxis, curves["n_samples"])
    n_seeds = int(curves["n_seeds"].min())
    handles = _model_handles(colors) + [
        _key("test loss" + (f" (mean over {n_seeds} seeds)" if n_seeds >= 2 else ""), marker="o", lw=1.8),
        _key("train loss", marker="x", ls="--", lw=1.5)]
    if curves["is_reference"].any():
        handles.append(_key("reference cell (trained on the whole pool)", marker="s", mfc="none", mew=1.5, ls="none"))
    if "peak" in marks:
        handles.append(_key("test-loss peak (bracketed)", marker="*", ms=12, ls="none", mec="black"))
    if "edge" in marks:
        handles.append(_key("maximum at grid edge (not a peak)", marker="o", ms=10, mfc="none", mew=2, ls="none"))
    _legend(fig, handles)
    return fig
