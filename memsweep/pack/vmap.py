"""The packed forward through torch.func: memsweep's own GPT, vmapped over the cell dimension.

Why: it runs the unpacked model's code itself, so it cannot drift from it. A pack of one calls
the GPT directly on the cell's slices instead of through vmap: vmap's batching rules reorder
some reductions (LayerNorm's backward, by about 1e-10), and without vmap a pack of one trains
bit for bit as the unpacked cell.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from memsweep.model import GPT, GPTConfig


class VmapForward:
    """(stacked params, tokens (K, B, S)) -> logits (K, B, S, V) via vmap(functional_call(GPT))."""

    def __init__(self, cfg: GPTConfig, device: torch.device | str = "cpu"):
        with torch.device("meta"):
            self.skeleton = GPT(cfg)  # the module's code and shape; its weights come from the pack
        with torch.random.fork_rng(devices=[]):  # a real GPT for its buffers (the causal masks)
            self.buffers = {name: b.to(device) for name, b in GPT(cfg).named_buffers()}
        self._cell_forward = vmap(self._one_cell)

    def _one_cell(self, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
        return functional_call(self.skeleton, (params, self.buffers), (tokens,))

    def __call__(self, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
        if tokens.shape[0] == 1:
            return self._one_cell({name: p[0] for name, p in params.items()}, tokens[0]).unsqueeze(0)
        return self._cell_forward(params, tokens)
