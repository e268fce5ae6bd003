"""AdamW for a pack: K AdamWs as one, each cell with its own learning rate, step count and freeze.

Why elementwise is enough: AdamW's update of a weight depends only on that weight, its gradient
and its two moments, plus numbers of the cell (its learning rate and the bias corrections of its
step count). Those are computed per cell on the host in Python floats, as torch computes them, and
every tensor op is rounded as torch's kernel rounds it, so a pack of one steps bit for bit as
memsweep's optimizer (memsweep.optim.build_adamw, any bf16_optimizer mode) and each cell of a
larger pack as its own optimizer would.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from memsweep.optim import ROUNDINGS, round_to_bf16
from memsweep.pack.cellwise import along_cells, cell_values, divided_per_cell, times_per_cell


def optimizer_order(params: dict[str, Tensor]) -> list[str]:
    """Parameter names in MemorizationModule's optimizer order: the matrices (the decayed group),
    then the vectors; the order of clipping's sum and of stochastic rounding's draws."""
    matrices = [name for name, p in params.items() if p.dim() - 1 >= 2]
    return matrices + [name for name in params if name not in matrices]


class PackedAdamW:
    """torch.optim.AdamW (bf16_optimizer `bf16`: moments in the parameters' dtype) or
    memsweep.optim.Fp32StateAdamW (`fp32-state`, `stochastic-rounding`: fp32 moments, the step
    rounded into bf16 weights) for every cell of a pack.

    `weight_decays[k]` applies to cell k's matrices only, as MemorizationModule groups them.
    `seeds[k]` seeds cell k's stochastic rounding (the cell's seed, as MemorizationModule's
    rounding_seed). A frozen cell's weights, moments, step count and rounding stream stop changing."""

    def __init__(self, params: dict[str, Tensor], betas: tuple[float, float], weight_decays: Sequence[float],
                 bf16_optimizer: str = "bf16", eps: float = 1e-8, seeds: Sequence[int] | None = None):
        if bf16_optimizer != "bf16" and bf16_optimizer not in ROUNDINGS:
            raise ValueError(f"bf16_optimizer must be bf16 or one of {', '.join(ROUNDINGS)}, got {bf16_optimizer!r}")
        self.params, self.betas, self.eps = params, betas, eps
        self.order = optimizer_order(params)
        self.n_matrices = sum(1 for p in params.values() if p.dim() - 1 >= 2)
        self.weight_decays = list(weight_decays)
        n_cells = len(self.weight_decays)
        self.steps = [0] * n_cells
        self.active = [True] * n_cells
        moments = {name: p.dtype if bf16_optimizer == "bf16" else torch.float32 for name, p in params.items()}
        self.state = {name: {key: torch.zeros_like(p, dtype=moments[name]) for key in ("exp_avg", "exp_avg_sq")}
                      for name, p in params.items()}
        self.generators: list[torch.Generator] | None = None
        if ROUNDINGS.get(bf16_optimizer) == "stochastic":
            if seeds is None or len(seeds) != n_cells:
                raise ValueError("stochastic-rounding needs one seed per cell")
            device = next(iter(params.values())).device
            self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def freeze(self, cell: int) -> None:
        """Stop cell `cell` (saturated, failed): nothing of it changes from now on."""
        self.active[cell] = False

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """One AdamW step of every active cell, cell k at learning rate lrs[k] (a frozen cell's is ignored)."""
        beta1, beta2 = self.betas
        device = next(iter(self.params.values())).device
        counts = [s + 1 for s in self.steps]
        step_sizes = cell_values([-lr / (1 - beta1**c) for lr, c in zip(lrs, counts)], device)
        bias_correction2_sqrts = cell_values([(1 - beta2**c) ** 0.5 for c in counts], device)
        decays = cell_values([1 - lr * wd for lr, wd in zip(lrs, self.weight_decays)], device)
        decayed = any(self.weight_decays)
        active = None if all(self.active) else torch.tensor(self.active, device=device)
        for index, name in enumerate(self.order):
            p, state = self.params[name], self.state[name]
            if p.grad is None:
                continue
            work = state["exp_avg"].dtype  # bf16 mode: every op rounds into the weights' dtype; else fp32
            if active is None and work == p.dtype:
                self._step_in_place(p, state, decays if decayed and index < self.n_matrices else None,
                                    step_sizes, bias_correction2_sqrts)
                continue
            grad, weight = p.grad.to(work), p.to(work)
            if decayed and index < self.n_matrices:
                weight = times_per_cell(weight, decays)
            exp_avg = state["exp_avg"].lerp(grad, 1 - beta1)
            exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = divided_per_cell(exp_avg_sq.sqrt(), bias_correction2_sqrts).add_(self.eps)
            # addcdiv_(exp_avg, denom, value=step_size): computed in fp32, rounded once
            weight = (weight.float() + along_cells(step_sizes, weight) * exp_avg.float() / denom.float()).to(work)
            _commit(state["exp_avg"], exp_avg, active)
            _commit(state["exp_avg_sq"], exp_avg_sq, active)
            self._commit_weight(p, weight, active)
        self.steps = [s + 1 if on else s for s, on in zip(self.steps, self.active)]

    def _step_in_place(self, p: Tensor, state: dict[str, Tensor], decays: Tensor | None, step_sizes: Tensor,
                       bias_correction2_sqrts: Tensor) -> None:
        """The step above, op for op and rounded alike, written into the weights and moments: with
        every cell active and the moments in the weights' dtype nothing needs keeping, and a pack's
        state is K times a cell's, so its copies cost memory traffic (most of a wide pack's optimizer)."""
        beta1, beta2 = self.betas
        grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
        if decays is not None:
            p.mul_(along_cells(decays, p))  # a bf16 weight: computed in fp32, rounded once, as times_per_cell
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_(along_cells(bias_correction2_sqrts, p)).add_(self.eps)
        update = along_cells(step_sizes, p) * exp_avg  # fp32 also for bf16 moments
        p.add_(update.div_(denom))  # weight + step_size * exp_avg / denom in fp32, rounded once

    def _commit_weight(self, p: Tensor, weight: Tensor, active: Tensor | None) -> None:
        if weight.dtype == p.dtype:
            _commit(p, weight, active)
        elif self.generators is None:
            _commit(p, round_to_bf16(weight), active)
        else:  # each cell draws its rounding noise from its own stream, as it would alone
            for cell, generator in enumerate(self.generators):
                if self.active[cell]:
                    p[cell].copy_(round_to_bf16(weight[cell], generator))

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "active": list(self.active),
                "state": {name: {k: v.clone() for k, v in s.items()} for name, s in self.state.items()},
                "generators": None if self.generators is None else [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.active = list(state["steps"]), list(state["active"])
        for name, saved in state["state"].items():
            for key, value in saved.items():
                self.state[name][key].copy_(value)
        for generator, saved in zip(self.generators or [], state["generators"] or [], strict=True):
            generator.set_state(saved)


def _commit(destination: Tensor, new: Tensor, active: Tensor | None) -> None:
    """destination <- new in the active cells; the frozen ones keep their values exactly."""
    if active is not None:
        new = torch.where(along_cells(active, new), new, destination)
    destination.copy_(new)
