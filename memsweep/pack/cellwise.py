"""Arithmetic with one number per cell, rounded as torch rounds the same op with a Python number.

Why: an unpacked cell's optimizer and clipping multiply and divide tensors by Python floats (its
learning rate, bias corrections, clip coefficient); torch computes such an op in fp32 and rounds
once into the tensor's dtype (also bf16). A pack has one such number per cell, so it does the
same: the numbers as an fp32 tensor (K,), the op in fp32, one rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def cell_values(values: Sequence[float], device: torch.device) -> Tensor:
    """One number per cell, (K,), in fp32: what torch makes of a Python number in an fp32 or bf16 op."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def along_cells(values: Tensor, like: Tensor) -> Tensor:
    """(K,) values shaped (K, 1, ..., 1) to broadcast against `like` (K, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def times_per_cell(x: Tensor, values: Tensor) -> Tensor:
    """x * value, each cell by its own value, rounded as torch rounds a tensor times a Python
    number (computed in fp32, rounded once to x's dtype, also for bf16)."""
    return (x.float() * along_cells(values, x)).to(x.dtype)


def divided_per_cell(x: Tensor, values: Tensor) -> Tensor:
    """x / value per cell, rounded as torch rounds a tensor divided by a Python number."""
    return (x.float() / along_cells(values, x)).to(x.dtype)
