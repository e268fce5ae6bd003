"""Batches of rows from a token matrix, whatever made the rows (uniform random or text).

`ShuffledBatches` is a pure function of (seed, batch number), so a resumed run replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


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

    def __init__(self, rows: int | np.ndarray, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        """`rows`: the number of rows, or an epoch's row indices with repeats (`epoch_rows`):
        a row listed c times is seen c times an epoch."""
        if batch_size % world_size:
            raise ValueError(f"trainer.batch_size ({batch_size}) must be divisible by the world size ({world_size})")
        self.rows = None if isinstance(rows, (int, np.integer)) else np.asarray(rows)
        self.n_rows = int(rows) if self.rows is None else len(self.rows)
        self.batch_size, self.seed = batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(epoch,))))
        order = rng.permutation(self.n_rows)
        return order if self.rows is None else self.rows[order]

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


def repeat_counts(n_rows: int, counts: tuple[int, ...], rows_per_count: int) -> np.ndarray:
    """How often each training row is seen per epoch: rows [i·m, (i+1)·m) get counts[i], the rest
    1. Planted repetition at known counts, so that memorization scores span their range (Chen et
    al. analyse models whose data repeats; a deduplicated set alone gives few memorized rows)."""
    per_row = np.ones(n_rows, dtype=np.int64)
    for i, count in enumerate(counts):
        per_row[i * rows_per_count:(i + 1) * rows_per_count] = count
    return per_row


def epoch_rows(per_row: np.ndarray) -> int | np.ndarray:
    """What ShuffledBatches walks: the row count when nothing repeats (the original stream,
    unchanged), else each row index as many times as it repeats."""
    if (per_row == 1).all():
        return len(per_row)
    return np.repeat(np.arange(len(per_row)), per_row)
