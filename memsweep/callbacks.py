"""Lightning callbacks: time the training steps, measure memorization at intervals, checkpoint,
show progress.

The monitor evaluates the *whole* training set and the whole held-out set (never a sampled
batch), appends a row to the cell's metrics.csv (the local source of truth), forwards the same
numbers to whatever loggers the trainer has, and decides when the cell has saturated. All three
callbacks carry their state in checkpoints, so a resumed cell continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
import time
from typing import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from tqdm import tqdm

from memsweep.checkpoint import save_checkpoint
from memsweep.claim import ClaimLost
from memsweep.config import CellConfig, ConfigError
from memsweep.data.batches import ShuffledBatches, epoch_rows
from memsweep.data.source import row_repeats
from memsweep.console import duration, emit, line_seconds, on_terminal
from memsweep.evaluation import float32_copy, sharded_nll_bits, uniform_memorization
from memsweep.model import paper_param_count
from memsweep.preemption import PreemptionFlag
from memsweep.loggers import log_eval_row
from memsweep.saturation import (DoublingRule, Plateau, SaturationOutcome, decay_steps, final_decay_start,
                                 probe_steps)
from memsweep.schedule import linear_decay


def metrics_row(cfg: CellConfig, step: int, lr: float, train_seconds: float, nll: dict[str, np.ndarray],
                fp32_train_nll: np.ndarray | None = None, branch_steps: int = 0) -> dict[str, float]:
    """A cell's metrics.csv row from its per-sample NLLs (`train`, `heldout`; a bf16 cell's fp32
    forward of the training set too). A decay branch's row has the step it branched from, its
    `branch_steps`, and the tokens behind the evaluated model. Shared with packed cells
    (memsweep.pack), so both measure alike."""
    S, V = cfg.data.seq_len, cfg.data.vocab_size
    train = uniform_memorization(nll["train"], S, V)
    heldout = uniform_memorization(nll["heldout"], S, V)
    row = {
        "step": step,
        "tokens_seen": (step + branch_steps) * cfg.trainer.batch_size * S,
        "lr": 0.0 if branch_steps else lr,  # the rate of the next step: a finished decay's is 0
        "train_seconds": train_seconds,
        "memorized_bits": train.memorized_bits,
        "memorized_bits_unclipped": train.memorized_bits_unclipped,
        "memorized_fraction": train.memorized_bits / train.dataset_bits,
        "train_loss": train.loss_nats,
        "train_loss_bits": train.loss_bits,
        "test_loss": heldout.loss_nats,
        "test_loss_bits": heldout.loss_bits,
        "heldout_memorized_bits": heldout.memorized_bits,
    }
    if cfg.precision == "bf16":
        row["memorized_bits_fp32_forward"] = uniform_memorization(fp32_train_nll, S, V).memorized_bits
    if cfg.trainer.schedule == "wsd":
        row["branch_steps"] = branch_steps
    return row


def check_finite_row(row: dict[str, float]) -> None:
    """Raise NonFiniteError naming the metrics that are NaN or infinite."""
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"non-finite {', '.join(bad)} at step {row['step']} "
                             f"(memorized bits {row['memorized_bits']}, train loss {row['train_loss']})")


def append_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Append a row to metrics.csv, with the header if the file is new."""
    new_file = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


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


class MemorizationMonitor(SaturationOutcome, L.Callback):
    """Measures memorization over whole token sets and decides when the cell has saturated.

    Under trainer.schedule=wsd it runs the `doubling` rule's decay branches (memsweep/saturation.py)
    itself, inside the step boundary of stable step T_k: it copies the model and optimizer state,
    trains cooldown * T_k steps on the batches the stable run sees next with the learning rate
    decaying linearly to zero, evaluates, then keeps the decayed model and stops (saturated) or
    puts the copy back, so the stable run goes on exactly as it would without the branch.
    Lightning's global_step, the sampler and the checkpoints thus only ever see stable steps. A
    stop request (signal, claim) during a branch abandons it; the checkpoint at T_k marks it
    pending and the resumed run replays it before its first step.
    """

    def __init__(self, cfg: CellConfig, train_tokens: np.ndarray, heldout_tokens: np.ndarray,
                 metrics_path: Path, timer: StepTimer, fence: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.fence = fence
        self.train_tokens, self.heldout_tokens = train_tokens, heldout_tokens
        self.metrics_path = metrics_path
        self.timer = timer
        t, s = cfg.trainer, cfg.trainer.saturation
        self.wsd = t.schedule == "wsd"
        self.plateau = Plateau(s)
        self.doubling = DoublingRule(s)
        self.probe_steps = set(probe_steps(s.min_steps, t.max_steps, s.cooldown)) if self.wsd else set()
        self.pending_branch: int | None = None
        """A decay branch abandoned for a stop request, to be replayed on resume."""
        self.branch_steps = 0
        """Steps trained in decay branches (kept or not): compute that global_step does not count."""
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

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, branch_steps: int = 0) -> dict[str, float]:
        """The metrics row of the model as it is now (metrics_row)."""
        self.per_sample_nll_bits = {"train": self._nll(trainer, pl_module, self.train_tokens),
                                    "heldout": self._nll(trainer, pl_module, self.heldout_tokens)}
        fp32_train = None
        if self.cfg.precision == "bf16":  # the same bf16 weights in an fp32 forward (docs/bf16.md)
            fp32_train = sharded_nll_bits(float32_copy(pl_module.model), self.train_tokens,
                                          self.cfg.trainer.eval_batch_size, pl_module.device, contextlib.nullcontext,
                                          trainer.global_rank, trainer.world_size, trainer.strategy.all_gather)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else 0.0
        return metrics_row(self.cfg, trainer.global_step, lr, self.timer.train_seconds, self.per_sample_nll_bits,
                           fp32_train, branch_steps)

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, branch_steps: int = 0) -> dict[str, float]:
        check_training_loss(trainer, pl_module)
        row = self._evaluate(trainer, pl_module, branch_steps)
        check_finite_row(row)
        self.last, self.last_eval_step = row, trainer.global_step
        if trainer.is_global_zero:
            self.fence()
            append_metrics_row(self.metrics_path, row)
        for logger in trainer.loggers:
            log_eval_row(logger, row, branch=bool(branch_steps))
        return row

    def on_train_start(self, trainer, pl_module) -> None:
        if self.wsd and isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ConfigError("trainer.strategy: schedule=wsd snapshots the optimizer state for its decay "
                              "branches, which DeepSpeed shards; set trainer.strategy=ddp or schedule=cosine")
        step = trainer.global_step
        if step == 0:  # a resumed cell already has this row
            self._record(trainer, pl_module)
        if self.stop_step is not None and step >= self.stop_step:  # resumed from the checkpoint of its last step
            trainer.should_stop = True
            if self.last_eval_step == step:
                self._evaluate(trainer, pl_module)  # only the per-sample NLLs: the row is written
        elif self.pending_branch is not None and not self._probe(trainer, pl_module, self.pending_branch):
            self._checkpointer(trainer).on_train_batch_end(trainer, pl_module, None, None, 0)  # stop as at a step end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.stop_step is not None and step >= self.stop_step:
            trainer.should_stop = True
            return
        evaluated = step % self.cfg.trainer.eval_interval == 0 or (self.wsd and step == trainer.max_steps)
        if evaluated:
            row = self._record(trainer, pl_module)
            if not self.wsd and self.stop_step is None and self.plateau.update(step, row["memorized_bits"]):
                self.saturated_at_step = step
                self.stop_step = pl_module.lr_schedule.start_cooldown(step)
                if self.stop_step <= step:
                    trainer.should_stop = True
        if self.wsd and step == trainer.max_steps:  # the final decay ended here: its point on the curve
            start = final_decay_start(trainer.max_steps, self.cfg.trainer.saturation.cooldown)
            self.doubling.add(start, step - start, self.last["memorized_bits"], final=True)
        if step in self.probe_steps:
            self._probe(trainer, pl_module, step)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> bool:
        """The decay branch from stable step `step` and the decision on it; False if abandoned."""
        optimizer = trainer.optimizers[0]
        stable_state = _cpu_copy(pl_module.model.state_dict()), _cpu_copy(optimizer.state_dict())
        decay = decay_steps(step, self.cfg.trainer.saturation.cooldown)
        trained = self._train_branch(trainer, pl_module, step, decay)
        self.pending_branch = None if trained else step
        if trained:
            probe = self.doubling.add(step, decay, self._record(trainer, pl_module, decay)["memorized_bits"])
            if self.doubling.saturated(probe):  # keep the decayed model as the cell's result
                self.saturated_at_step = self.stop_step = step
                trainer.should_stop = True
                return True
        pl_module.model.load_state_dict(stable_state[0])
        optimizer.load_state_dict(stable_state[1])
        return trained

    def _train_branch(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, decay: int) -> bool:
        """Train `decay` steps from stable step `step` as Lightning's step would (same batches as
        the stable run's next ones, loss, all-reduced gradients, clipping, AdamW), with the rate
        decaying linearly from the stable one to zero. False if a stop was requested on the way."""
        t, d = self.cfg.trainer, self.cfg.data
        optimizer, model, device = trainer.optimizers[0], pl_module.model, pl_module.device
        batches = iter(ShuffledBatches(epoch_rows(row_repeats(d)), t.batch_size, self.cfg.seed, start_batch=step,
                                       rank=trainer.global_rank, world_size=trainer.world_size))
        stable_lr = t.lr * pl_module.lr_schedule(step)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        model.train()
        for i in range(decay):
            if self._stop_requested(trainer):
                return False
            started = time.perf_counter()
            tokens = torch.from_numpy(np.asarray(self.train_tokens[next(batches)], dtype=np.int64)).to(device)
            for group in optimizer.param_groups:
                group["lr"] = stable_lr * linear_decay(i, decay)
            optimizer.zero_grad()
            with trainer.precision_plugin.train_step_context():
                loss = pl_module.loss(tokens)  # the training step's own loss
            nonfinite |= ~torch.isfinite(loss.detach())
            loss.backward()
            for p in model.parameters():
                if p.grad is not None:
                    p.grad = trainer.strategy.reduce(p.grad, reduce_op="mean")
            trainer.precision_plugin.clip_gradients(optimizer, t.grad_clip, GradClipAlgorithmType.NORM)
            optimizer.step()
            self.timer.train_seconds += time.perf_counter() - started
            self.branch_steps += 1
        optimizer.zero_grad()
        if trainer.strategy.reduce_boolean_decision(bool(nonfinite), all=False):
            raise NonFiniteError(f"non-finite training loss in the decay branch from step {step}")
        return True

    def _checkpointer(self, trainer: L.Trainer) -> "Checkpointer | None":
        return next((c for c in trainer.callbacks if isinstance(c, Checkpointer)), None)

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        """The checkpointer's stop request (a signal, a claim), decided over all ranks."""
        checkpointer = self._checkpointer(trainer)
        wanted = checkpointer is not None and (checkpointer.flag.requested or checkpointer.claim.must_stop)
        return trainer.strategy.reduce_boolean_decision(wanted, all=False)

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        finished = step >= trainer.max_steps or (self.stop_step is not None and step >= self.stop_step)
        if finished and self.last_eval_step != step:  # not after a preemption: the resumed run goes on
            self._record(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"history": self.plateau.history, "stop_step": self.stop_step,
                "saturated_at_step": self.saturated_at_step, "last": self.last,
                "last_eval_step": self.last_eval_step, "doubling": self.doubling.state_dict(),
                "pending_branch": self.pending_branch, "branch_steps": self.branch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.history = list(state["history"])
        self.stop_step, self.saturated_at_step = state["stop_step"], state["saturated_at_step"]
        self.last, self.last_eval_step = dict(state["last"]), state["last_eval_step"]
        self.doubling.load_state_dict(state.get("doubling", []))
        self.pending_branch, self.branch_steps = state.get("pending_branch"), state.get("branch_steps", 0)


def _cpu_copy(state):
    """A copy of a (nested) state dict with every tensor copied to the CPU: what a branch puts back."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return state


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
        if self.cfg.data.kind == "text":  # during training only the uniform code is at hand, not the reference
            return f"train loss {last['train_loss_bits']:.3f} bits/token, test {last['test_loss_bits']:.3f}{rate}"
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
             + (f"sequences of {d.corpus} text (V={d.vocab_size:,} {d.tokenizer})" if d.kind == "text" else
                f"samples ({d.n_samples * d.seq_len * math.log2(d.vocab_size):,.0f} bits)")
             + f", {self.cfg.precision}, "
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
