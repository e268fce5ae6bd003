"""One cell end to end: data, model, training to saturation (resumable), and the result record."""

from __future__ import annotations

import csv
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from memsweep.callbacks import CellProgress, Checkpointer, MemorizationMonitor, StepTimer
from memsweep.checkpoint import checkpoints, clean_partials, newest_valid_checkpoint, step_of
from memsweep.claim import CellClaim, ClaimLost, NoClaim
from memsweep.config import CONFIG_FILE, CellConfig, load_cell_config
from memsweep.console import emit, quiet_lightning
from memsweep.data.batches import ShuffledBatches, TokenRows, epoch_rows
from memsweep.data.source import CellTokens, cell_tokens, row_repeats
from memsweep.loggers import LOG_EVERY_N_STEPS, build_logger, close_logger
from memsweep.model import GPTConfig, paper_param_count, pick_attention
from memsweep.module import MemorizationModule
from memsweep.optim import optimizer_state_dtype
from memsweep.preemption import PreemptionFlag, requeue_slurm_job, slurm_job_id
from memsweep.preflight import check_resources
from memsweep.record import RESULT_FILE, TEMP_SUFFIX, clean_temp_files, is_done, read_result, versions, write_json_atomic
from memsweep.reserve import SpaceReserve, is_disk_full
from memsweep.runtime import keep_large_allocations_in_heap
from memsweep.strategy import trainer_kwargs

METRICS_FILE = "metrics.csv"
PER_SAMPLE_FILE = "per_sample_nll_bits.npz"
MODEL_FILE = "model.pt"
"""Text cells: the trained weights and the GPT config they fit, `torch.load(weights_only=True)`-able,
for analyses that decode with the final model (memsweep perspectives)."""
TOP_MEMORIZED_FILE = "top_memorized.json"
"""Text cells: the most memorized training sequences, as text (memsweep.text.measure)."""


def gpt_config(cfg: CellConfig, device: torch.device) -> GPTConfig:
    attention = pick_attention(device) if cfg.model.attention == "auto" else cfg.model.attention
    return GPTConfig(vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len, n_layer=cfg.model.n_layer,
                     d_model=cfg.model.d_model, n_head=cfg.model.n_head, attention=attention)


def _accelerator_device(accelerator: str) -> torch.device:
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _is_global_zero() -> bool:
    """Rank 0 of a data-parallel launch (from the launcher's environment, as Lightning reads it)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def _device_name(device: torch.device) -> str:
    """What the report's MFU column looks up the peak FLOP/s by (e.g. 'NVIDIA H100 80GB HBM3')."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type


def run_cell_dir(cell_dir: Path, wait_for_reference: bool = True) -> dict[str, Any]:
    """Run the cell whose config.yaml is in `cell_dir`: what a queued or requeued job calls.

    Skips a done cell and a cell another live process holds; resumes from the newest valid
    checkpoint; after a preemption signal it checkpoints, asks SLURM to requeue the job and exits
    without a result, so the requeued job picks the cell up again from that checkpoint.
    A text cell first makes sure its reference cell is done (memsweep.text.reference): it
    returns `blocked` if the reference failed, `waiting` (wait_for_reference=False) while another
    process trains it, and trains a reference that nobody runs itself, first.
    """
    cell_dir = Path(cell_dir).resolve()
    cfg = load_cell_config(cell_dir / CONFIG_FILE)
    previous = read_result(cell_dir)
    if previous is not None and previous.get("status") == "done":
        return previous
    if cfg.reference_config() is not None:
        from memsweep.text.reference import ensure_reference

        ready = ensure_reference(cfg, cell_dir, wait=wait_for_reference)
        if ready != "ready":
            return {"status": ready, "cell_id": cfg.cell_id}
    # Rank 0 claims for the whole launch; the others learn of a lost claim through the
    # checkpointer's collective stop decision.
    claim = CellClaim(cell_dir, cfg.trainer.lease_seconds) if _is_global_zero() else NoClaim()
    with PreemptionFlag():  # a signal during set-up is kept for the cell's first step
        if not claim.acquire(finished=lambda: is_done(cell_dir)):
            finished = read_result(cell_dir)  # finished by another worker since `previous` was read
            if finished is not None and finished.get("status") == "done":
                return finished
            return {"status": "claimed", "cell_id": cfg.cell_id}
        if _resumes_packed(cfg, cell_dir):
            record = _resume_as_pack_of_one(cfg, cell_dir, claim)
        else:
            record = {"status": "unknown"}
            try:
                record = run_cell(cfg, cell_dir, claim)
            finally:
                claim.release(final_status=record.get("status"))
    if record["status"] == "preempted" and record["requeue"] and slurm_job_id() is not None:
        if _is_global_zero():
            requeue_slurm_job()
        raise SystemExit(-1)  # as submitit does: no result file, the requeued job continues
    return record


def _resumes_packed(cfg: CellConfig, cell_dir: Path) -> bool:
    """A cell last trained in a pack (memsweep.pack) has packed checkpoints and no Lightning ones."""
    from memsweep.pack.checkpoint import pack_checkpoints
    from memsweep.pack.grouping import pack_key

    return bool(pack_checkpoints(cell_dir)) and not checkpoints(cell_dir) and pack_key(cfg) is not None


def _resume_as_pack_of_one(cfg: CellConfig, cell_dir: Path, claim: CellClaim) -> dict[str, Any]:
    """Resume a packed cell run without --pack from its own packed checkpoint, as a pack of one:
    that trains bit for bit as the unpacked cell would, so relaunching with another pack size
    (none included) loses no steps. The pack releases the claim."""
    from memsweep.pack.launch import train_members

    emit(f"memsweep: {cfg.cell_id} resumes from its packed checkpoint, as a pack of one", sys.stdout)
    outcome = train_members([(str(cell_dir), cfg, claim)])[str(cell_dir)]
    record = read_result(cell_dir) or {}
    return record if record.get("status") == outcome.split(":")[0] else {"status": outcome, "cell_id": cfg.cell_id}


def base_record(cfg: CellConfig) -> dict[str, Any]:
    """What a cell's result.json says first, and under every status (packed cells' too)."""
    return {"status": "running", "cell_id": cfg.cell_id, "config": asdict(cfg), "versions": versions()}


def run_cell(cfg: CellConfig, run_dir: Path, claim: CellClaim | NoClaim | None = None) -> dict[str, Any]:
    """Train one cell to saturation in `run_dir` and return its record (also in result.json).

    A run dir whose result.json says `done` is left untouched and its record returned: relaunching
    a finished cell is a no-op and can never overwrite a finished result. Otherwise training starts
    from the newest valid checkpoint in the run dir, if any. Every write of the cell's files is
    fenced by `claim`: once another process has taken the cell over, this one stops and writes
    nothing more (the returned status is then `claim-lost`).
    """
    claim = claim or NoClaim()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_result(run_dir)
    if previous is not None and previous.get("status") == "done":
        emit(f"memsweep: cell {cfg.cell_id} is already done in {run_dir}; nothing to do", sys.stdout)
        return previous
    base = base_record(cfg)
    lead = _is_global_zero()
    reserve = SpaceReserve(run_dir)

    def write_record(record: dict[str, Any]) -> None:
        if lead:
            claim.check()
            write_json_atomic(run_dir / RESULT_FILE, record)

    started = time.perf_counter()
    try:
        if lead:
            claim.check()
            clean_temp_files(run_dir)
            clean_partials(run_dir)
            reserve.hold()
        write_record(base)
        check_resources(cfg, run_dir)
        record = {**base, **_train(cfg, run_dir, claim, previous)}
        reserve.free()
        write_record(record)
    except ClaimLost as lost:
        emit(f"memsweep: {lost}")
        return {"status": "claim-lost", "cell_id": cfg.cell_id}
    except BaseException as err:
        reserve.free()
        if lead:
            clean_partials(run_dir)  # a half-written checkpoint is the likeliest space to win back
        cause = "disk full: " if is_disk_full(err) else ""
        failed = {**base, "status": "failed", "error": f"{cause}{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(), "wall_seconds": time.perf_counter() - started}
        try:
            write_record(failed)
        except BaseException as write_err:  # the original error matters more; say both
            emit(f"memsweep: could not record the failure of {cfg.cell_id} in {run_dir}: "
                 f"{type(write_err).__name__}: {write_err}")
        raise
    return record


def _resume_point(run_dir: Path) -> Path | None:
    """The checkpoint to resume from; the metrics rows after it are dropped (they will be replayed)."""
    checkpoint = newest_valid_checkpoint(run_dir)
    if _is_global_zero():
        truncate_metrics(run_dir, step_of(checkpoint) if checkpoint else None)
    return checkpoint


def truncate_metrics(run_dir: Path, step: int | None) -> None:
    """Keep the metrics rows up to the step a cell resumes from (None: from scratch, none kept)."""
    metrics = run_dir / METRICS_FILE
    if step is None:
        metrics.unlink(missing_ok=True)
    elif metrics.exists():
        with metrics.open() as fh:
            rows = list(csv.DictReader(fh))
        kept = [row for row in rows if int(row["step"]) <= step]
        with metrics.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(kept)


def _trainer(cfg: CellConfig, n_params: int, run_dir: Path, logger, callbacks: list[L.Callback]) -> L.Trainer:
    quiet_lightning()  # before the Trainer, which prints its banners as it is made
    t = cfg.trainer
    return L.Trainer(
        **trainer_kwargs(cfg.precision, t.accelerator, t.devices, t.num_nodes, t.strategy, t.deepspeed_stage,
                         n_params, batch_size=t.batch_size, bf16_optimizer=t.bf16_optimizer),
        max_steps=t.max_steps,
        logger=logger,
        callbacks=callbacks,
        gradient_clip_val=t.grad_clip or None,
        enable_checkpointing=False,  # memsweep.checkpoint writes verified checkpoints itself
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # evaluation is the monitor's, over whole token sets
        log_every_n_steps=LOG_EVERY_N_STEPS,
        use_distributed_sampler=False,  # ShuffledBatches gives each rank its slice of the global batch
        default_root_dir=str(run_dir),
    )


def start_text_cell(cfg: CellConfig, run_dir: Path, tokens: CellTokens, previous: dict[str, Any] | None,
                    resuming: bool, claim: CellClaim | NoClaim) -> tuple[dict, dict[str, np.ndarray]] | None:
    """A text cell's steps before its first step, shared with packed cells (memsweep.pack): the
    reference's NLLs (a missing or mismatched reference fails the cell before it trains), the
    pool check against the checkpoints it resumes from, and a `running` record naming its pool.
    Returns the reference (None: a uniform cell, a reference cell, or data.reference=none)."""
    if tokens.text is None:
        return None
    reference = _reference(cfg, run_dir, tokens)
    _check_same_pool(tokens, previous, resuming)
    if _is_global_zero():
        claim.check()
        write_json_atomic(run_dir / RESULT_FILE, {**base_record(cfg), "text": tokens.text})
    return reference


def write_cell_outputs(cfg: CellConfig, run_dir: Path, model: torch.nn.Module | None, tokens: CellTokens,
                       nll: dict[str, np.ndarray], reference: tuple[dict, dict[str, np.ndarray]] | None,
                       check) -> dict[str, Any]:
    """A done cell's files beside its record (rank 0), shared with packed cells: the per-sample
    NLLs and, for a text cell, its text measures (memsweep.text.measure), most memorized sequences
    and final weights. Returns the text record fields ({} for a uniform cell, whose `model` may
    be None). `check` fences the writes (the claim's)."""
    text_fields, arrays, top = {}, {}, None
    if tokens.text is not None:
        text_fields, arrays, top = _measure_text(cfg, model, tokens, nll, reference)
    check()
    data = cfg.data
    repeats = {"repeat_count": row_repeats(data)} if data.repeat_counts is not None else {}
    np.savez_compressed(run_dir / PER_SAMPLE_FILE, **nll, **arrays, **repeats)
    if top is not None:
        write_json_atomic(run_dir / TOP_MEMORIZED_FILE, top)
        _save_model(model, run_dir / MODEL_FILE)
    return text_fields


def _check_same_pool(tokens: CellTokens, previous: dict[str, Any] | None, resuming: bool) -> None:
    """A text cell resumes only from checkpoints trained on the same pool: a corpus package
    update or a retrained tokenizer changes the token ids under the same cell id."""
    before = ((previous or {}).get("text") or {}).get("pool_sha256")
    if resuming and before and before != tokens.text["pool_sha256"]:
        raise ValueError(f"this cell's checkpoints were trained on text pool {before[:12]}, but the corpus and "
                         f"tokenizer now give pool {tokens.text['pool_sha256'][:12]} (the corpus text or the "
                         "tokenizer changed); move the cell dir away to retrain it from scratch")


def _train(cfg: CellConfig, run_dir: Path, claim: CellClaim | NoClaim,
           previous: dict[str, Any] | None = None) -> dict[str, Any]:
    data, trainer_cfg = cfg.data, cfg.trainer
    tokens = cell_tokens(data, run_dir, rank_zero_only.rank)
    train_tokens, heldout_tokens = tokens.train, tokens.heldout
    checkpoint = _resume_point(run_dir)
    reference = start_text_cell(cfg, run_dir, tokens, previous, checkpoint is not None, claim)
    start_step = step_of(checkpoint) if checkpoint else 0

    device = _accelerator_device(trainer_cfg.accelerator)
    if device.type == "cpu":
        keep_large_allocations_in_heap()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = MemorizationModule(gpt_config(cfg, device), trainer_cfg)
    timer = StepTimer()
    monitor = MemorizationMonitor(cfg, train_tokens, heldout_tokens, run_dir / METRICS_FILE, timer, claim.check)
    logger = build_logger(cfg, run_dir)
    with PreemptionFlag() as flag:
        checkpointer = Checkpointer(run_dir, flag, claim, trainer_cfg.checkpoint_interval,
                                    trainer_cfg.checkpoint_every_minutes, trainer_cfg.keep_checkpoints)
        trainer = _trainer(cfg, module.model.n_params, run_dir, logger,
                           [timer, monitor, checkpointer, CellProgress(cfg, monitor, timer)])
        sampler = ShuffledBatches(epoch_rows(row_repeats(data)), trainer_cfg.batch_size, cfg.seed, start_batch=start_step,
                                  rank=trainer.global_rank, world_size=trainer.world_size)
        loader = DataLoader(TokenRows(train_tokens), batch_size=None, sampler=sampler)
        try:
            trainer.fit(module, train_dataloaders=loader, ckpt_path=checkpoint, weights_only=True)
        except SIGTERMException:  # Lightning re-raises the SIGTERM that the checkpointer already handled
            if checkpointer.stop_cause is None:
                if not flag.requested:
                    raise
                # The signal came before any step boundary of this attempt (Lightning saw it
                # first): nothing new to checkpoint, the cell resumes from its last checkpoint.
                checkpointer.stop_cause = f"{flag.signal_name} before a step boundary"

    model = module.model
    steps = trainer.global_step
    tokens_seen = (steps + monitor.branch_steps) * trainer_cfg.batch_size * data.seq_len  # decay branches train too
    stopped = checkpointer.stop_cause is not None
    requeue = stopped and flag.wants_requeue and not claim.must_stop
    common = {"status": ("preempted" if requeue else "interrupted") if stopped else "done", "steps": steps,
              "tokens_seen": tokens_seen, "train_seconds": timer.train_seconds,
              "wall_seconds": timer.wall_seconds, "resumed_from_step": start_step or None,
              "signal": flag.signal_name, "requeue": requeue, "stop_cause": checkpointer.stop_cause}
    if stopped:
        close_logger(logger, None)
        return common
    text_fields = {}
    if trainer.is_global_zero:
        text_fields = write_cell_outputs(cfg, run_dir, model, tokens, monitor.per_sample_nll_bits, reference,
                                         claim.check)
    device = next(model.parameters()).device
    record = {
        **common,
        **result_fields(cfg, monitor.last, attention=model.cfg.attention,
                        param_dtype=next(model.parameters()).dtype,
                        optimizer_state_dtype=optimizer_state_dtype(trainer.optimizers[0]) if trainer.optimizers else None,
                        tokens_per_sec=tokens_seen / timer.train_seconds if timer.train_seconds else None,
                        stop_reason=monitor.stop_reason, saturated_at_step=monitor.saturated_at_step,
                        saturation_rule=monitor.saturation_rule, growth_per_doubling=monitor.growth_per_doubling,
                        branch_steps=monitor.branch_steps, device=device, world_size=trainer.world_size,
                        strategy=type(trainer.strategy).__name__),
        **text_fields,
    }
    close_logger(logger, record)
    return record


def result_fields(cfg: CellConfig, final: dict[str, float], *, attention: str, param_dtype: torch.dtype,
                  optimizer_state_dtype: str | None, tokens_per_sec: float | None, stop_reason: str,
                  saturated_at_step: int | None, saturation_rule: str, growth_per_doubling: list[dict] | None,
                  branch_steps: int, device: torch.device, world_size: int, strategy: str) -> dict[str, Any]:
    """A done cell's record fields after the common ones, from its last metrics row (`final`) and
    how it trained; shared with packed cells (memsweep.pack), whose records read alike."""
    data, trainer_cfg = cfg.data, cfg.trainer
    n_params = paper_param_count(data.vocab_size, data.seq_len, cfg.model.n_layer, cfg.model.d_model)
    return {
        "n_params": n_params,
        "n_params_bos": cfg.model.d_model,
        "n_layer": cfg.model.n_layer,
        "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head,
        "attention": attention,
        "vocab_size": data.vocab_size,
        "seq_len": data.seq_len,
        "n_samples": data.n_samples,
        "n_heldout": data.n_heldout,
        "precision": cfg.precision,
        "param_dtype": str(param_dtype).removeprefix("torch."),
        "bf16_optimizer": trainer_cfg.bf16_optimizer if cfg.precision == "bf16" else None,
        "optimizer_state_dtype": optimizer_state_dtype,
        "memorized_bits_fp32_forward": final.get("memorized_bits_fp32_forward") if data.kind == "uniform" else None,
        "data_seed": data.seed,
        "seed": cfg.seed,
        "dataset_bits": data.n_samples * data.seq_len * math.log2(data.vocab_size),
        "memorized_bits": final["memorized_bits"],
        "memorized_bits_unclipped": final["memorized_bits_unclipped"],
        "bits_per_param": final["memorized_bits"] / n_params,
        "memorized_fraction": final["memorized_fraction"],
        "heldout_memorized_bits": final["heldout_memorized_bits"],
        "train_loss": final["train_loss"],
        "train_loss_bits": final["train_loss_bits"],
        "test_loss": final["test_loss"],
        "test_loss_bits": final["test_loss_bits"],
        "tokens_per_sec": tokens_per_sec,
        "stop_reason": stop_reason,
        "saturated_at_step": saturated_at_step,
        "saturation_rule": saturation_rule,
        "growth_per_doubling": growth_per_doubling,
        "branch_steps": branch_steps,
        "device": str(device),
        "device_name": _device_name(device),
        "world_size": world_size,
        "strategy": strategy,
        "cell_id": cfg.cell_id,
        "data_kind": data.kind,
        "repeat_counts": list(data.repeat_count_list()) or None,
        "repeat_rows": data.repeat_rows if data.repeat_counts is not None else None,
    }


def _save_model(model: torch.nn.Module, path: Path) -> None:
    """Written to a temporary name (which clean_temp_files removes if a kill leaves it) and renamed,
    so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    torch.save({"gpt_config": asdict(model.cfg), "state_dict": model.state_dict()}, partial)
    partial.replace(path)


def _reference(cfg: CellConfig, run_dir: Path, tokens: CellTokens) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The reference cell's record and per-sample NLLs (text cells that have one), read before
    training so that a missing or mismatched reference fails the cell at once."""
    if tokens.text is None:
        return None
    from memsweep.text.reference import reference_dir, reference_nll_bits

    if reference_dir(cfg, run_dir) is None:
        return None
    return reference_nll_bits(cfg, run_dir, tokens.text["pool_sha256"])


def _measure_text(cfg: CellConfig, model: torch.nn.Module, tokens: CellTokens, nll: dict[str, np.ndarray],
                  reference: tuple[dict, dict[str, np.ndarray]] | None) -> tuple[dict, dict, list]:
    """The text record fields (memsweep.text.measure); `memorized_bits` becomes the unintended
    memorization against the reference, the number the paper's text results are about."""
    from memsweep.text.measure import measure_text_cell

    d = cfg.data
    fields, arrays, top = measure_text_cell(model, tokens.train, tokens.heldout, nll,
                                            reference[1] if reference else None, d.vocab_size, tokens.tokenizer,
                                            cfg.trainer.eval_batch_size)
    uniform_code = d.n_samples * d.seq_len * math.log2(d.vocab_size)
    is_reference = cfg.reference_config() is not None and reference is None
    if reference is not None:
        against = f"reference cell {reference[0]['cell_id']}"
    else:
        against = "itself (the reference cell)" if is_reference else "the uniform code (data.reference=none)"
    memorized = fields["unintended_bits"] if reference is not None else \
        (0.0 if is_reference else fields["total_memorized_bits"])
    dataset_bits = fields["reference_bits"] if cfg.reference_config() is not None else uniform_code
    fields.update({
        "text": tokens.text,
        "reference_cell_id": reference[0]["cell_id"] if reference else (cfg.cell_id if is_reference else None),
        "is_reference": is_reference,
        "memorized_against": against,
        "memorized_bits": memorized,
        "bits_per_param": memorized / paper_param_count(d.vocab_size, d.seq_len, cfg.model.n_layer, cfg.model.d_model),
        "memorized_fraction": memorized / dataset_bits if dataset_bits else 0.0,
        "dataset_bits": dataset_bits,
        "dataset_bits_uniform_code": uniform_code,
    })
    return fields, arrays, top
