"""Train claimed cells as one pack, each to its own end, each writing its own files and record.

The loop is Lightning's fit of an unpacked cell with its callbacks, for K cells at once: after
every pack step each cell, at its own step, is evaluated when its eval_interval says so (plateau
rule and cooldown, memsweep.pack.monitor), checkpointed when its interval says so or a stop is
requested, and leaves the pack as soon as it is done (result.json written at once), failed (a
non-finite loss: its own failed record; the others train on) or lost its claim. A leaving cell
is taken out of the stacked tensors (the pack is rebuilt from the cells' slices), so it costs
nothing from then on. A preemption signal checkpoints every cell still training and stops them
all, resumable.

A schedule=wsd cell runs its decay branches in its own slot (memsweep.pack.monitor.Branch):
at a probe step, after its evaluation, the slot's state is copied and the slot trains the
branch; the boundary where the branch ends is the rest of that stable step's boundary (its
branch row and the doubling rule's decision, then, if not kept, the copy back into the slot and
the step's checkpoint), as MemorizationMonitor._probe runs inside Lightning's step boundary.
A stop request during a branch checkpoints the branch as it is (with the stable state at its
start), and the resumed cell trains the rest of it: the same records as without the stop.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

import numpy as np
import torch

from memsweep.callbacks import NonFiniteError
from memsweep.cell import _accelerator_device, base_record, gpt_config, result_fields, write_cell_outputs
from memsweep.claim import ClaimLost
from memsweep.console import cell_summary, emit
from memsweep.loggers import LOG_EVERY_N_STEPS, build_logger, close_logger, log_batch_loss
from memsweep.pack.checkpoint import save_cell_checkpoint
from memsweep.pack.evaluate import per_cell_nll_bits
from memsweep.pack.grouping import pack_id
from memsweep.pack.monitor import PackedCell
from memsweep.pack.stack import StackedState
from memsweep.preemption import PreemptionFlag
from memsweep.record import RESULT_FILE, write_json_atomic
from memsweep.runtime import keep_large_allocations_in_heap

DEFAULT_IMPL = "batched"
"""The forward of a pack of two or more (memsweep.pack.model.make_forward; memsweep.pack.stack)."""


class PackRunner:
    """K prepared cells of one pack key (memsweep.pack.grouping), trained until each has ended.
    `outcomes[cell_id]` is what run_cells reports per cell: done, failed: ..., claim-lost,
    interrupted, preempted; `records[cell_id]` the record written."""

    def __init__(self, cells: list[PackedCell], flag: PreemptionFlag, impl: str = DEFAULT_IMPL):
        first = cells[0].cfg
        self.flag, self.impl = flag, impl
        self.device = _accelerator_device(first.trainer.accelerator)
        if self.device.type == "cpu":
            keep_large_allocations_in_heap()
        self.gpt = gpt_config(first, self.device)
        self.dtype = torch.bfloat16 if first.precision == "bf16" else torch.float32
        ids = [c.cfg.cell_id for c in cells]
        self.pack = {"id": pack_id(ids), "size": len(cells), "cell_ids": ids}
        self.position = {c.cfg.cell_id: i for i, c in enumerate(cells)}
        self.active = list(cells)
        self.outcomes: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.train_seconds, self.tokens = 0.0, 0
        self._losses: torch.Tensor | None = None
        self._last_save = time.monotonic()
        for c in list(self.active):  # each cell's logger opens as it joins the pack (run_cell's build_logger)
            try:
                self._open_logger(c)
            except Exception as err:
                self._fail(c, err)
                self.active.remove(c)
        if self.active:
            self._build()

    def _open_logger(self, c: PackedCell) -> None:
        """The logger the cell's unpacked run would have (its own W&B run: the same id, name, group
        and config), its W&B config with the pack it trains in."""
        from lightning.pytorch.loggers import WandbLogger

        c.logger = build_logger(c.cfg, c.dir, alongside_others=True)
        if isinstance(c.logger, WandbLogger):
            fields = {k: v for k, v in self._pack_fields(c).items() if k != "tokens_per_sec"}
            c.logger.experiment.config.update({"pack": fields}, allow_val_change=True)

    def _close_logger(self, c: PackedCell, record: dict[str, Any] | None) -> None:
        """The cell left the pack: its logger closes (with the record in its W&B summary when done)."""
        logger, c.logger = c.logger, False
        try:
            close_logger(logger, record)
        except Exception:  # a logger must not fail a cell whose record is written
            traceback.print_exc()

    def _build(self) -> None:
        self.state = StackedState(self.active, self.gpt, self.dtype, self.device, self.impl)

    def _leave(self, leaving: list[PackedCell]) -> None:
        """Take cells out of the pack: the others keep their slices and go on in a smaller pack."""
        if not leaving:
            return
        staying = [c for c in self.active if c not in leaving]
        self.state.hand_over(self.active, staying)
        self.active = staying
        if self.active:
            self._build()

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        emit(f"memsweep: pack {self.pack['id']}: {len(self.active)} cells "
             f"({self.gpt.n_layer}L d{self.gpt.d_model}, {self.active[0].cfg.precision}) as one", sys.stdout)
        try:
            self._evaluate([c for c in self.active if c.step == 0], saturation=False)
            while self.active:
                self._train_one_step()
                self._after_step()
        except BaseException as err:  # the pack itself broke: every cell still in it fails, as run_cell's would
            for c in self.active:
                if c.cfg.cell_id not in self.outcomes:
                    self._fail(c, err)
            raise

    def _train_one_step(self) -> None:
        batch = torch.stack([c.next_batch() for c in self.active]).to(self.device)
        lrs = [c.train_lr() for c in self.active]
        started = time.perf_counter()
        self._losses = self.state.train_step(batch, lrs if any(lr is not None for lr in lrs) else None)
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self.tokens += batch.numel()
        for c in self.active:
            c.advance()
            c.train_seconds += elapsed

    def _after_step(self) -> None:
        """The step boundary: Lightning's monitor, then checkpointer, then on_train_end. By time,
        the pack checkpoints all its cells at the shortest checkpoint_every_minutes among them."""
        leaving = [c for c in self.active if c.claim.lost]
        for c in leaving:
            self._lost(c, ClaimLost(f"{c.dir}: the claim was taken over by another process at step {c.step}"))
        ended, restored = self._end_branches([c for c in self.active if c.branch is not None and c.branch.ended
                                              and c not in leaving])
        leaving += ended
        leaving += self._evaluate([c for c in self.active if c.eval_due() and c not in leaving], saturation=True)
        self._start_branches([c for c in self.active if c.probe_due() and c not in leaving])
        self._log_losses([c for c in self.active if c not in leaving])
        leaving += self._finish([c for c in self.active if c.finished() and c not in leaving])
        stop = self.flag.requested
        minutes = [c.cfg.trainer.checkpoint_every_minutes for c in self.active if c.cfg.trainer.checkpoint_every_minutes]
        timely = bool(minutes) and time.monotonic() - self._last_save >= 60 * min(minutes)

        def interval_due(c: PackedCell) -> bool:  # at a boundary of its own stable step (a branch's end is T_k's)
            every = c.cfg.trainer.checkpoint_interval
            return bool(every) and c.branch is None and (c.stepped or c in restored) and c.step % every == 0

        due = [c for c in self.active if c not in leaving and (stop or timely or c.claim.must_stop or interval_due(c))]
        leaving += self._checkpoint(due, stop)
        if timely:
            self._last_save = time.monotonic()
        self._leave(leaving)

    def _log_losses(self, cells: list[PackedCell]) -> None:
        """Lightning's log of `train/batch_loss` after a cell's stable step (every LOG_EVERY_N_STEPS)."""
        for c in cells:
            if c.logger and c.stepped and c.step % LOG_EVERY_N_STEPS == 0 and self._losses is not None:
                log_batch_loss(c.logger, c.step, self._losses[self.active.index(c)].item())

    def _guarded(self, c: PackedCell, action) -> bool:
        """Run one cell's action; a lost claim or a non-finite loss ends that cell only."""
        try:
            action()
            return True
        except ClaimLost as lost:
            self._lost(c, lost)
        except NonFiniteError as err:
            self._fail(c, err)
        return False

    def _check_loss(self, cells: list[PackedCell]) -> list[int | None]:
        steps = self.state.train_step.first_nonfinite_steps()
        return [steps[self.active.index(c)] for c in cells]

    @staticmethod
    def _nonfinite(c: PackedCell, slot_step: int | None) -> NonFiniteError | None:
        """The error a checkpoint of the cell raises as the unpacked Checkpointer would, or None: the
        stable run's non-finite loss (check_training_loss), and in a branch (whose losses the slot's
        tracker holds, the stable run's kept in its copy) the branch's, which the unpacked cell,
        having abandoned the branch, meets when it replays it (_train_branch)."""
        stable_step = slot_step if c.branch is None else c.branch.stable["first_nonfinite"]
        if stable_step is not None:
            return NonFiniteError(f"non-finite training loss at step {stable_step} (on rank 0)")
        if c.branch is not None and slot_step is not None:
            return NonFiniteError(f"non-finite training loss in the decay branch from step {c.branch.start}")
        return None

    # --- decay branches (schedule=wsd) ----------------------------------------------------------
    def _start_branches(self, cells: list[PackedCell]) -> None:
        """MemorizationMonitor._probe's copy of the stable state; the slot then trains the branch,
        its non-finite tracker counting the branch's losses only."""
        if not cells:
            return
        nonfinite = self.state.train_step.first_nonfinite_steps()
        for c in cells:
            k = self.active.index(c)
            c.start_branch({**self.state.cell_state(k), "first_nonfinite": nonfinite[k]})
            self.state.set_first_nonfinite(k, None)

    def _end_branches(self, cells: list[PackedCell]) -> tuple[list[PackedCell], list[PackedCell]]:
        """The end of each branch: a non-finite branch fails its cell; else its row and decision
        (the stable tracker back first, so the evaluation checks the stable run as _record does).
        Returns (cells that failed, cells whose branch was not kept: the stable state is back in
        their slot); a kept branch leaves its cell finished."""
        if not cells:
            return [], []
        failed, evaluated = [], []
        for c, bad in zip(cells, self._check_loss(cells)):
            if bad is not None:  # _train_branch raises before _record checks the stable run
                error = f"non-finite training loss in the decay branch from step {c.branch.start}"
                self._fail(c, NonFiniteError(error))
                failed.append(c)
            else:
                self.state.set_first_nonfinite(self.active.index(c), c.branch.stable["first_nonfinite"])
                evaluated.append(c)
        failed += self._evaluate(evaluated, saturation=False, branch=True)
        restored = [c for c in evaluated if c not in failed and c.branch is not None]
        for c in restored:
            self.state.load_slice(self.active.index(c), c.drop_branch())
        return failed, restored

    def _nll(self, cells: list[PackedCell], sets: list[np.ndarray], dtype: torch.dtype) -> list[np.ndarray]:
        index = torch.tensor([self.active.index(c) for c in cells], device=self.device)
        params = {n: p.detach().index_select(0, index).to(dtype) for n, p in self.state.model.params.items()}
        return per_cell_nll_bits(self.state.forward, params, sets, cells[0].cfg.trainer.eval_batch_size)

    def _evaluate(self, cells: list[PackedCell], saturation: bool, branch: bool = False) -> list[PackedCell]:
        """Each cell's metrics row at its step (MemorizationMonitor._record), or at the end of its
        branch (`branch`: the row and the doubling rule's decision); returns the cells that ended."""
        if not cells:
            return []
        train = self._nll(cells, [c.train_tokens for c in cells], self.dtype)
        heldout = self._nll(cells, [c.heldout_tokens for c in cells], self.dtype)
        fp32 = self._nll(cells, [c.train_tokens for c in cells], torch.float32) if self.dtype != torch.float32 \
            else [None] * len(cells)
        ended = []
        for c, bad, *nll in zip(cells, self._check_loss(cells), train, heldout, fp32):
            def record(c=c, bad=bad, nll=nll):
                if bad is not None:
                    raise NonFiniteError(f"non-finite training loss at step {bad} (on rank 0)")
                if branch:
                    c.end_branch({"train": nll[0], "heldout": nll[1]}, nll[2])
                else:
                    c.record_row({"train": nll[0], "heldout": nll[1]}, nll[2], saturation)
            if not self._guarded(c, record):
                ended.append(c)
        return ended

    def _finish(self, cells: list[PackedCell]) -> list[PackedCell]:
        """on_train_end and the record of each cell that reached its end (all of them leave)."""
        self._evaluate([c for c in cells if c.last_eval_step != c.step], saturation=False)
        for c in cells:
            if c.cfg.cell_id not in self.outcomes:
                self._guarded(c, lambda c=c: self._write_done(c))
        return cells

    def _write_done(self, c: PackedCell) -> None:
        exp_avg = next(iter(self.state.optimizer.state.values()))["exp_avg"]
        common = {"status": "done", "steps": c.step, "tokens_seen": c.tokens_seen, "train_seconds": c.train_seconds,
                  "wall_seconds": c.wall_seconds, "resumed_from_step": c.start_step or None,
                  "signal": self.flag.signal_name, "requeue": False, "stop_cause": None}
        record = {**base_record(c.cfg), **common, **result_fields(
            c.cfg, c.last, attention=self.gpt.attention, param_dtype=self.dtype,
            optimizer_state_dtype=str(exp_avg.dtype).removeprefix("torch.") if c.step else None,
            tokens_per_sec=c.tokens_seen / c.train_seconds if c.train_seconds else None,
            stop_reason=c.stop_reason, saturated_at_step=c.saturated_at_step, saturation_rule=c.saturation_rule,
            growth_per_doubling=c.growth_per_doubling, branch_steps=c.branch_steps, device=self.device, world_size=1,
            strategy="PackedTrainStep"),
            "pack": self._pack_fields(c)}
        model = self.state.model.cell_model(self.active.index(c)) if c.tokens.text is not None else None
        record.update(write_cell_outputs(c.cfg, c.dir, model, c.tokens, c.per_sample_nll_bits, c.reference,
                                         c.claim.check))
        self._write(c, record)
        emit(f"memsweep: {cell_summary(record)}", sys.stdout)

    def _checkpoint(self, cells: list[PackedCell], stop: bool) -> list[PackedCell]:
        """Checkpoint cells at their step (never a NaN model); those told to stop leave, resumable."""
        ended = []
        for c, bad in zip(cells, self._check_loss(cells)):
            def save(c=c, bad=bad):
                if (error := self._nonfinite(c, bad)) is not None:
                    raise error
                state = c.checkpoint_state(self.state.cell_state(self.active.index(c)))
                save_cell_checkpoint(c.dir, state, c.cfg.trainer.keep_checkpoints, c.claim.check)
                if stop or c.claim.must_stop:
                    self._write_stopped(c)
            if not self._guarded(c, save) or stop or c.claim.must_stop:
                ended.append(c)
        return ended

    def _write_stopped(self, c: PackedCell) -> None:
        requeue = self.flag.requested and self.flag.wants_requeue and not c.claim.must_stop
        cause = f"signal {self.flag.signal_name}" if self.flag.requested else "claim could not be renewed"
        self._write(c, {**base_record(c.cfg), "status": "preempted" if requeue else "interrupted", "steps": c.step,
                        "tokens_seen": c.tokens_seen, "train_seconds": c.train_seconds,
                        "wall_seconds": c.wall_seconds, "resumed_from_step": c.start_step or None,
                        "signal": self.flag.signal_name, "requeue": requeue, "stop_cause": cause,
                        "pack": self._pack_fields(c)})

    def _fail(self, c: PackedCell, err: BaseException) -> None:
        """Write the failed record of one cell, as run_cell writes it."""
        emit(f"memsweep: {c.cfg.cell_id} failed in pack {self.pack['id']}: {err}")
        record = {**base_record(c.cfg), "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": "".join(traceback.format_exception(err)), "wall_seconds": c.wall_seconds,
                  "pack": self._pack_fields(c)}
        try:
            self._write(c, record)
        except ClaimLost as lost:
            self._lost(c, lost)

    def _lost(self, c: PackedCell, lost: ClaimLost) -> None:
        emit(f"memsweep: {lost}")
        self.outcomes[c.cfg.cell_id] = "claim-lost"
        self._close_logger(c, None)

    def _write(self, c: PackedCell, record: dict[str, Any]) -> None:
        c.claim.check()
        write_json_atomic(c.dir / RESULT_FILE, record)
        self.records[c.cfg.cell_id] = record
        status = record["status"]
        self.outcomes[c.cfg.cell_id] = f"failed: {record['error']}" if status == "failed" else status
        self._close_logger(c, record if status == "done" else None)

    def _pack_fields(self, c: PackedCell) -> dict[str, Any]:
        """Which pack the cell trained in, and the pack's throughput so far (all its cells' tokens)."""
        return {**self.pack, "position": self.position[c.cfg.cell_id],
                "tokens_per_sec": self.tokens / self.train_seconds if self.train_seconds else None}
