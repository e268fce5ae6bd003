"""Lightning callbacks: time the training steps, measure memorization at intervals, checkpoint,
show progress.

The monitor evaluates the *whole* training set and the whole held-out set (never a sampled
batch), appends a row to the cell's metrics.csv (the local source of truth), forwards the same
numbers to whatever loggers the trainer has, and decides when the cell has saturated. All three
callbacks carry their state in checkpoints, so a resumed cell continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from typing import Callable
from pathlib import Path

import lightning as L
import numpy as np
from tqdm import tqdm

from memsweep.checkpoint import save_checkpoint
from memsweep.claim import ClaimLost
from memsweep.config import CellConfig
from memsweep.console import duration, emit, line_seconds, on_terminal
from memsweep.evaluation import sharded_nll_bits, uniform_memorization
from memsweep.model import paper_param_count
from memsweep.preemption import PreemptionFlag
from memsweep.schedule import Plateau


class StepTimer(L.Callback):
    """Seconds spent in training steps only (evaluation excluded), for honest tokens/s, and the
    wall time of all attempts of the cell together.

    Put it before the monitor in the callback list so its batch-end hook runs before evaluation.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.earlier_wall_seconds = 0.0
        self._attempt_start = time.perf_counter()
        self._step_start = 0.0

    @property
    def wall_seconds(self) -> float:
        return self.earlier_wall_seconds + time.perf_counter() - self._attempt_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._step_start

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.train_seconds, self.earlier_wall_seconds = state["train_seconds"], state["wall_seconds"]


class MemorizationMonitor(L.Callback):
    def __init__(self, cfg: CellConfig, train_tokens: np.ndarray, heldout_tokens: np.ndarray,
                 metrics_path: Path, timer: StepTimer, fence: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.fence = fence
        self.train_tokens, self.heldout_tokens = train_tokens, heldout_tokens
        self.metrics_path = metrics_path
        self.timer = timer
        self.plateau = Plateau(cfg.trainer.saturation)
        self.stop_step: int | None = None
        self.saturated_at_step: int | None = None
        self.last: dict[str, float] = {}
        self.last_eval_step = -1
        self.per_sample_nll_bits: dict[str, np.ndarray] = {}
        """Per-sample NLLs of the latest evaluation (`train`, `heldout`), for the cell's npz file."""

    def _nll(self, trainer: L.Trainer, pl_module: L.LightningModule, tokens: np.ndarray) -> np.ndarray:
        return sharded_nll_bits(pl_module.model, tokens, self.cfg.trainer.eval_batch_size, pl_module.device,
                                trainer.precision_plugin.forward_context, trainer.global_rank,
                                trainer.world_size, trainer.strategy.all_gather)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        S, V = self.cfg.data.seq_len, self.cfg.data.vocab_size
        self.per_sample_nll_bits = {"train": self._nll(trainer, pl_module, self.train_tokens),
                                    "heldout": self._nll(trainer, pl_module, self.heldout_tokens)}
        train = uniform_memorization(self.per_sample_nll_bits["train"], S, V)
        heldout = uniform_memorization(self.per_sample_nll_bits["heldout"], S, V)
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
        check_training_loss(trainer, pl_module)
        row = self._evaluate(trainer, pl_module)
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteError(f"non-finite {', '.join(bad)} at step {row['step']} "
                                 f"(memorized bits {row['memorized_bits']}, train loss {row['train_loss']})")
        self.last, self.last_eval_step = row, trainer.global_step
        if trainer.is_global_zero:
            self.fence()
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
        if trainer.global_step == 0:  # a resumed cell already has this row
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
        step = trainer.global_step
        finished = step >= trainer.max_steps or (self.stop_step is not None and step >= self.stop_step)
        if finished and self.last_eval_step != step:  # not after a preemption: the resumed run goes on
            self._record(trainer, pl_module)

    @property
    def stop_reason(self) -> str:
        if self.stop_step is not None and self.last_eval_step >= self.stop_step:
            return "saturated"
        return "max_steps"

    def state_dict(self) -> dict:
        return {"history": self.plateau.history, "stop_step": self.stop_step,
                "saturated_at_step": self.saturated_at_step, "last": self.last,
                "last_eval_step": self.last_eval_step}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.history = list(state["history"])
        self.stop_step, self.saturated_at_step = state["stop_step"], state["saturated_at_step"]
        self.last, self.last_eval_step = dict(state["last"]), state["last_eval_step"]


class NonFiniteError(FloatingPointError):
    """The loss or a measured metric became NaN or infinite: the cell fails, naming the step."""


def check_training_loss(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Raise NonFiniteError if any training step so far had a non-finite loss (on any rank)."""
    step = pl_module.first_nonfinite_step()
    if trainer.strategy.reduce_boolean_decision(step is not None, all=False):
        raise NonFiniteError(f"non-finite training loss at step {step if step is not None else '?'} "
                             f"(on rank {trainer.global_rank if step is not None else 'other'})")


class Checkpointer(L.Callback):
    """Checkpoints every `every_steps` steps or `every_minutes` minutes, and at the first step
    boundary after a stop request, after which it stops training (`stop_cause` says why): a signal
    (SIGTERM/SIGINT: interrupted; USR1/USR2: preempted), or a claim this process can no longer
    renew. A claim taken over by another process stops training at once with ClaimLost and no
    checkpoint. The decisions are reduced over ranks, so all ranks checkpoint and stop together."""

    def __init__(self, run_dir: Path, flag: PreemptionFlag, claim, every_steps: int, every_minutes: float,
                 keep: int):
        self.run_dir, self.flag, self.claim = run_dir, flag, claim
        self.every_steps, self.every_seconds, self.keep = every_steps, every_minutes * 60, keep
        self.stop_cause: str | None = None
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = bool(self.every_steps and step % self.every_steps == 0) or (
            self.every_seconds > 0 and time.monotonic() - self._last_save >= self.every_seconds)
        stop = self.flag.requested or self.claim.must_stop
        if not trainer.strategy.reduce_boolean_decision(due or stop, all=False):
            return  # one collective per step in the common case; the others only when saving
        if trainer.strategy.reduce_boolean_decision(self.claim.lost, all=False):
            raise ClaimLost(f"{self.run_dir}: the claim was taken over by another process at step {step}")
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        check_training_loss(trainer, pl_module)  # a NaN model is never checkpointed
        save_checkpoint(trainer, self.run_dir, keep=self.keep, fence=self.claim.check)
        self._last_save = time.monotonic()
        if stop:
            self.stop_cause = (f"signal {self.flag.signal_name}" if self.flag.requested
                               else "claim could not be renewed")
            trainer.should_stop = True


class CellProgress(L.Callback):
    """What a cell shows while it trains, on rank 0: a tqdm bar on a terminal, else (a pipe, a
    SLURM log) a start line and a line at an evaluation at most every `line_seconds()`. Put it
    after the monitor, whose latest evaluation it shows. The ETA counts to max_steps, or to the
    end of the cooldown once the cell has saturated."""

    def __init__(self, cfg: CellConfig, monitor: MemorizationMonitor, timer: StepTimer):
        self.cfg, self.monitor, self.timer = cfg, monitor, timer
        self.bar: tqdm | None = None
        self.enabled = False  # rank 0 only
        self._start_step, self._start_time, self._last_line = 0, 0.0, 0.0

    def _end_step(self, trainer: L.Trainer) -> int:
        return min(self.monitor.stop_step or trainer.max_steps, trainer.max_steps)

    def _stats(self, step: int) -> str:
        last, seconds = self.monitor.last, self.timer.train_seconds
        tokens = step * self.cfg.trainer.batch_size * self.cfg.data.seq_len
        rate = f" {tokens / seconds:,.0f} tok/s" if seconds else ""
        return f"memorized {last['memorized_bits']:,.0f} bits ({100 * last['memorized_fraction']:.1f}%){rate}"

    def on_train_start(self, trainer, pl_module) -> None:
        self.enabled = trainer.is_global_zero
        if not self.enabled:
            return
        self._start_step, self._start_time = trainer.global_step, time.perf_counter()
        self._last_line = self._start_time
        if on_terminal(sys.stderr):
            self.bar = tqdm(total=self._end_step(trainer), initial=self._start_step, desc=self.cfg.cell_id,
                            unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
            return
        m, d = self.cfg.model, self.cfg.data
        resumed = f", resuming at step {self._start_step:,}" if self._start_step else ""
        emit(f"memsweep: {self.cfg.cell_id} training {m.n_layer}L d{m.d_model} "
             f"(P={paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model):,}) on {d.n_samples:,} "
             f"samples ({d.n_samples * d.seq_len * math.log2(d.vocab_size):,.0f} bits), {self.cfg.precision}, "
             f"up to {trainer.max_steps:,} steps{resumed}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        step, evaluated = trainer.global_step, self.monitor.last_eval_step == trainer.global_step
        if self.bar is not None:
            self.bar.total = self._end_step(trainer)
            if evaluated:
                self.bar.set_postfix_str(self._stats(step), refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if not evaluated or now - self._last_line < line_seconds():
            return
        self._last_line = now
        end = self._end_step(trainer)
        eta = (end - step) * (now - self._start_time) / max(1, step - self._start_step)
        emit(f"memsweep: {self.cfg.cell_id} step {step:,}/{end:,} ({100 * step / end:.1f}%) "
             f"{self._stats(step)} ETA {duration(eta)}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
