"""A text cell's rows: corpus -> tokens -> windows -> exact dedup -> seeded split, every stage cached.

Cache layout (MEMSWEEP_CACHE, else ~/.cache/memsweep), each entry keyed by what it depends on:
  corpora/<corpus>-<key>.json        extracted documents (key: corpus spec + source files' sizes, mtimes)
  tokenizers/<sha[:16]>-bpe<V>.json  the BPE trained on a corpus (by its text sha256) at V tokens
  text/<key>/train.npy, heldout.npy, info.json
                                     the pools (key: corpus sha256, tokenizer sha256, S, seed, heldout_pool)
  npm/, debian/                      packages `memsweep corpus fetch` installed
A pool is built under a file lock in a staging directory renamed into place whole, so concurrent
workers (one node, or a shared filesystem) build it once and never read a half-written pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memsweep.config import DataConfig
from memsweep.data.corpora import Corpus, read_documents
from memsweep.data.locks import INFO_FILE, file_lock, publish_arrays
from memsweep.data.sequences import cut_windows, deduplicate, shuffle_split
from memsweep.data.tokenizer import TextTokenizer, load_tokenizer
from memsweep.storage import token_dtype

POOL_FORMAT = 1
"""Part of the pool key: bump it when the windowing, dedup or split changes."""
ENCODE_CHUNK = 256
"""Documents tokenized at a time: ids become compact arrays at once, not Python ints for all."""
TRAIN_FILE, HELDOUT_FILE = "train.npy", "heldout.npy"


@dataclass(frozen=True)
class TextPool:
    train: np.ndarray
    """(n_train_pool, S) read-only memory map: the training pool, in shuffled order."""
    heldout: np.ndarray
    """(n_heldout_pool, S) read-only memory map, disjoint from `train`."""
    info: dict
    """What the pool was made from and how: corpus (name, sha256, sources, n_documents,
    n_characters), tokenizer identity, n_tokens (one eos per document included), n_windows,
    n_duplicates_dropped, duplicate_fraction, n_train_pool (after pool_size), n_heldout_pool, seq_len,
    seed, heldout_pool, pool_size, build_seconds."""
    tokenizer: TextTokenizer


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEMSWEEP_CACHE") or Path.home() / ".cache" / "memsweep").expanduser()


def pool_key(corpus_sha256: str, tokenizer_sha256: str, seq_len: int, seed: int, heldout_pool: int) -> str:
    spec = {"format": POOL_FORMAT, "corpus_sha256": corpus_sha256, "tokenizer_sha256": tokenizer_sha256,
            "seq_len": seq_len, "seed": seed, "heldout_pool": heldout_pool}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def load_text_pool(data: DataConfig, cache_dir: Path | None = None) -> TextPool:
    """The training and held-out pools of `data`'s corpus, built once and then memory-mapped.
    `data.pool_size` caps the training pool to its first pool_size rows."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus = read_documents(data, cache_dir)
    tokenizer = load_tokenizer(data, corpus, cache_dir)
    key = pool_key(corpus.sha256, tokenizer.sha256, data.seq_len, data.seed, data.heldout_pool)
    directory = cache_dir / "text" / key
    if not directory.is_dir():
        with file_lock(directory.with_suffix(".lock")):
            if not directory.is_dir():
                _build_pool(corpus, tokenizer, data, directory)
    info = json.loads((directory / INFO_FILE).read_text())
    train = np.load(directory / TRAIN_FILE, mmap_mode="r")[: data.pool_size]
    heldout = np.load(directory / HELDOUT_FILE, mmap_mode="r")
    info.update(corpus=corpus.name, sources=corpus.sources, n_train_pool=len(train), pool_size=data.pool_size)
    return TextPool(train, heldout, info, tokenizer)


def _build_pool(corpus: Corpus, tokenizer: TextTokenizer, data: DataConfig, directory: Path) -> None:
    started = time.monotonic()
    token_arrays = [np.asarray(ids, dtype=np.uint32)
                    for start in range(0, len(corpus.documents), ENCODE_CHUNK)
                    for ids in tokenizer.encode_batch(corpus.documents[start : start + ENCODE_CHUNK])]
    windows = cut_windows(token_arrays, data.seq_len, tokenizer.eos_id)
    if windows.size and windows.max() >= tokenizer.vocab_size:
        raise RuntimeError(f"tokenizer {tokenizer.identity} produced id {windows.max()}, outside its vocabulary")
    unique, n_dropped = deduplicate(windows.astype(token_dtype(tokenizer.vocab_size)))
    train, heldout = shuffle_split(unique, data.seed, data.heldout_pool)
    info = {
        "corpus": corpus.name, "corpus_sha256": corpus.sha256, "sources": corpus.sources,
        "n_documents": len(corpus.documents), "n_characters": sum(map(len, corpus.documents)),
        "tokenizer": tokenizer.identity, "n_tokens": sum(map(len, token_arrays)) + len(token_arrays),
        "n_windows": len(windows), "n_duplicates_dropped": n_dropped,
        "duplicate_fraction": n_dropped / len(windows) if len(windows) else 0.0,
        "n_train_pool": len(train), "n_heldout_pool": len(heldout),
        "seq_len": data.seq_len, "seed": data.seed, "heldout_pool": data.heldout_pool,
        "build_seconds": round(time.monotonic() - started, 2),
    }
    publish_arrays(directory, {TRAIN_FILE: train, HELDOUT_FILE: heldout}, info)


def cell_text_tokens(data: DataConfig, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train (n_samples, S), held-out (n_heldout, S), info): the first rows of each pool, so a
    smaller cell's rows are a prefix of a larger one's. Refuses a cell the corpus is too small for."""
    pool = load_text_pool(data, cache_dir)
    info = pool.info
    what = f"corpus {info['corpus']!r} gives only"
    if data.n_samples > len(pool.train):
        raise ValueError(f"data.n_samples={data.n_samples} but {what} {len(pool.train):,} training sequences of "
                         f"{data.seq_len} tokens (after {info['n_duplicates_dropped']:,} duplicates were dropped and "
                         f"{info['n_heldout_pool']:,} held out); lower data.n_samples or choose a larger corpus")
    if data.n_heldout > len(pool.heldout):
        raise ValueError(f"data.n_heldout={data.n_heldout} but {what} {len(pool.heldout):,} held-out sequences of "
                         f"{data.seq_len} tokens (a tenth of its {info['n_windows'] - info['n_duplicates_dropped']:,} "
                         f"distinct sequences, at most data.heldout_pool={data.heldout_pool:,}); lower data.n_heldout "
                         f"or choose a larger corpus")
    train, heldout = pool.train[: data.n_samples], pool.heldout[: data.n_heldout]
    for name, rows in (("training", train), ("held-out", heldout)):
        if rows.max() >= data.vocab_size:
            raise ValueError(f"data.vocab_size={data.vocab_size} but the {name} sequences hold token id {rows.max()} "
                             f"(tokenizer {info['tokenizer']['kind']} has {info['tokenizer']['vocab_size']:,} tokens)")
    return train, heldout, info
