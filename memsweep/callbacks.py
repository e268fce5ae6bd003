"""Lightning callbacks: time the training steps, and measure memorization at intervals.

The monitor evaluates the *whole* training set and the whole held-out set (never a sampled
batch), appends a row to the cell's metrics.csv (the local source of truth), forwards the same
numbers to whatever loggers the trainer has, and decides when the cell has saturated.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import numpy as np

from memsweep.config import CellConfig
from memsweep.evaluation import per_sample_nll_bits, uniform_memorization
from memsweep.schedule import Plateau


class StepTimer(L.Callback):
    """Seconds spent in training steps only (evaluation excluded), for honest tokens/s.

    Put it before the monitor in the callback list so its batch-end hook runs before evaluation.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._start


class MemorizationMonitor(L.Callback):
    def __init__(self, cfg: CellConfig, train_tokens: np.ndarray, heldout_tokens: np.ndarray,
                 metrics_path: Path, timer: StepTimer):
        self.cfg = cfg
        self.train_tokens, self.heldout_tokens = train_tokens, heldout_tokens
        self.metrics_path = metrics_path
        self.timer = timer
        self.plateau = Plateau(cfg.trainer.saturation)
        self.stop_step: int | None = None
        self.saturated_at_step: int | None = None
        self.last: dict[str, float] = {}
        self.last_eval_step = -1

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        def nll(tokens: np.ndarray) -> np.ndarray:
            return per_sample_nll_bits(pl_module.model, tokens, self.cfg.trainer.eval_batch_size,
                                       pl_module.device, trainer.precision_plugin.forward_context)

        S, V = self.cfg.data.seq_len, self.cfg.data.vocab_size
        train = uniform_memorization(nll(self.train_tokens), S, V)
        heldout = uniform_memorization(nll(self.heldout_tokens), S, V)
        step = trainer.global_step
        return {
            "step": step,
            "tokens_seen": step * self.cfg.trainer.batch_size * S,
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0,
            "train_seconds": self.timer.train_seconds,
            "memorized_bits": train.memorized_bits,
            "memorized_bits_unclipped": train.memorized_bits_unclipped,
            "memorized_fraction": train.memorized_bits / train.dataset_bits,
            "train_loss": train.loss_nats,
            "train_loss_bits": train.loss_bits,
            "test_loss": heldout.loss_nats,
            "test_loss_bits": heldout.loss_bits,
            "heldout_memorized_bits": heldout.memorized_bits,
        }

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        row = self._evaluate(trainer, pl_module)
        self.last, self.last_eval_step = row, trainer.global_step
        new_file = not self.metrics_path.exists()
        with self.metrics_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        return row

    def on_train_start(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.stop_step is not None and step >= self.stop_step:
            trainer.should_stop = True
            return
        if step % self.cfg.trainer.eval_interval:
            return
        row = self._record(trainer, pl_module)
        if self.stop_step is None and self.plateau.update(step, row["memorized_bits"]):
            self.saturated_at_step = step
            self.stop_step = pl_module.lr_schedule.start_cooldown(step)
            if self.stop_step <= step:
                trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.last_eval_step != trainer.global_step:
            self._record(trainer, pl_module)

    @property
    def stop_reason(self) -> str:
        if self.stop_step is not None and self.last_eval_step >= self.stop_step:
            return "saturated"
        return "max_steps"
