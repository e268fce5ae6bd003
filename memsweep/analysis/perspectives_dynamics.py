"""Per-position token frequency and entropy per score group, and the boundary effect (Chen et al. 2024 §4.3-4.4).

For each score group m/n: the mean corpus unigram count of the true token at each position 0…k+n−1,
and the mean entropy of the distribution predicting it (teacher-forced over the context, on the
model's own greedy tokens from position k). The boundary effect is the change from position k−1
(the last context token) to k (the first generated one), per row, so its standard error is that of
a paired difference; the relative change is a ratio of means, with the ratio estimator's standard
error. Like Chen et al. (20,000 rows per group for frequencies, 1,000 for entropy), each group is
capped at a seeded sample of rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memsweep.analysis.perspectives_data import ScoreSet

MAX_ROWS_PER_GROUP = 20_000
Z_RESOLVED = 2.0
"""A change is called a rise or a drop only when it is at least this many standard errors from 0."""
QUANTITIES = ("frequency", "entropy")
PAPER_ENTROPY = {"70M": {1.0: (.806, .562), 0.5: (1.99, 1.65), 0.0: (3.73, 4.27)},
                 "12B": {1.0: (.471, .338), 0.5: (1.40, 0.95), 0.0: (2.66, 3.50)}}
"""Chen et al.'s mean entropy (nats) at positions 31 → 32, per group score (their .pkl files)."""
PAPER_FREQUENCY_CHANGE = {"160M": {1.0: .114, 0.5: .330, 0.0: -.939}, "12B": {1.0: .039, 0.5: .237, 0.0: -1.016}}
"""Chen et al.'s Table 1: mean unigram count change 31 → 32, in 1e9 (the Pile baseline is about 1.7e9)."""
PAPER_SIGN = {("entropy", 1.0): -1, ("entropy", 0.5): -1, ("entropy", 0.0): +1,
              ("frequency", 1.0): +1, ("frequency", 0.5): +1, ("frequency", 0.0): -1}
"""The direction of the change at the first generated token that the paper reports per group."""
PAPER_HALF_SIGN = {"entropy": +1, "frequency": -1}
"""Half-memorized rows at k + n/2, the paper: entropy jumps up again, frequency falls back."""


def score_groups(matches: np.ndarray, n: int, max_rows: int, seed: int) -> dict[int, np.ndarray]:
    """Row positions per matched count present, at most max_rows each (a seeded sample, kept in order)."""
    rng = np.random.default_rng(seed)
    groups = {}
    for m in np.unique(matches):
        rows = np.flatnonzero(matches == m)
        groups[int(m)] = np.sort(rng.choice(rows, max_rows, replace=False)) if len(rows) > max_rows else rows
    return groups


def position_means(values: np.ndarray) -> pd.DataFrame:
    """Mean and standard error per position (columns) over rows, NaNs (entropy at position 0) left out."""
    values = np.asarray(values, float)
    finite = np.isfinite(values)
    count = finite.sum(0)
    filled = np.where(finite, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / count
        var = (np.where(finite, values - mean, 0.0) ** 2).sum(0) / (count - 1)
        se = np.sqrt(var / count)
    return pd.DataFrame({"position": np.arange(values.shape[1]), "mean": mean, "se": se, "n_rows": count})


def boundary_effect(values: np.ndarray, at: int) -> dict:
    """The change from position at−1 to at over the rows finite at both: absolute (paired, with its
    standard error) and relative (mean after / mean before − 1, ratio estimator's standard error)."""
    before, after = np.asarray(values, float)[:, at - 1], np.asarray(values, float)[:, at]
    keep = np.isfinite(before) & np.isfinite(after)
    before, after, rows = before[keep], after[keep], int(keep.sum())
    if rows < 2:
        return {"before": np.nan, "after": np.nan, "change": np.nan, "change_se": np.nan, "relative": np.nan,
                "relative_se": np.nan, "n_rows": rows}
    ratio = after.mean() / before.mean()
    return {"before": before.mean(), "after": after.mean(), "change": (after - before).mean(),
            "change_se": (after - before).std(ddof=1) / np.sqrt(rows), "relative": ratio - 1,
            "relative_se": (after - ratio * before).std(ddof=1) / (np.sqrt(rows) * abs(before.mean())), "n_rows": rows}


def dynamics(sets: list[ScoreSet], unigram: np.ndarray, max_rows: int = MAX_ROWS_PER_GROUP,
             seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-position curves, boundary effects) per model and score group. The boundary is at k for
    every group, and also at k + n/2 for the half-memorized group (where the paper sees a second jump)."""
    curves, effects = [], []
    for s in sets:
        for m, rows in score_groups(s.matches, s.n, max_rows, seed).items():
            per_quantity = {"frequency": unigram[s.true[rows]].astype(float), "entropy": s.entropy[rows]}
            where = [("first generated", s.k)] + ([("half point", s.k + s.n // 2)] if 2 * m == s.n else [])
            key = {"model": s.model, "n_params": s.n_params, "k": s.k, "n": s.n, "matched": m, "score": m / s.n}
            for quantity, values in per_quantity.items():
                curves.append(position_means(values).assign(**key, quantity=quantity))
                effects += [{**key, "quantity": quantity, "boundary": name, "position": at,
                             **boundary_effect(values, at)} for name, at in where]
    columns = ["model", "n_params", "k", "n", "matched", "score", "quantity", "position", "mean", "se", "n_rows"]
    return pd.concat(curves, ignore_index=True)[columns], pd.DataFrame(effects)


def direction(change: float, se: float) -> int:
    """+1 a rise, −1 a drop, 0 when |change| < Z_RESOLVED standard errors (or undefined)."""
    if not (np.isfinite(change) and np.isfinite(se)) or abs(change) < Z_RESOLVED * se:
        return 0
    return int(np.sign(change))


def _agreement(sign: int, paper: int) -> str:
    return ("as the paper reports" if sign == paper else "the opposite of the paper" if sign
            else f"not resolved: within {Z_RESOLVED:g} standard errors of 0")


def dynamics_words(effects: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The paper's boundary findings for the 0, 0.5 and 1 groups, checked one by one from the numbers."""
    lines = []
    first = effects[effects["boundary"] == "first generated"]
    for row in first[first["score"].isin([0.0, 0.5, 1.0])].itertuples():
        if not np.isfinite(row.change_se):  # one row: a change without an error says nothing
            lines.append(f"{row.model}, score {row.score:g} ({row.n_rows:,} row): {row.quantity} not judged, "
                         "too few rows for a standard error.")
            continue
        sign, paper = direction(row.change, row.change_se), PAPER_SIGN[row.quantity, row.score]
        word = {1: "rises", -1: "drops", 0: "changes"}[sign]
        unit = "nats" if row.quantity == "entropy" else "counts"
        lines.append(f"{row.model}, score {row.score:g} ({row.n_rows:,} rows): {row.quantity} {word} from position "
                     f"{row.position - 1} to {row.position}, {row.before:.3g} → {row.after:.3g} {unit} "
                     f"({row.change:+.3g} ± {row.change_se:.3g}, {row.relative:+.1%} ± {row.relative_se:.1%}): "
                     f"{_agreement(sign, paper)} ({'drop' if paper < 0 else 'rise'}).")
    for row in effects[effects["boundary"] == "half point"].itertuples():
        if not np.isfinite(row.change_se):
            continue
        sign, paper = direction(row.change, row.change_se), PAPER_HALF_SIGN[row.quantity]
        lines.append(f"{row.model}, score 0.5: {row.quantity} at the half point {row.position - 1} → {row.position} "
                     f"{row.before:.3g} → {row.after:.3g} ({row.change:+.3g} ± {row.change_se:.3g}): "
                     f"{_agreement(sign, paper)} ({'a fall back' if paper < 0 else 'a second jump up'}).")
    unmem, mem = first[first["score"] == 0.0], first[first["score"] == 1.0]
    both = unmem.merge(mem, on=["model", "quantity"], suffixes=("_u", "_m"))
    for row in both[both["quantity"] == "frequency"].itertuples():
        if not (np.isfinite(row.relative_u) and np.isfinite(row.relative_m)):
            continue
        stronger = abs(row.relative_u) > abs(row.relative_m)
        lines.append(f"{row.model}: the frequency boundary effect is {'stronger' if stronger else 'weaker'} for unmemorized "
                     f"rows ({row.relative_u:+.1%}) than for memorized ones ({row.relative_m:+.1%}) (the paper: much stronger).")
    entropy = curves[(curves["quantity"] == "entropy") & curves["score"].isin([0.0, 1.0])]
    for model, g in entropy.groupby("model", sort=False):
        per_group = g.groupby("score")["mean"].mean()
        if {0.0, 1.0} <= set(per_group.index):
            higher = per_group[0.0] > per_group[1.0]
            lines.append(f"{model}: mean entropy over all positions {per_group[0.0]:.3g} nats for unmemorized rows, "
                         f"{per_group[1.0]:.3g} for memorized ones ({'higher' if higher else 'not higher'} for "
                         "unmemorized; the paper: higher throughout).")
    paper_h = "; ".join(f"{size}: " + ", ".join(f"score {g:g} {a:.3g} → {b:.3g}" for g, (a, b) in groups.items())
                        for size, groups in PAPER_ENTROPY.items())
    paper_f = "; ".join(f"{size}: " + ", ".join(f"score {g:g} {d:+.3f}e9" for g, d in groups.items())
                        for size, groups in PAPER_FREQUENCY_CHANGE.items())
    lines.append(f"Chen et al. (Pythia-deduped, positions 31 → 32): entropy {paper_h}; unigram count change {paper_f} "
                 "on a baseline of about 1.7e9 (memorized about +2 to +7%, unmemorized about −50%).")
    return lines
