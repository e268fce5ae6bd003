"""Capacity per model and the bits-per-parameter fit (Morris et al. 2025, Def. 5 and section 3;
docs/papers.md).

Capacity of a model = the maximum over dataset sizes N of the memorized bits, per seed; the
spread over seeds is reported beside the mean. Each maximum says why it may sit under the true
capacity (a lower bound): it is at the grid edge, its cell hit max_steps, or it holds nearly all
that its dataset allows (metrics.data_ceiling_bits). alpha = capacity / parameters is fitted over
models through the origin (the paper's "bits per parameter"; a P^2-weighted mean of per-model
bits/param, so mostly the largest model) and, from 3 models on, also with an intercept (with 2 the
line passes exactly through both points and says nothing). Beside it: the unweighted mean of
per-model bits/param (what Table 1's column means are) and the models' spread around the fit.
Uncertainty over seeds is the range of per-seed fits; a Student-t 95% interval over seeds only
from MIN_SEEDS_FOR_T seeds on (with fewer, no interval deserves that name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from memsweep.metrics import data_ceiling_bits

MODEL_KEYS = ["n_layer", "d_model", "n_head", "vocab_size", "seq_len"]
"""What makes two cells the same model (precision and seed vary within it)."""
BRACKETED, AT_GRID_EDGE = "bracketed", "at grid edge"
"""Where a maximum over N sits: with measured N on both sides, or at the smallest or largest N
(then the true maximum may lie outside the grid). The same words for every maximum in the report."""
DATA_CEILING = 0.9
"""A maximum holding at least this fraction of its data ceiling (metrics.data_ceiling_bits) is at
the data ceiling: the model memorized (nearly) all its dataset allows, so it might hold more."""
MIN_MODELS_FOR_INTERCEPT = 3
"""A line with an intercept has 2 parameters: through 2 models it is exact, not a fit."""
MIN_SEEDS_FOR_T = 5
"""Fewer seeds give no interval that may be called a 95% one: the seed range is shown instead."""


def maximum_position(i: int, n_points: int) -> str:
    """BRACKETED or AT_GRID_EDGE for the maximum at index i of n_points sorted grid points."""
    return BRACKETED if 0 < i < n_points - 1 else AT_GRID_EDGE


def model_label(row) -> str:
    label = f"{row['n_layer']}L d{row['d_model']}"
    return label if row["vocab_size"] == 2048 and row["seq_len"] == 64 else f"{label} V{row['vocab_size']} S{row['seq_len']}"


def capacities(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, precision, seed): the capacity, where it was reached, and whether it
    is a lower bound: at the grid edge, from a cell that hit max_steps (stopped by the step budget,
    not on its plateau), or at the data ceiling (DATA_CEILING of metrics.data_ceiling_bits)."""
    rows = []
    for key, group in cells.groupby([*MODEL_KEYS, "precision", "seed"], sort=True):
        group = group.sort_values("n_samples")
        i = int(np.argmax(group["memorized_bits"].to_numpy()))
        best = group.iloc[i]
        maximum = maximum_position(i, len(group))
        hit_max_steps = best.get("stop_reason") == "max_steps"
        ceiling = data_ceiling_bits(int(best["n_samples"]), int(best["seq_len"]), int(best["vocab_size"]))
        at_ceiling = float(best["memorized_bits"]) >= DATA_CEILING * ceiling
        rows.append({
            **dict(zip([*MODEL_KEYS, "precision", "seed"], key)),
            "model": model_label(best),
            "n_params": int(best["n_params"]),
            "capacity_bits": float(best["memorized_bits"]),
            "bits_per_param": float(best["memorized_bits"]) / float(best["n_params"]),
            "n_samples_at_max": int(best["n_samples"]),
            "data_ceiling_bits": ceiling,
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
    """Seeds measured for every model in the fit: those the per-seed fits use."""
    alpha: float
    """Through the origin: capacity = alpha * P (P^2-weighted, so mostly the largest model)."""
    alpha_seed_range: tuple[float, float] | None
    """Min and max of alpha fitted to each seed alone (None with one seed)."""
    alpha_t95: tuple[float, float] | None
    """Student-t 95% interval of alpha over seeds (None below MIN_SEEDS_FOR_T seeds)."""
    mean_bits_per_param: float
    """Unweighted mean over models of capacity / P: comparable to Table 1's column means."""
    model_bits_per_param_range: tuple[float, float]
    """Min and max over models of capacity / P."""
    model_residual_std: float | None
    """Standard deviation over models of capacity / P - alpha (None with one model)."""
    slope: float | None
    """With an intercept: capacity = slope * P + intercept (None below MIN_MODELS_FOR_INTERCEPT)."""
    intercept: float | None
    slope_seed_range: tuple[float, float] | None
    slope_t95: tuple[float, float] | None
    lower_bound: bool
    """Some capacity in the fit is a lower bound (see capacities), so alpha may be too."""


def _fit(p: np.ndarray, c: np.ndarray) -> tuple[float, float | None, float | None]:
    alpha = float(p @ c / (p @ p))
    if len(np.unique(p)) < MIN_MODELS_FOR_INTERCEPT:
        return alpha, None, None
    slope, intercept = np.polyfit(p, c, 1)
    return alpha, float(slope), float(intercept)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of values, or None below MIN_SEEDS_FOR_T of them."""
    n = len(values)
    if n < MIN_SEEDS_FOR_T:
        return None
    half = stats.t.ppf((1 + level) / 2, n - 1) * np.std(values, ddof=1) / np.sqrt(n)
    return float(np.mean(values) - half), float(np.mean(values) + half)


def _spread(values: list) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(min-max, t-interval) of per-seed fits; None where there is one seed or none."""
    if len(values) < 2 or values[0] is None:
        return None, None
    values = np.array(values, float)
    return (float(values.min()), float(values.max())), t_interval(values)


def fit_alpha(caps: pd.DataFrame, precision: str) -> AlphaFit:
    """alpha for one precision from per-seed capacities: the fit to the mean over seeds, the range
    of fits to one seed each (seeds measured for every model), the t-interval where there are
    enough seeds, and the unweighted mean of per-model bits/param with the models' spread."""
    sub = caps[caps["precision"] == precision]
    if sub.empty:
        raise ValueError(f"no capacities for precision {precision!r}")
    groups = [g for _, g in sub.groupby("model")]
    p = np.array([g["n_params"].iloc[0] for g in groups], float)
    means = np.array([g["capacity_bits"].mean() for g in groups])
    alpha, slope, intercept = _fit(p, means)
    seeds = sorted(set.intersection(*(set(g["seed"]) for g in groups)))
    per_seed = [_fit(p, np.array([g.loc[g["seed"] == s, "capacity_bits"].mean() for g in groups])) for s in seeds]
    alpha_range, alpha_t = _spread([f[0] for f in per_seed])
    slope_range, slope_t = _spread([f[1] for f in per_seed])
    bpp = means / p
    return AlphaFit(precision, len(groups), len(seeds), alpha, alpha_range, alpha_t,
                    mean_bits_per_param=float(bpp.mean()),
                    model_bits_per_param_range=(float(bpp.min()), float(bpp.max())),
                    model_residual_std=float(np.std(bpp - alpha, ddof=1)) if len(bpp) > 1 else None,
                    slope=slope, intercept=intercept, slope_seed_range=slope_range, slope_t95=slope_t,
                    lower_bound=bool(sub["lower_bound"].any()))
