"""One training step of a pack, as Lightning runs one step of an unpacked cell, for every cell.

Each cell's loss is MemorizationModule.loss of its own batch; the pack backpropagates their sum,
which hands every cell exactly the gradient of its own loss (d sum / d loss_k = 1), so a
non-finite loss makes only its own cell's gradients non-finite. Then per-cell clipping
(memsweep.pack.clip), per-cell AdamW at the learning rate of the cell's own schedule.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from memsweep.pack.clip import clip_grad_norms_
from memsweep.pack.model import Forward, PackedGPT
from memsweep.pack.optim import PackedAdamW


def per_cell_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """(K,) mean next-token cross-entropy (nats) of each cell's batch, in fp32 also for bf16 logits.

    A pack of one takes cross_entropy's own mean, as MemorizationModule.loss does: the mean of the
    unreduced losses sums in another order (the same gradients, a loss 1 ulp off)."""
    if tokens.shape[0] == 1:
        return F.cross_entropy(logits[0].float().flatten(0, 1), tokens[0].flatten()).unsqueeze(0)
    nats = F.cross_entropy(logits.float().flatten(0, 2), tokens.flatten(), reduction="none")
    return nats.view(tokens.shape[0], -1).mean(dim=1)


class PackedTrainStep:
    """Train a pack one step on K batches (K, B, S).

    Cell k's learning rate at its step c (steps taken so far) is `base_lrs[k] * schedules[k](c)`,
    as LambdaLR sets it; `max_norms[k]` is its gradient-norm clip (0 or None: none). The first
    1-based step with a non-finite loss of each cell is kept on the device (-1: none yet), as
    MemorizationModule keeps it, so the check costs no synchronisation per step."""

    def __init__(self, pack: PackedGPT, forward: Forward, optimizer: PackedAdamW, base_lrs: Sequence[float],
                 schedules: Sequence[Callable[[int], float]], max_norms: Sequence[float | None]):
        self.pack, self.forward, self.optimizer = pack, forward, optimizer
        self.base_lrs, self.schedules, self.max_norms = list(base_lrs), list(schedules), list(max_norms)
        self.first_nonfinite = torch.full((pack.n_cells,), -1, dtype=torch.long, device=pack.device)

    def __call__(self, tokens: Tensor, lrs: Sequence[float | None] | None = None) -> Tensor:
        """Each cell's training loss of this step, (K,), detached. `lrs[k]`, where given and not
        None, is cell k's rate for this step instead of its schedule's (a decay branch's)."""
        params = self.pack.params
        for p in params.values():
            p.grad = None
        losses = per_cell_losses(self.forward(params, tokens), tokens)
        losses.sum().backward()
        self._note_nonfinite(losses.detach())
        clip_grad_norms_([params[name].grad for name in self.optimizer.order], self.max_norms)
        steps = self.optimizer.steps
        rates = [lr * schedule(step) for lr, schedule, step in zip(self.base_lrs, self.schedules, steps)]
        if lrs is not None:
            rates = [rate if lr is None else lr for rate, lr in zip(rates, lrs, strict=True)]
        self.optimizer.step(rates)
        return losses.detach()

    def _note_nonfinite(self, losses: Tensor) -> None:
        device = losses.device
        step = torch.tensor([s + 1 for s in self.optimizer.steps], device=device)
        active = torch.tensor(self.optimizer.active, device=device)
        bad = ~torch.isfinite(losses) & (self.first_nonfinite < 0) & active
        self.first_nonfinite = torch.where(bad, step, self.first_nonfinite)

    def first_nonfinite_steps(self) -> list[int | None]:
        """Each cell's first training step (1-based) with a non-finite loss, or None."""
        return [s if s >= 0 else None for s in self.first_nonfinite.tolist()]
