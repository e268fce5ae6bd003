"""TF-IDF of each training sequence (Morris et al. 2025 App. A.3): do rarer tokens get memorized more?

TF-IDF(d; D) = (1/|d|) sum_{w in d} log(|D| / tf(w, D)), read here as: w runs over the S token
positions of sequence d (a token repeated in d counts each time), so |d| = S; tf(w, D) is the
count of token w over the whole training set D; |D| is the number of sequences, as the paper
writes it. Natural log. Tokens more frequent than |D| therefore contribute negative terms.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import spearmanr


def sequence_tfidf(tokens: np.ndarray) -> np.ndarray:
    """(N,) float64 TF-IDF of each row of tokens (N, S), with D = the N rows themselves."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be 2-D (N, S) with S >= 1, got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer) or (tokens.size and tokens.min() < 0):
        raise ValueError("tokens must be non-negative integer ids")
    counts = np.bincount(tokens.ravel())
    return np.log(len(tokens) / counts[tokens]).mean(axis=1)


class Correlation(NamedTuple):
    rho: float
    p_value: float
    n: int


def tfidf_correlation(tfidf: np.ndarray, memorization: np.ndarray) -> Correlation | None:
    """Spearman correlation of TF-IDF and memorization over the samples with memorization > 0
    (the paper's subset); None when fewer than 3 such samples."""
    tfidf = np.asarray(tfidf, dtype=np.float64)
    memorization = np.asarray(memorization, dtype=np.float64)
    if tfidf.shape != memorization.shape or tfidf.ndim != 1:
        raise ValueError(
            f"tfidf and memorization must be 1-D with equal shapes, got {tfidf.shape} and {memorization.shape}"
        )
    positive = memorization > 0
    n = int(positive.sum())
    if n < 3:
        return None
    result = spearmanr(tfidf[positive], memorization[positive])
    return Correlation(float(result.statistic), float(result.pvalue), n)
