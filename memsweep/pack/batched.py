"""The packed forward written natively: memsweep's GPT-2 with batched matmuls over the cells.

Why: vmap pays a dispatch and a reshape per op and per call; this is memsweep.model.GPT op for op
with every weight carrying the cell dimension K (torch.baddbmm for the linears, the K token
tables stacked as one table of K*V rows), read top to bottom like nanoGPT. It equals K separate
GPTs up to float reassociation, not bit for bit (baddbmm is not addmm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from memsweep.model import GPTConfig


class BatchedLinear(torch.autograd.Function):
    """baddbmm(bias, x, weight^T) with nn.Linear's backward: the weight's gradient computed as
    grad^T x, in the weight's own (K, out, in) layout. Autograd's backward of the baddbmm computes
    it as x^T grad, transposed, and copies it into the parameter's layout: a full pass over every
    weight gradient a step (7% of a d128 pack's step on a CPU, benchmarks/pack.py)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # x (K, T, in)
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        return (torch.bmm(grad, weight) if needs_x else None,
                torch.bmm(grad.transpose(1, 2), x) if needs_weight else None,
                grad.sum(1) if needs_bias else None)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each cell's nn.Linear: x (K, B, S, in), weight (K, out, in), bias (K, out). Under autocast
    the plain baddbmm, so autocast casts it as it casts an unpacked cell's linear."""
    K, B, S, _ = x.shape
    flat = x.reshape(K, B * S, -1)
    if torch.is_autocast_enabled(x.device.type):
        y = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    else:
        y = BatchedLinear.apply(flat, weight, bias)
    return y.view(K, B, S, -1)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each cell's nn.LayerNorm: normalise over the width, then the cell's own scale and shift."""
    normed = F.layer_norm(x, x.shape[-1:])
    return torch.addcmul(bias[:, None, None], normed, weight[:, None, None])


def embed_tokens(wte: Tensor, tokens: Tensor) -> Tensor:
    """Each cell's tokens (K, B, T) looked up in its own table (K, V, d): one lookup in K*V rows."""
    K, V, d = wte.shape
    offsets = torch.arange(K, device=tokens.device).view(K, 1, 1) * V
    return F.embedding(tokens + offsets, wte.reshape(K * V, d))


def mlp(x: Tensor, h: dict[str, Tensor]) -> Tensor:
    return linear(F.gelu(linear(x, h["mlp.c_fc.weight"], h["mlp.c_fc.bias"]), approximate="tanh"),
                  h["mlp.c_proj.weight"], h["mlp.c_proj.bias"])


def block_params(params: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
    """Block `layer`'s parameters, named as inside memsweep.model.Block."""
    prefix = f"h.{layer}."
    return {name.removeprefix(prefix): p for name, p in params.items() if name.startswith(prefix)}


class BatchedForward:
    """(stacked params, tokens (K, B, S)) -> logits (K, B, S, V), every cell its own GPT."""

    def __init__(self, cfg: GPTConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.causal_mask = torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool, device=device).tril()

    def attention(self, x: Tensor, h: dict[str, Tensor]) -> Tensor:
        K, B, S, C = x.shape
        n_head = self.cfg.n_head
        q, k, v = linear(x, h["attn.c_attn.weight"], h["attn.c_attn.bias"]).split(C, dim=-1)
        q, k, v = (t.reshape(K * B, S, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        if self.cfg.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.causal_mask[:S, :S], float("-inf")).softmax(dim=-1)
            y = att @ v
        return linear(y.transpose(1, 2).reshape(K, B, S, C), h["attn.c_proj.weight"], h["attn.c_proj.bias"])

    def __call__(self, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
        K, B, S = tokens.shape
        wte = params["wte.weight"]
        d = wte.shape[-1]
        bos = params["bos"].view(K, 1, 1, d).expand(K, B, 1, d)
        x = torch.cat([bos, embed_tokens(wte, tokens[:, :, :-1])], dim=2)
        x = x + params["wpe.weight"][:, None, :S]
        for layer in range(self.cfg.n_layer):
            h = block_params(params, layer)
            x = x + self.attention(layer_norm(x, h["ln_1.weight"], h["ln_1.bias"]), h)
            x = x + mlp(layer_norm(x, h["ln_2.weight"], h["ln_2.bias"]), h)
        x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"])
        logits = torch.bmm(x.view(K, B * S, d), wte.transpose(1, 2))  # tied output head
        return logits.view(K, B, S, -1)
