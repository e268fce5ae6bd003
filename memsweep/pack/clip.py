"""Gradient-norm clipping per cell: each cell's norm over its own gradients, never the pack's.

Why this way: an unpacked cell clips with torch.nn.utils.clip_grad_norm_ (Lightning's
gradient_clip_val); this is that function's arithmetic (per-tensor norms, the norm of the norms,
max_norm / (norm + 1e-6) clamped at 1) done on the cell dimension, so a pack of one clips bit for
bit as the unpacked cell and one cell's huge or non-finite gradients leave the others untouched.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from memsweep.pack.cellwise import along_cells, cell_values, times_per_cell


@torch.no_grad()
def clip_grad_norms_(grads: Sequence[Tensor], max_norms: Sequence[float | None]) -> Tensor:
    """Clip in place each cell's gradients (every tensor (K, ...)) to its max norm (0 or None:
    that cell is not clipped); returns each cell's total norm before clipping, (K,).

    Pass the gradients in the unpacked optimizer's parameter order for bit-identical norms."""
    norms = torch.stack([torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim()))) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    clips = [bool(m) for m in max_norms]
    coef = times_per_cell((total + 1e-6).reciprocal(), cell_values([m if m else 1.0 for m in max_norms], total.device))
    coef = torch.clamp(coef, max=1.0)  # max_norm / (norm + 1e-6), as clip_grad_norm_ computes it
    if not all(clips):
        coef = torch.where(torch.tensor(clips, device=coef.device), coef, torch.ones_like(coef))
    for g in grads:
        g.mul_(along_cells(coef, g))
    return total
