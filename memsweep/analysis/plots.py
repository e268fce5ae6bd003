"""The report's figures: one function per figure, each taking tidy tables and returning a Figure.

Matplotlib's Agg backend, so figures render on a login node without a display. Dataset sizes and
bits span decades, so those axes are logarithmic, labelled at 1, 2 and 5 x powers of ten (or at
the grid's own N) so that labels never overlap. Colours follow the model (by parameter count, from
the colour-blind-safe Okabe-Ito palette without its pale yellow) and panels the precision. The
marks mean the same in every figure and each is in a legend: an upward triangle is a value that is
only a lower bound (its cell hit max_steps), a star a bracketed peak, a hollow circle a maximum at
the grid edge.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from memsweep.analysis.capacity import BRACKETED  # noqa: E402
from memsweep.analysis.membership import PAPER_LAW, law_f1  # noqa: E402
from memsweep.analysis.paper import APPENDIX_A1_ALPHA, TABLE1_MEAN_ALPHA  # noqa: E402

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe & Ito's colour-blind-safe palette, its yellow left out (invisible on white)."""
LOWER_BOUND_MARKER, POINT_MARKER = "^", "o"


def _colors(models: pd.DataFrame) -> dict[str, str | tuple]:
    """A colour per model, ordered by parameter count; viridis stopped before its yellow end
    when there are more models than the palette has colours."""
    ordered = models.drop_duplicates("model").sort_values("n_params")["model"].tolist()
    if len(ordered) <= len(OKABE_ITO):
        return dict(zip(ordered, OKABE_ITO))
    cmap = plt.get_cmap("viridis")
    return {m: cmap(0.8 * i / (len(ordered) - 1)) for i, m in enumerate(ordered)}


def _power_of_ten(value: float, _=None) -> str:
    """0.001 .. 5000 as plain numbers, else 2 x 10^4 as mathtext (10^k without the 1 x)."""
    exponent = int(np.floor(np.log10(value) + 1e-9))
    if -3 <= exponent <= 3:
        return f"{value:g}"
    mantissa = round(value / 10 ** exponent, 6)
    power = f"10^{{{exponent}}}"
    return f"${power}$" if mantissa == 1 else f"${mantissa:g}\\times{power}$"


def _log_axis(axis, values) -> None:
    """Log ticks labelled at 1, 2, 5 x 10^k (only 10^k beyond 3 decades), unlabelled minor ticks."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(values.max() / values.min()) if len(values) else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_power_of_ten))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    axis.set_minor_formatter(NullFormatter())


def _grid_ticks(axis, values) -> None:
    """Ticks at the grid's own values (at most 8 labels), written as plain integers."""
    values = np.sort(np.unique(values))
    axis.set_major_locator(FixedLocator(values[:: int(np.ceil(len(values) / 8))]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axis.set_minor_locator(NullLocator())


def _panels(precisions: list[str], height: float = 4.2, width: float = 5.0):
    fig, axes = plt.subplots(1, len(precisions), figsize=(width * len(precisions) + 3.2, height),
                             squeeze=False, sharey=True, layout="constrained")
    return fig, dict(zip(precisions, axes[0]))


def _legend(fig, handles: list) -> None:
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def _key(label: str, **style) -> Line2D:
    """A legend entry for a kind of mark, drawn in black."""
    return Line2D([], [], color=style.pop("color", "black"), label=label, **style)


def _seed_words(n_seeds: int) -> str:
    return f"mean over {n_seeds} seeds, band: min-max" if n_seeds >= 2 else "one seed"


def capacity_curves(cells: pd.DataFrame, summary: pd.DataFrame) -> plt.Figure:
    """Memorized bits against dataset bits per model (mean over seeds with the min-max band when
    there are several), the dataset's own bits as the ceiling, each model's measured capacity as a
    dotted plateau, and the paper's expectation alpha P (App. A.1) as a dash-dotted one."""
    colors = _colors(cells)
    fig, axes = _panels(sorted(cells["precision"].unique()))
    n_seeds = int(cells.groupby(["model", "precision", "n_samples"])["seed"].nunique().min())
    cells = cells.assign(hit=cells["stop_reason"].eq("max_steps") if "stop_reason" in cells else False)
    for precision, ax in axes.items():
        sub = cells[cells["precision"] == precision]
        for model, g in sub.groupby("model"):
            c = colors[model]
            curve = g.groupby("dataset_bits").agg(mean=("memorized_bits", "mean"), low=("memorized_bits", "min"),
                                                  high=("memorized_bits", "max"), hit=("hit", "any")).reset_index()
            ax.plot(curve["dataset_bits"], curve["mean"], "-", color=c, lw=1.8)
            for hit, points in curve.groupby("hit"):
                ax.plot(points["dataset_bits"], points["mean"], LOWER_BOUND_MARKER if hit else POINT_MARKER,
                        color=c, ms=7)
            if n_seeds >= 2:
                ax.fill_between(curve["dataset_bits"], curve["low"], curve["high"], color=c, alpha=0.2, lw=0)
            cap = summary[(summary["model"] == model) & (summary["precision"] == precision)]
            if len(cap):
                ax.axhline(cap["capacity_bits"].iloc[0], color=c, ls=":", lw=1.5)
                ax.axhline(APPENDIX_A1_ALPHA * cap["n_params"].iloc[0], color=c, ls="-.", lw=1, alpha=0.8)
        bits = np.sort(sub["dataset_bits"].unique())
        ax.plot(bits, bits, "--", color="grey", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="dataset size H(X) [bits]", title=f"capacity curves, {precision}")
        _log_axis(ax.xaxis, bits)
        per_sequence = sub["dataset_bits"] / sub["n_samples"]
        if per_sequence.nunique() == 1:
            b = float(per_sequence.iloc[0])
            top = ax.secondary_xaxis("top", functions=(lambda x, b=b: x / b, lambda n, b=b: n * b))
            top.set_xlabel("training sequences N")
            _grid_ticks(top.xaxis, sub["n_samples"])
    first = next(iter(axes.values()))
    first.set_ylabel("memorized bits")
    _log_axis(first.yaxis, np.concatenate([cells["memorized_bits"], APPENDIX_A1_ALPHA * summary["n_params"]]))
    handles = [Line2D([], [], color=colors[m], lw=1.8, label=m) for m in colors]
    handles += [_key(f"memorized bits ({_seed_words(n_seeds)})", marker=POINT_MARKER, lw=1.8),
                _key("measured capacity (max over N)", ls=":", lw=1.5),
                _key(f"paper's expectation {APPENDIX_A1_ALPHA}·P (App. A.1)", ls="-.", lw=1),
                _key("dataset bits (all memorized)", color="grey", ls="--", lw=1)]
    if cells["hit"].any():
        handles.append(_key("cell hit max_steps: a lower bound", marker=LOWER_BOUND_MARKER, ls="none"))
    _legend(fig, handles)
    return fig


def alpha_fit(caps: pd.DataFrame, fits: dict) -> plt.Figure:
    """Capacity against parameters: every seed (when there are several), the mean per model, the
    fitted line through the origin, and the paper's Table 1 mean for the same precision."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    p = np.geomspace(caps["n_params"].min() / 1.5, caps["n_params"].max() * 1.5, 50)
    handles = []
    for i, (precision, g) in enumerate(caps.groupby("precision")):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        per_model = g.groupby("n_params").agg(capacity=("capacity_bits", "mean"), seeds=("seed", "nunique"),
                                              lower=("lower_bound", "any"))
        n_seeds = int(per_model["seeds"].min())
        if n_seeds >= 2:
            ax.scatter(g["n_params"], g["capacity_bits"], color=color, alpha=0.35, s=15)
        for lower, points in per_model.groupby("lower"):
            ax.plot(points.index, points["capacity"], LOWER_BOUND_MARKER if lower else POINT_MARKER,
                    color=color, ms=8)
        handles.append(_key(f"{precision}: capacity, " + (f"mean over {n_seeds} seeds (faint: each seed)"
                                                           if n_seeds >= 2 else "one seed"),
                            color=color, marker=POINT_MARKER, ls="none"))
        if precision in fits:
            fit = fits[precision]
            words = "fit through the origin" if fit.n_models > 1 else "capacity / P (one model)"
            ax.plot(p, fit.alpha * p, color=color, lw=1.5)
            handles.append(_key(f"{precision} {words}: α = {fit.alpha:.2f}", color=color, lw=1.5))
        if precision in TABLE1_MEAN_ALPHA:
            ax.plot(p, TABLE1_MEAN_ALPHA[precision] * p, color=color, ls="--", lw=1)
            handles.append(_key(f"paper, Table 1 {precision} mean: α = {TABLE1_MEAN_ALPHA[precision]}",
                                color=color, ls="--", lw=1))
    if caps["lower_bound"].any():
        handles.append(_key("a lower bound (see the report)", marker=LOWER_BOUND_MARKER, ls="none"))
    ax.set(xscale="log", yscale="log", xlabel="parameters P", ylabel="capacity [bits]",
           title="capacity against parameters")
    _log_axis(ax.xaxis, p)
    _log_axis(ax.yaxis, np.concatenate([caps["capacity_bits"], max(TABLE1_MEAN_ALPHA.values()) * p]))
    _legend(fig, handles)
    return fig


def double_descent(curves: pd.DataFrame, points: pd.DataFrame) -> plt.Figure:
    """Test and train loss against dataset bits / (alpha P), ln V (a uniform guess), the ratio 1
    where the paper puts the peak, bracketed peaks with their intervals and edge maxima apart."""
    colors = _colors(curves)
    fig, axes = _panels(sorted(curves["precision"].unique()))
    marks = set()
    for precision, ax in axes.items():
        sub = curves[curves["precision"] == precision]
        for model, g in sub.groupby("model"):
            ax.plot(g["capacity_ratio"], g["test_loss"], "o-", color=colors[model], lw=1.8, ms=5)
            ax.plot(g["capacity_ratio"], g["train_loss"], "x--", color=colors[model], lw=1.5, ms=5)
            peak = points[(points["model"] == model) & (points["precision"] == precision)] if len(points) else points
            if not len(peak):
                continue
            pk = peak.iloc[0]
            if pk["maximum"] == BRACKETED:
                ax.errorbar([pk["ratio_at_max"]], [pk["test_loss_at_max"]], fmt="*", ms=15, color=colors[model],
                            mec="black", mew=0.6, capsize=3,
                            xerr=[[pk["ratio_at_max"] - pk["ratio_low"]], [pk["ratio_high"] - pk["ratio_at_max"]]])
                marks.add("peak")
            else:
                ax.plot([pk["ratio_at_max"]], [pk["test_loss_at_max"]], "o", ms=14, mfc="none", mec=colors[model],
                        mew=2)
                marks.add("edge")
        for v in sorted(sub["vocab_size"].unique()):
            ax.axhline(np.log(v), color="black", ls=":", lw=1.2)
        ax.axvline(1.0, color="grey", ls="--", lw=1)
        ax.set(xscale="log", xlabel="dataset bits / (α·P), α fitted per precision", title=f"double descent, {precision}")
        ax.set_ylim(bottom=0)
        _log_axis(ax.xaxis, sub["capacity_ratio"])
    first = next(iter(axes.values()))
    first.set_ylabel("loss [nats/token]")
    n_seeds = int(curves["n_seeds"].min())
    handles = [Line2D([], [], color=colors[m], lw=1.8, label=m) for m in colors]
    handles += [_key("test loss" + (f" (mean over {n_seeds} seeds)" if n_seeds >= 2 else ""), marker="o", lw=1.8),
                _key("train loss", marker="x", ls="--", lw=1.5),
                _key("ln V, the loss of a uniform guess ("
                     + ", ".join(f"ln {v} = {np.log(v):.2f}" for v in sorted(curves["vocab_size"].unique())) + ")",
                     ls=":", lw=1.2),
                _key("dataset bits = α·P (paper: peak here)", color="grey", ls="--", lw=1)]
    if "peak" in marks:
        handles.append(_key("peak (bracketed), with its interval", marker="*", ms=12, ls="none", mec="black"))
    if "edge" in marks:
        handles.append(_key("maximum at grid edge (not a peak)", marker="o", ms=10, mfc="none", mew=2, ls="none"))
    _legend(fig, handles)
    return fig


def membership(cells: pd.DataFrame, law) -> plt.Figure:
    """Attack F1 per cell against training sequences per parameter, with the law fitted to this
    sweep (when its F1 range determines one) and the paper's (reconstructed, fitted on text)."""
    colors = _colors(cells)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    handles = []
    for model, g in cells.groupby("model"):
        ax.scatter(g["samples_per_param"], g["mi_f1"], color=colors[model], s=22)
        handles.append(_key(f"{model}: one cell", color=colors[model], marker="o", ls="none"))
    x = np.geomspace(cells["samples_per_param"].min() / 2, cells["samples_per_param"].max() * 2, 200)
    if law is not None:
        ax.plot(x, law_f1(x, law.c1, law.c2, law.c3), "k-", lw=1.5)
        handles.append(_key(f"law fitted here: c1={law.c1:.2f}, c2={law.c2:.1f}, c3={law.c3:.3g}", lw=1.5))
    ax.plot(x, law_f1(x, *PAPER_LAW), "k--", lw=1)
    handles.append(_key("paper's law (fitted on text): 1.34, -33.14, 0.034", ls="--", lw=1))
    ax.axhline(0.5, color="grey", lw=0.8)
    handles.append(_key("F1 = 0.5: random guessing", color="grey", lw=0.8))
    ax.set(xscale="log", xlabel="training sequences per parameter |D|/P", ylabel="membership F1 (calibrated)",
           ylim=(0.3, 1.05), title="loss-threshold membership inference")
    _log_axis(ax.xaxis, x)
    _legend(fig, handles)
    return fig


def throughput(table: pd.DataFrame) -> plt.Figure:
    """Tokens per second per device against parameters: each cell, and the median per model."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), layout="constrained")
    handles = []
    for i, (precision, g) in enumerate(table.groupby("precision")):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        med = g.groupby("n_params")["tokens_per_sec_per_device"].median()
        ax.plot(med.index, med.values, "o-", color=color, ms=7)
        ax.scatter(g["n_params"], g["tokens_per_sec_per_device"], color=color, alpha=0.4, s=14)
        handles += [_key(f"{precision}: median over cells", color=color, marker="o"),
                    _key(f"{precision}: one cell", color=color, alpha=0.4, marker="o", ms=4, ls="none")]
    y = table["tokens_per_sec_per_device"]
    devices = ", ".join(sorted(map(str, table["device"].dropna().unique())))
    ax.set(xscale="log", xlabel="parameters P", ylabel="training tokens/s per device",
           title=f"training throughput on {devices}")
    if y.max() / y.min() > 10:
        ax.set_yscale("log")
        _log_axis(ax.yaxis, y)
    else:
        ax.set_ylim(0, y.max() * 1.15)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _log_axis(ax.xaxis, np.concatenate([table["n_params"] / 1.3, table["n_params"] * 1.3]))
    _legend(fig, handles)
    return fig


def time_to_capacity(points: pd.DataFrame, curves: pd.DataFrame, laws: pd.DataFrame) -> plt.Figure:
    """Memorized bits per parameter against training tokens (log axis) for schedule=wsd cells:
    the constant-LR run as a thin line, the model after each decay as points joined by a thick
    line, and Table 1's value for the same config (dotted) where the paper has one."""
    fig, axes = _panels(sorted(points["precision"].unique()))
    colors = _colors(points)
    markers = dict(zip(sorted(points["n_samples"].unique()), "osD^vP*X" * 8))  # N apart within a model's colour
    handles: list = []
    for precision, ax in axes.items():
        for (model, n), p in points[points["precision"] == precision].groupby(["model", "n_samples"]):
            p, color, marker = p.sort_values("tokens"), colors[model], markers[n]
            if len(curves):
                c = curves[(curves["model"] == model) & (curves["n_samples"] == n) & (curves["precision"] == precision)]
                ax.plot(c["tokens"], c["memorized_bits"] / p["n_params"].iloc[0], color=color, lw=0.8, alpha=0.6)
            ax.plot(p["tokens"], p["bits_per_param"], color=color, lw=2, marker=marker, ms=5)
            handles.append(_key(f"{model} {precision}, N = {n:,}: after each decay", color=color, lw=2, marker=marker))
        for target in laws.loc[laws["precision"] == precision, "table1_bits_per_param"].dropna().unique():
            ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="training tokens behind the model", ylabel="memorized bits / parameter",
               title=precision)
    handles += [_key("constant-LR run between decays", color="grey", lw=0.8),
                _key("Table 1, same config", color="grey", ls=":", lw=1)]
    _legend(fig, handles)
    return fig
