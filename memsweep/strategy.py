"""How a cell is spread over devices: one device, DDP, or DeepSpeed ZeRO 1/2/3.

Why these rules. Training memory that does not depend on the batch is the model state: the
parameters, their gradients and AdamW's two moments. Per parameter that is

    fp32, bf16-mixed (torch autocast)   4 + 4 + 8       = 16 bytes
    bf16 (true bf16: state in bf16)     2 + 2 + 4       =  8 bytes
    bf16, fp32 optimizer state          2 + 2 + 8       = 12 bytes (trainer.bf16_optimizer=
                                        fp32-state or stochastic-rounding, memsweep/optim.py)
    bf16-mixed under DeepSpeed          2 + 2 + (4 + 8) = 16 bytes (bf16 weights and grads,
                                        fp32 master weights and moments in the optimizer)

DDP replicates all of it on every device, so it only buys throughput, never memory. ZeRO-1
shards the optimizer state over the W devices, ZeRO-2 also the gradients, ZeRO-3 also the
parameters; each stage communicates more than the one before (ZeRO-3 all-gathers the weights in
every forward and backward), so the rule is: the cheapest layout whose per-device state fits.

    replicated  p + g + o          (single device, DDP)
    ZeRO-1      p + g + o / W
    ZeRO-2      p + (g + o) / W
    ZeRO-3      (p + g + o) / W

"Fits" means at most STATE_FRACTION of one device's memory: the rest is for activations (for a
1.5B-parameter GPT at batch 128 x 64 tokens, about 20-40 GiB), the eval logits, the CUDA context
and fragmentation. The device defaults to 80 GiB (H100 80GB, the smaller of the GPUs memsweep
runs on). With those defaults, in fp32:

    replicated (one device or DDP)   up to  2.68e9 parameters  (40 GiB / 16 B)
    ZeRO-1 on 8 devices              up to  4.77e9             (4 + 4 + 8/8 = 9 B)
    ZeRO-2 on 8 devices              up to  7.81e9             (4 + 12/8 = 5.5 B)
    ZeRO-3 on 8 devices              up to 21.5e9              (16/8 = 2 B)

and twice the replicated limit in true bf16 (4/3 of it with an fp32 optimizer state). So the whole 500K-1.5B ladder of the issue trains
replicated, and DeepSpeed is for cells beyond it (or smaller GPUs: pass `device_memory_gib`).

Why the device count decides single vs DDP, and size does not: the number of devices is fixed by
the config, because the SLURM allocation is computed from it (one source of truth: srun starts
one task per device and Lightning must agree, see `check_slurm_allocation`). Using DDP on one
device gains nothing, and silently using fewer devices than allocated wastes them, so
`strategy=auto` runs DDP exactly when trainer.devices x trainer.num_nodes > 1 and the state fits
replicated. How many devices a large cell should get is `min_devices` (memory) or a throughput
choice made when the grid is planned.

Precision pairing (memsweep name -> Lightning precision):
    fp32        -> "32-true"    everywhere;
    bf16        -> "bf16-true"  on one device and DDP; REFUSED under DeepSpeed: DeepSpeed's bf16
                   mode keeps fp32 master weights (and fp32 Adam moments) in its optimizer, so the
                   run would not be the true-bf16 training whose capacity the paper measures,
                   whatever Lightning's precision string says (DeepSpeed used to reject
                   "bf16-true" outright, litgpt #116; Lightning 2.6 now accepts it and turns on
                   exactly that fp32-master mode, measured in tests/test_strategy.py). DeepSpeed
                   0.19.8 has opt-in `bf16_master_weights_and_grads` + `bf16_optimizer_states`
                   for ZeRO 1-3, which would be true bf16; not used until tested on a GPU;
    bf16-mixed  -> "bf16-mixed" everywhere. Under DeepSpeed this is DeepSpeed's bf16 mode: the
                   module itself holds bf16 weights and the optimizer fp32 masters, which is
                   fp32-master-weight training like torch autocast, but not bit-identical to it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from memsweep.config import PRECISIONS, ConfigError

STRATEGIES = ("auto", "single", "ddp", "deepspeed")
"""`auto` picks by device count and size; the others are explicit choices (see module doc)."""
DEEPSPEED_STAGES = (1, 2, 3)
DEFAULT_DEVICE_MEMORY_GIB = 80.0
"""Memory of one device; 80 GiB is an H100 80GB (an H200 has 141)."""
STATE_FRACTION = 0.5
"""Share of a device's memory the model state may take; the rest is activations and overhead."""
GIB = 1 << 30


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of the weights, their gradients, and the optimizer's state."""

    params: int
    grads: int
    optimizer: int

    def per_device(self, layout: str, world: int) -> float:
        p, g, o = self.params, self.grads, self.optimizer
        return {
            "replicated": p + g + o,
            "zero1": p + g + o / world,
            "zero2": p + (g + o) / world,
            "zero3": (p + g + o) / world,
        }[layout]


def state_bytes(precision: str, deepspeed: bool = False, bf16_optimizer: str = "bf16") -> StateBytes:
    """Per-parameter model-state bytes for a memsweep precision and, for bf16, its optimizer
    (module doc has the table)."""
    if precision == "bf16":
        return StateBytes(2, 2, 4 if bf16_optimizer == "bf16" else 8)
    if precision == "bf16-mixed" and deepspeed:
        return StateBytes(2, 2, 12)
    return StateBytes(4, 4, 8)


def _budget(device_memory_gib: float) -> float:
    return device_memory_gib * GIB * STATE_FRACTION


def zero_stage_by_size(n_params: int, precision: str, world: int,
                       device_memory_gib: float = DEFAULT_DEVICE_MEMORY_GIB) -> int | None:
    """The lowest ZeRO stage whose per-device state fits, or None when not even ZeRO-3 fits."""
    sizes = state_bytes(precision, deepspeed=True)
    for stage in DEEPSPEED_STAGES:
        if n_params * sizes.per_device(f"zero{stage}", world) <= _budget(device_memory_gib):
            return stage
    return None


def min_devices(n_params: int, precision: str, device_memory_gib: float = DEFAULT_DEVICE_MEMORY_GIB, *,
                bf16_optimizer: str = "bf16") -> int:
    """Fewest devices a cell needs: 1 when its state fits replicated, else what ZeRO-3 needs
    (for precision=bf16, which DeepSpeed cannot shard, the count after switching to bf16-mixed)."""
    budget = _budget(device_memory_gib)
    if n_params * state_bytes(precision, bf16_optimizer=bf16_optimizer).per_device("replicated", 1) <= budget:
        return 1
    sharded = "bf16-mixed" if precision == "bf16" else precision
    total = state_bytes(sharded, deepspeed=True).per_device("replicated", 1) * n_params
    return max(2, math.ceil(total / budget))


def check_strategy(precision: str, accelerator: str, devices: int, num_nodes: int, strategy: str,
                   deepspeed_stage: int | None) -> None:
    """The checks that need no parameter count (what `CellConfig.validate` can call)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown value {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy: unknown value {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for key, value in (("trainer.devices", devices), ("trainer.num_nodes", num_nodes)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: must be an integer >= 1, got {value!r}")
    world = devices * num_nodes
    if strategy == "single" and world > 1:
        raise ConfigError(f"trainer.strategy: single trains on one device but trainer.devices x trainer.num_nodes"
                          f" = {devices} x {num_nodes} = {world}; use ddp or auto, or set trainer.devices=1")
    if deepspeed_stage is not None:
        if strategy != "deepspeed":
            raise ConfigError(f"trainer.deepspeed_stage: {deepspeed_stage} only applies with trainer.strategy="
                              f"deepspeed (got {strategy}); set trainer.strategy=deepspeed or deepspeed_stage=null")
        if deepspeed_stage not in DEEPSPEED_STAGES:
            raise ConfigError(f"trainer.deepspeed_stage: must be 1, 2, 3 or null (by size), got {deepspeed_stage!r}")
    if strategy == "deepspeed":
        _check_deepspeed_pairing(precision, accelerator)


def _check_deepspeed_pairing(precision: str, accelerator: str) -> None:
    if precision == "bf16":
        raise ConfigError(
            "precision: bf16 (weights and AdamW state stored in bf16) cannot train under trainer.strategy="
            "deepspeed: DeepSpeed's bf16 mode keeps fp32 master weights in its optimizer, so it would not be "
            "true bf16 training (and DeepSpeed rejected Lightning's 'bf16-true', litgpt #116). Use "
            "precision=bf16-mixed under deepspeed, or trainer.strategy=ddp for true bf16")
    if accelerator == "cpu":
        raise ConfigError("trainer.strategy: deepspeed needs CUDA GPUs: Lightning's DeepSpeedStrategy refuses "
                          "trainer.accelerator=cpu; use trainer.strategy=ddp (gloo) on CPU")


def choose_strategy(precision: str, devices: int, num_nodes: int, strategy: str, deepspeed_stage: int | None,
                    n_params: int, device_memory_gib: float = DEFAULT_DEVICE_MEMORY_GIB, *,
                    bf16_optimizer: str = "bf16") -> tuple[str, int | None]:
    """("single" | "ddp" | "deepspeed", ZeRO stage or None) for a cell; see the module doc."""
    world = devices * num_nodes
    if strategy == "single":
        return "single", None
    if strategy == "ddp":
        return "ddp", None
    if strategy == "deepspeed":
        stage = deepspeed_stage or zero_stage_by_size(n_params, precision, world, device_memory_gib)
        if stage is None:
            raise ConfigError(_too_big(n_params, precision, world, device_memory_gib, "even with DeepSpeed ZeRO-3"))
        return "deepspeed", stage
    replicated = n_params * state_bytes(precision, bf16_optimizer=bf16_optimizer).per_device("replicated", world)
    if replicated <= _budget(device_memory_gib):
        return ("single" if world == 1 else "ddp"), None
    if precision == "bf16":
        raise ConfigError(_too_big(n_params, precision, world, device_memory_gib, "replicated", bf16_optimizer) +
                          "; true bf16 cannot be sharded with DeepSpeed (its bf16 keeps fp32 master weights):"
                          " use precision=bf16-mixed or a device with more memory (device_memory_gib)")
    stage = zero_stage_by_size(n_params, precision, world, device_memory_gib) if world > 1 else None
    if stage is None:
        raise ConfigError(_too_big(n_params, precision, world, device_memory_gib,
                                   "on one device" if world == 1 else "even with DeepSpeed ZeRO-3"))
    return "deepspeed", stage


def _too_big(n_params: int, precision: str, world: int, device_memory_gib: float, how: str,
             bf16_optimizer: str = "bf16") -> str:
    need = min_devices(n_params, precision, device_memory_gib, bf16_optimizer=bf16_optimizer)
    total = n_params * state_bytes(precision, bf16_optimizer=bf16_optimizer).per_device("replicated", 1) / GIB
    return (f"trainer.devices: a {n_params:,}-parameter {precision} cell has {total:.1f} GiB of weights, gradients and"
            f" AdamW state, more than fits {how} on {world} device(s) of {device_memory_gib:g} GiB (of which"
            f" {STATE_FRACTION:.0%} is for this state); give it at least {need} devices"
            f" (trainer.devices x trainer.num_nodes)")


def trainer_kwargs(precision: str, accelerator: str, devices: int, num_nodes: int, strategy: str,
                   deepspeed_stage: int | None, n_params: int, *, batch_size: int | None = None,
                   bf16_optimizer: str = "bf16", device_memory_gib: float = DEFAULT_DEVICE_MEMORY_GIB,
                   environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `lightning.Trainer` that spread one cell over its devices.

    Returns `accelerator`, `devices`, `num_nodes`, `strategy` (a Lightning registry name:
    "auto", "ddp" or "deepspeed_stage_<k>", so this imports neither DeepSpeed nor CUDA and can run
    at planning time), `precision` (Lightning's name), `plugins` (SLURMEnvironment(auto_requeue=
    False) under SLURM, so memsweep's own preemption handler owns the requeue signal, else []).
    The caller also passes `use_distributed_sampler=False`: memsweep's batch stream is endless and
    sharded per rank by `ShuffledBatches(rank=, world_size=)`; Lightning's DistributedSamplerWrapper
    would try to list it and hang.

    `batch_size` (the global batch) must divide evenly over the ranks. `environ` is where SLURM
    is looked for (os.environ by default); pass {} to plan cells from inside a SLURM job.
    Raises ConfigError, its message starting with the key to change.
    """
    check_strategy(precision, accelerator, devices, num_nodes, strategy, deepspeed_stage)
    world = devices * num_nodes
    if batch_size is not None and batch_size % world:
        raise ConfigError(f"trainer.batch_size: {batch_size} does not split evenly over trainer.devices x "
                          f"trainer.num_nodes = {world} ranks; each rank takes an equal slice of the global batch")
    kind, stage = choose_strategy(precision, devices, num_nodes, strategy, deepspeed_stage, n_params,
                                  device_memory_gib, bf16_optimizer=bf16_optimizer)
    if kind == "deepspeed":
        _check_deepspeed_pairing(precision, accelerator)
    environ = os.environ if environ is None else environ
    plugins: list[Any] = []
    if under_slurm(environ):
        check_slurm_allocation(devices, num_nodes, environ, accelerator=accelerator)
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    if kind != "deepspeed":  # DeepSpeed writes its own checkpoint directories
        from memsweep.checkpoint import DirectCheckpointIO

        plugins.append(DirectCheckpointIO())
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": {"single": "auto", "ddp": "ddp"}.get(kind, f"deepspeed_stage_{stage}"),
        "precision": PRECISIONS[precision],
        "plugins": plugins,
    }


def under_slurm(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether Lightning would treat this process as an srun task (its own rule, so both agree):
    SLURM_NTASKS is set and the job is not an interactive shell named `bash` or `interactive`."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _int_prefix(value: str) -> int:
    """SLURM writes counts like "2" or "2(x3)"; the count is the leading integer."""
    digits = ""
    for ch in value:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits)


def check_slurm_allocation(devices: int, num_nodes: int, environ: Mapping[str, str] = os.environ, *,
                           accelerator: str = "auto") -> None:
    """Under SLURM, the trainer's devices x num_nodes must be srun's task count, one task per device.

    Lightning takes its world size from SLURM_NTASKS and then waits for every rank: a mismatch
    hangs instead of failing (Lightning #19883), so it is refused here with what to change. A
    no-op outside SLURM (and in interactive `bash`/`interactive` jobs, which Lightning ignores).
    """
    if not under_slurm(environ):
        return
    world = devices * num_nodes
    ntasks = _int_prefix(environ["SLURM_NTASKS"])
    hint = (f"launch one task per device: sbatch --nodes={num_nodes} --ntasks-per-node={devices}"
            f" --gpus-per-node={devices}, then srun")
    if ntasks != world:
        raise ConfigError(f"trainer.devices: trainer.devices x trainer.num_nodes = {devices} x {num_nodes} = {world}"
                          f" ranks but SLURM runs {ntasks} task(s) (SLURM_NTASKS={ntasks}); Lightning would wait"
                          f" for the missing ranks forever (Lightning #19883). {hint}")
    nodes = environ.get("SLURM_NNODES") or environ.get("SLURM_JOB_NUM_NODES")
    if nodes is not None and _int_prefix(nodes) != num_nodes:
        raise ConfigError(f"trainer.num_nodes: {num_nodes} but SLURM allocated {_int_prefix(nodes)} node(s)"
                          f" (SLURM_NNODES); {hint}")
    per_node = environ.get("SLURM_NTASKS_PER_NODE")
    if per_node is None and ntasks > 1:
        raise ConfigError(f"trainer.devices: SLURM has {ntasks} tasks but no --ntasks-per-node, which Lightning"
                          f" refuses (it cannot tell tasks per node from --ntasks alone); {hint}")
    if per_node is not None and _int_prefix(per_node) != devices:
        raise ConfigError(f"trainer.devices: {devices} per node but SLURM runs {_int_prefix(per_node)} task(s) per"
                          f" node (SLURM_NTASKS_PER_NODE); {hint}")
    gpus = environ.get("SLURM_GPUS_ON_NODE")
    if accelerator in ("gpu", "cuda") and gpus is not None and _int_prefix(gpus) < devices:
        raise ConfigError(f"trainer.devices: {devices} GPUs per node but SLURM gave this node {_int_prefix(gpus)}"
                          f" (SLURM_GPUS_ON_NODE); {hint}")
