"""Which rows are scored, the checks that must pass before any score is written, and the corpus
unigram counts the boundary-effect analysis reads.

Corpus specs: none, for memsweep cells: the first rows of their shared training pool (rows every
model trained on); `path:ROWS.npy`: given (R, S) token rows (e.g. Pythia's Pile rows), for any
model; a built-in corpus name: that corpus's training pool built with a memsweep cell's data
config (memsweep models only: an HF model would need the text through its own tokenizer, so give
it token rows instead). A row's index in the source is its `idx` in every score file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memsweep.perspectives.models import (PATH_PREFIX, MemsweepModel, ScoringModel, done_text_record, expand_specs,
                                         is_hf_spec)

COUNT_CHUNK_ROWS = 65_536
"""Rows read at a time when counting tokens, so a memory-mapped pool is never loaded whole."""


@dataclass(frozen=True)
class ScoredRows:
    rows: np.ndarray
    """(R, S) token ids; row i is row i of the source (the training sequence index for pools)."""
    unigram: np.ndarray
    """(V,) int64: how often each token id occurs in `unigram_source`."""
    source: str
    unigram_source: str
    tokenizer_id: dict | None
    """The tokenizer the rows were made with, where known."""

    def describe(self) -> dict:
        return {"source": self.source, "n_rows": len(self.rows), "seq_len": int(self.rows.shape[1]),
                "unigram_source": self.unigram_source, "tokenizer": self.tokenizer_id}


def check_fits(contexts: Sequence[int], continuations: Sequence[int], length: int, what: str) -> None:
    """Refuse a context + continuation longer than `length` tokens (a pure check, run before
    anything is loaded)."""
    if not contexts or not continuations:
        raise ValueError("give at least one context size and one continuation size")
    if min(contexts) < 1 or min(continuations) < 1:
        raise ValueError(f"context and continuation sizes must be at least 1, got {list(contexts)} and "
                         f"{list(continuations)}")
    k, n = max(contexts), max(continuations)
    if k + n > length:
        raise ValueError(f"context {k} + continuation {n} = {k + n} tokens is longer than {what} ({length} tokens)")


def sequence_length(model_specs: Sequence[str], corpus_spec: str | None) -> int:
    """S of the rows that will be scored, from a .npy header or the cells' records alone."""
    if corpus_spec and corpus_spec.startswith(PATH_PREFIX):
        return int(_npy_rows(corpus_spec).shape[1])
    specs = expand_specs(model_specs)
    if hf := [s for s in specs if is_hf_spec(s)]:
        raise ValueError(_needs_token_rows(hf[0]))
    lengths = {done_text_record(Path(s))["seq_len"] for s in specs}
    if len(lengths) != 1:
        raise ValueError(f"the cells have sequences of {sorted(lengths)} tokens: they do not share a training pool")
    return lengths.pop()


def rows_for(models: Sequence[ScoringModel], corpus_spec: str | None, max_rows: int | None = None) -> ScoredRows:
    """The rows to score (at most max_rows, from the start of the source), refusing any model
    that cannot read them (`check_models_read`)."""
    if corpus_spec and corpus_spec.startswith(PATH_PREFIX):
        source, where = _npy_rows(corpus_spec), corpus_spec.removeprefix(PATH_PREFIX)
        rows, tokenizer_id, vocab = source[:max_rows], None, min(m.vocab_size for m in models)
        described = f"the first {len(rows):,} of the {len(source):,} token rows of {where}"
        unigram_source = f"all {len(source):,} rows of {where}"
    else:
        source, rows, tokenizer_id, described, unigram_source, vocab = _pool_rows(models, corpus_spec, max_rows)
    check_models_read(models, rows, tokenizer_id)
    return ScoredRows(rows, token_counts(source, vocab), described, unigram_source, tokenizer_id)


def _pool_rows(models: Sequence[ScoringModel], corpus_spec: str | None, max_rows: int | None):
    """(pool, rows, tokenizer identity, descriptions, vocab) of a memsweep pool: the models' own,
    or the built-in corpus `corpus_spec` made with the first model's data config."""
    from memsweep.data.corpora import corpus_names
    from memsweep.data.source import pool_sha256
    from memsweep.data.text import load_text_pool

    if hf := [m for m in models if not isinstance(m, MemsweepModel) or m.pool is None]:
        raise ValueError(_needs_token_rows(hf[0].source))
    first = models[0]
    if corpus_spec is None:
        for other in models[1:]:
            if other.pool.pool_sha256 != first.pool.pool_sha256:
                raise ValueError(f"model {first.name} trained on pool {first.pool.pool_sha256[:12]} but {other.name} "
                                 f"on pool {other.pool.pool_sha256[:12]}: they share no training rows; score them "
                                 "in separate runs")
        data = first.pool.data
    elif corpus_spec in corpus_names():
        data = replace(first.pool.data, corpus=corpus_spec)
    else:
        raise ValueError(f"corpus {corpus_spec!r}: give a built-in corpus ({', '.join(corpus_names())}) or "
                         f"{PATH_PREFIX}ROWS.npy")
    pool = load_text_pool(data)
    sha = pool_sha256(pool.info, data)
    if corpus_spec is None:
        if sha != first.pool.pool_sha256:
            raise ValueError(f"corpus {data.corpus!r} now gives pool {sha[:12]}, not the pool "
                             f"{first.pool.pool_sha256[:12]} model {first.name} trained on (its text or tokenizer "
                             "changed)")
        shared = min(m.trained_rows for m in models)
        rows = pool.train[: shared if max_rows is None else min(shared, max_rows)]
        described = (f"the first {len(rows):,} rows of training pool {sha[:12]} (corpus {data.corpus}), "
                     "training rows of every model")
    else:
        rows = pool.train[:max_rows]
        described = f"the first {len(rows):,} rows of corpus {data.corpus}'s training pool {sha[:12]}"
    unigram_source = f"the whole training pool {sha[:12]} ({len(pool.train):,} rows)"
    return pool.train, rows, pool.tokenizer.identity, described, unigram_source, pool.tokenizer.vocab_size


def check_models_read(models: Sequence[ScoringModel], rows: np.ndarray, tokenizer_id: dict | None) -> None:
    """Refuse a model whose vocabulary does not hold every token id of the rows, or whose tokenizer
    differs from the one the rows were made with (when both are known)."""
    low, high = _id_range(rows)
    if low < 0:
        raise ValueError(f"the rows hold a negative token id ({low})")
    for model in models:
        if high >= model.vocab_size:
            raise ValueError(f"model {model.name} has a vocabulary of {model.vocab_size:,} tokens, but the rows hold "
                             f"token id {high:,}: they were tokenized for another model")
        theirs = (model.tokenizer_id or {}).get("sha256")
        if theirs and tokenizer_id and tokenizer_id.get("sha256") and theirs != tokenizer_id["sha256"]:
            raise ValueError(f"model {model.name} reads tokenizer {_tokenizer_name(model.tokenizer_id)}, but the rows "
                             f"were tokenized with {_tokenizer_name(tokenizer_id)}")


def token_counts(rows: np.ndarray, vocab_size: int) -> np.ndarray:
    """(max(vocab_size, largest id + 1),) int64 counts of each token id, read in chunks."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(rows), COUNT_CHUNK_ROWS):
        chunk = np.bincount(np.asarray(rows[start : start + COUNT_CHUNK_ROWS]).ravel(), minlength=len(counts))
        if len(chunk) > len(counts):
            counts = np.pad(counts, (0, len(chunk) - len(counts)))
        counts += chunk
    return counts


def _id_range(rows: np.ndarray) -> tuple[int, int]:
    if not len(rows):
        raise ValueError("there are no rows to score")
    low, high = None, None
    for start in range(0, len(rows), COUNT_CHUNK_ROWS):
        chunk = np.asarray(rows[start : start + COUNT_CHUNK_ROWS])
        low = int(chunk.min()) if low is None else min(low, int(chunk.min()))
        high = int(chunk.max()) if high is None else max(high, int(chunk.max()))
    return low, high


def _tokenizer_name(identity: dict) -> str:
    name = identity.get("name") or identity.get("kind")
    return f"{name} (vocab {identity.get('vocab_size'):,}, sha256 {identity['sha256'][:12]})"


def _npy_rows(corpus_spec: str) -> np.ndarray:
    path = Path(corpus_spec.removeprefix(PATH_PREFIX))
    if path.suffix != ".npy":
        raise ValueError(f"corpus {corpus_spec}: {PATH_PREFIX} takes a .npy file of (R, S) token ids")
    rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{path} holds a {rows.dtype} array of shape {rows.shape}; expected (R, S) integer token ids")
    return rows


def _needs_token_rows(model_source: str) -> str:
    return (f"model {model_source} is not a memsweep cell: score it on token rows made with its own tokenizer, "
            f"--corpus {PATH_PREFIX}ROWS.npy")
