"""Train claimed cells as one pack, each to its own end, each writing its own files and record.

The loop is Lightning's fit of an unpacked cell with its callbacks, for K cells at once: after
every pack step each cell, at its own step, is evaluated when its eval_interval says so (plateau
rule and cooldown, memsweep.pack.monitor), checkpointed when its interval says so or a stop is
requested, and leaves the pack as soon as it is done (result.json written at once), failed (a
non-finite loss: its own failed record; the others train on) or lost its claim. A leaving cell
is taken out of the stacked tensors (the pack is rebuilt from the cells' slices), so it costs
nothing from then on. A preemption signal checkpoints every cell still training and stops them
all, resumable.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from memsweep.callbacks import NonFiniteError
from memsweep.cell import PER_SAMPLE_FILE, _accelerator_device, gpt_config, result_fields
from memsweep.claim import ClaimLost
from memsweep.config import CellConfig
from memsweep.console import cell_summary
from memsweep.data.source import row_repeats
from memsweep.pack.checkpoint import save_cell_checkpoint
from memsweep.pack.evaluate import per_cell_nll_bits
from memsweep.pack.grouping import pack_id
from memsweep.pack.monitor import PackedCell
from memsweep.pack.stack import StackedState
from memsweep.preemption import PreemptionFlag
from memsweep.record import RESULT_FILE, versions, write_json_atomic
from memsweep.runtime import keep_large_allocations_in_heap

DEFAULT_IMPL = "batched"
"""The forward of a pack of two or more (memsweep.pack.model.make_forward; memsweep.pack.stack)."""


def base_record(cfg: CellConfig) -> dict[str, Any]:
    """What run_cell writes first, and under every status."""
    return {"status": "running", "cell_id": cfg.cell_id, "config": asdict(cfg), "versions": versions()}


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
        self._last_save = time.monotonic()
        self._build()

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
        print(f"memsweep: pack {self.pack['id']}: {len(self.active)} cells "
              f"({self.gpt.n_layer}L d{self.gpt.d_model}, {self.active[0].cfg.precision}) as one", flush=True)
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
        started = time.perf_counter()
        self.state.train_step(batch)
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        self.tokens += batch.numel()
        for c in self.active:
            c.step += 1
            c.train_seconds += elapsed

    def _after_step(self) -> None:
        """The step boundary: Lightning's monitor, then checkpointer, then on_train_end. By time,
        the pack checkpoints all its cells at the shortest checkpoint_every_minutes among them."""
        leaving = [c for c in self.active if c.claim.lost]
        for c in leaving:
            self._lost(c, ClaimLost(f"{c.dir}: the claim was taken over by another process at step {c.step}"))
        leaving += self._evaluate([c for c in self.active if c.eval_due() and c not in leaving], saturation=True)
        leaving += self._finish([c for c in self.active if c.finished() and c not in leaving])
        stop = self.flag.requested
        minutes = [c.cfg.trainer.checkpoint_every_minutes for c in self.active if c.cfg.trainer.checkpoint_every_minutes]
        timely = bool(minutes) and time.monotonic() - self._last_save >= 60 * min(minutes)
        due = [c for c in self.active if c not in leaving and (stop or timely or c.claim.must_stop or (
            c.cfg.trainer.checkpoint_interval and c.step % c.cfg.trainer.checkpoint_interval == 0))]
        leaving += self._checkpoint(due, stop)
        if timely:
            self._last_save = time.monotonic()
        self._leave(leaving)

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

    def _nll(self, cells: list[PackedCell], sets: list[np.ndarray], dtype: torch.dtype) -> list[np.ndarray]:
        index = torch.tensor([self.active.index(c) for c in cells], device=self.device)
        params = {n: p.detach().index_select(0, index).to(dtype) for n, p in self.state.model.params.items()}
        return per_cell_nll_bits(self.state.forward, params, sets, cells[0].cfg.trainer.eval_batch_size)

    def _evaluate(self, cells: list[PackedCell], saturation: bool) -> list[PackedCell]:
        """Each cell's metrics row at its step (MemorizationMonitor._record); returns the cells that ended."""
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
        d, exp_avg = c.cfg.data, next(iter(self.state.optimizer.state.values()))["exp_avg"]
        common = {"status": "done", "steps": c.step, "tokens_seen": c.tokens_seen, "train_seconds": c.train_seconds,
                  "wall_seconds": c.wall_seconds, "resumed_from_step": c.start_step or None,
                  "signal": self.flag.signal_name, "requeue": False, "stop_cause": None}
        record = {**base_record(c.cfg), **common, **result_fields(
            c.cfg, c.last, attention=self.gpt.attention, param_dtype=self.dtype,
            optimizer_state_dtype=str(exp_avg.dtype).removeprefix("torch.") if c.step else None,
            tokens_per_sec=c.tokens_seen / c.train_seconds if c.train_seconds else None,
            stop_reason=c.stop_reason, saturated_at_step=c.saturated_at_step, saturation_rule="plateau",
            growth_per_doubling=None, branch_steps=0, device=self.device, world_size=1, strategy="PackedTrainStep"),
            "pack": self._pack_fields(c)}
        repeats = {"repeat_count": row_repeats(d)} if d.repeat_counts is not None else {}
        c.claim.check()
        np.savez_compressed(c.dir / PER_SAMPLE_FILE, **c.per_sample_nll_bits, **repeats)
        self._write(c, record)
        print(f"memsweep: {cell_summary(record)}", flush=True)

    def _checkpoint(self, cells: list[PackedCell], stop: bool) -> list[PackedCell]:
        """Checkpoint cells at their step (never a NaN model); those told to stop leave, resumable."""
        ended = []
        for c, bad in zip(cells, self._check_loss(cells)):
            def save(c=c, bad=bad):
                if bad is not None:
                    raise NonFiniteError(f"non-finite training loss at step {bad} (on rank 0)")
                state = {"step": c.step, **self.state.cell_state(self.active.index(c)), **c.state_dict()}
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
        print(f"memsweep: {c.cfg.cell_id} failed in pack {self.pack['id']}: {err}", file=sys.stderr)
        record = {**base_record(c.cfg), "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": "".join(traceback.format_exception(err)), "wall_seconds": c.wall_seconds,
                  "pack": self._pack_fields(c)}
        try:
            self._write(c, record)
        except ClaimLost as lost:
            self._lost(c, lost)

    def _lost(self, c: PackedCell, lost: ClaimLost) -> None:
        print(f"memsweep: {lost}", file=sys.stderr)
        self.outcomes[c.cfg.cell_id] = "claim-lost"

    def _write(self, c: PackedCell, record: dict[str, Any]) -> None:
        c.claim.check()
        write_json_atomic(c.dir / RESULT_FILE, record)
        self.records[c.cfg.cell_id] = record
        status = record["status"]
        self.outcomes[c.cfg.cell_id] = f"failed: {record['error']}" if status == "failed" else status

    def _pack_fields(self, c: PackedCell) -> dict[str, Any]:
        """Which pack the cell trained in, and the pack's throughput so far (all its cells' tokens)."""
        return {**self.pack, "position": self.position[c.cfg.cell_id],
                "tokens_per_sec": self.tokens / self.train_seconds if self.train_seconds else None}
