"""Which rows are scored, the checks that must pass before any score is written, and the corpus
unigram counts the boundary-effect analysis reads.

Corpus specs: none, for memsweep cells: the first rows of their shared training pool (rows every
model trained on); `path:ROWS.npy`: given (R, S) token rows (e.g. Pythia's Pile rows), for any
model; a built-in corpus name, or `hf:DATASET[@REVISION]` (a hub dataset or a save_to_disk dir,
its `text` column): for memsweep cells, that corpus's training pool built with the first cell's
data config; for Hugging Face models, the corpus through the models' own (shared) tokenizer, cut
into rows of S tokens (--seq-len, by default the longest context + continuation) in document
order (hf_rows). A row's index in the source is its `idx` in every score file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memsweep.config import DataConfig
from memsweep.perspectives.hf_tokenizer import HF_PREFIX, shared_tokenizer
from memsweep.perspectives.models import (PATH_PREFIX, HFModel, MemsweepModel, ScoringModel, done_text_record,
                                         expand_specs, is_hf_spec)

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


def sequence_length(model_specs: Sequence[str], corpus_spec: str | None, contexts: Sequence[int] = (),
                    continuations: Sequence[int] = (), seq_len: int | None = None) -> int:
    """S of the rows that will be scored, from a .npy header or the cells' records alone; for HF
    models on a named corpus, `seq_len`, by default the longest context + continuation. Refuses an
    unknown corpus, and HF models with memsweep cells on a named corpus, before anything loads."""
    if corpus_spec and corpus_spec.startswith(PATH_PREFIX):
        return _given_length(int(_npy_rows(corpus_spec).shape[1]), seq_len, corpus_spec.removeprefix(PATH_PREFIX))
    if corpus_spec:
        _corpus_data(corpus_spec, DataConfig(kind="text"))
    specs = expand_specs(model_specs)
    if hf := [s for s in specs if is_hf_spec(s)]:
        if corpus_spec is None:
            raise ValueError(_needs_corpus(hf[0]))
        if cells := [s for s in specs if not is_hf_spec(s)]:
            raise ValueError(_mixed(hf[0], cells[0]))
        return seq_len if seq_len is not None else max(contexts, default=0) + max(continuations, default=0)
    lengths = {done_text_record(Path(s))["seq_len"] for s in specs}
    if len(lengths) != 1:
        raise ValueError(f"the cells have sequences of {sorted(lengths)} tokens: they do not share a training pool")
    return _given_length(lengths.pop(), seq_len, "the cells' training pool")


def corpus_tokenizer(model_specs: Sequence[str], corpus_spec: str | None):
    """(tokenizer, identity) that HF models on a named corpus share (hf_tokenizer.shared_tokenizer),
    else None. From the specs alone, so a missing or mismatched tokenizer is refused before a model
    loads (a large one takes minutes)."""
    specs = [s for s in expand_specs(model_specs) if is_hf_spec(s)]
    if not specs or not corpus_spec or corpus_spec.startswith(PATH_PREFIX):
        return None
    return shared_tokenizer(specs)


def rows_for(models: Sequence[ScoringModel], corpus_spec: str | None, max_rows: int | None = None,
             seq_len: int | None = None, tokenizer=None) -> ScoredRows:
    """The rows to score (at most max_rows, from the start of the source), refusing any model
    that cannot read them (`check_models_read`). HF models on a named corpus need `seq_len`;
    `tokenizer` is corpus_tokenizer's, found from the models' specs when not given."""
    if corpus_spec and corpus_spec.startswith(PATH_PREFIX):
        scored = _npy_scored_rows(models, corpus_spec, max_rows)
    elif corpus_spec and (hf := [m for m in models if isinstance(m, HFModel)]):
        if cells := [m for m in models if not isinstance(m, HFModel)]:
            raise ValueError(_mixed(hf[0].source, cells[0].source or cells[0].name))
        scored = _tokenized_rows(hf, corpus_spec, max_rows, seq_len, tokenizer)
    else:
        scored = _pool_rows(models, corpus_spec, max_rows)
    check_models_read(models, scored.rows, scored.tokenizer_id)
    return scored


def _npy_scored_rows(models: Sequence[ScoringModel], corpus_spec: str, max_rows: int | None) -> ScoredRows:
    source, where = _npy_rows(corpus_spec), corpus_spec.removeprefix(PATH_PREFIX)
    rows = source[:max_rows]
    return ScoredRows(rows, token_counts(source, min(m.vocab_size for m in models)),
                      f"the first {len(rows):,} of the {len(source):,} token rows of {where}",
                      f"all {len(source):,} rows of {where}", None)


def _tokenized_rows(models: Sequence[HFModel], corpus_spec: str, max_rows: int | None, seq_len: int | None,
                    tokenizer) -> ScoredRows:
    """The named corpus through the HF models' shared tokenizer, cut into seq_len-token rows."""
    from memsweep.perspectives.hf_rows import corpus_rows

    if seq_len is None:
        raise ValueError(f"scoring Hugging Face models on corpus {corpus_spec!r} needs the row length S (seq_len)")
    tokenizer, identity = tokenizer or shared_tokenizer([m.source for m in models])
    corpus = corpus_rows(_corpus_data(corpus_spec, DataConfig(kind="text")), tokenizer, identity, seq_len)
    rows, info = corpus.rows[:max_rows], corpus.info
    described = (f"the first {len(rows):,} of the {len(corpus.rows):,} distinct {seq_len}-token rows of corpus "
                 f"{info['corpus']} (text sha256 {info['corpus_sha256'][:12]}), in document order, tokenized with "
                 f"{_tokenizer_name(identity)}")
    unigram_source = (f"all {info['n_tokens']:,} tokens of corpus {info['corpus']} through that tokenizer "
                      "(an end-of-text token after each document)")
    return ScoredRows(rows, corpus.unigram, described, unigram_source, identity)


def _pool_rows(models: Sequence[ScoringModel], corpus_spec: str | None, max_rows: int | None) -> ScoredRows:
    """The rows of a memsweep pool: the models' own, or the corpus `corpus_spec` names made with
    the first model's data config."""
    from memsweep.data.source import pool_sha256
    from memsweep.data.text import load_text_pool

    if hf := [m for m in models if not isinstance(m, MemsweepModel) or m.pool is None]:
        raise ValueError(_needs_corpus(hf[0].source))
    first = models[0]
    if corpus_spec is None:
        for other in models[1:]:
            if other.pool.pool_sha256 != first.pool.pool_sha256:
                raise ValueError(f"model {first.name} trained on pool {first.pool.pool_sha256[:12]} but {other.name} "
                                 f"on pool {other.pool.pool_sha256[:12]}: they share no training rows; score them "
                                 "in separate runs")
        data = first.pool.data
    else:
        data = _corpus_data(corpus_spec, first.pool.data)
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
        described = f"the first {len(rows):,} rows of corpus {pool.info['corpus']}'s training pool {sha[:12]}"
    unigram_source = f"the whole training pool {sha[:12]} ({len(pool.train):,} rows)"
    return ScoredRows(rows, token_counts(pool.train, pool.tokenizer.vocab_size), described, unigram_source,
                      pool.tokenizer.identity)


def _corpus_data(corpus_spec: str, base: DataConfig) -> DataConfig:
    """`base` reading the corpus `corpus_spec` names: a built-in one, or hf:DATASET[@REVISION]."""
    from memsweep.data.corpora import corpus_names

    if corpus_spec.startswith(HF_PREFIX):
        name, _, revision = corpus_spec.removeprefix(HF_PREFIX).partition("@")
        return replace(base, corpus="hf", hf_name=name, hf_revision=revision or None)
    if corpus_spec in corpus_names():
        return replace(base, corpus=corpus_spec)
    raise ValueError(f"corpus {corpus_spec!r}: give a built-in corpus ({', '.join(corpus_names())}), "
                     f"{HF_PREFIX}DATASET[@REVISION] or {PATH_PREFIX}ROWS.npy")


def _given_length(length: int, seq_len: int | None, what: str) -> int:
    if seq_len is not None and seq_len != length:
        raise ValueError(f"--seq-len {seq_len}: the rows of {what} have {length} tokens (--seq-len sets the row "
                         "length of a built-in corpus tokenized for Hugging Face models)")
    return length


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


def _needs_corpus(model_source: str) -> str:
    return (f"model {model_source} is not a memsweep cell: name the text to score it on, --corpus NAME (a built-in "
            f"corpus, tokenized with its own tokenizer), {HF_PREFIX}DATASET or {PATH_PREFIX}ROWS.npy (token rows)")


def _mixed(hf_source: str, cell_source: str) -> str:
    return (f"model {hf_source} reads the corpus through its own tokenizer, cell {cell_source} through its training "
            "pool's: they would score different rows; score them in separate runs")
