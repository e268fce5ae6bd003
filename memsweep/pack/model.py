"""The weights of a pack: K GPTs of one shape as stacked tensors, cell dimension first.

Why stacked and keyed by GPT's own parameter names: both forwards (torch.func's vmap over
memsweep's GPT, and the natively batched one) read the same tensors, and a cell's slice is
exactly the state dict its unpacked GPT would have, so a cell can leave the pack, be evaluated or
checkpointed with memsweep's unpacked code, and be put back.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.func import stack_module_state

from memsweep.model import GPT, GPTConfig
from memsweep.pack.batched import BatchedForward
from memsweep.pack.vmap import VmapForward

Forward = Callable[[dict[str, Tensor], Tensor], Tensor]
"""(stacked params, tokens (K, B, S)) -> logits (K, B, S, V)."""


def seeded_gpt(cfg: GPTConfig, seed: int) -> GPT:
    """The GPT an unpacked cell with this seed starts from (cell.py seeds torch, then builds the
    module), made without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(cfg)


class PackedGPT:
    """K GPTs of one GPTConfig: `params[name]` is (K, *shape of GPT's `name`), a leaf that
    requires grad."""

    def __init__(self, cfg: GPTConfig, params: dict[str, Tensor]):
        self.cfg, self.params = cfg, params

    @classmethod
    def from_models(cls, models: Sequence[GPT]) -> PackedGPT:
        params, _ = stack_module_state(list(models))  # the causal-mask buffers are the same in every cell
        return cls(models[0].cfg, params)

    @classmethod
    def from_seeds(cls, cfg: GPTConfig, seeds: Sequence[int], dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> PackedGPT:
        """Each cell initialised exactly as GPT(cfg) under its seed, then cast as Lightning casts a
        precision=bf16 cell (init in fp32, then `.to(bf16)`)."""
        return cls.from_models([seeded_gpt(cfg, seed).to(device=device, dtype=dtype) for seed in seeds])

    @property
    def n_cells(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def cell_state_dict(self, cell: int) -> dict[str, Tensor]:
        """A copy of cell `cell`'s weights, loadable into GPT(cfg)."""
        return {name: p[cell].detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def load_cell(self, cell: int, state_dict: dict[str, Tensor]) -> None:
        """Put a GPT's weights (e.g. from a cell's checkpoint) into slot `cell`."""
        for name, p in self.params.items():
            p[cell].copy_(state_dict[name])

    def cell_model(self, cell: int) -> GPT:
        """Cell `cell` as a standalone GPT (a copy), for memsweep's unpacked evaluation and records."""
        with torch.random.fork_rng(devices=[]):  # its init is overwritten: leave the caller's random state be
            model = GPT(self.cfg)
        model.to(device=self.device, dtype=next(iter(self.params.values())).dtype)
        model.load_state_dict(self.cell_state_dict(cell))
        return model


def make_forward(impl: str, cfg: GPTConfig, device: torch.device | str = "cpu", autocast: bool = False) -> Forward:
    """`vmap` (torch.func over memsweep's GPT) or `batched` (batched matmuls over the cell dim);
    `autocast`: under torch.autocast to bf16 (precision=bf16-mixed: fp32 weights, bf16 compute)."""
    forwards = {"vmap": VmapForward, "batched": BatchedForward}
    if impl not in forwards:
        raise ValueError(f"impl must be one of {', '.join(forwards)}, got {impl!r}")
    forward = forwards[impl](cfg, device)
    return AutocastForward(forward, torch.device(device).type) if autocast else forward


class AutocastForward:
    """A forward under torch.autocast(bf16), as Lightning's bf16-mixed runs an unpacked cell's
    forward, in training and in evaluation alike (the loss is taken in fp32 either way)."""

    def __init__(self, forward: Forward, device_type: str):
        self.forward, self.device_type = forward, device_type

    def __call__(self, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.forward(params, tokens)
