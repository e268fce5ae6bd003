"""The figures of the Chen et al. 2024 report, in the look of memsweep.analysis.plots (Okabe-Ito
colours by model size, log axes for parameters and for the heavy-tailed score histogram): one
function per figure, each taking a table of memsweep.analysis.perspectives_* and returning a Figure.
Score groups are coloured on viridis from score 0 (dark) to 1 (yellow-green), the three groups the
paper singles out (0, 0.5, 1) drawn thicker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D

from memsweep.analysis.perspectives_scaling import MEASURES
from memsweep.analysis.perspectives_transitions import BACKWARD, FORWARD, LEVELS, wide
from memsweep.analysis.plots import _colors, _key, _legend, _log_axis, plt

SCORE_CMAP = ListedColormap(plt.get_cmap("viridis")(np.linspace(0, 0.9, 256)))
"""Viridis stopped before its pale yellow end, score 0 to 1."""
PAPER_GROUPS = (0.0, 0.5, 1.0)


def _model_handles(colors: dict) -> list:
    return [Line2D([], [], color=colors[m], lw=1.8, label=m) for m in colors]


def _score_color(score: float):
    return SCORE_CMAP(score)


def histograms(hist: pd.DataFrame) -> plt.Figure:
    """Share of rows per score level, one line per model; a log share axis (empty levels left out)."""
    colors = _colors(hist)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    for model, g in hist.groupby("model", sort=False):
        g = g[g["fraction"] > 0]
        ax.plot(g["score"], g["fraction"], "o-", color=colors[model], lw=1.6, ms=4)
    k, n = int(hist["k"].iloc[0]), int(hist["n"].iloc[0])
    ax.set(yscale="log", xlabel=f"memorization score (share of the {n} continuation tokens matched)",
           ylabel="share of rows", title=f"score distribution, context {k}, continuation {n}")
    _log_axis(ax.yaxis, hist["fraction"][hist["fraction"] > 0])
    _legend(fig, _model_handles(colors))
    return fig


def scaling(counts: pd.DataFrame, fits: pd.DataFrame) -> plt.Figure:
    """Fully memorized and score ≥ 0.5 counts against parameters (log axis), with the fitted
    count = a + b·log10 P where there are enough sizes to judge one."""
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(12.5, 4.2), squeeze=False, layout="constrained")
    p = np.geomspace(counts["n_params"].min() / 1.3, counts["n_params"].max() * 1.3, 50)
    for ax, (measure, title) in zip(axes[0], MEASURES.items()):
        ax.plot(counts["n_params"], counts[measure], "o", color="black", ms=7)
        fit = fits[fits["measure"] == measure] if len(fits) else fits
        if len(fit):
            f = fit.iloc[0]
            ax.plot(p, f["intercept"] + f["slope"] * np.log10(p), "-", color="#0072B2", lw=1.5,
                    label=f"{f['slope']:+,.0f} rows per decade, r = {f['r']:.3f}")
            ax.legend(fontsize=8, frameon=False)
        ax.set(xscale="log", xlabel="parameters P", ylabel="rows", title=title)
        _log_axis(ax.xaxis, p)
    fig.suptitle(f"memorized rows against model size, context {int(counts['k'].iloc[0])}, "
                 f"continuation {int(counts['n'].iloc[0])}")
    return fig


def sizes(by_n: pd.DataFrame, by_k: pd.DataFrame) -> plt.Figure:
    """Fully memorized rows against the continuation (fixed context) and the context (fixed
    continuation), one line per model; a panel only where the grid varies."""
    panels = [(t, v) for t, v in ((by_n, "n"), (by_k, "k")) if len(t)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 3, 4.2), squeeze=False, layout="constrained")
    colors = _colors(pd.concat([t for t, _ in panels]))
    for ax, (table, vary) in zip(axes[0], panels):
        for model, g in table.groupby("model", sort=False):
            g = g.sort_values(vary)
            ax.plot(g[vary], g["fully_memorized"], "o-", color=colors[model], lw=1.6)
        fixed = "k" if vary == "n" else "n"
        ax.set(xlabel="continuation n" if vary == "n" else "context k", ylabel="fully memorized rows",
               title=f"{'continuation' if vary == 'n' else 'context'} effect ({fixed} = {int(table[fixed].iloc[0])})")
        ax.set_xticks(sorted(table[vary].unique()))
    _legend(fig, _model_handles(colors))
    return fig


def transitions(table: pd.DataFrame) -> plt.Figure:
    """One heatmap per consecutive pair and direction: the row-normalised fraction, its count under it."""
    pairs = table[table["direction"] == FORWARD][["from_model", "to_model"]].drop_duplicates().to_numpy()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4.6 * len(pairs)), squeeze=False, layout="constrained")
    short = [lv.replace("very ", "v. ") for lv in LEVELS]
    for row, (small, large) in zip(axes, pairs):
        for ax, (direction, a, b) in zip(row, ((FORWARD, small, large), (BACKWARD, large, small))):
            fractions, counts = wide(table, a, b, "fraction"), wide(table, a, b, "count")
            image = ax.imshow(fractions.to_numpy(float), vmin=0, vmax=1, cmap="Blues")
            for i in range(len(LEVELS)):
                for j in range(len(LEVELS)):
                    f = fractions.iat[i, j]
                    ax.text(j, i, ("–" if np.isnan(f) else f"{f:.3f}") + f"\n({int(counts.iat[i, j]):,})", ha="center",
                            va="center", fontsize=7, color="white" if np.nan_to_num(f) > 0.6 else "black")
            ax.set_xticks(range(len(LEVELS)), short, fontsize=8)
            ax.set_yticks(range(len(LEVELS)), short, fontsize=8)
            ax.set(xlabel=f"level in {b}", ylabel=f"level in {a}", title=f"{a} → {b} ({direction})")
        fig.colorbar(image, ax=row.tolist(), shrink=0.8, label="P(column level | row level)")
    return fig


def dynamics(curves: pd.DataFrame) -> plt.Figure:
    """Per model (rows): the mean unigram count of the true token and the mean entropy at each
    position, one line per score group; the dashed line is the first generated token."""
    models = curves.drop_duplicates("model").sort_values("n_params")["model"].tolist()
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 3.6 * len(models)), squeeze=False, layout="constrained")
    for row, model in zip(axes, models):
        sub = curves[curves["model"] == model]
        for ax, quantity in zip(row, ("frequency", "entropy")):
            for score, g in sub[sub["quantity"] == quantity].groupby("score"):
                main = any(np.isclose(score, PAPER_GROUPS))
                ax.plot(g["position"], g["mean"], color=_score_color(score), lw=2.2 if main else 0.8,
                        alpha=1 if main else 0.6)
            ax.axvline(int(sub["k"].iloc[0]) - 0.5, color="grey", ls="--", lw=1)
            ax.set(xlabel="position", title=f"{model}: {quantity}",
                   ylabel="corpus count of the true token" if quantity == "frequency" else "entropy [nats]")
    handles = [_key(f"score {s:g}", color=_score_color(s), lw=2.2) for s in PAPER_GROUPS]
    handles += [_key("other score levels", color=_score_color(0.25), lw=0.8, alpha=0.6),
                _key("first generated token", color="grey", ls="--", lw=1)]
    _legend(fig, handles)
    return fig


def embedding_distances(by_step: pd.DataFrame) -> plt.Figure:
    """Mean Euclidean distance (with its sampling floor dotted) and mean cosine between score-group
    means of the hidden states, against the generated step, one line per model."""
    colors = _colors(by_step)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), squeeze=False, layout="constrained")
    for model, g in by_step.groupby("model", sort=False):
        axes[0][0].plot(g["step"], g["euclidean"], "o-", color=colors[model], lw=1.6, ms=4)
        axes[0][0].plot(g["step"], g["sampling_floor"], ":", color=colors[model], lw=1.2)
        axes[0][1].plot(g["step"], g["cosine"], "o-", color=colors[model], lw=1.6, ms=4)
    axes[0][0].set(xlabel="generated step", ylabel="Euclidean distance", title="distance between group means")
    axes[0][1].set(xlabel="generated step", ylabel="cosine similarity", title="cosine between group means")
    _legend(fig, _model_handles(colors) + [_key("mean over pairs of score groups", marker="o", lw=1.6),
                                           _key("sampling floor (noise of the means alone)", ls=":", lw=1.2)])
    return fig


def pca(points: pd.DataFrame) -> plt.Figure:
    """Per model, each row's mean hidden state over the generated steps on its first two principal
    components, coloured by score."""
    models = points.drop_duplicates("model").sort_values("n_params")["model"].tolist()
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models) + 1.5, 4.2), squeeze=False, layout="constrained")
    for ax, model in zip(axes[0], models):
        g = points[points["model"] == model]
        scatter = ax.scatter(g["pc1"], g["pc2"], c=g["score"], cmap=SCORE_CMAP, vmin=0, vmax=1, s=8, alpha=0.7)
        ax.set(xlabel=f"PC1 ({g['pc1_explained'].iloc[0]:.0%})", ylabel=f"PC2 ({g['pc2_explained'].iloc[0]:.0%})",
               title=model)
    fig.colorbar(scatter, ax=axes[0].tolist(), shrink=0.8, label="score")
    return fig
