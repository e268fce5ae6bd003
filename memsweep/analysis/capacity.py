"""Capacity per model and the bits-per-parameter fit (Morris et al. 2025, Def. 5 and section 3;
docs/papers.md).

Capacity of a model = the maximum over dataset sizes N of the memorized bits, per seed; the
spread over seeds is reported beside the mean. Each maximum says why it may sit under the true
capacity (a lower bound): it is at the grid edge, its cell hit max_steps, or it holds nearly all of
its dataset's bits. alpha = capacity / parameters is fitted over models through the origin (the
paper's "bits per parameter") and, from 3 models on, also with an intercept (with 2 the line passes
exactly through both points and says nothing). The confidence intervals come from a bootstrap over
seeds: each replicate redraws every model's seeds with replacement and refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MODEL_KEYS = ["n_layer", "d_model", "n_head", "vocab_size", "seq_len"]
"""What makes two cells the same model (precision and seed vary within it)."""
BRACKETED, AT_GRID_EDGE = "bracketed", "at grid edge"
"""Where a maximum over N sits: with measured N on both sides, or at the smallest or largest N
(then the true maximum may lie outside the grid). The same words for every maximum in the report."""
DATA_CEILING = 0.9
"""A maximum holding at least this fraction of its dataset's bits is at the data ceiling: the
model memorized (nearly) all it was given, so it might hold more."""
MIN_MODELS_FOR_INTERCEPT = 3
"""A line with an intercept has 2 parameters: through 2 models it is exact, not a fit."""


def maximum_position(i: int, n_points: int) -> str:
    """BRACKETED or AT_GRID_EDGE for the maximum at index i of n_points sorted grid points."""
    return BRACKETED if 0 < i < n_points - 1 else AT_GRID_EDGE


def model_label(row) -> str:
    label = f"{row['n_layer']}L d{row['d_model']}"
    return label if row["vocab_size"] == 2048 and row["seq_len"] == 64 else f"{label} V{row['vocab_size']} S{row['seq_len']}"


def capacities(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, precision, seed): the capacity, where it was reached, and whether it
    is a lower bound: at the grid edge, from a cell that hit max_steps (stopped by the step budget,
    not on its plateau), or at the data ceiling."""
    rows = []
    for key, group in cells.groupby([*MODEL_KEYS, "precision", "seed"], sort=True):
        group = group.sort_values("n_samples")
        i = int(np.argmax(group["memorized_bits"].to_numpy()))
        best = group.iloc[i]
        maximum = maximum_position(i, len(group))
        hit_max_steps = best.get("stop_reason") == "max_steps"
        at_ceiling = float(best["memorized_bits"]) >= DATA_CEILING * float(best["dataset_bits"])
        rows.append({
            **dict(zip([*MODEL_KEYS, "precision", "seed"], key)),
            "model": model_label(best),
            "n_params": int(best["n_params"]),
            "capacity_bits": float(best["memorized_bits"]),
            "bits_per_param": float(best["memorized_bits"]) / float(best["n_params"]),
            "n_samples_at_max": int(best["n_samples"]),
            "n_sizes": len(group),
            "maximum": maximum,
            "hit_max_steps": bool(hit_max_steps),
            "at_data_ceiling": bool(at_ceiling),
            "lower_bound": bool(maximum == AT_GRID_EDGE or hit_max_steps or at_ceiling),
        })
    return pd.DataFrame(rows)


def capacity_summary(caps: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds, one row per (model, precision), with how many seeds' maxima
    are at the grid edge, hit max_steps or are at the data ceiling."""
    grouped = caps.assign(edge=caps["maximum"] == AT_GRID_EDGE).groupby(["model", "precision"], sort=False)
    out = grouped.agg(
        **{k: (k, "first") for k in MODEL_KEYS},
        n_params=("n_params", "first"),
        n_seeds=("seed", "nunique"),
        capacity_bits=("capacity_bits", "mean"),
        capacity_std=("capacity_bits", "std"),
        capacity_min=("capacity_bits", "min"),
        capacity_max=("capacity_bits", "max"),
        seeds_at_grid_edge=("edge", "sum"),
        seeds_hit_max_steps=("hit_max_steps", "sum"),
        seeds_at_data_ceiling=("at_data_ceiling", "sum"),
        lower_bound=("lower_bound", "any"),
    ).reset_index()
    out["bits_per_param"] = out["capacity_bits"] / out["n_params"]
    return out.sort_values(["precision", "n_params"]).reset_index(drop=True)


@dataclass(frozen=True)
class AlphaFit:
    precision: str
    n_models: int
    n_seeds: int
    """The fewest seeds of any model in the fit."""
    alpha: float
    """Through the origin: capacity = alpha * P."""
    alpha_ci: tuple[float, float] | None
    slope: float | None
    """With an intercept: capacity = slope * P + intercept (None below MIN_MODELS_FOR_INTERCEPT)."""
    intercept: float | None
    slope_ci: tuple[float, float] | None
    lower_bound: bool
    """Some capacity in the fit is a lower bound (see capacities), so alpha may be too."""


def _fit(p: np.ndarray, c: np.ndarray) -> tuple[float, float | None, float | None]:
    alpha = float(p @ c / (p @ p))
    if len(np.unique(p)) < MIN_MODELS_FOR_INTERCEPT:
        return alpha, None, None
    slope, intercept = np.polyfit(p, c, 1)
    return alpha, float(slope), float(intercept)


def fit_alpha(caps: pd.DataFrame, precision: str, n_boot: int = 2000, seed: int = 0) -> AlphaFit:
    """alpha for one precision from per-seed capacities, with 95% bootstrap intervals over seeds
    (None when some model has a single seed: there is nothing to resample)."""
    sub = caps[caps["precision"] == precision]
    if sub.empty:
        raise ValueError(f"no capacities for precision {precision!r}")
    groups = [g for _, g in sub.groupby("model")]
    per_model = [g["capacity_bits"].to_numpy(float) for g in groups]
    p = np.array([g["n_params"].iloc[0] for g in groups], float)
    alpha, slope, intercept = _fit(p, np.array([c.mean() for c in per_model]))
    n_seeds = min(len(c) for c in per_model)
    alpha_ci = slope_ci = None
    if n_seeds >= 2:
        rng = np.random.default_rng(seed)
        boot = np.array([_fit(p, np.array([rng.choice(c, len(c)).mean() for c in per_model]))[:2]
                         for _ in range(n_boot)], dtype=float)
        alpha_ci = tuple(np.percentile(boot[:, 0], [2.5, 97.5]))
        if slope is not None:
            slope_ci = tuple(np.percentile(boot[:, 1], [2.5, 97.5]))
    return AlphaFit(precision, len(per_model), n_seeds, alpha, alpha_ci, slope, intercept, slope_ci,
                    lower_bound=bool(sub["lower_bound"].any()))
