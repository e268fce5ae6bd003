"""How rows move between memorization levels from one model size to the next (Chen et al. 2024 §4.2).

Scores map to Chen et al.'s five levels (their corpus_sankey_flow.py): very low ≤ 0.2, low ≤ 0.4,
medium ≤ 0.6, high ≤ 0.8, very high > 0.8. Two models' levels are joined on the row idx, cross-
tabulated and row-normalised, in both directions: P(level in the larger | level in the smaller) and
P(level in the smaller | level in the larger). The counts stay beside the fractions, so an
off-diagonal that the counts cannot support shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memsweep.analysis.perspectives_data import ScoreSet, matched_tokens

LEVELS = ("very low", "low", "medium", "high", "very high")
UPPER_EDGES = (1, 2, 3, 4)
"""In fifths: a score ≤ e/5 is at most in level e−1; the edges are inclusive, as in Chen et al.'s code."""
PAPER_DIAGONALS = {"410M→2.8B": (.598, .591, .581, .865, .923), "2.8B→12B": (.636, .644, .628, .870, .937),
                   "12B→2.8B": (.581, .609, .579, .712, .959), "2.8B→410M": (.483, .512, .481, .597, .962)}
"""The diagonals of Chen et al.'s committed transition figure (rows: the first model)."""
FORWARD, BACKWARD = "small→large", "large→small"


def five_levels(score, n: int) -> np.ndarray:
    """Level 0 (very low) … 4 (very high) of each score m/n, compared as 5m > e·n in integers so a
    float32 score at an edge (0.2 = 1/5 at n = 5, 10, …) stays in the lower level."""
    m = matched_tokens(score, n)[..., None]
    return (5 * m > np.asarray(UPPER_EDGES) * n).sum(-1)


def transition_counts(from_levels: pd.Series, to_levels: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts, row-normalised fractions), 5 × 5 with every level, over the rows both Series hold
    (indexed by idx). A level that no row has in the first model gives a row of NaN fractions."""
    joined = pd.concat({"from": from_levels, "to": to_levels}, axis=1, join="inner")
    counts = pd.crosstab(joined["from"], joined["to"]).reindex(index=range(5), columns=range(5), fill_value=0)
    counts.index, counts.columns = list(LEVELS), list(LEVELS)
    fractions = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    return counts, fractions


def transitions(sets: list[ScoreSet]) -> pd.DataFrame:
    """Between each pair of consecutive sizes, both directions, as tidy rows (count and fraction)."""
    levels = {s.model: pd.Series(five_levels(s.score, s.n), index=s.idx) for s in sets}
    rows = []
    for small, large in zip(sets, sets[1:]):
        for direction, (a, b) in ((FORWARD, (small, large)), (BACKWARD, (large, small))):
            counts, fractions = transition_counts(levels[a.model], levels[b.model])
            for i, level in enumerate(LEVELS):
                for j, to in enumerate(LEVELS):
                    rows.append({"from_model": a.model, "to_model": b.model, "direction": direction, "k": a.k, "n": a.n,
                                 "from_level": level, "to_level": to, "count": int(counts.iat[i, j]),
                                 "fraction": fractions.iat[i, j], "from_level_rows": int(counts.iloc[i].sum())})
    return pd.DataFrame(rows)


def wide(table: pd.DataFrame, from_model: str, to_model: str, value: str) -> pd.DataFrame:
    """One matrix of a transitions table: rows the first model's level, columns the second's."""
    sub = table[(table["from_model"] == from_model) & (table["to_model"] == to_model)]
    return sub.pivot(index="from_level", columns="to_level", values=value).reindex(index=list(LEVELS), columns=list(LEVELS))


def _diagonal(matrix: pd.DataFrame) -> np.ndarray:
    return np.diag(matrix.to_numpy(float))


def transition_words(table: pd.DataFrame) -> list[str]:
    """Each matrix's diagonal and very-high retention beside the paper's, and whether the forward
    diagonal rises with size (the paper: levels get "fixed" as models grow)."""
    lines, forward_means = [], []
    for (a, b, direction), _ in table.groupby(["from_model", "to_model", "direction"], sort=False):
        fractions, counts = wide(table, a, b, "fraction"), wide(table, a, b, "count")
        diagonal = _diagonal(fractions)
        vh_rows = int(counts.loc["very high"].sum())
        retained = (f"{diagonal[-1]:.3f} of the {vh_rows:,} very high rows stay very high" if vh_rows
                    else "no row is very high in the first model")
        lines.append(f"{a}→{b} ({direction}, {int(counts.to_numpy().sum()):,} rows): diagonal "
                     + "/".join("–" if np.isnan(d) else f"{d:.3f}" for d in diagonal) + f"; {retained}.")
        if direction == FORWARD:
            forward_means.append((f"{a}→{b}", float(np.nanmean(diagonal)) if np.isfinite(diagonal).any() else np.nan))
    paper = "; ".join(f"{pair} " + "/".join(f"{d:.3f}" for d in diag) for pair, diag in PAPER_DIAGONALS.items())
    lines.append(f"Chen et al.'s diagonals (Pythia-deduped, 32/16): {paper}; more than 90% of very high rows stay very high.")
    means = np.array([m for _, m in forward_means])
    if len(means) >= 2 and np.isfinite(means).all():
        trend = "rises" if np.all(np.diff(means) > 0) else "falls" if np.all(np.diff(means) < 0) else "is not monotone"
        lines.append("Mean forward diagonal " + ", ".join(f"{p} {m:.3f}" for p, m in forward_means)
                     + f": it {trend} with size (the paper: it rises, {np.mean(PAPER_DIAGONALS['410M→2.8B']):.3f} → "
                     f"{np.mean(PAPER_DIAGONALS['2.8B→12B']):.3f}, levels get fixed as models grow).")
    return lines
