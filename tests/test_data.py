import itertools

import numpy as np

from memsweep.data.batches import ShuffledBatches
from memsweep.data.uniform import BLOCK_ROWS, HELDOUT_BRANCH, random_tokens


def test_same_seed_same_data_and_smaller_sets_are_prefixes():
    big = random_tokens(BLOCK_ROWS + 100, 64, 2048, seed=7)
    again = random_tokens(BLOCK_ROWS + 100, 64, 2048, seed=7)
    small = random_tokens(50, 64, 2048, seed=7)
    np.testing.assert_array_equal(big, again)
    np.testing.assert_array_equal(big[:50], small)
    assert not np.array_equal(random_tokens(50, 64, 2048, seed=8), small)


def test_heldout_rows_are_fresh():
    train = random_tokens(500, 64, 2048, seed=0)
    heldout = random_tokens(500, 64, 2048, seed=0, branch=HELDOUT_BRANCH)
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in heldout}


def test_tokens_are_uniform():
    tokens = random_tokens(2000, 64, 16, seed=1)
    counts = np.bincount(tokens.ravel(), minlength=16)
    expected = tokens.size / 16
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert tokens.min() >= 0 and tokens.max() < 16
    assert chi2 < 45  # 15 degrees of freedom: p < 1e-4 above this


def test_large_datasets_are_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr("memsweep.data.uniform.MEMMAP_BYTES", 1000)
    path = tmp_path / "tokens.npy"
    mapped = random_tokens(300, 64, 2048, seed=3, memmap_path=path)
    assert isinstance(mapped, np.memmap) and path.exists()
    np.testing.assert_array_equal(mapped, random_tokens(300, 64, 2048, seed=3))


def test_batches_cover_each_epoch_and_resume_exactly():
    sampler = ShuffledBatches(rows=10, batch_size=4, seed=0)
    stream = list(itertools.islice(iter(sampler), 10))  # 40 rows = 4 epochs
    assert all(len(b) == 4 for b in stream)
    flat = np.concatenate(stream)
    for epoch in range(4):
        assert sorted(flat[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    resumed = list(itertools.islice(iter(ShuffledBatches(10, 4, seed=0, start_batch=3)), 7))
    for a, b in zip(stream[3:], resumed):
        np.testing.assert_array_equal(a, b)


def test_batch_larger_than_dataset():
    batch = next(iter(ShuffledBatches(rows=3, batch_size=8, seed=0)))
    assert len(batch) == 8 and set(batch) == {0, 1, 2}


def test_planted_repeats_show_each_row_its_count_times_an_epoch_and_nothing_changes_without_them():
    from memsweep.data.batches import epoch_rows, repeat_counts

    per_row = repeat_counts(20, (2, 5), 3)
    assert per_row.tolist() == [2, 2, 2, 5, 5, 5] + [1] * 14
    virtual = epoch_rows(per_row)
    sampler = iter(ShuffledBatches(virtual, 7, seed=3))
    first_epoch = np.concatenate([next(sampler) for _ in range(len(virtual))])[: len(virtual)]
    assert np.bincount(first_epoch, minlength=20).tolist() == per_row.tolist()
    plain, same = iter(ShuffledBatches(20, 8, seed=1)), iter(ShuffledBatches(epoch_rows(np.ones(20, int)), 8, seed=1))
    assert all((next(plain) == next(same)).all() for _ in range(10))  # no repeats: the original stream


def test_repeat_counts_are_checked_and_named(small_cell):
    import pytest

    from memsweep.config import ConfigError

    cell = small_cell("data.repeat_counts='2:8'", "data.repeat_rows=4")
    assert cell.data.repeat_count_list() == (2, 8)
    with pytest.raises(ConfigError, match="data.repeat_counts: every count must be an integer >= 2"):
        small_cell("data.repeat_counts='1:8'")
    with pytest.raises(ConfigError, match="need data.n_samples >= 64"):
        small_cell("data.repeat_counts='2:8'", "data.repeat_rows=32")
