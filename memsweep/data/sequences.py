"""From token lists to the training and held-out pools: pure functions on arrays.

Windows are cut, exact duplicates dropped, then one seeded permutation splits them, so a row is in
at most one pool and a duplicate can never be both a training and a held-out sequence.
"""

from __future__ import annotations

import numpy as np

HELDOUT_FRACTION = 10
"""The held-out pool is at most a tenth of the windows, so a small corpus still trains."""


def cut_windows(token_lists: list[list[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """(n, seq_len) uint32 windows: every document's tokens followed by `eos_id`, concatenated into
    one stream and cut into consecutive non-overlapping windows; the last partial window dropped.

    Non-overlapping, so each token of the corpus is in exactly one sequence: a sequence's
    membership is unambiguous and no held-out sequence shares a span with a training one. Windows
    cross document boundaries (the eos marks them) instead of padding short documents, so no
    token of a sequence is filler; the dropped tail is under seq_len tokens.
    """
    lengths = np.fromiter((len(tokens) + 1 for tokens in token_lists), dtype=np.int64, count=len(token_lists))
    stream = np.empty(int(lengths.sum()), dtype=np.uint32)
    start = 0
    for tokens, length in zip(token_lists, lengths):
        stream[start : start + length - 1] = tokens
        stream[start + length - 1] = eos_id
        start += length
    n_windows = len(stream) // seq_len
    return stream[: n_windows * seq_len].reshape(n_windows, seq_len)


def deduplicate(windows: np.ndarray) -> tuple[np.ndarray, int]:
    """(the distinct rows in order of first occurrence, how many repeats were dropped). Rows are
    compared as raw bytes, one void scalar per row, so numpy sorts whole rows as single values
    (a memcmp each) instead of lexsorting column by column."""
    rows = np.ascontiguousarray(windows)
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first = np.unique(as_bytes, return_index=True)
    keep = np.sort(first)
    return rows[keep], len(rows) - len(keep)


def heldout_size(n_windows: int, heldout_pool: int) -> int:
    """Held-out rows: data.heldout_pool, at most a tenth of the windows. It depends on neither
    n_samples nor n_heldout, so every cell of a sweep splits the corpus the same way: training
    pools (and the held-out pool) are nested prefixes across cells."""
    return min(heldout_pool, n_windows // HELDOUT_FRACTION)


def shuffle_split(windows: np.ndarray, seed: int, heldout_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, held-out pool): one permutation from PCG64(SeedSequence(seed)); the held-out
    pool is its first `heldout_size` rows, the training pool the rest, in permutation order, so any
    prefix of either is a uniform sample. Disjoint by construction."""
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))).permutation(len(windows))
    n_heldout = heldout_size(len(windows), heldout_pool)
    return windows[order[n_heldout:]], windows[order[:n_heldout]]
