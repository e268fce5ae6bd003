"""One cell end to end: data, model, training to saturation, and the result record."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from memsweep.callbacks import MemorizationMonitor, StepTimer
from memsweep.config import PRECISIONS, CellConfig
from memsweep.data import HELDOUT_BRANCH, ShuffledBatches, TokenRows, random_tokens
from memsweep.loggers import build_logger, publish_summary
from memsweep.model import GPTConfig, pick_attention
from memsweep.module import MemorizationModule
from memsweep.record import RESULT_FILE, read_result, versions, write_json_atomic
from memsweep.runtime import keep_large_allocations_in_heap

METRICS_FILE = "metrics.csv"


def gpt_config(cfg: CellConfig, device: torch.device) -> GPTConfig:
    attention = pick_attention(device) if cfg.model.attention == "auto" else cfg.model.attention
    return GPTConfig(vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len, n_layer=cfg.model.n_layer,
                     d_model=cfg.model.d_model, n_head=cfg.model.n_head, attention=attention)


def _accelerator_device(accelerator: str) -> torch.device:
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def run_cell(cfg: CellConfig, run_dir: Path) -> dict[str, Any]:
    """Train one cell to saturation in `run_dir` and return its record (also in result.json).

    A run dir whose result.json says `done` is left untouched and its record returned: relaunching
    a finished cell is a no-op and can never overwrite a finished result.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_result(run_dir)
    if previous is not None and previous.get("status") == "done":
        print(f"memsweep: cell {cfg.cell_id} is already done in {run_dir}; nothing to do")
        return previous
    (run_dir / METRICS_FILE).unlink(missing_ok=True)  # a failed earlier attempt restarts from step 0
    base = {"status": "running", "cell_id": cfg.cell_id, "config": asdict(cfg), "versions": versions()}
    write_json_atomic(run_dir / RESULT_FILE, base)
    started = time.perf_counter()
    try:
        record = _train(cfg, run_dir, started)
    except BaseException as err:
        failed = {**base, "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(), "wall_seconds": time.perf_counter() - started}
        write_json_atomic(run_dir / RESULT_FILE, failed)
        raise
    record = {**base, **record, "status": "done"}
    write_json_atomic(run_dir / RESULT_FILE, record)
    return record


def _train(cfg: CellConfig, run_dir: Path, started: float) -> dict[str, Any]:
    data, trainer_cfg = cfg.data, cfg.trainer
    train_tokens = random_tokens(data.n_samples, data.seq_len, data.vocab_size, data.seed,
                                 memmap_path=run_dir / "train_tokens.npy")
    heldout_tokens = random_tokens(data.n_heldout, data.seq_len, data.vocab_size, data.seed, branch=HELDOUT_BRANCH)

    device = _accelerator_device(trainer_cfg.accelerator)
    if device.type == "cpu":
        keep_large_allocations_in_heap()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = MemorizationModule(gpt_config(cfg, device), trainer_cfg)
    loader = DataLoader(TokenRows(train_tokens), batch_size=None,
                        sampler=ShuffledBatches(data.n_samples, trainer_cfg.batch_size, cfg.seed))
    timer = StepTimer()
    monitor = MemorizationMonitor(cfg, train_tokens, heldout_tokens, run_dir / METRICS_FILE, timer)
    logger = build_logger(cfg, run_dir)
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        precision=PRECISIONS[cfg.precision],
        max_steps=trainer_cfg.max_steps,
        logger=logger,
        callbacks=[timer, monitor],
        gradient_clip_val=trainer_cfg.grad_clip or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=50,
        default_root_dir=str(run_dir),
    )
    trainer.fit(module, train_dataloaders=loader)

    model = module.model
    final = monitor.last
    steps = trainer.global_step
    tokens_seen = steps * trainer_cfg.batch_size * data.seq_len
    record = {
        "n_params": model.n_params,
        "n_params_bos": model.n_params_bos,
        "n_layer": cfg.model.n_layer,
        "d_model": cfg.model.d_model,
        "n_head": cfg.model.n_head,
        "attention": model.cfg.attention,
        "vocab_size": data.vocab_size,
        "seq_len": data.seq_len,
        "n_samples": data.n_samples,
        "n_heldout": data.n_heldout,
        "precision": cfg.precision,
        "param_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "data_seed": data.seed,
        "seed": cfg.seed,
        "dataset_bits": data.n_samples * data.seq_len * math.log2(data.vocab_size),
        "memorized_bits": final["memorized_bits"],
        "memorized_bits_unclipped": final["memorized_bits_unclipped"],
        "bits_per_param": final["memorized_bits"] / model.n_params,
        "memorized_fraction": final["memorized_fraction"],
        "heldout_memorized_bits": final["heldout_memorized_bits"],
        "train_loss": final["train_loss"],
        "train_loss_bits": final["train_loss_bits"],
        "test_loss": final["test_loss"],
        "test_loss_bits": final["test_loss_bits"],
        "steps": steps,
        "tokens_seen": tokens_seen,
        "tokens_per_sec": tokens_seen / timer.train_seconds if timer.train_seconds else None,
        "train_seconds": timer.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "stop_reason": monitor.stop_reason,
        "saturated_at_step": monitor.saturated_at_step,
        "device": str(next(model.parameters()).device),
        "cell_id": cfg.cell_id,
    }
    publish_summary(logger, record)
    return record
