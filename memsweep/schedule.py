"""The learning-rate multiplier at a step: warmup, then the base schedule (constant, cosine, or
warmup-stable-decay), and for `constant`/`cosine` a cooldown started once memorization has plateaued.

Under `wsd` the stable phase stays at the peak rate until the final decay, which brings the rate
linearly to zero exactly at max_steps; the decay branches that measure saturation on the way are
run by the monitor (memsweep.callbacks) from this schedule's stable value, not by this schedule.
"""

from __future__ import annotations

import math

from memsweep.config import TrainerConfig
from memsweep.saturation import final_decay_start


def linear_decay(steps_into_decay: int, decay_steps: int) -> float:
    """Multiplier `steps_into_decay` steps into a linear decay to zero over `decay_steps` steps."""
    return max(0.0, 1 - steps_into_decay / max(1, decay_steps))


class LRSchedule:
    """Multiplier of the peak learning rate at a step; a cooldown can be started on saturation."""

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.cooldown_start: int | None = None
        self.cooldown_steps = 0

    def start_cooldown(self, step: int) -> int:
        """Begin the linear decay to zero at `step`; returns the step at which training ends."""
        self.cooldown_start = step
        self.cooldown_steps = math.ceil(self.cfg.saturation.cooldown * step)
        return step + self.cooldown_steps

    def __call__(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        factor = 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
            factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "wsd":
            start = final_decay_start(cfg.max_steps, cfg.saturation.cooldown)
            if step >= start:
                factor = linear_decay(step - start, cfg.max_steps - start)
        if self.cooldown_start is not None and step >= self.cooldown_start:
            factor *= linear_decay(step - self.cooldown_start, self.cooldown_steps)
        return factor

    def state_dict(self) -> dict:
        return {"cooldown_start": self.cooldown_start, "cooldown_steps": self.cooldown_steps}

    def load_state_dict(self, state: dict) -> None:
        self.cooldown_start, self.cooldown_steps = state["cooldown_start"], state["cooldown_steps"]
