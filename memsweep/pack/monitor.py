"""One cell of a pack: its files, data, batches, schedule, saturation decision and timers.

Why a class of its own: MemorizationMonitor, StepTimer and LRSchedule hold these for an
unpacked cell inside Lightning's callbacks; here each cell keeps the same state (same names, the
same plateau rule and cooldown, or the doubling rule's decay branches, from memsweep.saturation
and memsweep.schedule, the same metrics rows from memsweep.callbacks.metrics_row) and decides at
its own steps, so its metrics.csv and record read exactly as its unpacked run's would.

A schedule=wsd cell's decay branch (`Branch`) runs in the cell's own slot of the pack, as the
unpacked monitor runs it in the cell's own model: at stable step T_k the slot's state is copied,
the slot trains the branch (its own batch stream from batch T_k, the rate falling linearly from
the stable one to 0) while the cell's stable step stays T_k, and when the branch ends the cell
either keeps it (saturated) or gets the copy back and goes on from T_k exactly. Why not a second
slot that branches off while the stable run goes on: the stable steps trained meanwhile are lost
when the branch is kept, their metrics rows must be held back until the branch has decided, and
the two slots of one cell would have to be checkpointed and fail together; in its own slot the
branch costs the same pack steps and none of that.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from memsweep.callbacks import append_metrics_row, check_finite_row, metrics_row
from memsweep.loggers import log_eval_row
from memsweep.cell import METRICS_FILE
from memsweep.config import CellConfig
from memsweep.data.batches import ShuffledBatches, TokenRows, epoch_rows
from memsweep.data.source import cell_tokens, row_repeats
from memsweep.saturation import (DoublingRule, Plateau, SaturationOutcome, decay_steps, final_decay_start,
                                 probe_steps)
from memsweep.schedule import LRSchedule, linear_decay


class Branch:
    """A decay branch of a wsd cell from stable step `start` (MemorizationMonitor._probe): `decay`
    steps at `stable_lr * linear_decay(i, decay)` on the batches start, start + 1, ...; `done`
    of them trained. `stable` is the cell's slice at `start` (weights, AdamW, first non-finite
    step), given back to the slot if the branch is not kept."""

    def __init__(self, start: int, decay: int, stable_lr: float, stable: dict[str, Any], done: int = 0):
        self.start, self.decay, self.stable_lr, self.stable, self.done = start, decay, stable_lr, stable, done

    @property
    def ended(self) -> bool:
        return self.done >= self.decay

    def lr(self) -> float:
        """The rate of its next step, as the unpacked branch sets param_groups' lr."""
        return self.stable_lr * linear_decay(self.done, self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "decay": self.decay, "stable_lr": self.stable_lr, "done": self.done}


class PackedCell(SaturationOutcome):
    """A cell's state while it trains in a pack. `step` counts its optimizer steps (Lightning's
    global_step); `weights` and `optimizer` hold its slice of the pack between packs (fresh
    start: None, made from its seed)."""

    def __init__(self, cfg: CellConfig, cell_dir: Path, claim):
        self.cfg, self.dir, self.claim = cfg, Path(cell_dir), claim
        self.tokens = cell_tokens(cfg.data, self.dir)
        self.train_tokens, self.heldout_tokens = self.tokens.train, self.tokens.heldout
        self.reference: tuple[dict, dict[str, np.ndarray]] | None = None
        """A text cell's reference (its record and per-sample NLLs: memsweep.cell.start_text_cell)."""
        t, s = cfg.trainer, cfg.trainer.saturation
        self.schedule = LRSchedule(t)
        self.plateau = Plateau(s)
        self.wsd = t.schedule == "wsd"
        self.doubling = DoublingRule(s)
        self.probe_steps = set(probe_steps(s.min_steps, t.max_steps, s.cooldown)) if self.wsd else set()
        self.branch: Branch | None = None
        """The decay branch the cell's slot is training now (wsd), or None: the stable run."""
        self.branch_steps = 0
        """Steps trained in decay branches (kept or not), as MemorizationMonitor.branch_steps."""
        self.stepped = False
        """Whether the pack's last step was a stable step of this cell: a step boundary of its own."""
        self.step = self.start_step = 0
        self.stop_step: int | None = None
        self.saturated_at_step: int | None = None
        self.last: dict[str, float] = {}
        self.last_eval_step = -1
        self.per_sample_nll_bits: dict[str, np.ndarray] = {}
        self.train_seconds = self.earlier_wall_seconds = 0.0
        self.first_nonfinite: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.optimizer: dict[str, Any] | None = None
        self._batches: Iterator[torch.Tensor] | None = None
        self._branch_batches: Iterator[torch.Tensor] | None = None
        self._attempt_start = time.perf_counter()
        self.logger = False
        """The cell's experiment logger while it is in a pack (memsweep.loggers; False: none)."""

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS_FILE

    @property
    def wall_seconds(self) -> float:
        return self.earlier_wall_seconds + time.perf_counter() - self._attempt_start

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on, decay branches included (run_cell's tokens_seen)."""
        return (self.step + self.branch_steps) * self.cfg.trainer.batch_size * self.cfg.data.seq_len

    def _sampler(self, start: int) -> Iterator[torch.Tensor]:
        d, t = self.cfg.data, self.cfg.trainer
        rows = TokenRows(self.train_tokens)
        sampler = ShuffledBatches(epoch_rows(row_repeats(d)), t.batch_size, self.cfg.seed, start_batch=start)
        return (rows[indices] for indices in sampler)

    def next_batch(self) -> torch.Tensor:
        """The batch of its next step: the unpacked cell's sampler, started at its own step; in a
        branch, the branch's (the batches the stable run sees next, _train_branch's)."""
        if self.branch is not None:
            if self._branch_batches is None:
                self._branch_batches = self._sampler(self.branch.start + self.branch.done)
            return next(self._branch_batches)
        if self._batches is None:
            self._batches = self._sampler(self.step)
        return next(self._batches)

    def advance(self) -> None:
        """The pack took a step of this cell: a stable step, or a step of its branch."""
        if self.branch is not None:
            self.branch.done += 1
            self.branch_steps += 1
            self.stepped = False
        else:
            self.step += 1
            self.stepped = True

    def lr(self) -> float:
        """The rate of its next stable step, as LambdaLR holds it in param_groups."""
        return self.cfg.trainer.lr * self.schedule(self.step)

    def train_lr(self) -> float | None:
        """The rate of the next step the pack trains, where it is not the stable schedule's (a
        branch's); None: the schedule's (PackedTrainStep)."""
        return None if self.branch is None else self.branch.lr()

    def eval_due(self) -> bool:
        """An evaluation at this stable step (MemorizationMonitor.on_train_batch_end): every
        eval_interval steps, and for wsd at max_steps too (the end of its final decay)."""
        t = self.cfg.trainer
        return self.stepped and (self.step % t.eval_interval == 0 or (self.wsd and self.step == t.max_steps)) \
            and not self.reached_stop()

    def probe_due(self) -> bool:
        """A decay branch starts at this stable step (wsd; after its evaluation)."""
        return self.stepped and self.step in self.probe_steps and not self.finished()

    def start_branch(self, stable: dict[str, Any]) -> None:
        """Branch from this stable step, `stable` being the slot's state now (weights, AdamW,
        first non-finite step), as MemorizationMonitor._probe copies it."""
        t = self.cfg.trainer
        self.branch = Branch(self.step, decay_steps(self.step, t.saturation.cooldown),
                             t.lr * self.schedule(self.step), stable)
        self._branch_batches = None
        self.stepped = False

    def end_branch(self, nll: dict[str, np.ndarray], fp32_train_nll: np.ndarray | None) -> bool:
        """The branch's metrics row and the doubling rule's decision on it (`_probe`): True if it
        is kept (saturated: the cell ends at the branch's start step with the decayed model)."""
        branch = self.branch
        row = self._append_row(nll, fp32_train_nll, branch.decay)
        probe = self.doubling.add(branch.start, branch.decay, row["memorized_bits"])
        if self.doubling.saturated(probe):
            self.saturated_at_step = self.stop_step = branch.start
            self.branch = self._branch_batches = None
            return True
        return False

    def drop_branch(self) -> dict[str, Any]:
        """Leave the branch not kept; returns the stable state to give back to the slot."""
        stable = self.branch.stable
        self.branch = self._branch_batches = None
        return stable

    def reached_stop(self) -> bool:
        return self.stop_step is not None and self.step >= self.stop_step

    def finished(self) -> bool:
        return self.branch is None and (self.reached_stop() or self.step >= self.cfg.trainer.max_steps)

    def _append_row(self, nll: dict[str, np.ndarray], fp32_train_nll: np.ndarray | None,
                    branch_steps: int = 0) -> dict[str, float]:
        row = metrics_row(self.cfg, self.step, self.lr(), self.train_seconds, nll, fp32_train_nll, branch_steps)
        check_finite_row(row)
        self.per_sample_nll_bits, self.last, self.last_eval_step = nll, row, self.step
        self.claim.check()
        append_metrics_row(self.metrics_path, row)
        log_eval_row(self.logger, row, branch=bool(branch_steps))
        return row

    def record_row(self, nll: dict[str, np.ndarray], fp32_train_nll: np.ndarray | None, saturation: bool) -> None:
        """MemorizationMonitor._record and its plateau decision (on_train_batch_end) for this step;
        for wsd at max_steps the final decay's point on the doubling curve."""
        row = self._append_row(nll, fp32_train_nll)
        t = self.cfg.trainer
        if self.wsd:
            if self.step == t.max_steps and not any(p.final for p in self.doubling.probes):
                start = final_decay_start(t.max_steps, t.saturation.cooldown)
                self.doubling.add(start, self.step - start, row["memorized_bits"], final=True)
        elif saturation and self.stop_step is None and self.plateau.update(self.step, row["memorized_bits"]):
            self.saturated_at_step = self.step
            self.stop_step = self.schedule.start_cooldown(self.step)

    def checkpoint_state(self, slot: dict[str, Any]) -> dict[str, Any]:
        """The cell's checkpoint, `slot` being its slice of the pack (model, optimizer). In a
        branch, `model`/`optimizer` are the stable state at the branch's start (the checkpoint's
        step) and `branch` holds the branch's progress and slice, so the resumed cell goes on
        with the branch where it stopped."""
        if self.branch is None:
            return {"step": self.step, **slot, **self.state_dict(), "branch": None}
        stable = {"model": self.branch.stable["model"], "optimizer": self.branch.stable["optimizer"]}
        return {"step": self.step, **stable, **self.state_dict(), "branch": {**self.branch.state_dict(), **slot}}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights and optimizer: the monitor's, the schedule's and the timer's state."""
        return {"lr_schedule": self.schedule.state_dict(),
                "monitor": {"history": self.plateau.history, "stop_step": self.stop_step,
                            "saturated_at_step": self.saturated_at_step, "last": self.last,
                            "last_eval_step": self.last_eval_step, "doubling": self.doubling.state_dict(),
                            "branch_steps": self.branch_steps},
                "timer": {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.start_step = int(state["step"])
        self.weights, self.optimizer = state["model"], state["optimizer"]
        self.schedule.load_state_dict(state["lr_schedule"])
        m = state["monitor"]
        self.plateau.history = list(m["history"])
        self.stop_step, self.saturated_at_step = m["stop_step"], m["saturated_at_step"]
        self.last, self.last_eval_step = dict(m["last"]), m["last_eval_step"]
        self.doubling.load_state_dict(m.get("doubling", []))
        self.branch_steps = m.get("branch_steps", 0)
        self.train_seconds, self.earlier_wall_seconds = state["timer"]["train_seconds"], state["timer"]["wall_seconds"]
        self._batches = self._branch_batches = None
        self.branch, branch = None, state.get("branch")
        if branch is not None:  # the slot trains on from the branch's slice; the stable one waits
            stable = {"model": self.weights, "optimizer": self.optimizer, "first_nonfinite": None}
            self.branch = Branch(branch["start"], branch["decay"], branch["stable_lr"], stable, branch["done"])
            self.weights, self.optimizer = branch["model"], branch["optimizer"]
