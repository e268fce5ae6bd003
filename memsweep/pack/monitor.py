"""One cell of a pack: its files, data, batches, schedule, saturation decision and timers.

Why a class of its own: MemorizationMonitor, StepTimer and LRSchedule hold these for an
unpacked cell inside Lightning's callbacks; here each cell keeps the same state (same names, the
same plateau rule and cooldown from memsweep.saturation and memsweep.schedule, the same
metrics rows from memsweep.callbacks.metrics_row) and decides at its own steps, so its
metrics.csv and record read exactly as its unpacked run's would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from memsweep.callbacks import append_metrics_row, check_finite_row, metrics_row
from memsweep.cell import METRICS_FILE
from memsweep.config import CellConfig
from memsweep.data.batches import ShuffledBatches, TokenRows, epoch_rows
from memsweep.data.source import cell_tokens, row_repeats
from memsweep.saturation import Plateau
from memsweep.schedule import LRSchedule


class PackedCell:
    """A cell's state while it trains in a pack. `step` counts its optimizer steps (Lightning's
    global_step); `weights` and `optimizer` hold its slice of the pack between packs (fresh
    start: None, made from its seed)."""

    def __init__(self, cfg: CellConfig, cell_dir: Path, claim):
        self.cfg, self.dir, self.claim = cfg, Path(cell_dir), claim
        tokens = cell_tokens(cfg.data, self.dir)
        self.train_tokens, self.heldout_tokens = tokens.train, tokens.heldout
        self.schedule = LRSchedule(cfg.trainer)
        self.plateau = Plateau(cfg.trainer.saturation)
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
        self._attempt_start = time.perf_counter()

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS_FILE

    @property
    def wall_seconds(self) -> float:
        return self.earlier_wall_seconds + time.perf_counter() - self._attempt_start

    @property
    def tokens_seen(self) -> int:
        return self.step * self.cfg.trainer.batch_size * self.cfg.data.seq_len

    def next_batch(self) -> torch.Tensor:
        """The batch of its next step: the unpacked cell's sampler, started at its own step."""
        if self._batches is None:
            d, t = self.cfg.data, self.cfg.trainer
            rows = TokenRows(self.train_tokens)
            sampler = ShuffledBatches(epoch_rows(row_repeats(d)), t.batch_size, self.cfg.seed, start_batch=self.step)
            self._batches = (rows[indices] for indices in sampler)
        return next(self._batches)

    def lr(self) -> float:
        """The rate of its next step, as LambdaLR holds it in param_groups."""
        return self.cfg.trainer.lr * self.schedule(self.step)

    def eval_due(self) -> bool:
        return self.step % self.cfg.trainer.eval_interval == 0 and not self.reached_stop()

    def reached_stop(self) -> bool:
        return self.stop_step is not None and self.step >= self.stop_step

    def finished(self) -> bool:
        return self.reached_stop() or self.step >= self.cfg.trainer.max_steps

    def record_row(self, nll: dict[str, np.ndarray], fp32_train_nll: np.ndarray | None, saturation: bool) -> None:
        """MemorizationMonitor._record and its plateau decision (on_train_batch_end) for this step."""
        row = metrics_row(self.cfg, self.step, self.lr(), self.train_seconds, nll, fp32_train_nll)
        check_finite_row(row)
        self.per_sample_nll_bits, self.last, self.last_eval_step = nll, row, self.step
        self.claim.check()
        append_metrics_row(self.metrics_path, row)
        if saturation and self.stop_step is None and self.plateau.update(self.step, row["memorized_bits"]):
            self.saturated_at_step = self.step
            self.stop_step = self.schedule.start_cooldown(self.step)

    @property
    def stop_reason(self) -> str:
        if self.stop_step is not None and self.last_eval_step >= self.stop_step:
            return "saturated"
        return "max_steps"

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights and optimizer: the monitor's, the schedule's and the timer's state."""
        return {"lr_schedule": self.schedule.state_dict(),
                "monitor": {"history": self.plateau.history, "stop_step": self.stop_step,
                            "saturated_at_step": self.saturated_at_step, "last": self.last,
                            "last_eval_step": self.last_eval_step},
                "timer": {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.start_step = int(state["step"])
        self.weights, self.optimizer = state["model"], state["optimizer"]
        self.schedule.load_state_dict(state["lr_schedule"])
        m = state["monitor"]
        self.plateau.history = list(m["history"])
        self.stop_step, self.saturated_at_step = m["stop_step"], m["saturated_at_step"]
        self.last, self.last_eval_step = dict(m["last"]), m["last_eval_step"]
        self.train_seconds, self.earlier_wall_seconds = state["timer"]["train_seconds"], state["timer"]["wall_seconds"]
        self._batches = None
