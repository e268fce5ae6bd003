"""Unintended memorization per sample against a reference model (Morris et al. 2025 section 2.3).

Per sample, mem_U = max(0, NLL_ref - NLL_model) in bits: the coder uses whichever of the two
models compresses the sample better. The sum over samples is a lower bound on the dataset-level
value (their Proposition 1). Total memorization is measured against H0 = S log2 V, the uniform
code that knows nothing, and generalization is total minus unintended (negative where the
reference codes worse than uniform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memsweep.metrics import uniform_reference_bits


def unintended_memorization(model_nll_bits: np.ndarray, reference_nll_bits: np.ndarray) -> np.ndarray:
    """(N,) float64: max(0, reference - model) per sample, both NLLs in bits."""
    model, reference = _checked(model_nll_bits, reference_nll_bits)
    return np.maximum(reference - model, 0.0)


@dataclass(frozen=True)
class UnintendedSummary:
    n_samples: int
    unintended_bits: float
    """Sum over samples of max(0, NLL_ref - NLL_model)."""
    total_bits: float
    """Sum over samples of max(0, H0 - NLL_model), H0 = S log2 V."""
    generalization_bits: float
    """total_bits - unintended_bits."""
    n_positive: int
    """Samples the model codes strictly shorter than the reference."""
    reference_bits: float
    """Sum of NLL_ref: the dataset's code length under the reference."""


def summarize_unintended(
    model_nll_bits: np.ndarray, reference_nll_bits: np.ndarray, seq_len: int, vocab_size: int
) -> UnintendedSummary:
    model, reference = _checked(model_nll_bits, reference_nll_bits)
    per_sample = np.maximum(reference - model, 0.0)
    total = float(np.maximum(uniform_reference_bits(seq_len, vocab_size) - model, 0.0).sum())
    unintended = float(per_sample.sum())
    return UnintendedSummary(
        n_samples=int(model.size),
        unintended_bits=unintended,
        total_bits=total,
        generalization_bits=total - unintended,
        n_positive=int((per_sample > 0).sum()),
        reference_bits=float(reference.sum()),
    )


def _checked(model_nll_bits, reference_nll_bits) -> tuple[np.ndarray, np.ndarray]:
    model = np.asarray(model_nll_bits, dtype=np.float64)
    reference = np.asarray(reference_nll_bits, dtype=np.float64)
    if model.ndim != 1 or model.shape != reference.shape:
        raise ValueError(
            f"model and reference NLLs must be 1-D arrays of one value per sample with equal shapes, "
            f"got {model.shape} and {reference.shape}"
        )
    for name, values in (("model", model), ("reference", reference)):
        if not np.isfinite(values).all():
            raise ValueError(f"{name} NLLs hold {int((~np.isfinite(values)).sum())} non-finite values")
    return model, reference
