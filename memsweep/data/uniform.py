"""Uniformly random token sequences, generated from a seed, never downloaded.

Rows are generated in blocks, each from its own child of `SeedSequence(seed)`, so:
- the dataset depends on the data seed alone: every model size and precision sees the same rows;
- a smaller dataset is a prefix of a larger one with the same seed (nested dataset sizes);
- large datasets are written block by block into a memory map instead of one huge array.
The held-out rows come from a disjoint branch of the same seed tree, so they are fresh sequences
from the same distribution that never overlap the training stream.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memsweep.storage import MEMMAP_BYTES, token_bytes, token_dtype

BLOCK_ROWS = 4096
TRAIN_BRANCH, HELDOUT_BRANCH = 0, 1


def _allocated_memmap(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """A .npy memory map whose blocks are allocated now: a sparse file would die of SIGBUS when
    the disk fills while it is written; allocating up front turns that into a clear OSError."""
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()  # header; data sparse
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            path.unlink(missing_ok=True)
            raise OSError(err.errno, f"cannot allocate the {shape[0]:,}-row token memory map {path}: "
                          f"{err.strerror}") from None
    return np.load(path, mmap_mode="r+")


def random_tokens(
    n_rows: int,
    seq_len: int,
    vocab_size: int,
    seed: int,
    branch: int = TRAIN_BRANCH,
    memmap_path: Path | None = None,
) -> np.ndarray:
    """(n_rows, seq_len) tokens i.i.d. uniform over [0, vocab_size)."""
    dtype = token_dtype(vocab_size)
    shape = (n_rows, seq_len)
    if memmap_path is not None and token_bytes(n_rows, seq_len, vocab_size) > MEMMAP_BYTES:
        out = _allocated_memmap(Path(memmap_path), dtype, shape)
    else:
        out = np.empty(shape, dtype=dtype)
    for block_start in range(0, n_rows, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, n_rows - block_start)
        block_seed = np.random.SeedSequence(seed, spawn_key=(branch, block_start // BLOCK_ROWS))
        rng = np.random.Generator(np.random.PCG64(block_seed))
        full_block = rng.integers(0, vocab_size, size=(BLOCK_ROWS, seq_len), dtype=dtype)
        out[block_start : block_start + rows] = full_block[:rows]
    if isinstance(out, np.memmap):
        out.flush()
    return out
