"""A Hugging Face model's own tokenizer: where its spec points, what identifies it, and the one
tokenizer a run's HF models must share to be scored on the same text rows.

Why two hashes: `sha256` is over the vocabulary (what a token id means: the models.json record and
the check that rows were made for a model), `encoding_sha256` over the rules that cut text into
tokens (vocabulary, merges, normalizer, pre-tokenizer, added tokens): two tokenizers can share a
vocabulary and still tokenize the same text differently, so rows are cached and shared by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

TRANSFORMERS_INSTALL = 'pip install -e ".[text]"'
HF_PREFIX, PATH_PREFIX = "hf:", "path:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""What save_pretrained writes for a tokenizer (one of them at least)."""
_WHAT_TO_DO = (f"save the model's tokenizer with it (tokenizer.save_pretrained(DIR)), or score it on --corpus "
               f"{PATH_PREFIX}ROWS.npy, rows made with its tokenizer")
ENCODING_PARTS = ("added_tokens", "normalizer", "pre_tokenizer", "model")
"""The parts of a tokenizer.json that decide which ids a text gets (not its post-processor,
decoder, padding or truncation: text is encoded without special tokens, untruncated)."""


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise RuntimeError(f"scoring Hugging Face models needs transformers: {TRANSFORMERS_INSTALL}") from None
    return transformers


def hf_location(spec: str) -> tuple[str, str | None]:
    """(hub name or directory, revision or None) of `hf:NAME@REVISION` or `path:DIR`."""
    if spec.startswith(HF_PREFIX):
        where, _, revision = spec.removeprefix(HF_PREFIX).partition("@")
        return where, revision or None
    where = spec.removeprefix(PATH_PREFIX)
    if not Path(where).is_dir():
        raise ValueError(f"{spec}: no such directory (path: takes a Hugging Face save_pretrained dir)")
    return where, None


class NoTokenizer(ValueError):
    """A model without a tokenizer that loads; the message says what is missing."""


def load_tokenizer(spec: str):
    """The model's own tokenizer (AutoTokenizer from the same dir, or hub name and revision)."""
    transformers = require_transformers()
    where, revision = hf_location(spec)
    if spec.startswith(PATH_PREFIX) and not any((Path(where) / name).is_file() for name in TOKENIZER_FILES):
        raise NoTokenizer(f"model {spec} has no tokenizer: {where} holds none of {', '.join(TOKENIZER_FILES)}; "
                          f"{_WHAT_TO_DO}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, revision=revision)
    except (OSError, ValueError, TypeError, KeyError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NoTokenizer(f"model {spec}: its tokenizer does not load ({cause}); {_WHAT_TO_DO}") from None
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):  # transformers 5 makes one of them alone
        raise NoTokenizer(f"model {spec} has no tokenizer: what loads holds only special tokens; {_WHAT_TO_DO}")
    return tokenizer


def find_tokenizer(spec: str):
    """The model's tokenizer, or None when it has none that loads."""
    try:
        return load_tokenizer(spec)
    except NoTokenizer:
        return None


def tokenizer_identity(tokenizer, spec: str) -> dict:
    where, revision = hf_location(spec)
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {"kind": "hf", "name": where + (f"@{revision}" if revision else ""), "vocab_size": len(tokenizer),
            "sha256": hashlib.sha256(vocab.encode()).hexdigest(), "encoding_sha256": _encoding_sha256(tokenizer)}


def _encoding_sha256(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    parts = {part: definition.get(part) for part in ENCODING_PARTS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def shared_tokenizer(specs: Sequence[str]):
    """(tokenizer, identity) of the HF models `specs`, refusing a model without a tokenizer, one
    whose tokenizer is not a fast (`tokenizers`) one, and two models whose tokenizers differ."""
    if not specs:
        raise ValueError("no Hugging Face model to tokenize the corpus for")
    found = []
    for spec in specs:
        tokenizer = load_tokenizer(spec)
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ValueError(f"model {spec}'s tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) one; "
                             "save it as a tokenizer.json, or score the model on --corpus path:ROWS.npy")
        found.append((spec, tokenizer, tokenizer_identity(tokenizer, spec)))
    first_spec, first, first_id = found[0]
    for spec, tokenizer, identity in found[1:]:
        if (identity["sha256"], identity["encoding_sha256"]) != (first_id["sha256"], first_id["encoding_sha256"]):
            raise ValueError(f"models {first_spec} and {spec} read different tokenizers "
                             f"({_difference(first, tokenizer)}): the same text gives them different rows; "
                             "score them in separate runs")
    return first, first_id


def _difference(a, b) -> str:
    if len(a) != len(b):
        return f"{len(a):,} against {len(b):,} tokens"
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    only_a = sorted(set(vocab_a) - set(vocab_b))
    if only_a:
        return f"both of {len(a):,} tokens, but {only_a[0]!r} (id {vocab_a[only_a[0]]}) is only in the first"
    moved = next((token for token in sorted(vocab_a) if vocab_a[token] != vocab_b[token]), None)
    if moved is not None:
        return (f"the same {len(a):,} tokens, but {moved!r} is id {vocab_a[moved]} in one and {vocab_b[moved]} in "
                "the other")
    return f"the same {len(a):,}-token vocabulary, but different merges, normalizer or pre-tokenizer"
