"""Extraction rate (Morris et al. 2025 section 6): the share of sequences that greedy decoding
regurgitates whole from their first k tokens.

A sequence counts as extracted only when all S - k suffix tokens are reproduced exactly (the
strict reading; pythia's score is the fraction of matching tokens instead). Per-sequence booleans
come back in row order, so callers can list which sequences were extracted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from memsweep.model import GPT
from memsweep.text.decode import greedy_continue


@dataclass(frozen=True)
class ExtractionResult:
    prefix_length: int
    rate: float
    """Share of the n sequences extracted."""
    n: int
    extracted: np.ndarray
    """(n,) bool, row i: greedy decoding from tokens[i, :k] reproduced tokens[i, k:]."""


def extraction_rates(
    model: GPT,
    tokens: np.ndarray,
    prefix_lengths: Iterable[int] = (8, 16, 32),
    batch_size: int = 256,
    max_sequences: int | None = None,
) -> dict[int, ExtractionResult]:
    """Extraction rate per prefix length k over the first max_sequences rows of tokens (N, S).

    Equal-length prefixes need no padding, so each k is one batched decoding pass.
    """
    rows = torch.tensor(np.asarray(tokens), dtype=torch.long)  # a copy: pool rows are read-only memory maps
    if rows.ndim != 2:
        raise ValueError(f"tokens must be 2-D (N, S), got shape {tuple(rows.shape)}")
    if max_sequences is not None:
        rows = rows[:max_sequences]
    seq_len = rows.shape[1]
    results = {}
    for k in prefix_lengths:
        if not 0 <= k < seq_len:
            raise ValueError(f"prefix length {k} must lie in [0, {seq_len}) for sequences of {seq_len} tokens")
        generated = greedy_continue(model, rows[:, :k], seq_len - k, batch_size=batch_size).tokens
        extracted = (generated.cpu() == rows[:, k:]).all(dim=1).numpy()
        n = len(extracted)
        results[k] = ExtractionResult(k, float(extracted.mean()) if n else float("nan"), n, extracted)
    return results
