"""A cell's training and held-out rows, whatever kind of data the cell trains on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memsweep.config import DataConfig
from memsweep.data.batches import repeat_counts
from memsweep.data.uniform import HELDOUT_BRANCH, random_tokens


def row_repeats(data: DataConfig) -> np.ndarray:
    """(n_samples,) how often each training row is seen per epoch (data.repeat_counts)."""
    return repeat_counts(data.n_samples, data.repeat_count_list(), data.repeat_rows)


@dataclass(frozen=True)
class CellTokens:
    train: np.ndarray
    """(n_samples, S) token ids: a prefix of the training stream or pool, so sizes nest."""
    heldout: np.ndarray
    """(n_heldout, S) token ids from the same distribution, disjoint from every training row."""
    text: dict[str, Any] | None = None
    """Text cells: what the rows were made from (corpus, tokenizer, pool; `text_info`)."""
    tokenizer: Any = None
    """Text cells: the tokenizer, to show memorized sequences as text."""


def pool_sha256(info: dict[str, Any], data: DataConfig) -> str:
    """One hash naming a text pool exactly: the corpus text, the tokenizer, S, the split seed and
    the held-out pool size. Two cells compare (reference and model) only with the same pool."""
    key = {"corpus_sha256": info["corpus_sha256"], "tokenizer_sha256": info["tokenizer"]["sha256"],
           "seq_len": data.seq_len, "seed": data.seed, "heldout_pool": data.heldout_pool}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cell_tokens(data: DataConfig, run_dir: Path, rank: int = 0) -> CellTokens:
    if data.kind == "uniform":
        train = random_tokens(data.n_samples, data.seq_len, data.vocab_size, data.seed,
                              memmap_path=Path(run_dir) / f"train_tokens.rank{rank}.npy")
        heldout = random_tokens(data.n_heldout, data.seq_len, data.vocab_size, data.seed, branch=HELDOUT_BRANCH)
        return CellTokens(train, heldout)
    from memsweep.data.text import cell_text_tokens, load_text_pool

    train, heldout, info = cell_text_tokens(data)
    text = {**info, "pool_sha256": pool_sha256(info, data)}
    return CellTokens(train, heldout, text, load_text_pool(data).tokenizer)
