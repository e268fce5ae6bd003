"""Packed against unpacked training steps, side by side in one process (issue #13).

For each width d, tokens per cell-step (batch x S) and pack size K, this times one training step
of a pack of K cells (memsweep.pack: per-cell loss, backward, per-cell clipping, per-cell AdamW)
with each forward implementation, and one step of an unpacked cell (memsweep's GPT, loss and
configure_optimizers, clip_grad_norm_: the Lightning cell's step without Lightning's overhead),
interleaved over repeats; each time is the median over the repeats.

    ratio = K * t_single / t_pack        (above 1, packing pays)

Data loading is left out of both (the same rows are fed every step); glibc keeps large
allocations in its heap, as in a CPU cell (memsweep.runtime). Single thread by default;
on a CPU shared with other jobs read the ratios, which are measured side by side, not the times.

    OMP_NUM_THREADS=1 python benchmarks/pack.py --quick      # about 2 minutes
    OMP_NUM_THREADS=1 python benchmarks/pack.py              # K 1-64, 256-8192 tokens, d 16-128
    OMP_NUM_THREADS=1 python benchmarks/pack.py --widths 32 --tokens 1024 --packs 16 --compile
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch

from memsweep.config import TrainerConfig
from memsweep.model import GPTConfig
from memsweep.module import MemorizationModule
from memsweep.pack import PackedAdamW, PackedGPT, PackedTrainStep, make_forward
from memsweep.runtime import keep_large_allocations_in_heap
from memsweep.schedule import LRSchedule

IMPLS = ("vmap", "batched")
COMPILED = "batched+compile"


def unpacked_step(gpt: GPTConfig, t: TrainerConfig, batch_size: int) -> Callable[[], None]:
    """One cell's training step, as the Lightning cell runs it (benchmarks/throughput.py's plain loop)."""
    torch.manual_seed(0)
    module = MemorizationModule(gpt, t)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batch = torch.randint(0, gpt.vocab_size, (batch_size, gpt.seq_len))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        scheduler.step()

    return step


def packed_step(gpt: GPTConfig, t: TrainerConfig, batch_size: int, n_cells: int, impl: str) -> Callable[[], None]:
    pack = PackedGPT.from_seeds(gpt, range(n_cells))
    optimizer = PackedAdamW(pack.params, betas=(t.beta1, t.beta2), weight_decays=[t.weight_decay] * n_cells)
    forward = make_forward(impl.removesuffix("+compile"), gpt)
    if impl == COMPILED:
        forward = torch.compile(forward, dynamic=False)
    train_step = PackedTrainStep(pack, forward, optimizer, [t.lr] * n_cells, [LRSchedule(t) for _ in range(n_cells)],
                                 [t.grad_clip] * n_cells)
    tokens = torch.randint(0, gpt.vocab_size, (n_cells, batch_size, gpt.seq_len))
    return lambda: train_step(tokens)


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure_group(gpt: GPTConfig, t: TrainerConfig, batch_size: int, packs: list[int], impls: list[str],
                  steps: int, repeats: int) -> dict[tuple[str, int], float]:
    """Median seconds per step of every variant of one (width, tokens) group, interleaved."""
    variants = {("single", 1): unpacked_step(gpt, t, batch_size)}
    for impl in impls:
        for n_cells in packs:
            variants[(impl, n_cells)] = packed_step(gpt, t, batch_size, n_cells, impl)
    for step in variants.values():
        step()  # warm-up (and, compiled, the compilation)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
    for _ in range(repeats):
        for key, step in variants.items():
            times[key].append(seconds_per_step(step, steps))
    return {key: statistics.median(values) for key, values in times.items()}


def crossover(points: list[tuple[int, float]]) -> str:
    """Where the ratio passes 1 along tokens per cell-step (log-linear between measured points)."""
    for (t0, r0), (t1, r1) in zip(points, points[1:]):
        if (r0 - 1) * (r1 - 1) <= 0 and r0 != r1:
            x = math.log(t0) + (math.log(t1) - math.log(t0)) * (1 - r0) / (r1 - r0)
            return f"ratio passes 1 at ~{math.exp(x):,.0f} tokens/cell-step"
    if all(r >= 1 for _, r in points):
        return f"pays everywhere measured (up to {points[-1][0]:,} tokens)"
    return f"never pays in the measured range (from {points[0][0]:,} tokens)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one step per timing; packs of over 2^15 tokens a step skipped")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 128])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 8192], help="batch x S per cell-step")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--compile", action="store_true", help=f"also time torch.compile of the batched forward ({COMPILED})")
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="steps per timing (default 10, quick 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--max-pack-tokens", type=int, default=None,
                        help="skip packs of more tokens per step than this (default 2^19, quick 2^15)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    steps = args.steps or (1 if args.quick else 10)
    max_pack_tokens = args.max_pack_tokens or (2**15 if args.quick else 2**19)
    impls = args.impls + ([COMPILED] if args.compile else [])
    torch.set_num_threads(args.threads)
    keep_large_allocations_in_heap()  # as a CPU cell does (memsweep/runtime.py): a pack's logits are large

    t = TrainerConfig(warmup_steps=10)
    print(f"{args.n_layer}L, V {args.vocab_size}, S {args.seq_len}, {args.threads} thread(s), fp32; "
          f"{steps} steps x {args.repeats} interleaved repeats, median; ratio = K t_single / t_pack")
    print(f"{'d':>4} {'tokens':>6} {'K':>3} {'single ms':>10}" + "".join(f" {impl + ' ms':>18} {'ratio':>6}" for impl in impls))
    ratios: dict[tuple[str, int, int], list[tuple[int, float]]] = {}
    for width in args.widths:
        gpt = GPTConfig(args.vocab_size, args.seq_len, args.n_layer, width, args.n_head, "math")
        for tokens in args.tokens:
            batch_size = max(1, tokens // args.seq_len)
            packs = [k for k in args.packs if k * batch_size * args.seq_len <= max_pack_tokens]
            if not packs:
                continue
            times = measure_group(gpt, t, batch_size, packs, impls, steps, args.repeats)
            single = times[("single", 1)]
            for n_cells in packs:
                row = f"{width:>4} {batch_size * args.seq_len:>6} {n_cells:>3} {1e3 * single:>10.2f}"
                for impl in impls:
                    ratio = n_cells * single / times[(impl, n_cells)]
                    ratios.setdefault((impl, width, n_cells), []).append((batch_size * args.seq_len, ratio))
                    row += f" {1e3 * times[(impl, n_cells)]:>18.2f} {ratio:>6.2f}"
                print(row, flush=True)
    print("\ncrossover (tokens per cell-step where K t_single / t_pack passes 1):")
    for (impl, width, n_cells), points in ratios.items():
        if n_cells > 1:
            print(f"  {impl:>15} d {width:>3} K {n_cells:>2}: {crossover(points)}")


if __name__ == "__main__":
    main()
