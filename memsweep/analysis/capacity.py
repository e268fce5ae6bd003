"""Capacity per model and the bits-per-parameter fit (Morris et al. 2025, Def. 5 and section 3).

Capacity of a model = the maximum over dataset sizes N of the memorized bits, per seed; the
spread over seeds is reported beside the mean. alpha = capacity / parameters is fitted over models
two ways, both reported: through the origin (the paper's "bits per parameter") and with an
intercept (which shows whether a fixed cost, e.g. the embeddings, bends the line). The
confidence intervals come from a bootstrap over seeds: each replicate redraws every model's seeds
with replacement and refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MODEL_KEYS = ["n_layer", "d_model", "n_head", "vocab_size", "seq_len"]
"""What makes two cells the same model (precision and seed vary within it)."""


def model_label(row) -> str:
    label = f"{row['n_layer']}L d{row['d_model']}"
    return label if row["vocab_size"] == 2048 and row["seq_len"] == 64 else f"{label} V{row['vocab_size']} S{row['seq_len']}"


def capacities(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, precision, seed): the capacity and where it was reached.

    `bracketed` is False when the maximum sits at the largest N measured, so a larger dataset
    might hold more: the capacity is then a lower bound. `saturated` is False when the cell at
    the maximum stopped at max_steps instead of on its plateau: again a lower bound.
    """
    rows = []
    for key, group in cells.groupby([*MODEL_KEYS, "precision", "seed"], sort=True):
        best = group.loc[group["memorized_bits"].idxmax()]
        rows.append({
            **dict(zip([*MODEL_KEYS, "precision", "seed"], key)),
            "model": model_label(best),
            "n_params": int(best["n_params"]),
            "capacity_bits": float(best["memorized_bits"]),
            "bits_per_param": float(best["memorized_bits"]) / float(best["n_params"]),
            "n_samples_at_max": int(best["n_samples"]),
            "n_sizes": int(group["n_samples"].nunique()),
            "bracketed": bool(best["n_samples"] < group["n_samples"].max()),
            "saturated": best.get("stop_reason") == "saturated",
        })
    return pd.DataFrame(rows)


def capacity_summary(caps: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds, one row per (model, precision)."""
    grouped = caps.groupby(["model", "precision"], sort=False)
    out = grouped.agg(
        n_params=("n_params", "first"),
        n_seeds=("seed", "nunique"),
        capacity_bits=("capacity_bits", "mean"),
        capacity_std=("capacity_bits", "std"),
        capacity_min=("capacity_bits", "min"),
        capacity_max=("capacity_bits", "max"),
        all_bracketed=("bracketed", "all"),
        all_saturated=("saturated", "all"),
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
    """With an intercept: capacity = slope * P + intercept (needs two model sizes)."""
    intercept: float | None
    slope_ci: tuple[float, float] | None


def _fit(p: np.ndarray, c: np.ndarray) -> tuple[float, float | None, float | None]:
    alpha = float(p @ c / (p @ p))
    if len(np.unique(p)) < 2:
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
    return AlphaFit(precision, len(per_model), n_seeds, alpha, alpha_ci, slope, intercept, slope_ci)
