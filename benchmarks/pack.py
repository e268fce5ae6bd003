"""Packed against unpacked training steps, side by side in one process (issue #13).

For each model, tokens per cell-step (batch x S) and pack size K, this times one training step
of a pack of K cells (memsweep.pack: per-cell loss, backward, per-cell clipping, per-cell AdamW)
with each forward implementation, and one step of an unpacked cell (memsweep's GPT, loss and
configure_optimizers, clip_grad_norm_: the Lightning cell's step without Lightning's overhead),
interleaved over repeats; each time is the median over the repeats, warm-up steps excluded, the
device synchronised before and after every timing (on CUDA).

    ratio = K * t_single / t_pack        (above 1, packing pays)
    bound = K * t_single / t_wide        (t_wide: one unpacked cell with K times the batch)

The bound is what batching alone can give: a pack does the arithmetic of one cell with K times
the tokens, so it saves the per-step overhead of K - 1 steps (dispatch, the optimizer's and
clipping's per-tensor ops) and no more; where a step's time grows with its tokens (the logits, the
attention scores) packing cannot help. A ratio near the bound means the pack adds no cost of its
own; `--no-bound` leaves the wide cells out (half the time).

Data loading is left out of both (the same rows are fed every step); on a CPU glibc keeps large
allocations in its heap, as in a CPU cell (memsweep.runtime). Single thread by default;
on a CPU shared with other jobs read the ratios, which are measured side by side, not the times.

Two modes. By width (the CPU sweep of the issue: a table per precision and the crossover):

    OMP_NUM_THREADS=1 python benchmarks/pack.py --quick      # about 2 minutes
    OMP_NUM_THREADS=1 python benchmarks/pack.py              # K 1-64, 256-8192 tokens, d 16-128
    OMP_NUM_THREADS=1 python benchmarks/pack.py --widths 32 --tokens 1024 --packs 16 --compile

By named model (conf/model/<name>.yaml at V 2048, S 64 unless told), one long table with
tokens/s per pack and per cell, the ratio and MFU; this is what benchmarks/gpu.sh runs:

    python benchmarks/pack.py --device cuda --precisions fp32 bf16 \\
        --configs paper-1L-d32:1,4,16,64 paper-2L-d128:1,4,16 20M:1,4 --json out.json

A config is NAME[@BATCH[,BATCH...]][:K[,K...]] (default batch --batch-size, default K --packs).
MFU = tokens/s of the pack x memsweep.model.training_flops_per_token / peak FLOP/s, the peak both
measured here (best time of a large matmul in the step's dtype) and, for known devices, NVIDIA's
datasheet (dense). `fp32` runs with TF32 off (what a memsweep cell does: it never enables TF32),
`tf32` the same fp32 weights with torch.backends.cuda.matmul.allow_tf32 on; both flags are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from memsweep.config import TrainerConfig
from memsweep.ladder import model_conf_dir
from memsweep.model import GPTConfig, paper_param_count, pick_attention, training_flops_per_token
from memsweep.module import MemorizationModule
from memsweep.pack import PackedAdamW, PackedGPT, PackedTrainStep, make_forward
from memsweep.runtime import keep_large_allocations_in_heap
from memsweep.schedule import LRSchedule

IMPLS = ("vmap", "batched")
COMPILED = "batched+compile"
UNPACKED = "unpacked"
WIDE = "unpacked, K x batch"
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
"""Step precisions: weights, gradients and AdamW state in this dtype (as a precision=fp32 or
precision=bf16 cell, bf16_optimizer=bf16); `tf32` is fp32 with TF32 matmuls allowed."""
PRECISION_LABELS = {"fp32": "fp32 (TF32 off)", "tf32": "fp32 (TF32 on)", "bf16": "bf16"}

DATASHEET_TFLOPS = (
    # NVIDIA datasheets, dense (the sparsity figures halved); matched on the device name, first hit.
    # fp32 is the non-tensor-core rate (what an fp32 matmul gets with TF32 off).
    (("H100", "NVL"), "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (("H100", "PCIE"), "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}),
    (("H100",), "H100 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0}),
    (("H200", "NVL"), "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (("H200",), "H200 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.0}),
    (("A100",), "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)


def datasheet_peak(device_name: str) -> tuple[str, dict[str, float]] | None:
    """(entry, precision -> dense peak FLOP/s) for a known device name, else None."""
    upper = device_name.upper()
    for keys, entry, tflops in DATASHEET_TFLOPS:
        if all(key in upper for key in keys):
            return entry, {name: 1e12 * value for name, value in tflops.items()}
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision_flags(precision: str) -> None:
    """TF32 for matmuls only in `tf32`; set explicitly every time, never left at a default."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` timings of n x n @ n x n matmuls in `dtype` (the TF32 flag as set)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    inner = 10 if device.type == "cuda" else 1
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n**3 / best


def unpacked_step(gpt: GPTConfig, t: TrainerConfig, batch_size: int, dtype: torch.dtype = torch.float32,
                  device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """One cell's training step, as the Lightning cell runs it (benchmarks/throughput.py's plain loop)."""
    torch.manual_seed(0)
    module = MemorizationModule(gpt, t).to(device=device, dtype=dtype)  # as Lightning's 32-true / bf16-true
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batch = torch.randint(0, gpt.vocab_size, (batch_size, gpt.seq_len), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        scheduler.step()

    return step


def packed_step(gpt: GPTConfig, t: TrainerConfig, batch_size: int, n_cells: int, impl: str,
                dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
                compile_mode: str | None = None) -> Callable[[], None]:
    pack = PackedGPT.from_seeds(gpt, range(n_cells), dtype=dtype, device=device)
    optimizer = PackedAdamW(pack.params, betas=(t.beta1, t.beta2), weight_decays=[t.weight_decay] * n_cells)
    forward = make_forward(impl.removesuffix("+compile"), gpt, device)
    if impl == COMPILED:
        forward = torch.compile(forward, dynamic=False, mode=compile_mode)
    train_step = PackedTrainStep(pack, forward, optimizer, [t.lr] * n_cells, [LRSchedule(t) for _ in range(n_cells)],
                                 [t.grad_clip] * n_cells)
    tokens = torch.randint(0, gpt.vocab_size, (n_cells, batch_size, gpt.seq_len), device=device)
    return lambda: train_step(tokens)


def estimated_bytes(gpt: GPTConfig, batch_size: int, n_cells: int, dtype: torch.dtype) -> int:
    """An estimate of a step's peak memory, on the generous side: weights, gradients, two AdamW
    moments; at the loss, 12 bytes per logit in fp32 (the log-softmax kept for backward, its
    gradient and the logits' gradient) and 16 in bf16 (the bf16 logits' fp32 copy on top); ~20
    saved activations of width d per token and layer and, for math attention, the S x S scores;
    x1.25 for workspaces and fragmentation."""
    width = torch.finfo(dtype).bits // 8
    V, S, L, d, H = gpt.vocab_size, gpt.seq_len, gpt.n_layer, gpt.d_model, gpt.n_head
    weights = n_cells * (paper_param_count(V, S, L, d) + d) * 4 * width
    tokens = n_cells * batch_size * S
    logits = tokens * V * (12 if width == 4 else 16)
    attention = 3 * H * S * width if gpt.attention == "math" else 0
    layers = L * tokens * (20 * d * width + attention)
    return int(1.25 * (weights + logits + layers))


def available_bytes(device: torch.device) -> int | None:
    """Free device memory plus what this process's allocator holds unused (None off CUDA)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def vmap_fallbacks(caught: list[warnings.WarningMessage]) -> str:
    """The ops vmap ran through its slow per-cell fallback (no batching rule), from its warnings."""
    ops = sorted({op for w in caught if "performance drop" in str(w.message)
                  for op in re.findall(r"aten::\w+(?:\.\w+)?", str(w.message))})
    return f"vmap fallback (no batch rule, per-cell loop): {', '.join(ops)}" if ops else ""


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device = torch.device("cpu")) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


@dataclass
class Outcome:
    seconds: float | None = None
    """Median seconds per step; None where the variant did not run (see note)."""
    peak_bytes: int | None = None
    """Peak device memory allocated during the warm-up (CUDA only)."""
    note: str = ""


def measure_group(gpt: GPTConfig, t: TrainerConfig, batch_size: int, packs: list[int], impls: list[str],
                  steps: int, repeats: int, dtype: torch.dtype = torch.float32,
                  device: torch.device = torch.device("cpu"), warmup: int = 1,
                  compile_mode: str | None = None, bound: bool = False) -> dict[tuple[str, int], Outcome]:
    """Median seconds per step of every variant of one (model, tokens, dtype) group, interleaved;
    with `bound`, also one unpacked cell of K times the batch for every K > 1 (key (WIDE, K)).

    On CUDA a variant whose estimated memory exceeds what the device has free, or that runs out of
    memory in its warm-up, is skipped (its note says which); an error in a variant skips it alone."""
    outcomes: dict[tuple[str, int], Outcome] = {}
    variants: dict[tuple[str, int], Callable[[], None]] = {}
    keys = [(UNPACKED, 1)] + [(impl, n_cells) for n_cells in packs for impl in impls]
    keys += [(WIDE, n_cells) for n_cells in packs if bound and n_cells > 1]
    for key in keys:
        impl, n_cells = key
        need, have = estimated_bytes(gpt, batch_size, n_cells, dtype), available_bytes(device)
        if have is not None and need > have:
            outcomes[key] = Outcome(note=f"skipped (memory): needs ~{need / 2**30:.1f} GiB est., "
                                         f"{have / 2**30:.1f} GiB free")
            continue
        failure = None
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if impl in (UNPACKED, WIDE):
                    step = unpacked_step(gpt, t, batch_size * n_cells, dtype, device)
                else:
                    step = packed_step(gpt, t, batch_size, n_cells, impl, dtype, device, compile_mode)
                for _ in range(max(1, warmup)):  # warm-up (and, compiled, the compilation): not timed
                    step()
                synchronize(device)
        except Exception as error:  # noqa: BLE001 - one variant failing must not end the benchmark
            if device.type == "cpu":
                raise  # on the CPU every variant is expected to run: an error there is a bug, not a result
            failure = ("skipped (memory): out of memory in warm-up" if is_oom(error)
                       else f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}")
        if failure:
            outcomes[key] = Outcome(note=failure)
            step = None
            release_memory(device)
            continue
        note = vmap_fallbacks(caught)
        if impl == "vmap" and n_cells == 1:
            note = "; ".join(filter(None, ["K=1 calls the GPT directly, no vmap", note]))
        own_peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        outcomes[key] = Outcome(peak_bytes=own_peak, note=note)
        variants[key] = step
    times: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
    for _ in range(repeats):
        for key, step in list(variants.items()):
            failure = None
            try:
                times[key].append(seconds_per_step(step, steps, device))
            except Exception as error:  # noqa: BLE001
                if device.type == "cpu":
                    raise
                failure = ("skipped (memory): out of memory while timed" if is_oom(error)
                           else f"failed while timed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}")
            if failure:
                outcomes[key].note = failure
                del variants[key], times[key]
                step = None
                release_memory(device)
    for key, values in times.items():
        outcomes[key].seconds = statistics.median(values)
    variants.clear()
    release_memory(device)
    return outcomes


def crossover(points: list[tuple[int, float]]) -> str:
    """Where the ratio passes 1 along tokens per cell-step (log-linear between measured points)."""
    for (t0, r0), (t1, r1) in zip(points, points[1:]):
        if (r0 - 1) * (r1 - 1) <= 0 and r0 != r1:
            x = math.log(t0) + (math.log(t1) - math.log(t0)) * (1 - r0) / (r1 - r0)
            return f"ratio passes 1 at ~{math.exp(x):,.0f} tokens/cell-step"
    if all(r >= 1 for _, r in points):
        return f"pays everywhere measured (up to {points[-1][0]:,} tokens)"
    return f"never pays in the measured range (from {points[0][0]:,} tokens)"


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    gpt: GPTConfig
    batch_sizes: tuple[int, ...]
    packs: tuple[int, ...]


def parse_config(spec: str, vocab_size: int, seq_len: int, attention: str, batch_sizes: list[int],
                 packs: list[int]) -> ConfigSpec:
    """NAME[@B,B...][:K,K...], NAME a conf/model preset (paper-1L-d32, 20M, ...)."""
    head, _, pack_part = spec.partition(":")
    name, _, batch_part = head.partition("@")
    path = model_conf_dir() / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in model_conf_dir().glob("*.yaml")))
        raise SystemExit(f"--configs: no model preset {name!r} (conf/model/{name}.yaml); known: {known}")
    model = yaml.safe_load(path.read_text())
    gpt = GPTConfig(vocab_size, seq_len, model["n_layer"], model["d_model"], model["n_head"], attention)
    sizes = tuple(int(b) for b in batch_part.split(",")) if batch_part else tuple(batch_sizes)
    ks = tuple(int(k) for k in pack_part.split(",")) if pack_part else tuple(packs)
    return ConfigSpec(name, gpt, sizes, ks)


def device_header(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = "cpu"
    return info


def mfu_text(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def run_configs(args: argparse.Namespace, device: torch.device, impls: list[str], steps: int) -> None:
    """The long table: one row per (config, batch, precision, K, impl), printed as each group ends."""
    attention = pick_attention(device) if args.attention == "auto" else args.attention
    specs = [parse_config(s, args.vocab_size, args.seq_len, attention, args.batch_size, args.packs)
             for s in args.configs]
    t = TrainerConfig(warmup_steps=10)
    header = device_header(device)
    started = time.perf_counter()
    print(f"device {header['device_name']} ({device}), torch {header['torch']}"
          + (f", CUDA {header['cuda']}, capability {header['capability']}, {header['memory_gib']} GiB"
             if device.type == "cuda" else f", {header['threads']} thread(s)"))
    sheet = datasheet_peak(header["device_name"]) if device.type == "cuda" else None
    peaks: dict[str, float] = {}
    n_peak = args.peak_size or (8192 if device.type == "cuda" else 1024)
    for precision in args.precisions:
        set_precision_flags(precision)
        peaks[precision] = matmul_peak_flops(PRECISIONS[precision], device, n_peak)
    print(f"peak FLOP/s MEASURED here: best of 5 timings of {n_peak}x{n_peak} matmuls in the step's dtype"
          + (" (x10 per timing, synchronised)" if device.type == "cuda" else ""))
    for precision in args.precisions:
        set_precision_flags(precision)
        flags = (f"torch.backends.cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                 f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                 f"float32_matmul_precision={torch.get_float32_matmul_precision()}")
        line = f"  {PRECISION_LABELS[precision]:<16} {peaks[precision] / 1e12:9.2f} TFLOP/s measured"
        if sheet:
            line += f"   datasheet {sheet[0]} (dense): {sheet[1][precision] / 1e12:7.1f} TFLOP/s"
        print(line + f"   [{flags}]")
    if device.type == "cuda" and not sheet:
        print(f"  no datasheet peak known for {header['device_name']!r}: MFU against the measured peak only")
    print(f"attention {attention}; {args.warmup} warm-up step(s) not timed; {steps} steps x {args.repeats} "
          f"interleaved repeats, median; ratio = K t_unpacked / t_pack (K sequential unpacked steps)")
    print("FLOPs/token = memsweep.model.training_flops_per_token = 6 (P - S d) + 12 L d S; "
          "MFU = tokens/s per pack x FLOPs/token / peak")
    if device.type == "cuda":
        print("mem GiB = the variant's own peak allocated in its build and warm-up (weights, grads, AdamW, "
              "activations); a variant estimated over the free memory is skipped unrun; an OOM in warm-up skips it too")
    for spec in specs:
        g = spec.gpt
        print(f"  {spec.name}: {g.n_layer}L d{g.d_model} {g.n_head} heads, V {g.vocab_size}, S {g.seq_len}, "
              f"P {paper_param_count(g.vocab_size, g.seq_len, g.n_layer, g.d_model):,}, "
              f"{training_flops_per_token(g.vocab_size, g.seq_len, g.n_layer, g.d_model):,} FLOPs/token")
    columns = (f"{'config':<14} {'batch':>5} {'precision':<15} {'K':>3} {'impl':<15} {'step ms':>9} "
               f"{'tok/s per pack':>15} {'tok/s per cell':>15} {'ratio':>6} {'MFU meas':>9} {'MFU sheet':>9} "
               f"{'mem GiB':>7}  note")
    print("\n" + columns + "\n" + "-" * len(columns), flush=True)
    rows: list[dict] = []
    groups = [(spec, batch, precision) for spec in specs for batch in spec.batch_sizes for precision in args.precisions]
    for spec, batch, precision in groups:
        keys = [(UNPACKED, 1)] + [(impl, k) for k in spec.packs for impl in impls]
        over = args.budget_s is not None and time.perf_counter() - started > args.budget_s
        if over:
            outcomes = {key: Outcome(note=f"not run (time budget of {args.budget_s:.0f} s spent)") for key in keys}
        else:
            set_precision_flags(precision)
            outcomes = measure_group(spec.gpt, t, batch, list(spec.packs), impls, steps, args.repeats,
                                     PRECISIONS[precision], device, args.warmup, args.compile_mode)
        g = spec.gpt
        flops = training_flops_per_token(g.vocab_size, g.seq_len, g.n_layer, g.d_model)
        single = outcomes[(UNPACKED, 1)].seconds
        for impl, n_cells in keys:
            out = outcomes[(impl, n_cells)]
            row = dict(config=spec.name, n_layer=g.n_layer, d_model=g.d_model, n_head=g.n_head,
                       vocab_size=g.vocab_size, seq_len=g.seq_len, attention=g.attention, batch_size=batch,
                       tokens_per_cell_step=batch * g.seq_len, precision=precision,
                       allow_tf32=precision == "tf32", K=n_cells, impl=impl, flops_per_token=flops,
                       seconds_per_step=out.seconds, peak_bytes=out.peak_bytes, note=out.note,
                       tokens_per_s_pack=None, tokens_per_s_cell=None, ratio=None, mfu_measured=None,
                       mfu_datasheet=None)
            if out.seconds is not None:
                per_pack = n_cells * batch * g.seq_len / out.seconds
                row.update(tokens_per_s_pack=per_pack, tokens_per_s_cell=per_pack / n_cells,
                           ratio=None if single is None else n_cells * single / out.seconds,
                           mfu_measured=per_pack * flops / peaks[precision],
                           mfu_datasheet=per_pack * flops / sheet[1][precision] if sheet else None)
            rows.append(row)
            if out.seconds is None:
                line = (f"{spec.name:<14} {batch:>5} {PRECISION_LABELS[precision]:<15} {n_cells:>3} {impl:<15} "
                        f"{'-':>9} {'-':>15} {'-':>15} {'-':>6} {'-':>9} {'-':>9} {'-':>7}  {out.note}")
            else:
                ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
                mem = "-" if out.peak_bytes is None else f"{out.peak_bytes / 2**30:.2f}"
                line = (f"{spec.name:<14} {batch:>5} {PRECISION_LABELS[precision]:<15} {n_cells:>3} {impl:<15} "
                        f"{1e3 * out.seconds:>9.2f} {row['tokens_per_s_pack']:>15,.0f} "
                        f"{row['tokens_per_s_cell']:>15,.0f} {ratio:>6} {mfu_text(row['mfu_measured']):>9} "
                        f"{mfu_text(row['mfu_datasheet']):>9} {mem:>7}  {out.note}")
            print(line, flush=True)
        if args.json:
            write_json(args.json, header, args, peaks, sheet, rows)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


def write_json(path: Path, header: dict, args: argparse.Namespace, peaks: dict[str, float],
               sheet: tuple[str, dict[str, float]] | None, rows: list[dict]) -> None:
    """Rewritten after every group, so a run cut short keeps what it measured."""
    data = dict(header, argv=sys.argv[1:], measured_peak_flops=peaks,
                datasheet=None if sheet is None else {"entry": sheet[0], "peak_flops": sheet[1]}, rows=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_widths(args: argparse.Namespace, device: torch.device, impls: list[str], steps: int) -> None:
    """The CPU sweep of the issue: a table per precision over widths x tokens, then the crossovers."""
    max_pack_tokens = args.max_pack_tokens or (2**15 if args.quick else 2**19)
    attention = pick_attention(device) if args.attention == "auto" else args.attention
    t = TrainerConfig(warmup_steps=10)
    ratios: dict[tuple[str, str, int, int], list[tuple[int, float]]] = {}
    for precision in args.precisions:
        set_precision_flags(precision)
        where = f"{args.threads} thread(s)" if device.type == "cpu" else str(device)
        print(f"{args.n_layer}L, V {args.vocab_size}, S {args.seq_len}, {where}, {PRECISION_LABELS[precision]}; "
              f"{steps} steps x {args.repeats} interleaved repeats, median; ratio = K t_single / t_pack"
              + ("; bound = K t_single / t_wide (one cell, K x batch)" if args.bound else ""))
        print(f"{'d':>4} {'tokens':>6} {'K':>3} {'single ms':>10}"
              + "".join(f" {impl + ' ms':>18} {'ratio':>6}" for impl in impls)
              + (f" {'wide ms':>10} {'bound':>6}" if args.bound else ""))
        for width in args.widths:
            gpt = GPTConfig(args.vocab_size, args.seq_len, args.n_layer, width, args.n_head, attention)
            for tokens in args.tokens:
                batch_size = max(1, tokens // args.seq_len)
                packs = [k for k in args.packs if k * batch_size * args.seq_len <= max_pack_tokens]
                if not packs:
                    continue
                outcomes = measure_group(gpt, t, batch_size, packs, impls, steps, args.repeats,
                                         PRECISIONS[precision], device, args.warmup, args.compile_mode, args.bound)
                single = outcomes[(UNPACKED, 1)].seconds
                for n_cells in packs:
                    row = f"{width:>4} {batch_size * args.seq_len:>6} {n_cells:>3} " + (
                        f"{1e3 * single:>10.2f}" if single else f"{'-':>10}")
                    for impl in impls:
                        seconds = outcomes[(impl, n_cells)].seconds
                        if seconds is None or single is None:
                            row += f" {'-':>18} {'-':>6}"
                            continue
                        ratio = n_cells * single / seconds
                        ratios.setdefault((precision, impl, width, n_cells), []).append((batch_size * args.seq_len, ratio))
                        row += f" {1e3 * seconds:>18.2f} {ratio:>6.2f}"
                    if args.bound:
                        wide = single if n_cells == 1 else outcomes[(WIDE, n_cells)].seconds
                        row += (f" {1e3 * wide:>10.2f} {n_cells * single / wide:>6.2f}" if wide and single
                                else f" {'-':>10} {'-':>6}")
                    print(row, flush=True)
    print("\ncrossover (tokens per cell-step where K t_single / t_pack passes 1):")
    for (precision, impl, width, n_cells), points in ratios.items():
        if n_cells > 1:
            print(f"  {precision} {impl:>15} d {width:>3} K {n_cells:>2}: {crossover(points)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one step per timing; packs of over 2^15 tokens a step skipped")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); cuda without a CUDA device exits 2")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=tuple(PRECISIONS))
    parser.add_argument("--configs", nargs="+", default=None, metavar="NAME[@B,..][:K,..]",
                        help="named models (conf/model/NAME.yaml) instead of --widths: the long table with MFU")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128], help="--configs: default batch sizes")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 128])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 8192], help="batch x S per cell-step")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--compile", action="store_true", help=f"also time torch.compile of the batched forward ({COMPILED})")
    parser.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune",
                                                                 "max-autotune-no-cudagraphs"),
                        help="torch.compile mode of --compile (reduce-overhead: CUDA graphs)")
    parser.add_argument("--attention", default="auto", choices=("auto", "math", "sdpa"),
                        help="auto: memsweep.model.pick_attention (math on CPU, sdpa on CUDA)")
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=None, help="default 256 by width, 2048 with --configs")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="steps per timing (default 10, quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of every variant before its timings")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--max-pack-tokens", type=int, default=None,
                        help="by width: skip packs of more tokens per step than this (default 2^19, quick 2^15)")
    parser.add_argument("--peak-size", type=int, default=None, help="n of the peak matmul (default 8192 CUDA, 1024 CPU)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="--configs: start no new group after this many seconds (its rows say 'not run')")
    parser.add_argument("--json", type=Path, default=None, help="--configs: also write every row here as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-bound", dest="bound", action="store_false",
                        help="by width: leave out the unpacked cells of K x batch (the bound column)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/pack.py: --device {args.device} but torch {torch.__version__} sees no CUDA device "
              f"(torch.version.cuda = {torch.version.cuda}); install a CUDA build of torch on a GPU machine",
              file=sys.stderr)
        raise SystemExit(2)
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.vocab_size is None:
        args.vocab_size = 2048 if args.configs else 256
    if args.compile_mode == "default":
        args.compile_mode = None
    steps = args.steps or (1 if args.quick else 10)
    impls = args.impls + ([COMPILED] if args.compile else [])
    if args.compile:  # every (model, K, batch, dtype) is one more compilation of the same code
        from torch import _dynamo

        limit = "recompile_limit" if hasattr(_dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(_dynamo.config, limit, max(getattr(_dynamo.config, limit), 256))
    torch.set_num_threads(args.threads)
    if hasattr(torch._C, "_functorch") and hasattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled"):
        torch._C._functorch._set_vmap_fallback_warning_enabled(True)  # so a slow vmap path shows in the notes
    if device.type == "cpu":
        keep_large_allocations_in_heap()  # as a CPU cell does (memsweep/runtime.py): a pack's logits are large
    if args.configs:
        run_configs(args, device, impls, steps)
    else:
        run_widths(args, device, impls, steps)


if __name__ == "__main__":
    main()
