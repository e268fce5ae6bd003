"""Loss-threshold membership inference (Morris et al. 2025, section 5) and its sigmoid law.

The attack (Yeom et al. 2018): a sequence whose loss under the model is below a threshold is
called a member. Members are a cell's training sequences; non-members are fresh sequences from
the same distribution (the cell's held-out set). The two are balanced (the larger is subsampled),
because the paper reads F1 = 0.5 as "random", which holds only for balanced classes, and then split
in half, with a fixed seed, into a calibration and an evaluation split.

Two thresholds are reported:
- calibrated: chosen on the calibration split alone, as the loss that splits its pooled sequences
  into the known member rate (one half) below and the rest above. An attacker who knows the prior
  and nothing else uses it; with no signal it scores F1 ~ 0.5 (not 2/3, which a threshold
  maximising F1 reaches on noise by calling everything a member).
- oracle: the best F1 over all thresholds on the evaluation split itself, an upper bound.
AUC (threshold-free) is on the evaluation split.

The law, as it really fits the paper's Table 2 (docs/papers.md; the printed form swaps c2 and c3
and cannot reach 0.5): F1 = 1/2 [1 + c1 sigma(c2 (|D|/P - c3))], |D| the number of training
sequences and P the raw parameter count; the paper's constants are (1.34, -33.14, 0.034). A sweep
whose F1 barely varies (on random tokens often F1 ~ 1 everywhere) cannot determine the three
constants, and a midpoint c3 outside the measured |D|/P is an extrapolation: neither is fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PAPER_LAW = (1.34, -33.14, 0.034)
"""(c1, c2, c3) of the reconstructed law, fitted by the paper on deduplicated text."""
GPT2_SIZES = {"GPT-2 small config (paper: 'GPT2-Medium')": 123_702_528, "GPT-2 XL": 1_556_075_200}
"""The two models of the paper's Table 2, with its parameter counts (n_positions = 64)."""
TARGET_F1 = (0.55, 0.75, 0.95)
MIN_F1_SPAN = 0.1
"""The law is fitted only when the measured F1 spans at least this much (its rise is what sets
c1, c2 and c3)."""


@dataclass(frozen=True)
class AttackResult:
    f1: float
    """F1 on the evaluation split at the calibrated threshold."""
    f1_oracle: float
    """The best F1 over thresholds on the evaluation split."""
    auc: float
    threshold_bits: float
    """The calibrated threshold, a sequence NLL in bits."""
    n_per_class: int
    """Members (= non-members) per split."""


def _f1(pred_member: np.ndarray, is_member: np.ndarray) -> float:
    tp = float(np.sum(pred_member & is_member))
    predicted, actual = float(pred_member.sum()), float(is_member.sum())
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0


def auc(member_nll: np.ndarray, nonmember_nll: np.ndarray) -> float:
    """P(a member's loss < a non-member's), ties counting one half (Mann-Whitney U / n_m n_n)."""
    pooled = np.concatenate([member_nll, nonmember_nll])
    ranks = _average_ranks(-pooled)  # the lower the loss, the higher the member score
    n_m, n_n = len(member_nll), len(nonmember_nll)
    return float((ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # 1-based mean rank of the tie block
            start = end
    return ranks


def oracle_f1(member_nll: np.ndarray, nonmember_nll: np.ndarray) -> float:
    """Best F1 over every threshold (calling the k lowest-loss sequences members, k = 1..n)."""
    pooled = np.concatenate([member_nll, nonmember_nll])
    is_member = np.concatenate([np.ones(len(member_nll), bool), np.zeros(len(nonmember_nll), bool)])
    order = np.argsort(pooled, kind="mergesort")
    sorted_loss, tp = pooled[order], np.cumsum(is_member[order])
    k = np.arange(1, len(pooled) + 1)
    distinct = np.append(sorted_loss[1:] != sorted_loss[:-1], True)  # a threshold cannot split ties
    f1 = 2 * tp / (k + len(member_nll))
    return float(f1[distinct].max())


def loss_threshold_attack(member_nll: np.ndarray, nonmember_nll: np.ndarray, seed: int = 0) -> AttackResult:
    """The attack on one cell, from per-sequence NLLs of its members and non-members."""
    rng = np.random.default_rng(seed)
    n = min(len(member_nll), len(nonmember_nll)) // 2 * 2
    if n < 2:
        raise ValueError(f"membership inference needs at least 2 members and 2 non-members, got "
                         f"{len(member_nll)} and {len(nonmember_nll)}")
    members = rng.permutation(np.asarray(member_nll, float))[:n]
    nonmembers = rng.permutation(np.asarray(nonmember_nll, float))[:n]
    half = n // 2
    calibration = np.concatenate([members[:half], nonmembers[:half]])
    threshold = float(np.median(calibration))
    eval_members, eval_nonmembers = members[half:], nonmembers[half:]
    pooled = np.concatenate([eval_members, eval_nonmembers])
    is_member = np.concatenate([np.ones(half, bool), np.zeros(half, bool)])
    return AttackResult(
        f1=_f1(pooled < threshold, is_member),
        f1_oracle=oracle_f1(eval_members, eval_nonmembers),
        auc=auc(eval_members, eval_nonmembers),
        threshold_bits=threshold,
        n_per_class=half,
    )


def law_f1(samples_per_param: np.ndarray | float, c1: float, c2: float, c3: float) -> np.ndarray:
    """F1 = 1/2 [1 + c1 sigma(c2 (|D|/P - c3))]."""
    z = c2 * (np.asarray(samples_per_param, float) - c3)
    return 0.5 * (1 + c1 / (1 + np.exp(-z)))


@dataclass(frozen=True)
class LawFit:
    c1: float
    c2: float
    c3: float
    rmse: float
    n_cells: int


def fit_law(samples_per_param: np.ndarray, f1: np.ndarray) -> LawFit:
    """Nonlinear least squares, as the paper, started from the paper's constants scaled to the
    data: c3 at the |D|/P where F1 crosses its midrange, c2 steep enough to span the data."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(samples_per_param, float), np.asarray(f1, float)
    if len(np.unique(x)) < 3:
        raise ValueError(f"fitting the membership law needs cells at 3 or more values of |D|/P, got {len(np.unique(x))}")
    if y.max() - y.min() < MIN_F1_SPAN:
        raise ValueError(f"the measured F1 spans only {y.min():.3f}-{y.max():.3f} (less than {MIN_F1_SPAN}), "
                         "which does not determine the sigmoid's height, slope and midpoint")
    mid = x[np.argmin(np.abs(y - (y.min() + y.max()) / 2))]
    start = (PAPER_LAW[0], PAPER_LAW[1] * PAPER_LAW[2] / max(mid, 1e-12), mid)
    params, _ = curve_fit(law_f1, x, y, p0=start, maxfev=20000,
                          bounds=([0.0, -np.inf, 0.0], [2.0, 0.0, np.inf]))
    if not x.min() <= params[2] <= x.max():
        raise ValueError(f"the fitted midpoint |D|/P = {params[2]:.3g} lies outside the measured "
                         f"{x.min():.3g}-{x.max():.3g}: the sweep does not contain the F1 transition")
    rmse = float(np.sqrt(np.mean((law_f1(x, *params) - y) ** 2)))
    return LawFit(*map(float, params), rmse=rmse, n_cells=len(x))


def samples_for_f1(target_f1: float, n_params: float, c1: float, c2: float, c3: float) -> float | None:
    """|D| (sequences) at which the law predicts `target_f1` for a model of `n_params`; None if
    the law never reaches it (its range is 1/2 .. 1/2 (1 + c1))."""
    s = (2 * target_f1 - 1) / c1
    if not 0 < s < 1 or c2 == 0:
        return None
    samples_per_param = c3 + math.log(s / (1 - s)) / c2
    return samples_per_param * n_params if samples_per_param > 0 else None
