"""The report's figures: one function per figure, each taking tidy tables and writing one PNG.

Matplotlib's Agg backend, so figures render on a login node without a display. Dataset sizes and
bits span decades, so those axes are logarithmic; colours follow the model (by parameter count)
and panels the precision, so fp32 and bf16 sit side by side.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from memsweep.analysis.membership import PAPER_LAW, law_f1  # noqa: E402
from memsweep.analysis.paper import TABLE1_MEAN_ALPHA  # noqa: E402


def _colors(models: pd.DataFrame) -> dict[str, tuple]:
    """A colour per model, ordered by parameter count."""
    ordered = models.drop_duplicates("model").sort_values("n_params")["model"].tolist()
    cmap = plt.get_cmap("viridis")
    return {m: cmap(i / max(1, len(ordered) - 1) * 0.9) for i, m in enumerate(ordered)}


def _panels(precisions: list[str], height: float = 4.0):
    fig, axes = plt.subplots(1, len(precisions), figsize=(5.5 * len(precisions), height), squeeze=False,
                             sharey=True)
    return fig, dict(zip(precisions, axes[0]))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def capacity_curves(cells: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """Memorized bits against dataset bits per model (mean over seeds, min-max band), the
    dataset's own bits as the ceiling, and each model's capacity as a dotted plateau line."""
    colors = _colors(cells)
    fig, axes = _panels(sorted(cells["precision"].unique()))
    for precision, ax in axes.items():
        sub = cells[cells["precision"] == precision]
        for model, g in sub.groupby("model"):
            curve = g.groupby("dataset_bits")["memorized_bits"].agg(["mean", "min", "max"]).reset_index()
            ax.plot(curve["dataset_bits"], curve["mean"], "o-", color=colors[model], label=model)
            ax.fill_between(curve["dataset_bits"], curve["min"], curve["max"], color=colors[model], alpha=0.2)
            cap = summary[(summary["model"] == model) & (summary["precision"] == precision)]
            if len(cap):
                ax.axhline(cap["capacity_bits"].iloc[0], color=colors[model], ls=":", lw=1)
        bits = np.sort(sub["dataset_bits"].unique())
        ax.plot(bits, bits, "--", color="grey", lw=1, label="dataset bits (all memorized)")
        ax.set(xscale="log", yscale="log", xlabel="dataset size H(X) [bits]", title=f"capacity curves, {precision}")
        per_sequence = sub["dataset_bits"] / sub["n_samples"]
        if per_sequence.nunique() == 1:
            b = float(per_sequence.iloc[0])
            top = ax.secondary_xaxis("top", functions=(lambda x, b=b: x / b, lambda n, b=b: n * b))
            top.set_xlabel("training sequences N")
    first = next(iter(axes.values()))
    first.set_ylabel("memorized bits (dotted: capacity)")
    first.legend(fontsize=8)
    return _save(fig, path)


def alpha_fit(caps: pd.DataFrame, fits: dict, path: Path) -> Path:
    """Capacity against parameters: every seed, the mean per model, the fitted line through the
    origin, and the paper's Table 1 mean for the same precision."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = {"fp32": "o", "bf16": "s", "bf16-mixed": "^"}
    p = np.geomspace(caps["n_params"].min() / 1.5, caps["n_params"].max() * 1.5, 50)
    for i, (precision, g) in enumerate(caps.groupby("precision")):
        color = f"C{i}"
        ax.scatter(g["n_params"], g["capacity_bits"], marker=markers.get(precision, "o"), color=color, alpha=0.35, s=15)
        mean = g.groupby("n_params")["capacity_bits"].mean()
        ax.scatter(mean.index, mean.values, marker=markers.get(precision, "o"), color=color, s=50,
                   label=f"{precision} (mean over seeds)")
        if precision in fits:
            ax.plot(p, fits[precision].alpha * p, color=color, lw=1.5, label=f"fit: {fits[precision].alpha:.2f} bits/param")
        if precision in TABLE1_MEAN_ALPHA:
            ax.plot(p, TABLE1_MEAN_ALPHA[precision] * p, color=color, ls="--", lw=1,
                    label=f"paper, Table 1 mean: {TABLE1_MEAN_ALPHA[precision]} ({precision})")
    ax.set(xscale="log", yscale="log", xlabel="parameters P", ylabel="capacity [bits]",
           title="capacity against parameters")
    ax.legend(fontsize=8)
    return _save(fig, path)


def double_descent(curves: pd.DataFrame, points: pd.DataFrame, path: Path) -> Path:
    """Test loss against dataset bits / (alpha P), with the located peaks and their intervals."""
    colors = _colors(curves)
    fig, axes = _panels(sorted(curves["precision"].unique()))
    for precision, ax in axes.items():
        for model, g in curves[curves["precision"] == precision].groupby("model"):
            ax.plot(g["capacity_ratio"], g["test_loss"], "o-", color=colors[model], label=model)
            ax.plot(g["capacity_ratio"], g["train_loss"], ":", color=colors[model], lw=1)
            peak = points[(points["model"] == model) & (points["precision"] == precision)] if len(points) else points
            if len(peak):
                pk = peak.iloc[0]
                ax.errorbar([pk["peak_ratio"]], [pk["peak_test_loss"]], fmt="*", ms=12, color=colors[model],
                            xerr=[[pk["peak_ratio"] - pk["ratio_low"]], [pk["ratio_high"] - pk["peak_ratio"]]])
        ax.axvline(1.0, color="grey", ls="--", lw=1, label="dataset bits = capacity")
        ax.set(xscale="log", xlabel="dataset bits / (alpha P)", title=f"double descent, {precision}")
    first = next(iter(axes.values()))
    first.set_ylabel("loss [nats/token] (solid: test, dotted: train)")
    first.legend(fontsize=8)
    return _save(fig, path)


def membership(cells: pd.DataFrame, law, path: Path) -> Path:
    """Attack F1 per cell against training sequences per parameter, with the fitted law and the
    paper's (reconstructed, fitted on text)."""
    colors = _colors(cells)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for model, g in cells.groupby("model"):
        ax.scatter(g["samples_per_param"], g["mi_f1"], color=colors[model], s=18, label=model)
    x = np.geomspace(cells["samples_per_param"].min() / 2, cells["samples_per_param"].max() * 2, 200)
    if law is not None:
        ax.plot(x, law_f1(x, law.c1, law.c2, law.c3), "k-", lw=1.5,
                label=f"fit: c1={law.c1:.2f}, c2={law.c2:.1f}, c3={law.c3:.3g}")
    ax.plot(x, law_f1(x, *PAPER_LAW), "k--", lw=1, label="paper (text): 1.34, -33.14, 0.034")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="training sequences per parameter |D|/P", ylabel="membership F1 (calibrated)",
           ylim=(0.3, 1.05), title="loss-threshold membership inference")
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput(table: pd.DataFrame, path: Path) -> Path:
    """Tokens per second per device against parameters, per precision (median over cells)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (precision, g) in enumerate(table.groupby("precision")):
        med = g.groupby("n_params")["tokens_per_sec_per_device"].median()
        ax.plot(med.index, med.values, "o-", color=f"C{i}", label=precision)
        ax.scatter(g["n_params"], g["tokens_per_sec_per_device"], color=f"C{i}", alpha=0.3, s=10)
    devices = ", ".join(sorted(map(str, table["device"].dropna().unique())))
    ax.set(xscale="log", yscale="log", xlabel="parameters P", ylabel="training tokens/s per device",
           title=f"throughput ({devices})")
    ax.legend(fontsize=8)
    return _save(fig, path)
