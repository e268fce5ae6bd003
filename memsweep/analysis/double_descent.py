"""Where test loss peaks against dataset bits / model capacity (Morris et al. 2025, section 4).

The paper's claim: double descent begins where the dataset's bits H(X) reach the model's
capacity alpha * P, i.e. at a ratio of 1. Per model and precision the test loss (mean over seeds)
is taken at each dataset size; the peak is the vertex of a parabola through the highest point and
its two neighbours in log(ratio), kept between those neighbours. Its uncertainty comes from a
bootstrap over seeds (each N's seeds redrawn with replacement), and is never narrower than what
the grid can resolve (half a grid step each side, the factor `grid_resolution`: x1.41 for 2x
spacing). An interval no wider than that on both sides is `resolution_limited`: it says where the
grid points are, not where the peak is, so "contains 1" then only means "within the grid's
resolution of 1". A maximum at the smallest or largest N measured is "at grid edge", not a peak:
the true peak may lie outside the grid, so it gets no interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memsweep.analysis.capacity import BRACKETED, maximum_position


@dataclass(frozen=True)
class Peak:
    log_ratio: float
    """log10 of dataset bits / (alpha P) at the peak."""
    bracketed: bool


def locate_peak(log_ratio: np.ndarray, loss: np.ndarray) -> Peak:
    """The interpolated maximum of loss(log_ratio); the points must be sorted by log_ratio."""
    i = int(np.argmax(loss))
    if maximum_position(i, len(loss)) != BRACKETED:
        return Peak(float(log_ratio[i]), bracketed=False)
    x, y = log_ratio[i - 1 : i + 2], loss[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a < 0 else x[1]
    return Peak(float(np.clip(vertex, x[0], x[2])), bracketed=True)


def test_loss_curves(cells: pd.DataFrame, alpha: dict[str, float]) -> pd.DataFrame:
    """Test and train loss per (model, precision, N): mean and spread over seeds, with the
    dataset-to-capacity ratio computed with the precision's alpha."""
    curves = (cells.groupby(["model", "precision", "n_params", "vocab_size", "n_samples"], sort=True)
              .agg(dataset_bits=("dataset_bits", "first"), test_loss=("test_loss", "mean"),
                   test_loss_std=("test_loss", "std"), train_loss=("train_loss", "mean"),
                   n_seeds=("seed", "nunique"))
              .reset_index())
    curves["capacity_ratio"] = curves["dataset_bits"] / (curves["precision"].map(alpha) * curves["n_params"])
    return curves


def double_descent_points(cells: pd.DataFrame, alpha: dict[str, float], n_boot: int = 1000,
                          seed: int = 0) -> pd.DataFrame:
    """One row per (model, precision) with at least 3 dataset sizes: where test loss is highest,
    `maximum` saying whether that is a bracketed peak or at the grid edge."""
    rng = np.random.default_rng(seed)
    rows = []
    for (model, precision), group in cells.groupby(["model", "precision"], sort=True):
        sizes = np.sort(group["n_samples"].unique())
        if len(sizes) < 3 or precision not in alpha:
            continue
        n_params = float(group["n_params"].iloc[0])
        per_size = [group.loc[group["n_samples"] == n, "test_loss"].to_numpy(float) for n in sizes]
        bits = np.array([group.loc[group["n_samples"] == n, "dataset_bits"].iloc[0] for n in sizes])
        log_ratio = np.log10(bits / (alpha[precision] * n_params))
        means = np.array([s.mean() for s in per_size])
        peak = locate_peak(log_ratio, means)
        i = int(np.argmax(means))
        low = high = float("nan")
        grid_step = float(np.median(np.diff(log_ratio)))
        limited = False
        if peak.bracketed:
            boot = [locate_peak(log_ratio, np.array([rng.choice(s, len(s)).mean() for s in per_size])).log_ratio
                    for _ in range(n_boot)] if min(map(len, per_size)) >= 2 else []
            low, high = np.percentile(boot, [2.5, 97.5]) if boot else (peak.log_ratio, peak.log_ratio)
            limited = bool(low >= peak.log_ratio - grid_step / 2 and high <= peak.log_ratio + grid_step / 2)
            low, high = 10 ** min(low, peak.log_ratio - grid_step / 2), 10 ** max(high, peak.log_ratio + grid_step / 2)
        ratio = 10 ** peak.log_ratio
        rows.append({
            "model": model, "precision": precision, "n_params": int(n_params),
            "maximum": maximum_position(i, len(sizes)),
            "ratio_at_max": ratio, "ratio_low": low, "ratio_high": high,
            "grid_resolution": 10 ** (grid_step / 2), "resolution_limited": limited,
            "n_samples_at_max": int(round(ratio * alpha[precision] * n_params / (bits[0] / sizes[0])))
            if peak.bracketed else int(sizes[i]),
            "test_loss_at_max": float(means[i]),
            "n_sizes": len(sizes), "n_seeds": min(map(len, per_size)),
        })
    return pd.DataFrame(rows)


def resolution_line(points: pd.DataFrame) -> str | None:
    """The verdict's sentence on peaks whose interval is only the grid's resolution, or None."""
    if points.empty or not points["resolution_limited"].any():
        return None
    limited = points[points["resolution_limited"]]
    factors = ", ".join(sorted({f"×{f:.2f}" for f in limited["grid_resolution"]}))
    return (f"{len(limited)} of {len(points)} double-descent peaks are resolution-limited: their interval is only "
            f"as wide as the grid allows ({factors} each side), so it locates the grid points, not the peak; a "
            "peak within that factor of 1 'contains 1' whatever the seeds say.")
