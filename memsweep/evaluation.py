"""Run a model over a whole token set and measure it: per-sample NLL bits, then memorization."""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import nn

from memsweep.metrics import Memorization, memorization, sequence_nll_bits, uniform_reference_bits


@torch.no_grad()
def per_sample_nll_bits(
    model: nn.Module,
    tokens: np.ndarray,
    batch_size: int,
    device: torch.device,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """NLL in bits of every row of `tokens` under `model` (float64), in eval mode, every row."""
    was_training = model.training
    model.eval()
    out = np.empty(len(tokens), dtype=np.float64)
    try:
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(np.asarray(tokens[start : start + batch_size], dtype=np.int64)).to(device)
            with forward_context():
                logits = model(batch)
            out[start : start + len(batch)] = sequence_nll_bits(logits, batch).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def sharded_nll_bits(
    model: nn.Module,
    tokens: np.ndarray,
    batch_size: int,
    device: torch.device,
    forward_context: Callable[[], ContextManager],
    rank: int,
    world_size: int,
    all_gather: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    """`per_sample_nll_bits` with the rows split over data-parallel ranks and gathered back.

    Every rank runs the same number of forward passes (shards are padded to equal length), which
    sharded-parameter strategies such as ZeRO-3 need.
    """
    if world_size == 1:
        return per_sample_nll_bits(model, tokens, batch_size, device, forward_context)
    shard = -(-len(tokens) // world_size)
    padded = np.concatenate([tokens, np.repeat(tokens[:1], shard * world_size - len(tokens), axis=0)])
    mine = per_sample_nll_bits(model, padded[rank * shard : (rank + 1) * shard], batch_size, device, forward_context)
    gathered = all_gather(torch.from_numpy(mine).to(device))  # (world_size, shard)
    return gathered.reshape(-1).cpu().numpy()[: len(tokens)]


def uniform_memorization(nll_bits: np.ndarray, seq_len: int, vocab_size: int) -> Memorization:
    """Memorization of uniform random sequences, whose reference code length is S*log2 V each."""
    return memorization(nll_bits, uniform_reference_bits(seq_len, vocab_size), seq_len)


def float32_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` (exact: every bf16 number is an fp32 number), to evaluate bf16
    weights in an fp32 forward, so the arithmetic's share of a bf16 cell's loss is seen apart
    from what its weights hold. A copy, not an in-place cast: the training state stays as it is."""
    return copy.deepcopy(model).float()
