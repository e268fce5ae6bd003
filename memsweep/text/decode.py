"""Batched, KV-cached greedy decoding for memsweep's GPT, run through the model's own submodules.

Why: extraction (Morris et al. 2025 section 6) and Chen et al.'s analyses decode every training
sequence greedily. Re-running `GPT.forward` on the growing sequence redoes all earlier positions at
each step; a per-layer key/value cache makes each new token one position's work.

Prefixes of different lengths share a batch by LEFT padding: each row's positions count from its
own BOS (position 0) and pad columns are masked out of attention, so a row decodes as it would
alone. The model reads BOS then the tokens, exactly as `GPT.forward` does: for a prefix x[:k] the
first generated token is argmax of forward(x)[:, k].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from memsweep.model import GPT, Block

Prefixes = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


@dataclass(frozen=True)
class Continuation:
    tokens: torch.Tensor
    """(B, n_new) int64: the greedy continuation of each prefix."""
    entropy: torch.Tensor | None = None
    """(B, n_new) float32, nats: entropy of the softmax each generated token was the argmax of."""
    hidden: torch.Tensor | None = None
    """(B, n_new, d) float32: the last-layer state after ln_f whose logits chose each token
    (hidden @ wte.T are those logits)."""


def greedy_continue(
    model: GPT,
    prefixes: Prefixes,
    n_new: int,
    batch_size: int = 256,
    return_entropy: bool = False,
    return_hidden: bool = False,
) -> Continuation:
    """Greedy continuation of n_new tokens for each prefix, batch_size rows at a time.

    prefixes: a (B, k) integer tensor or array, or a list of B token sequences of any lengths
    (an empty prefix is continued from BOS alone). Refuses prefixes whose length plus n_new
    exceeds model.cfg.seq_len, the number of learned positions.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be at least 1, got {n_new}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = _as_rows(prefixes)
    _check_fits(model, rows, n_new)
    device = model.wte.weight.device
    parts: list[Continuation] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids, pad in _left_padded_batches(rows, batch_size):
                parts.append(
                    _decode_batch(model, ids.to(device), pad.to(device), n_new, return_entropy, return_hidden)
                )
    finally:
        model.train(was_training)
    if not parts:
        return Continuation(
            tokens=torch.empty(0, n_new, dtype=torch.long, device=device),
            entropy=torch.empty(0, n_new, device=device) if return_entropy else None,
            hidden=torch.empty(0, n_new, model.cfg.d_model, device=device) if return_hidden else None,
        )
    return Continuation(
        tokens=torch.cat([p.tokens for p in parts]),
        entropy=torch.cat([p.entropy for p in parts]) if return_entropy else None,
        hidden=torch.cat([p.hidden for p in parts]) if return_hidden else None,
    )


def _as_rows(prefixes: Prefixes) -> torch.Tensor | list[torch.Tensor]:
    """A (B, k) LongTensor for equal-length prefixes, else a list of 1-D LongTensors."""
    if isinstance(prefixes, (torch.Tensor, np.ndarray)):
        ids = torch.as_tensor(prefixes)
        if ids.ndim != 2:
            raise ValueError(f"prefixes must be 2-D (B, k), got shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"prefixes must hold integer token ids, got {ids.dtype}")
        return ids.long()
    return [torch.as_tensor(np.asarray(row, dtype=np.int64).reshape(-1)) for row in prefixes]


def _check_fits(model: GPT, rows: torch.Tensor | list[torch.Tensor], n_new: int) -> None:
    if isinstance(rows, torch.Tensor):
        longest, flat = rows.shape[1], rows.reshape(-1)
    else:
        longest = max((len(r) for r in rows), default=0)
        flat = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    cfg = model.cfg
    if longest + n_new > cfg.seq_len:
        raise ValueError(
            f"prefix length {longest} + n_new {n_new} = {longest + n_new} exceeds the model's "
            f"seq_len {cfg.seq_len} (it has no learned position beyond {cfg.seq_len - 1})"
        )
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= cfg.vocab_size):
        low, high = int(flat.min()), int(flat.max())
        raise ValueError(f"prefix token ids must lie in [0, {cfg.vocab_size}), got [{low}, {high}]")


def _left_padded_batches(
    rows: torch.Tensor | list[torch.Tensor], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (b, k) right-aligned, pad (b,) number of pad columns) per batch of rows."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        if isinstance(chunk, torch.Tensor):
            yield chunk, torch.zeros(len(chunk), dtype=torch.long)
            continue
        lengths = torch.tensor([len(r) for r in chunk], dtype=torch.long)
        longest = int(lengths.max())
        ids = torch.zeros(len(chunk), longest, dtype=torch.long)
        for i, row in enumerate(chunk):
            if len(row):
                ids[i, longest - len(row) :] = row
        yield ids, longest - lengths


def _decode_batch(
    model: GPT, ids: torch.Tensor, pad: torch.Tensor, n_new: int, want_entropy: bool, want_hidden: bool
) -> Continuation:
    """Prefill [pads, BOS, prefix] in one pass, then feed one generated token per step.

    Column c of row b holds position c - pad[b]; columns before pad[b] are pads, column pad[b]
    is BOS. The last generated token is never fed, so the cache needs k + n_new columns.
    """
    B, k = ids.shape
    d, device = model.cfg.d_model, ids.device
    prefill = k + 1
    columns = torch.arange(k + n_new, device=device)
    positions = (columns - pad[:, None]).clamp_min(0)
    real = columns >= pad[:, None]  # keys that are BOS or a token, per row

    x = model.wte(ids)
    x = torch.cat([x.new_zeros(B, 1, d), x], dim=1)
    x[torch.arange(B, device=device), pad] = model.bos.to(x.dtype)
    x = x + model.wpe(positions[:, :prefill])
    causal = torch.ones(prefill, prefill, dtype=torch.bool, device=device).tril()
    # A pad query may see only itself: a row with no visible key would make softmax NaN.
    own = torch.eye(prefill, dtype=torch.bool, device=device)
    mask = (causal & (real[:, None, :prefill] | own)).unsqueeze(1)

    caches = [_empty_cache(block, B, k + n_new, x) for block in model.h]
    for block, cache in zip(model.h, caches):
        x = _block_step(block, x, cache, 0, mask)
    state = model.ln_f(x[:, -1])

    tokens, entropies, states = [], [], []
    for step in range(n_new):
        logits = state @ model.wte.weight.t()
        token = logits.max(dim=-1).indices  # first maximum, as argmax; faster on CPU
        tokens.append(token)
        if want_entropy:
            log_p = F.log_softmax(logits.float(), dim=-1)
            entropies.append(-(log_p.exp() * log_p).sum(dim=-1))
        if want_hidden:
            states.append(state.float())
        if step == n_new - 1:
            break
        column = prefill + step
        x = (model.wte(token) + model.wpe(positions[:, column]))[:, None]
        mask = real[:, None, None, : column + 1]
        for block, cache in zip(model.h, caches):
            x = _block_step(block, x, cache, column, mask)
        state = model.ln_f(x[:, 0])

    return Continuation(
        tokens=torch.stack(tokens, dim=1),
        entropy=torch.stack(entropies, dim=1) if want_entropy else None,
        hidden=torch.stack(states, dim=1) if want_hidden else None,
    )


def _empty_cache(block: Block, batch: int, columns: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_head = block.attn.n_head
    shape = (batch, n_head, columns, like.shape[-1] // n_head)
    return like.new_empty(shape), like.new_empty(shape)


def _block_step(
    block: Block, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], start: int, mask: torch.Tensor
) -> torch.Tensor:
    """One Block on columns start..start+T-1, writing their keys/values into the cache and
    attending to every cached column up to the last one (mask says which are real)."""
    attn, (keys, values) = block.attn, cache
    B, T, C = x.shape
    q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    end = start + T
    keys[:, :, start:end] = k
    values[:, :, start:end] = v
    y = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask)
    x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
    return x + block.mlp(block.ln_2(x))
