"""Memorization measured by compression (Morris et al. 2025, section 2.3), as pure functions.

For a sample x, the model compresses it to NLL_bits(x | model) and the reference to H(x | ref);
for uniform random tokens H(x | ref) = (scored tokens) * log2 V exactly. Memorization of x is
max(0, H(x | ref) - NLL_bits(x | model)), the per-sample clip at zero; summed over samples it is a
lower bound on the dataset-level unintended memorization (the paper's Proposition 1). The
unclipped dataset-level difference H - sum NLL is reported beside it, because the paper does not
say which of the two its capacity tables use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def sequence_nll_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sequence NLL in bits, float64, over every target token.

    Token log-probabilities are taken in float32 even for bf16 logits (bf16's 8-bit mantissa
    would round an 11-bit NLL to about 0.03 bits), then summed in float64 so that a sum over
    millions of tokens loses nothing.
    """
    token_nats = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return token_nats.double().sum(dim=1) / LN2


def uniform_reference_bits(scored_tokens_per_sample: int, vocab_size: int) -> float:
    """H(x | uniform generator) for one sample: scored tokens times log2 V."""
    return scored_tokens_per_sample * math.log2(vocab_size)


def data_ceiling_bits(n_samples: int, seq_len: int, vocab_size: int) -> float:
    """The most bits any model that assigns probabilities can memorize of N distinct sequences.

    Its probabilities of the N sequences sum to at most 1, so (Gibbs' inequality) their code
    lengths sum to at least N log2 N bits: memorization is at most N (S log2 V - log2 N), not
    N S log2 V. The per-sample clip can do better only by giving up on some sequences: k of them
    at probability 1/k each memorize k (S log2 V - log2 k), which rises with k up to
    log2 k = S log2 V - 1/ln 2; past that point (only when S log2 V is within 1.44 bits of
    log2 N) the best k is used instead of N.
    """
    per_sample = seq_len * math.log2(vocab_size)
    if n_samples < 1:
        return 0.0
    best_log2_k = per_sample - 1 / LN2
    if math.log2(n_samples) <= best_log2_k:
        ks = [n_samples]
    else:
        ks = [max(1, math.floor(2.0**best_log2_k)), math.ceil(2.0**best_log2_k)]
    return max(k * (per_sample - math.log2(k)) for k in ks)


@dataclass(frozen=True)
class Memorization:
    n_samples: int
    scored_tokens: int
    dataset_bits: float
    nll_bits: float
    memorized_bits: float
    memorized_bits_unclipped: float
    loss_nats: float
    """Mean NLL per scored token, in nats."""
    loss_bits: float
    """Mean NLL per scored token, in bits."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v for k, v in asdict(self).items()}


def memorization(nll_bits: np.ndarray, reference_bits: np.ndarray | float, tokens_per_sample: int) -> Memorization:
    """Summarise per-sample NLLs (bits) against per-sample reference code lengths (bits)."""
    nll = np.asarray(nll_bits, dtype=np.float64)
    ref = np.broadcast_to(np.asarray(reference_bits, dtype=np.float64), nll.shape)
    scored = nll.size * tokens_per_sample
    dataset_bits = float(ref.sum())
    total_nll = float(nll.sum())
    return Memorization(
        n_samples=int(nll.size),
        scored_tokens=int(scored),
        dataset_bits=dataset_bits,
        nll_bits=total_nll,
        memorized_bits=float(np.maximum(ref - nll, 0.0).sum()),
        memorized_bits_unclipped=dataset_bits - total_nll,
        loss_nats=total_nll * LN2 / scored,
        loss_bits=total_nll / scored,
    )
