"""Score distributions and how the memorized counts scale (Chen et al. 2024 §4.1).

Two readings of the counts against parameters are set side by side: the log-linear fit
count = a + b·log10 P (Carlini et al.'s law; docs/papers.md finds it fits Pythia's own counts
with r = 0.999) and the paper's "capacity" reading, that the increase per decade of parameters
shrinks at large sizes. The per-decade slopes between consecutive sizes carry a standard error
from the rows themselves (the same rows scored by both models, so the difference is paired).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memsweep.analysis.perspectives_data import ScoreSet

MIN_SIZES_FOR_FIT = 3
"""Through two sizes a line is exact: its r says nothing."""
MEASURES = {"fully_memorized": "fully memorized rows (score 1)", "half_or_more": "rows with score ≥ 0.5"}
PYTHIA_FIT = {"r": 0.999, "rows_per_decade": 1.22e6, "share_per_decade": 1.22e6 / 146_432_000}
"""docs/papers.md's fit to Pythia-deduped's fully memorized counts at 32/16 (146,432,000 rows)."""
PYTHIA_SLOPES = {"70M→2.8B": 1.19e6, "2.8B→12B": 1.31e6}
PYTHIA_RETAINED = {"70M": 0.188, "12B": 0.259}
"""Pythia's fully memorized count at continuation 64 over that at 16 (it rises with size: docs/papers.md)."""
PYTHIA_CONTEXT_RATIO = {"160M": 2.59, "12B": 2.91}
"""Pythia's count at context 96 over that at 32 (continuation 16)."""


def histogram(sets: list[ScoreSet]) -> pd.DataFrame:
    """Rows per score level m/n (every level, empty ones too) per model and configuration."""
    rows = []
    for s in sets:
        counts = np.bincount(s.matches, minlength=s.n + 1)
        rows += [{"model": s.model, "n_params": s.n_params, "k": s.k, "n": s.n, "matched": m, "score": m / s.n,
                  "count": int(c), "fraction": c / len(s.matches)} for m, c in enumerate(counts)]
    return pd.DataFrame(rows)


def memorized_counts(sets: list[ScoreSet]) -> pd.DataFrame:
    """Per model and configuration: fully memorized (score 1), half or more (≥ 0.5) and unmemorized (0) rows."""
    rows = []
    for s in sets:
        m = s.matches
        rows.append({"model": s.model, "n_params": s.n_params, "k": s.k, "n": s.n, "n_rows": len(m),
                     "fully_memorized": int((m == s.n).sum()), "half_or_more": int((2 * m >= s.n).sum()),
                     "unmemorized": int((m == 0).sum()), "fully_memorized_share": float((m == s.n).mean())})
    return pd.DataFrame(rows).sort_values(["k", "n", "n_params"]).reset_index(drop=True)


@dataclass
class LogLinearFit:
    intercept: float
    slope: float
    """Rows per tenfold increase in parameters."""
    r: float
    """Pearson's r of count and log10 P (NaN when the counts do not vary)."""
    n_sizes: int


def log_linear_fit(n_params, counts) -> LogLinearFit:
    """count = a + b·log10 P by least squares; refused below MIN_SIZES_FOR_FIT distinct sizes."""
    x, y = np.log10(np.asarray(n_params, float)), np.asarray(counts, float)
    if len(np.unique(x)) < MIN_SIZES_FOR_FIT:
        raise ValueError(f"{len(np.unique(x))} model size(s): a log-linear fit needs {MIN_SIZES_FOR_FIT} to be judged")
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if y.std() > 0 else float("nan")
    return LogLinearFit(float(intercept), float(slope), r, len(np.unique(x)))


def indicator_table(sets: list[ScoreSet], measure: str) -> pd.DataFrame:
    """Rows (joined on idx, present for every model) by models, smallest first: 1 where the row counts."""
    columns = {}
    for s in sets:
        hit = s.matches == s.n if measure == "fully_memorized" else 2 * s.matches >= s.n
        columns[s.model] = pd.Series(hit.astype(np.int64), index=s.idx)
    return pd.DataFrame(columns).dropna().astype(np.int64)


def _per_row_slopes(indicators: pd.DataFrame, n_params: dict[str, int]) -> list[tuple[str, str, float, np.ndarray]]:
    """Per consecutive pair: (smaller, larger, decades, each row's share of the count's change per decade)."""
    names, pairs = list(indicators.columns), []
    for small, large in zip(names, names[1:]):
        decades = float(np.log10(n_params[large] / n_params[small]))
        pairs.append((small, large, decades, (indicators[large] - indicators[small]).to_numpy(float) / decades))
    return pairs


def _sum_se(per_row: np.ndarray) -> float:
    """The standard error of a sum over rows sampled from the corpus: √R · sd."""
    return float(np.sqrt(len(per_row)) * per_row.std(ddof=1)) if len(per_row) > 1 else float("nan")


def decade_slopes(indicators: pd.DataFrame, n_params: dict[str, int]) -> pd.DataFrame:
    """The count's increase per tenfold parameters between consecutive sizes, with its standard
    error from the paired rows (the same rows scored by both models)."""
    return pd.DataFrame([{"from_model": small, "to_model": large, "decades": decades,
                          "count_change": per_row.sum() * decades, "slope_per_decade": per_row.sum(),
                          "slope_se": _sum_se(per_row)}
                         for small, large, decades, per_row in _per_row_slopes(indicators, n_params)])


def capacity_reading(indicators: pd.DataFrame, n_params: dict[str, int]) -> dict:
    """Does the per-decade increase shrink from the smallest pair to the largest (the paper's
    "capacity"), grow, or change by less than the standard error of the difference (paired over
    rows, so the model two consecutive pairs share is accounted for)?"""
    pairs = _per_row_slopes(indicators, n_params)
    (a, b, _, first), (c, d, _, last) = pairs[0], pairs[-1]
    gap, se = first.sum() - last.sum(), _sum_se(first - last)
    verdict = "shrinks by more than" if gap > se else "grows by more than" if -gap > se else "changes by less than"
    return {"first": f"{a}→{b}", "first_slope": float(first.sum()), "last": f"{c}→{d}", "last_slope": float(last.sum()),
            "difference_se": se, "verdict": verdict}


@dataclass
class Scaling:
    fits: pd.DataFrame
    slopes: pd.DataFrame
    reading: dict | None
    """capacity_reading of the fully memorized counts, with two or more consecutive pairs."""
    not_fitted: str | None
    """Why there is no log-linear fit (too few sizes)."""


def scaling(sets: list[ScoreSet]) -> Scaling:
    """Both readings of both measures over one configuration's models, smallest first."""
    params = {s.model: s.n_params for s in sets}
    fits, slopes, reading, not_fitted = [], [], None, None
    for measure in MEASURES:
        indicators = indicator_table(sets, measure)
        slopes.append(decade_slopes(indicators, params).assign(measure=measure))
        if measure == "fully_memorized" and len(sets) >= 3:
            reading = capacity_reading(indicators, params)
        counts = indicators.sum()
        try:
            fit = log_linear_fit([params[m] for m in counts.index], counts.to_numpy())
        except ValueError as err:
            not_fitted = str(err)
            continue
        fits.append({"measure": measure, "k": sets[0].k, "n": sets[0].n, "n_rows": len(indicators),
                     **fit.__dict__, "share_per_decade": fit.slope / len(indicators)})
    return Scaling(pd.DataFrame(fits), pd.concat(slopes, ignore_index=True), reading, not_fitted)


def scaling_words(result: Scaling, k: int, n: int) -> list[str]:
    """Both readings of the counts against parameters, beside docs/papers.md's Pythia numbers."""
    lines = [f"The log-linear fit cannot be judged: {result.not_fitted}."] if result.not_fitted else []
    for fit in result.fits.itertuples():
        pythia = (f" (Pythia-deduped at 32/16: r = {PYTHIA_FIT['r']}, +{PYTHIA_FIT['rows_per_decade'] / 1e6:.2f}M rows, "
                  f"{PYTHIA_FIT['share_per_decade']:.2%} of the rows, per decade)") if fit.measure == "fully_memorized" else ""
        lines.append(f"{MEASURES[fit.measure].capitalize()} at {k}/{n} over {fit.n_sizes} sizes: count = "
                     f"{fit.intercept:,.0f} {fit.slope:+,.1f}·log10 P, that is {fit.slope:+,.1f} rows "
                     f"({fit.share_per_decade:+.2%} of the {fit.n_rows:,} rows) per decade, Pearson r = {fit.r:.3f}{pythia}.")
    if result.reading:
        r = result.reading
        full = result.slopes[result.slopes["measure"] == "fully_memorized"]
        each = "; ".join(f"{s.from_model}→{s.to_model} {s.slope_per_decade:+,.1f} ± {s.slope_se:,.1f}"
                         for s in full.itertuples())
        meaning = {"shrinks by more than": "the shrinking increase the paper reads as a capacity for memorization",
                   "grows by more than": "the opposite of the paper's capacity reading",
                   "changes by less than": "no evidence for the paper's capacity reading"}[r["verdict"]]
        lines.append(f"Per-decade increase of fully memorized rows between consecutive sizes: {each}. From {r['first']} "
                     f"to {r['last']} it {r['verdict']} the standard error of the difference ({r['difference_se']:,.1f}): "
                     f"{meaning}. On Pythia (docs/papers.md) "
                     + ", ".join(f"{p} {v / 1e6:.2f}M" for p, v in PYTHIA_SLOPES.items())
                     + " per decade: no shrinking, the paper's reading comes from its evenly spaced size axis.")
    return lines


def _retained(counts: pd.DataFrame, vary: str) -> pd.DataFrame:
    """Per model: the fully memorized count at the largest `vary` over that at the smallest."""
    rows = []
    for model, g in counts.groupby("model", sort=False):
        g = g.sort_values(vary)
        if len(g) >= 2:
            first, last = g.iloc[0], g.iloc[-1]
            ratio = last["fully_memorized"] / first["fully_memorized"] if first["fully_memorized"] else float("nan")
            rows.append({"model": model, "n_params": int(first["n_params"]), "value_from": int(first[vary]),
                         "value_to": int(last[vary]), "count_from": int(first["fully_memorized"]),
                         "count_to": int(last["fully_memorized"]), "ratio": ratio})
    return pd.DataFrame(rows)


def size_effect_words(counts: pd.DataFrame, vary: str, fixed: str, value: int) -> list[str]:
    """The continuation effect (vary n at fixed k) or the context effect (vary k at fixed n)."""
    sub = counts[counts[fixed] == value].sort_values("n_params", kind="stable")
    table = _retained(sub, vary)
    if table.empty:
        return []
    what = "continuation n" if vary == "n" else "context k"
    lines = [f"{r.model}: fully memorized rows at {fixed} = {value} go from {r.count_from:,} at {vary} = {r.value_from} "
             f"to {r.count_to:,} at {vary} = {r.value_to}"
             + (f" (ratio {r.ratio:.3g})." if np.isfinite(r.ratio) else " (no ratio: none at the first).")
             for r in table.itertuples()]
    ratios = table["ratio"].to_numpy(float)
    if len(table) >= 2 and np.isfinite(ratios).all():
        trend = "rises" if np.all(np.diff(ratios) > 0) else "falls" if np.all(np.diff(ratios) < 0) else "is not monotone"
        paper = (f"the paper: counts fall sub-linearly with n and larger models lose more in absolute terms; on Pythia (docs/papers.md): the "
                 f"retained share rises with size on Pythia, c64/c16 {PYTHIA_RETAINED['70M']} at 70M and "
                 f"{PYTHIA_RETAINED['12B']} at 12B" if vary == "n" else
                 f"the paper: counts rise almost exponentially with context, more for larger models; on Pythia ctx 96 / 32 "
                 f"is {PYTHIA_CONTEXT_RATIO['160M']}× at 160M and {PYTHIA_CONTEXT_RATIO['12B']}× at 12B")
        lines.append(f"The ratio over {what} {trend} with model size ({paper}).")
    return lines
