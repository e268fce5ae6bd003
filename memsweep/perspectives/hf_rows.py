"""A memsweep corpus as token rows of a Hugging Face model's own tokenizer, built once and cached.

The text is memsweep.data's (read_documents: the same extraction, cleaning and text cache as a
text cell), cut into S-token windows with one end-of-text token after each document and
deduplicated exactly as a cell's pool (memsweep.data.sequences), but not shuffled: the rows keep
the corpus's document order, so the first R rows are the same in every run and for every R.

Cache, under memsweep.data.text.default_cache_dir():
  perspectives/<corpus>-<key>/rows.npy     (R, S) every distinct row, in document order
  perspectives/<corpus>-<key>/unigram.npy  (V,) int64 counts over all the corpus's tokens
  perspectives/<corpus>-<key>/info.json    what they were made from
key: the corpus text's sha256, the tokenizer's encoding_sha256 and S. Built under a file lock in a
staging directory renamed into place whole, so a reader never sees half of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memsweep.config import DataConfig
from memsweep.data.corpora import Corpus, read_documents
from memsweep.data.locks import INFO_FILE, file_lock, publish_arrays
from memsweep.data.sequences import cut_windows, deduplicate
from memsweep.data.text import ENCODE_CHUNK, default_cache_dir
from memsweep.storage import token_dtype

ROWS_FORMAT = 1
"""Part of the cache key: bump it when the windowing, dedup or tokenizing call changes."""
CACHE_DIR_NAME = "perspectives"
ROWS_FILE, UNIGRAM_FILE = "rows.npy", "unigram.npy"


@dataclass(frozen=True)
class CorpusRows:
    rows: np.ndarray
    """(R, S) read-only memory map: every distinct row of the corpus, in document order."""
    unigram: np.ndarray
    """(V,) int64: each token id's count over all the tokenized corpus (end-of-text tokens included)."""
    info: dict
    """corpus (name, sha256), tokenizer identity, seq_len, n_documents, n_tokens, n_windows,
    n_duplicates_dropped."""


def rows_key(corpus_sha256: str, encoding_sha256: str, seq_len: int) -> str:
    spec = {"format": ROWS_FORMAT, "corpus_sha256": corpus_sha256, "encoding_sha256": encoding_sha256,
            "seq_len": seq_len}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def corpus_rows(data: DataConfig, tokenizer, identity: dict, seq_len: int,
                cache_dir: Path | None = None) -> CorpusRows:
    """The rows of `data`'s corpus through `tokenizer` (identity: hf_tokenizer.tokenizer_identity),
    tokenized once per (corpus text, tokenizer, S) and then memory-mapped."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus = read_documents(data, cache_dir)
    key = rows_key(corpus.sha256, identity["encoding_sha256"], seq_len)
    directory = cache_dir / CACHE_DIR_NAME / f"{data.corpus}-{key}"
    if not directory.is_dir():
        with file_lock(directory.with_suffix(".lock")):
            if not directory.is_dir():
                _build(corpus, tokenizer, identity, seq_len, directory)
    return CorpusRows(np.load(directory / ROWS_FILE, mmap_mode="r"), np.load(directory / UNIGRAM_FILE),
                      json.loads((directory / INFO_FILE).read_text()))


def tokenize_documents(tokenizer, documents: list[str]) -> list[np.ndarray]:
    """Each document's ids, without special tokens; a special token written in a text (a literal
    "<|endoftext|>") is text, as in memsweep's own tokenizers."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: these settings are not ours to change
    backend.encode_special_tokens = True
    backend.no_truncation()  # a tokenizer.json may hold a truncation length: a document is read whole
    backend.no_padding()
    return [np.asarray(encoding.ids, dtype=np.uint32)
            for start in range(0, len(documents), ENCODE_CHUNK)
            for encoding in backend.encode_batch_fast(documents[start : start + ENCODE_CHUNK],
                                                      add_special_tokens=False)]


def _build(corpus: Corpus, tokenizer, identity: dict, seq_len: int, directory: Path) -> None:
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(f"tokenizer {identity['name']} has no end-of-text token (eos_token) to mark where one "
                         f"document of corpus {corpus.name!r} ends and the next begins")
    token_arrays = tokenize_documents(tokenizer, corpus.documents)
    vocab_size = max(len(tokenizer), eos_id + 1)
    windows = cut_windows(token_arrays, seq_len, eos_id)
    if windows.size and windows.max() >= vocab_size:
        raise RuntimeError(f"tokenizer {identity['name']} produced id {windows.max()}, outside its "
                           f"{vocab_size:,} tokens")
    unique, n_dropped = deduplicate(windows.astype(token_dtype(vocab_size)))
    unigram = np.bincount(np.concatenate([*token_arrays, np.zeros(0, np.uint32)]), minlength=vocab_size)
    unigram[eos_id] += len(token_arrays)
    info = {"corpus": corpus.name, "corpus_sha256": corpus.sha256, "tokenizer": identity, "seq_len": seq_len,
            "n_documents": len(corpus.documents), "n_tokens": int(unigram.sum()), "n_windows": len(windows),
            "n_duplicates_dropped": n_dropped}
    publish_arrays(directory, {ROWS_FILE: unique, UNIGRAM_FILE: unigram}, info)
