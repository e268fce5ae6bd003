"""What a text cell measures once it is trained (Morris et al. sections 4-6), for its record.

Against its reference (the same model trained on the whole pool): unintended memorization per
training sequence, max(0, NLL_ref - NLL_model) bits; the total against the uniform code
(S log2 V a sequence, no model at all) and the generalization part between the two. Then
extraction (greedy decoding from 8/16/32-token prefixes reproduces the whole rest of the sequence)
on the training set and on held-out sequences, the per-sequence TF-IDF and its rank correlation
with unintended memorization, and the most memorized sequences as text, with their script.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memsweep.text.extraction import extraction_rates
from memsweep.text.languages import dominant_script
from memsweep.text.tfidf import sequence_tfidf, tfidf_correlation
from memsweep.text.unintended import summarize_unintended, unintended_memorization

PREFIX_LENGTHS = (8, 16, 32)
MAX_HELDOUT_EXTRACTION = 10_000
"""The paper measures test extraction on 10,000 held-out sequences."""
TOP_MEMORIZED = 20
"""Sequences listed with their text (the paper's Table 3 lists the top 20)."""


def measure_text_cell(model: torch.nn.Module, train: np.ndarray, heldout: np.ndarray, nll: dict[str, np.ndarray],
                      reference_nll: dict[str, np.ndarray] | None, vocab_size: int, tokenizer,
                      batch_size: int) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]]]:
    """(record fields, per-sample arrays for the npz file, the top memorized sequences).

    With no reference (the cell is its own, or data.reference=none) the unintended part is
    measured against the cell itself and is 0; the report then leaves it out."""
    seq_len = train.shape[1]
    reference_train = reference_nll["train"] if reference_nll is not None else nll["train"]
    summary = summarize_unintended(nll["train"], reference_train, seq_len, vocab_size)
    per_sample = unintended_memorization(nll["train"], reference_train)
    tfidf = sequence_tfidf(train)
    correlation = tfidf_correlation(tfidf, per_sample)
    prefixes = tuple(k for k in PREFIX_LENGTHS if k < seq_len)
    extraction_train = extraction_rates(model, train, prefixes, batch_size=batch_size)
    extraction_heldout = extraction_rates(model, heldout, prefixes, batch_size=batch_size,
                                          max_sequences=MAX_HELDOUT_EXTRACTION)
    fields = {
        "unintended_bits": summary.unintended_bits,
        "total_memorized_bits": summary.total_bits,
        "generalization_bits": summary.generalization_bits,
        "n_memorized_samples": summary.n_positive,
        "reference_bits": summary.reference_bits,
        "extraction": {str(k): {"train": extraction_train[k].rate, "heldout": extraction_heldout[k].rate,
                                "n_train": extraction_train[k].n, "n_heldout": extraction_heldout[k].n}
                       for k in prefixes},
        "tfidf_spearman": None if correlation is None else correlation[0],
        "tfidf_spearman_p": None if correlation is None else correlation[1],
        "tfidf_n": 0 if correlation is None else correlation[2],
    }
    arrays = {"unintended_bits": per_sample, "tfidf": tfidf, "reference_train": reference_train,
              **{f"extracted_{k}": extraction_train[k].extracted for k in prefixes}}
    top = [] if reference_nll is None else top_memorized(train, per_sample, tfidf, tokenizer, extraction_train)
    return fields, arrays, top


def top_memorized(train: np.ndarray, per_sample: np.ndarray, tfidf: np.ndarray, tokenizer,
                  extraction: dict) -> list[dict[str, Any]]:
    """The TOP_MEMORIZED training sequences with the most unintended memorization, as text."""
    order = np.argsort(-per_sample, kind="stable")[:TOP_MEMORIZED]
    rows = []
    for rank, idx in enumerate(order, start=1):
        if per_sample[idx] <= 0:
            break
        text = tokenizer.decode([int(t) for t in train[idx]])
        rows.append({"rank": rank, "idx": int(idx), "unintended_bits": float(per_sample[idx]),
                     "tfidf": float(tfidf[idx]), "script": dominant_script(text),
                     "extracted_from": [k for k, result in sorted(extraction.items()) if result.extracted[idx]],
                     "text": text})
    return rows
