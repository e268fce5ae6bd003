"""How token sets are stored: their dtype, their size, and when they are memory-mapped.

Kept free of torch so that `memsweep plan` can size a 3,000-cell grid's data without importing it.
"""

from __future__ import annotations

import numpy as np

MEMMAP_BYTES = 1 << 30
"""Datasets larger than this are generated into a .npy memory map in the run dir."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def token_bytes(n_rows: int, seq_len: int, vocab_size: int) -> int:
    """Bytes of an (n_rows, seq_len) token matrix."""
    return n_rows * seq_len * token_dtype(vocab_size).itemsize
