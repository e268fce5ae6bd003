"""A GPT-2 decoder laid out like Hugging Face's GPT2LMHeadModel, readable top to bottom.

Why this shape: Morris et al. 2025 count parameters as
    P = V*d + S*d + L*(12d^2 + 13d) + 2d
which is exactly GPT2LMHeadModel with tied input/output embeddings, learned positions with
n_positions = S, MLP width 4d, LayerNorm with bias and GELU. `GPT.n_params` reproduces it.

The first token of a sequence is scored too: the model reads a learned BOS vector at position 0
(one extra row of d numbers, reported separately as `n_params_bos`), so all S tokens of a
sequence are predicted and all S*log2(V) bits of it can be memorized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("math", "sdpa")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 2048
    """V: the model predicts one of V tokens."""
    seq_len: int = 64
    """S: tokens per sequence, and the number of learned positions."""
    n_layer: int = 1
    d_model: int = 32
    n_head: int = 4
    attention: str = "math"
    """`math` (explicit softmax(QK^T)V) or `sdpa` (torch's fused kernels); see `pick_attention`."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")


def paper_param_count(vocab_size: int, seq_len: int, n_layer: int, d_model: int) -> int:
    """Morris et al.'s P for a GPT-2 config (tied embeddings, n_positions = S)."""
    V, S, L, d = vocab_size, seq_len, n_layer, d_model
    return V * d + S * d + L * (12 * d * d + 13 * d) + 2 * d


def training_flops_per_token(vocab_size: int, seq_len: int, n_layer: int, d_model: int) -> int:
    """Training FLOPs per token: 6 per matmul weight (all of P but the position table) plus the
    attention scores, 12 L d S (PaLM's MFU formula, as torchtitan counts it)."""
    matmul_params = paper_param_count(vocab_size, seq_len, n_layer, d_model) - seq_len * d_model
    return 6 * matmul_params + 12 * n_layer * d_model * seq_len


def pick_attention(device: torch.device | str) -> str:
    """Attention kernel measured fastest per device (benchmarks/throughput.py).

    On CPU torch's SDPA backward in bf16 is several times slower than in fp32, while the explicit
    path makes bf16 faster than fp32; on CUDA the fused flash kernels win.
    """
    return "sdpa" if torch.device(device).type == "cuda" else "math"


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.attention = cfg.attention
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        mask = torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.causal_mask[:T, :T], float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.bos = nn.Parameter(torch.zeros(cfg.d_model))
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        nn.init.normal_(self.bos, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, S, V) predicting every token of `tokens` (B, S), the first from BOS."""
        B, S = tokens.shape
        x = torch.cat([self.bos.expand(B, 1, -1), self.wte(tokens[:, :-1])], dim=1)
        x = x + self.wpe.weight[:S]
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied output head

    @property
    def n_params(self) -> int:
        """The paper's parameter count P (everything except the BOS row)."""
        return sum(p.numel() for p in self.parameters()) - self.n_params_bos

    @property
    def n_params_bos(self) -> int:
        return self.bos.numel()

    def param_counts_by_component(self) -> dict[str, int]:
        d = self.cfg.d_model
        per_block = sum(p.numel() for p in self.h[0].parameters()) if self.cfg.n_layer else 0
        return {
            "token_embedding (tied head)": self.wte.weight.numel(),
            "position_embedding": self.wpe.weight.numel(),
            "blocks": per_block * self.cfg.n_layer,
            "final_layernorm": 2 * d,
            "total (paper P)": self.n_params,
            "bos (not in P)": self.n_params_bos,
        }

    def flops_per_token(self) -> int:
        cfg = self.cfg
        return training_flops_per_token(cfg.vocab_size, cfg.seq_len, cfg.n_layer, cfg.d_model)
