"""What a pack of K cells gains over the same cells run one after another, and how large a pack may be.

Why a model: `--pack auto` must pack only where packing pays. The gain is

    speedup = K t_unpacked / t_pack      (K sequential unpacked steps against one pack step)

On a CPU it is read from benchmarks/pack.py's measurements (CPU_RATIOS), interpolated in log
space; on a GPU, until benchmarks/gpu.sh has run, it follows from FLOPs and a per-step launch
overhead, both ASSUMED (GPU_STEP_OVERHEAD_S and the planner's --flops-per-second). A pack is
also capped by a per-device memory and token budget (BUDGETS).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from memsweep.config import CellConfig
from memsweep.model import paper_param_count, training_flops_per_token
from memsweep.saturation import decay_steps, probe_steps

PAYS_ABOVE = 1.1
"""`auto` packs only where the modelled speedup exceeds this (a margin for the measurements' noise)."""
MAX_PACK = 64
"""The largest K measured (benchmarks/pack.py) and the largest `auto` chooses."""

# Measured on this project's 2-core CPU (runs A-C shared with a one-thread training job), 1 thread, 1L GPT,
# V 256, S 64, fp32, the `batched` forward (the runner's default):
#   run A (2026-12-02 13:18): OMP_NUM_THREADS=1 python benchmarks/pack.py --quick --steps 2 --repeats 3
#   run B (2026-12-02 13:23): OMP_NUM_THREADS=1 python benchmarks/pack.py --quick
#   run C (2026-12-04 01:1x): OMP_NUM_THREADS=1 python benchmarks/pack.py --quick
#   run D (2026-12-04 03:0x, the CPU quiet): OMP_NUM_THREADS=1 python benchmarks/pack.py --quick --steps 5 --repeats 5
#   run E (2026-12-04 03:57, quiet, as D): the pack's AdamW in place and memsweep.pack.batched.BatchedLinear
#     (runs A-D timed the copying AdamW and autograd's baddbmm backward)
# (d_model, tokens per cell-step): {K: (ratio in run A, B, C, D, E)}. K = 1 is 1 by definition; pairs
# of over 2^15 tokens per pack step were not run (--quick). The runs differ: a shared CPU slows the
# unpacked step's many small ops more than the pack's, so runs A-C read higher than the quiet runs
# D-E. The model takes the smallest ratio of each, so `auto` packs only where all agree.
CPU_RATIOS = {
    (16, 256): {4: (2.91, 1.68, 2.44, 2.02, 1.93), 16: (3.50, 2.67, 3.24, 2.57, 2.37),
                 64: (3.07, 2.48, 2.78, 2.05, 2.05)},
    (16, 1024): {4: (1.53, 1.60, 1.47, 1.30, 1.22), 16: (1.65, 1.84, 1.36, 1.09, 1.08)},
    (16, 8192): {4: (0.44, 1.13, 0.94, 0.91, 0.87)},
    (32, 256): {4: (3.17, 2.19, 2.24, 1.82, 1.79), 16: (4.46, 2.87, 2.65, 1.97, 2.00),
                 64: (4.21, 2.62, 2.27, 1.68, 1.78)},
    (32, 1024): {4: (1.14, 1.49, 1.44, 1.17, 1.17), 16: (1.11, 1.44, 1.21, 0.97, 1.00)},
    (32, 8192): {4: (0.54, 1.04, 0.87, 0.84, 0.85)},
    (128, 256): {4: (1.12, 1.09, 1.26, 1.04, 1.13), 16: (1.18, 1.33, 1.22, 0.98, 1.06),
                 64: (1.12, 1.33, 1.11, 0.91, 1.01)},
    (128, 1024): {4: (1.35, 1.20, 0.97, 0.90, 0.92), 16: (1.35, 1.15, 0.94, 0.88, 0.88)},
    (128, 8192): {4: (0.84, 0.93, 0.88, 0.87, 0.88)},
}
CPU_WIDTHS = sorted({d for d, _ in CPU_RATIOS})
CPU_TOKENS = sorted({t for _, t in CPU_RATIOS})

GPU_STEP_OVERHEAD_S = 3e-3
"""ASSUMED, not measured: the fixed cost of one training step on a GPU (a few hundred kernel
launches of forward, backward, per-cell clipping and AdamW at ~10 us each), the same for a pack
as for one cell since the batched forward launches the same kernels. benchmarks/gpu.sh measures it."""


@dataclass(frozen=True)
class Budget:
    memory_bytes: float
    tokens_per_step: int
    why: str


BUDGETS = {
    "cpu": Budget(4 * 2**30, 2**15, "4 GiB (resources=cpu's mem_gb) and 2^15 tokens a pack step (the largest "
                                    "measured on CPU)"),
    "gpu": Budget(40 * 2**30, 2**20, "ASSUMED 40 GiB (half an 80 GB GPU) and 2^20 tokens a pack step"),
}
EVAL_BYTES_PER_LOGIT = 12
"""An evaluation forward holds K x eval_batch_size x S x V logits (memsweep.pack.evaluate) and
their float32 log-softmax: about 12 bytes each."""


def device_of(cfg: CellConfig) -> str:
    """`gpu` or `cpu`: where the cell trains (trainer.accelerator; `auto`: this machine)."""
    accelerator = cfg.trainer.accelerator
    if accelerator == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if accelerator in ("gpu", "cuda") else "cpu"


def tokens_per_step(cfg: CellConfig) -> int:
    return cfg.trainer.batch_size * cfg.data.seq_len


def _log_interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear in log x through (xs, ys) (at least two points, xs increasing), held at the ends."""
    lx = [math.log(v) for v in xs]
    x = min(max(math.log(x), lx[0]), lx[-1])
    i = min(bisect.bisect_right(lx, x) - 1, len(lx) - 2)
    w = (x - lx[i]) / (lx[i + 1] - lx[i])
    return ys[i] * (1 - w) + ys[i + 1] * w


def _cpu_node(width: int, tokens: int, k: int) -> float:
    """log speedup at one measured (width, tokens), in log K through K = 1 (speedup 1), held beyond."""
    measured = CPU_RATIOS[(width, tokens)]
    ks = [1, *sorted(measured)]
    return _log_interp(k, ks, [0.0] + [math.log(min(measured[m])) for m in ks[1:]])


def cpu_speedup(width: int, tokens: int, k: int) -> float:
    """The measured speedup at (width, tokens per cell-step, K), interpolated in log width, log tokens,
    log K and log speedup; held at the edges of the measured range (an extrapolation there). The
    measurements are 1L, V 256, fp32: other depths, vocabularies and precisions are read at their
    width and tokens (an assumption until benchmarks/pack.py measures them)."""
    if k <= 1:
        return 1.0
    by_width = [_log_interp(tokens, CPU_TOKENS, [_cpu_node(w, t, k) for t in CPU_TOKENS]) for w in CPU_WIDTHS]
    return math.exp(_log_interp(width, CPU_WIDTHS, by_width))


def gpu_speedup(cfg: CellConfig, k: int, flops_per_second: float) -> float:
    """K (o + f) / (o + K f): o the assumed per-step overhead, f one cell-step's FLOPs at the given rate."""
    f = step_flops(cfg) / flops_per_second
    return k * (GPU_STEP_OVERHEAD_S + f) / (GPU_STEP_OVERHEAD_S + k * f)


def step_flops(cfg: CellConfig) -> float:
    m, d = cfg.model, cfg.data
    return training_flops_per_token(d.vocab_size, d.seq_len, m.n_layer, m.d_model) * tokens_per_step(cfg)


def speedup(device: str, cfg: CellConfig, k: int, flops_per_second: float) -> float:
    if device == "gpu":
        return gpu_speedup(cfg, k, flops_per_second)
    return cpu_speedup(cfg.model.d_model, tokens_per_step(cfg), k)


def pack_bytes(cfg: CellConfig, k: int) -> float:
    """Estimated peak memory of a pack of k such cells: per cell its weights, gradients and two AdamW
    moments, plus the larger of a training step's activations (Korthikanti et al. 2022's per-layer
    count, 17 d + 2.5 heads S elements a token, with the logits and their gradient) and an
    evaluation forward's logits."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    element = 2 if cfg.precision == "bf16" else 4
    state = 4 * element * paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model)
    per_token = m.n_layer * (17 * m.d_model + 2.5 * m.n_head * d.seq_len) + 2 * d.vocab_size
    train = tokens_per_step(cfg) * per_token * element
    evaluation = t.eval_batch_size * d.seq_len * d.vocab_size * EVAL_BYTES_PER_LOGIT
    return k * (state + max(train, evaluation))


def max_size(device: str, cfg: CellConfig) -> tuple[int, str]:
    """The largest pack the device's budget allows (at most MAX_PACK), and what binds it."""
    budget = BUDGETS[device]
    by_tokens = budget.tokens_per_step // tokens_per_step(cfg)
    by_memory = int(budget.memory_bytes // pack_bytes(cfg, 1))
    size = max(1, min(MAX_PACK, by_tokens, by_memory))
    if size == MAX_PACK:
        return size, f"the largest K measured ({MAX_PACK})"
    what = "token" if by_tokens <= by_memory else "memory"
    return size, f"the {device.upper()} {what} budget ({budget.why})"


def auto_size(device: str, cfg: CellConfig, n_cells: int, flops_per_second: float) -> tuple[int, str]:
    """K for `--pack auto` over n_cells cells of one pack key: the K (within the budget) of the highest
    modelled speedup, or 1 (unpacked) where none exceeds PAYS_ABOVE; and why, in words."""
    cap, bound = max_size(device, cfg)
    cap = min(cap, n_cells)
    if cap < 2:
        return 1, "one cell of its kind" if n_cells < 2 else f"K capped at 1 by {bound}"
    best = max(range(2, cap + 1), key=lambda k: (round(speedup(device, cfg, k, flops_per_second), 6), -k))
    gain = speedup(device, cfg, best, flops_per_second)
    where = f"d {cfg.model.d_model}, {tokens_per_step(cfg):,} tokens/cell-step"
    if gain <= PAYS_ABOVE:
        return 1, f"packing does not pay: at most {gain:.3f}x (K {best}) at {where}, <= {PAYS_ABOVE}"
    return best, f"{gain:.2f}x at K {best} ({where}; K at most {cap}: {bound})"


def training_steps(cfg: CellConfig) -> int:
    """The optimizer steps of a cell that runs to max_steps: its stable steps and, under wsd, every
    decay branch's (a branch takes pack steps of its cell's own slot, memsweep.pack.monitor.Branch)."""
    t = cfg.trainer
    if t.schedule != "wsd":
        return t.max_steps
    s = t.saturation
    branches = probe_steps(s.min_steps, t.max_steps, s.cooldown)
    return t.max_steps + sum(decay_steps(step, s.cooldown) for step in branches)


def pack_seconds(device: str, cells: list[tuple[CellConfig, float]], flops_per_second: float) -> tuple[float, float]:
    """(seconds unpacked, seconds as one pack) of (config, estimated FLOPs) cells of one pack key.
    GPU: FLOPs at the rate plus GPU_STEP_OVERHEAD_S a step, once per pack step when packed. CPU: FLOPs
    at the rate, divided by the measured speedup when packed."""
    compute = sum(flops for _, flops in cells) / flops_per_second
    if device == "gpu":
        unpacked = compute + GPU_STEP_OVERHEAD_S * sum(training_steps(cfg) for cfg, _ in cells)
        packed = compute + GPU_STEP_OVERHEAD_S * max(training_steps(cfg) for cfg, _ in cells)
        return unpacked, packed
    return compute, compute / speedup(device, cells[0][0], len(cells), flops_per_second)
