"""Throughput of memsweep's Lightning cell against a hand-written PyTorch loop, side by side.

Same model, same batch, same optimizer, same data order; both variants are measured in one
process, interleaved over several repeats, and the median is reported. Also prints the effect of
the CPU allocator setting (memsweep.runtime), math vs SDPA attention, and MFU against a matmul
peak measured here. Run on a quiet machine:

    python benchmarks/throughput.py                      # 2L d128, batch 64, fp32 and bf16
    python benchmarks/throughput.py --n-layer 1 --d-model 32 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from memsweep.config import PRECISIONS, CellConfig, DataConfig, ModelConfig, TrainerConfig
from memsweep.data.batches import ShuffledBatches, TokenRows
from memsweep.data.uniform import random_tokens
from memsweep.model import GPT, GPTConfig
from memsweep.module import MemorizationModule
from memsweep.runtime import keep_large_allocations_in_heap
from memsweep.schedule import LRSchedule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def plain_loop(cfg: CellConfig, gpt: GPTConfig, tokens: np.ndarray, warmup: int, steps: int) -> float:
    """tokens/s of a hand-written loop doing what the Lightning cell does per step."""
    torch.manual_seed(cfg.seed)
    model = GPT(gpt).to(DTYPES[cfg.precision])
    t = cfg.trainer
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(t))
    batches = iter(DataLoader(TokenRows(tokens), batch_size=None, sampler=ShuffledBatches(len(tokens), t.batch_size, 0)))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch = next(batches)
        loss = F.cross_entropy(model(batch).float().flatten(0, 1), batch.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
    return steps * t.batch_size * gpt.seq_len / (time.perf_counter() - start)


class _Clock(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def lightning_cell(cfg: CellConfig, gpt: GPTConfig, tokens: np.ndarray, warmup: int, steps: int) -> float:
    """tokens/s of memsweep's MemorizationModule under the same L.Trainer settings as a cell."""
    torch.manual_seed(cfg.seed)
    clock = _Clock(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=PRECISIONS[cfg.precision],
                        max_steps=warmup + steps, logger=False, callbacks=[clock],
                        gradient_clip_val=cfg.trainer.grad_clip, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    loader = DataLoader(TokenRows(tokens), batch_size=None,
                        sampler=ShuffledBatches(len(tokens), cfg.trainer.batch_size, 0))
    trainer.fit(MemorizationModule(gpt, cfg.trainer), train_dataloaders=loader)
    return steps * cfg.trainer.batch_size * gpt.seq_len / (clock.end - clock.start)


def median_of(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    base = CellConfig(model=ModelConfig(args.n_layer, args.d_model, args.n_head),
                      data=DataConfig(n_samples=4096),
                      trainer=TrainerConfig(batch_size=args.batch_size, warmup_steps=10)).validate()
    tokens = random_tokens(4096, base.data.seq_len, base.data.vocab_size, seed=0)
    gpt = GPTConfig(base.data.vocab_size, base.data.seq_len, args.n_layer, args.d_model, args.n_head, "math")
    n_params = GPT(gpt).n_params
    flops_per_token = GPT(gpt).flops_per_token()
    run = dict(gpt=gpt, tokens=tokens, warmup=args.warmup, steps=args.steps)
    print(f"model {args.n_layer}L d{args.d_model} ({n_params:,} params), batch {args.batch_size} x "
          f"{base.data.seq_len} tokens, {args.steps} timed steps, median of {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    fp32 = replace(base, precision="fp32")
    default_alloc = plain_loop(fp32, **run)
    keep_large_allocations_in_heap()
    tuned_alloc = plain_loop(fp32, **run)
    print(f"\nallocator: plain fp32 loop {default_alloc:,.0f} tok/s with glibc defaults, {tuned_alloc:,.0f} "
          f"with memsweep.runtime's setting: x{tuned_alloc / default_alloc:.2f}")

    print("\nprecision  plain tok/s  lightning tok/s  lightning/plain  overhead  matmul peak  MFU(lightning)")
    for name in ("fp32", "bf16"):
        cfg = replace(base, precision=name)
        plain, light = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            plain.append(plain_loop(cfg, **run))
            light.append(lightning_cell(cfg, **run))
        p, lt = statistics.median(plain), statistics.median(light)
        peak = matmul_peak_flops(DTYPES[name])
        print(f"{name:9}  {p:11,.0f}  {lt:15,.0f}  {lt / p:15.3f}  {100 * (1 - lt / p):7.1f}%  "
              f"{peak / 1e9:8.1f} GF/s  {100 * lt * flops_per_token / peak:8.1f}%")

    print("\nattention (plain loop)  math tok/s   sdpa tok/s   math/sdpa")
    for name in ("fp32", "bf16"):
        cfg = replace(base, precision=name)
        math_tps = median_of(lambda: plain_loop(cfg, **run), args.repeats)
        sdpa_tps = median_of(lambda: plain_loop(cfg, **{**run, "gpt": replace(gpt, attention="sdpa")}), args.repeats)
        print(f"{name:22}  {math_tps:10,.0f}  {sdpa_tps:11,.0f}  {math_tps / sdpa_tps:9.2f}")


if __name__ == "__main__":
    main()
