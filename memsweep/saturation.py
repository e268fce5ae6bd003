"""When has a cell stopped memorizing? The two saturation rules, as pure functions of a curve.

`doubling` (trainer.schedule=wsd): memorization under a constant learning rate lags what the same
weights reach once the rate is decayed, and it grows about linearly in log(steps) for a long time,
so neither a flat stretch of the constant-LR curve nor a small gain over a fixed window says that
it has stopped. The rule measures memorized bits M_k after a short decay branch taken from the
stable phase at steps T_k = min_steps * 2^k, and calls the cell saturated when the gain per
doubling of steps, (M_k / M_{k-1})^(1 / log2(T_k / T_{k-1})) - 1, is below the tolerance.

`plateau` (trainer.schedule=constant or cosine): the best of the last window of evaluations beats
the best before it by less than the tolerance. It fires at a step set by the window and the
tolerance whether or not memorization still grows (M = a log t gains ~1% per 2,000 steps near
step 23k while gaining ~7% per doubling); kept so that those schedules run as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from memsweep.config import SaturationConfig

MIN_BITS = 1.0
"""Memorized bits are floored at one bit before taking ratios, so a cell that memorizes nothing
at all saturates (gain 0) instead of dividing by zero."""


def decay_steps(step: int, fraction: float) -> int:
    """Length of a decay from stable step `step`: `fraction` of the steps before it, at least 1."""
    return max(1, math.ceil(fraction * step))


def final_decay_start(max_steps: int, fraction: float) -> int:
    """The stable step from which the final decay reaches 0 exactly at max_steps."""
    return math.floor(max_steps / (1 + fraction))


def probe_steps(min_steps: int, max_steps: int, fraction: float) -> list[int]:
    """Stable steps min_steps * 2^k that come before the final decay (so each branch ends by max_steps)."""
    end, steps, step = final_decay_start(max_steps, fraction), [], min_steps
    while step < end:
        steps.append(step)
        step *= 2
    return steps


def gain_per_doubling(step0: int, bits0: float, step1: int, bits1: float) -> float:
    """Relative gain of memorized bits per doubling of stable steps between two decayed measurements."""
    ratio = max(bits1, MIN_BITS) / max(bits0, MIN_BITS)
    return ratio ** (1 / math.log2(step1 / step0)) - 1


@dataclass
class Probe:
    """One measurement after a decay: the stable step it branched from and what it measured."""

    step: int
    decay_steps: int
    memorized_bits: float
    gain_per_doubling: float | None
    """Against the previous probe (None for the first)."""
    final: bool = False
    """The decay that ends at max_steps (part of the main run, not a branch)."""


class DoublingRule:
    """The measured (T_k, M_k, g_k) of a cell so far, and whether the latest says it saturated."""

    def __init__(self, cfg: SaturationConfig):
        self.tolerance = cfg.tolerance
        self.probes: list[Probe] = []

    def add(self, step: int, decay: int, memorized_bits: float, final: bool = False) -> Probe:
        before = self.probes[-1] if self.probes else None
        gain = None if before is None else gain_per_doubling(before.step, before.memorized_bits, step, memorized_bits)
        probe = Probe(step, decay, memorized_bits, gain, final)
        self.probes.append(probe)
        return probe

    def saturated(self, probe: Probe) -> bool:
        return probe.gain_per_doubling is not None and probe.gain_per_doubling < self.tolerance

    def reason(self, probe: Probe) -> str:
        """The stop_reason of a cell that this probe ended."""
        return (f"saturated: gain {100 * probe.gain_per_doubling:.1f}%/doubling < {100 * self.tolerance:g}% "
                f"after decay at step {probe.step:,}")

    def state_dict(self) -> list[dict]:
        return [asdict(p) for p in self.probes]

    def load_state_dict(self, state: list[dict]) -> None:
        self.probes = [Probe(**p) for p in state]


class Plateau:
    """Says when memorized bits stopped improving over a window (the `plateau` rule).

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
        return best_recent - best_before < self.cfg.tolerance * max(best_before, MIN_BITS)


class SaturationOutcome:
    """What a cell's record says of its stopping rule, shared by the Lightning monitor
    (memsweep.callbacks) and a packed cell (memsweep.pack.monitor), which both set `wsd`,
    `doubling`, `saturated_at_step`, `stop_step` and `last_eval_step`."""

    wsd: bool
    doubling: DoublingRule
    saturated_at_step: int | None
    stop_step: int | None
    last_eval_step: int

    @property
    def saturation_rule(self) -> str:
        return "doubling" if self.wsd else "plateau"

    @property
    def growth_per_doubling(self) -> list[dict] | None:
        """The decayed measurements (T_k, decay steps, M_k, g_k) of the doubling rule; None for plateau."""
        return self.doubling.state_dict() if self.wsd else None

    @property
    def stop_reason(self) -> str:
        if self.wsd and self.saturated_at_step is not None:
            return self.doubling.reason(self.doubling.probes[-1])
        if self.stop_step is not None and self.last_eval_step >= self.stop_step:
            return "saturated"
        return "max_steps"
