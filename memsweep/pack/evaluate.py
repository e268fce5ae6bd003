"""Every cell of a pack measured over its own token set in one pass of packed forwards.

Why: memsweep.evaluation.per_sample_nll_bits runs one model over one set; a pack evaluates its K
cells together (cell k over its own training or held-out rows), with memsweep's own per-sequence
NLL (memsweep.metrics.sequence_nll_bits), so memorization is then measured per cell unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from memsweep.metrics import sequence_nll_bits
from memsweep.pack.model import Forward


def _rows(tokens: np.ndarray, start: int, count: int) -> np.ndarray:
    """Rows start .. start+count of `tokens`, wrapping around: a set shorter than the longest one in
    the pack re-reads its own rows to fill the batch (their results are dropped)."""
    return np.asarray(tokens[np.arange(start, start + count) % len(tokens)], dtype=np.int64)


@torch.no_grad()
def per_cell_nll_bits(forward: Forward, params: dict[str, torch.Tensor], token_sets: Sequence[np.ndarray],
                      batch_size: int) -> list[np.ndarray]:
    """NLL in bits (float64) of every row of token_sets[k] under cell k. Each forward holds
    K * batch_size * S * V logits, so size batch_size for the pack, not for one cell."""
    if any(len(tokens) == 0 for tokens in token_sets):
        raise ValueError("every cell needs at least one row to evaluate")
    device = next(iter(params.values())).device
    results = [np.empty(len(tokens), dtype=np.float64) for tokens in token_sets]
    longest = max(len(tokens) for tokens in token_sets)
    for start in range(0, longest, batch_size):
        count = min(batch_size, longest - start)
        batch = torch.from_numpy(np.stack([_rows(tokens, start, count) for tokens in token_sets])).to(device)
        logits = forward(params, batch)
        bits = sequence_nll_bits(logits.flatten(0, 1), batch.flatten(0, 1)).view(len(token_sets), count).cpu().numpy()
        for cell, tokens in enumerate(token_sets):
            kept = max(0, min(count, len(tokens) - start))
            results[cell][start:start + kept] = bits[cell, :kept]
    return results
