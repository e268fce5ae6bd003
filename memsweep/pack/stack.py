"""The stacked training state of the cells now in a pack, built from each cell's own slice.

Why rebuilt rather than masked: a cell that leaves (done, failed, claim lost) is taken out of
the stacked tensors, so it costs no compute from then on; the cells that stay hand over their
slices (weights, AdamW moments and step, rounding stream, first non-finite step) unchanged, the
same slices a packed cell's checkpoint holds, so a pack rebuilt after a departure, a resumed
pack and the uninterrupted pack train alike.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from memsweep.model import GPTConfig
from memsweep.pack.model import PackedGPT, make_forward, seeded_gpt
from memsweep.pack.monitor import PackedCell
from memsweep.pack.optim import PackedAdamW
from memsweep.pack.step import PackedTrainStep


class StackedState:
    """PackedGPT, PackedAdamW, the forward and PackedTrainStep of `cells` (fresh ones from their
    seeds). A pack of one runs memsweep's GPT itself (vmap's K = 1 path): bit for bit the
    unpacked cell; larger packs run `impl`."""

    def __init__(self, cells: Sequence[PackedCell], gpt: GPTConfig, dtype: torch.dtype, device: torch.device,
                 impl: str):
        weights = [c.weights or {n: p.detach() for n, p in seeded_gpt(gpt, c.cfg.seed).named_parameters()}
                   for c in cells]
        params = {name: torch.stack([w[name] for w in weights]).to(device, dtype).requires_grad_()
                  for name in weights[0]}
        self.model = PackedGPT(gpt, params)
        t = cells[0].cfg.trainer
        self.optimizer = PackedAdamW(params, (t.beta1, t.beta2), [c.cfg.trainer.weight_decay for c in cells],
                                     t.bf16_optimizer, seeds=[c.cfg.seed for c in cells])
        for k, c in enumerate(cells):
            if c.optimizer is not None:
                self._load_optimizer(k, c.optimizer)
        self.forward = make_forward("vmap" if len(cells) == 1 else impl, gpt, device,
                                    autocast=cells[0].cfg.precision == "bf16-mixed")
        self.train_step = PackedTrainStep(self.model, self.forward, self.optimizer, [c.cfg.trainer.lr for c in cells],
                                          [c.schedule for c in cells], [c.cfg.trainer.grad_clip for c in cells])
        self.train_step.first_nonfinite = torch.tensor([c.first_nonfinite or -1 for c in cells], device=device)

    def _load_optimizer(self, k: int, state: dict[str, Any]) -> None:
        opt = self.optimizer
        opt.steps[k] = state["step"]
        for name, moments in opt.state.items():
            for key, moment in moments.items():
                moment[k].copy_(state[key][name])
        if opt.generators is not None:
            opt.generators[k].set_state(state["generator"])

    @torch.no_grad()
    def load_slice(self, k: int, state: dict[str, Any]) -> None:
        """Put a cell's slice (cell_state's `model` and `optimizer`, and its `first_nonfinite`
        step) back into slot k, exactly: what a decay branch that is not kept gives back."""
        for name, p in self.model.params.items():
            p[k].copy_(state["model"][name])
        self._load_optimizer(k, state["optimizer"])
        self.set_first_nonfinite(k, state["first_nonfinite"])

    def set_first_nonfinite(self, k: int, step: int | None) -> None:
        self.train_step.first_nonfinite[k] = -1 if step is None else step

    def cell_state(self, k: int) -> dict[str, Any]:
        """Cell k's slice (on the CPU): `model` (its GPT's weights) and `optimizer` (its AdamW)."""
        opt = self.optimizer
        optimizer = {key: {n: m[key][k].detach().to("cpu", copy=True) for n, m in opt.state.items()}
                     for key in ("exp_avg", "exp_avg_sq")}
        optimizer.update(step=opt.steps[k], generator=None if opt.generators is None else opt.generators[k].get_state())
        weights = {n: p[k].detach().to("cpu", copy=True) for n, p in self.model.params.items()}
        return {"model": weights, "optimizer": optimizer}

    def hand_over(self, cells: Sequence[PackedCell], staying: Sequence[PackedCell]) -> None:
        """Give every cell its first non-finite step and each staying cell its slice, to rebuild from."""
        nonfinite = self.train_step.first_nonfinite_steps()
        for k, c in enumerate(cells):
            c.first_nonfinite = nonfinite[k]
            if c in staying:
                state = self.cell_state(k)
                c.weights, c.optimizer = state["model"], state["optimizer"]
