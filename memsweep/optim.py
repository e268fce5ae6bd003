"""AdamW for bf16 weights with float32 moments, and the rounding of its new weight into bf16.

Why: under precision=bf16 torch's AdamW keeps its moments in bf16 (8 significant bits). With
beta2 = 0.999, v * beta2 rounds back to v, so the second moment never decays; and the new weight
is rounded to nearest, so a weight of 0.5 ignores every update smaller than half its bf16 spacing
(2^-10 ~ 1e-3 downward, 2^-9 upward): late low-learning-rate steps do nothing. That is the
optimizer's rounding, not what bf16 weights can hold. This AdamW keeps both moments in fp32 and
computes the step in fp32 from the weight's exact fp32 value, then writes the new weight back to
bf16, either to nearest (`fp32-state`: only the weight's own rounding is left) or stochastically
(`stochastic-rounding`: unbiased, so updates smaller than a bf16 step still add up in
expectation). There is no fp32 master copy: the bf16 weight the model holds is the only one, as
in true bf16 training.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROUNDINGS = {"fp32-state": "nearest", "stochastic-rounding": "stochastic"}
"""trainer.bf16_optimizer -> how the fp32 result is rounded into the bf16 weight."""
_LOW_HALF = 1 << 16
"""An fp32 number is a bf16 number (its high 16 bits) and a remainder (its low 16 bits)."""
_HIGH_HALF_MASK = -_LOW_HALF
"""0xFFFF0000 as an int32: keeps the bf16 part of an fp32 bit pattern."""


def round_to_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """fp32 `x` as bf16: to nearest-even without a generator, else stochastically: up (away from
    zero) with probability equal to the remainder in bf16 ulps, so the expectation is `x` itself.

    The stochastic rounding adds uniform 16-bit noise to the fp32 bit pattern and truncates it to
    its high 16 bits: the carry into bit 16 happens exactly when noise + remainder >= 2^16, i.e.
    with probability remainder / 2^16, and crosses binades and signs correctly because fp32 bits
    order by magnitude."""
    if generator is None:
        return x.to(torch.bfloat16)
    noise = torch.randint(0, _LOW_HALF, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    truncated = (x.contiguous().view(torch.int32) + noise) & _HIGH_HALF_MASK
    return truncated.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


class Fp32StateAdamW(torch.optim.Optimizer):
    """torch's AdamW step (the same operations in the same order: on fp32 parameters the result
    equals torch.optim.AdamW's bit for bit, tests/test_bf16.py) with the moments and the step in
    fp32 whatever the parameters' dtype; a non-fp32 parameter gets the rounded result.

    `rounding="stochastic"` draws its noise from a generator seeded with `seed`, whose state is
    part of `state_dict()`, so a run resumed from a checkpoint rounds exactly as an uninterrupted
    one (and every data-parallel rank, seeded alike, rounds alike)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float = 0.0,
                 eps: float = 1e-8, rounding: str = "nearest", seed: int = 0):
        if rounding not in ROUNDINGS.values():
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS.values())}, got {rounding!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "eps": eps})
        self.generator: torch.Generator | None = None
        if rounding == "stochastic":
            device = next(p.device for group in self.param_groups for p in group["params"])
            self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)  # never bf16: it counts
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                weight = p.float()  # p itself when p is fp32, else an exact fp32 copy
                grad, exp_avg, exp_avg_sq = p.grad.float(), state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"].item()
                if weight_decay != 0:
                    weight.mul_(1 - lr * weight_decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                weight.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
                if weight is not p:
                    p.copy_(round_to_bf16(weight, self.generator))
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.generator is not None:
            state["rounding_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but torch casts loaded moments to their parameter's dtype (bf16 here): they
        are put back in fp32, as saved."""
        state_dict = dict(state_dict)
        if self.generator is not None:
            self.generator.set_state(state_dict.pop("rounding_generator"))
        super().load_state_dict(state_dict)
        saved_ids = (i for group in state_dict["param_groups"] for i in group["params"])
        params = (p for group in self.param_groups for p in group["params"])
        for index, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(index, {}).items():
                if key != "step":
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)


def build_adamw(param_groups: list[dict], lr: float, betas: tuple[float, float], bf16_optimizer: str,
                seed: int) -> torch.optim.Optimizer:
    """torch's AdamW for `bf16` (its state in the parameters' dtype: what precision=bf16 always
    trained with), else Fp32StateAdamW with the mode's rounding."""
    if bf16_optimizer == "bf16":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas)
    return Fp32StateAdamW(param_groups, lr=lr, betas=betas, rounding=ROUNDINGS[bf16_optimizer], seed=seed)


def optimizer_state_dtype(optimizer: torch.optim.Optimizer) -> str | None:
    """The dtype AdamW keeps its first moment in (None before the first step), read off the state."""
    moment = next((s["exp_avg"] for s in optimizer.state.values() if "exp_avg" in s), None)
    return None if moment is None else str(moment.dtype).removeprefix("torch.")
