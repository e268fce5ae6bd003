"""When to change the learning rate and when to stop: warmup, a base schedule, and a cooldown
that starts once memorization has plateaued (training to saturation on a budget)."""

from __future__ import annotations

import math

from memsweep.config import SaturationConfig, TrainerConfig


class Plateau:
    """Says when memorized bits stopped improving.

    Saturated at an evaluation when step >= min_steps and the best value of the last `window`
    evaluations exceeds the best value before them by less than `tolerance` times that earlier
    best (floored at one bit, so a run that memorizes nothing at all also ends).
    """

    def __init__(self, cfg: SaturationConfig):
        self.cfg = cfg
        self.history: list[float] = []

    def update(self, step: int, memorized_bits: float) -> bool:
        self.history.append(memorized_bits)
        window = self.cfg.window
        if step < self.cfg.min_steps or len(self.history) <= window:
            return False
        best_before = max(self.history[:-window])
        best_recent = max(self.history[-window:])
        return best_recent - best_before < self.cfg.tolerance * max(best_before, 1.0)


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
        if self.cooldown_start is not None and step >= self.cooldown_start:
            factor *= max(0.0, 1 - (step - self.cooldown_start) / max(1, self.cooldown_steps))
        return factor

    def state_dict(self) -> dict:
        return {"cooldown_start": self.cooldown_start, "cooldown_steps": self.cooldown_steps}

    def load_state_dict(self, state: dict) -> None:
        self.cooldown_start, self.cooldown_steps = state["cooldown_start"], state["cooldown_steps"]
