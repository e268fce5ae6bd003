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
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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


class TokenRows(Dataset):
    """Rows of a token matrix, fetched a whole batch of indices at a time (no per-row collate)."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.tokens[index], dtype=np.int64))


class ShuffledBatches(Sampler):
    """Endless batches of row indices: epoch e is a permutation drawn from (seed, e).

    Batch k is a pure function of (seed, k), which is what makes a resumed run replay exactly the
    batches an uninterrupted run would have seen: start it at `start_batch = global_step`.
    The stream has no length: `trainer.max_steps` or the saturation stop ends training.
    Batches run across epoch boundaries, so every batch has exactly `batch_size` rows even when
    the dataset is smaller than a batch (rows then repeat within a batch).

    Under data parallelism every rank walks the same global batches and keeps its own slice
    (rows rank, rank + world_size, ...), so the global batch is the same whatever the world size.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"trainer.batch_size ({batch_size}) must be divisible by the world size ({world_size})")
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(epoch,))))
        return rng.permutation(self.n_rows)

    def __iter__(self) -> Iterator[np.ndarray]:
        position = self.start_batch * self.batch_size
        epoch, offset = divmod(position, self.n_rows)
        order = self._epoch_order(epoch)
        while True:
            batch = []
            need = self.batch_size
            while need:
                take = order[offset : offset + need]
                batch.append(take)
                need -= len(take)
                offset += len(take)
                if offset == self.n_rows:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch_order(epoch)
            yield np.concatenate(batch)[self.rank :: self.world_size]
