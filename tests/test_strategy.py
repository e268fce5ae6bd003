"""Distributed training strategy: the rules of memsweep.strategy, then real multi-process runs on CPU.

What runs here, on CPU with gloo:
- DDP: 2 ranks started as SLURM would start them (two processes with srun's environment
  variables, so Lightning attaches to them through the SLURMEnvironment(auto_requeue=False) plugin
  that `trainer_kwargs` returns, exactly the path a cell takes under srun), training the tiny GPT
  with MemorizationModule on `ShuffledBatches(rank=trainer.global_rank, world_size=...)` as
  memsweep/cell.py builds it. Checked: both ranks end bit-identical, each saw its own half of every
  global batch, the result matches one process on the whole batch, and loss fell.
- DeepSpeed: its engine (deepspeed.initialize, DS_ACCELERATOR=cpu, gloo), 2 ranks under torchrun,
  ZeRO stages 1, 2 and 3 on the tiny GPT in fp32: loss falls, a checkpoint directory is saved and
  loaded into a fresh engine (same loss, and the same next steps, so the optimizer state came
  back), and zero_to_fp32 turns the shards into one state dict a plain GPT evaluates the same.
  Also measured: DeepSpeed's bf16 mode keeps bf16 weights in the module and fp32 master weights in
  the optimizer (why memsweep's true-bf16 precision is refused under DeepSpeed).
- Lightning's DeepSpeedStrategy refuses CPU: checked (RuntimeError naming CUDA).
- A whole cell (memsweep.cell.run_cell) on 2 such ranks measures the memorized bits one process
  measures; skipped until memsweep/config.py has the strategy fields (trainer.num_nodes, ...).
- The Dockerfiles, statically (docker/check.py): build context, pins, MEMSWEEP_IMAGE.

Not covered here: Lightning's DeepSpeedStrategy itself (it refuses CPU, so a cell never trains
under it here), training in bf16 under DeepSpeed, CUDA, NCCL, more than one node, and a real srun
(the SLURM variables are set by hand; Lightning cannot tell the difference).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from memsweep.checkpoint import DirectCheckpointIO
from memsweep.config import ConfigError, TrainerConfig
from memsweep.data.batches import ShuffledBatches, TokenRows
from memsweep.data.uniform import random_tokens
from memsweep.model import GPT, GPTConfig
from memsweep.module import MemorizationModule
from memsweep.strategy import (
    check_slurm_allocation,
    choose_strategy,
    min_devices,
    trainer_kwargs,
    zero_stage_by_size,
)

REPO = Path(__file__).resolve().parents[1]
TINY = GPTConfig(vocab_size=64, seq_len=8, n_layer=1, d_model=16, n_head=2, attention="math")
N_ROWS, BATCH, STEPS, SEED = 32, 16, 30, 0


def kwargs(precision="fp32", accelerator="gpu", devices=1, num_nodes=1, strategy="auto", stage=None,
           n_params=1_000_000, **extra):
    return trainer_kwargs(precision, accelerator, devices, num_nodes, strategy, stage, n_params,
                          environ=extra.pop("environ", {}), **extra)


# ---------------------------------------------------------------- rules


def test_small_cell_on_one_device_uses_the_default_strategy():
    got = kwargs(accelerator="cpu", n_params=80_352)
    (checkpoint_io,) = got.pop("plugins")
    assert got == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true"}
    assert isinstance(checkpoint_io, DirectCheckpointIO)  # no copy through the system temp dir


@pytest.mark.parametrize("devices,num_nodes", [(2, 1), (1, 2), (4, 2)])
def test_more_than_one_device_is_ddp(devices, num_nodes):
    assert kwargs(devices=devices, num_nodes=num_nodes, n_params=80_352)["strategy"] == "ddp"


def test_thresholds_in_fp32_on_an_80_gib_device():
    # Replicated state is 16 B/param; 40 GiB (half of 80) holds 2.68e9 parameters.
    limit = int(40 * 2**30 / 16)
    assert choose_strategy("fp32", 8, 1, "auto", None, limit) == ("ddp", None)
    assert choose_strategy("fp32", 8, 1, "auto", None, limit + 1) == ("deepspeed", 1)  # 9 B/param on 8
    assert choose_strategy("fp32", 8, 1, "auto", None, int(40 * 2**30 / 9) + 1) == ("deepspeed", 2)
    assert choose_strategy("fp32", 8, 1, "auto", None, int(40 * 2**30 / 5.5) + 1) == ("deepspeed", 3)
    assert kwargs(devices=8, n_params=int(40 * 2**30 / 5.5) + 1)["strategy"] == "deepspeed_stage_3"
    with pytest.raises(ConfigError, match=r"^trainer.devices: .* at least 9 devices"):
        choose_strategy("fp32", 8, 1, "auto", None, int(40 * 2**30 / 2) + 1)


def test_bf16_with_an_fp32_optimizer_state_needs_12_bytes_a_parameter():
    pure, fp32_state = int(40 * 2**30 / 8), int(40 * 2**30 / 12)  # 40 GiB of state on an 80 GiB device
    assert choose_strategy("bf16", 1, 1, "auto", None, pure) == ("single", None)
    for optimizer in ("fp32-state", "stochastic-rounding"):
        assert choose_strategy("bf16", 1, 1, "auto", None, fp32_state, bf16_optimizer=optimizer) == ("single", None)
        with pytest.raises(ConfigError, match=r"^trainer.devices: .* 60.0 GiB of weights, gradients and AdamW state"):
            choose_strategy("bf16", 1, 1, "auto", None, int(60 * 2**30 / 12), bf16_optimizer=optimizer)
        assert min_devices(pure, "bf16", bf16_optimizer=optimizer) == 2


def test_the_1_5b_ladder_top_trains_replicated_and_the_device_size_matters():
    assert choose_strategy("fp32", 1, 1, "auto", None, 1_500_000_000) == ("single", None)
    assert choose_strategy("bf16", 4, 1, "auto", None, 1_500_000_000) == ("ddp", None)
    assert choose_strategy("fp32", 4, 1, "auto", None, 1_500_000_000, device_memory_gib=40) == ("deepspeed", 1)
    assert min_devices(1_500_000_000, "fp32") == 1
    assert min_devices(1_500_000_000, "fp32", device_memory_gib=40) == 2
    assert zero_stage_by_size(1_500_000_000, "fp32", 2, device_memory_gib=24) == 3


def test_a_cell_too_big_for_one_device_names_the_devices_it_needs():
    with pytest.raises(ConfigError, match=r"^trainer.devices: a 3,000,000,000-parameter fp32 cell .* at least 2"):
        kwargs(n_params=3_000_000_000)


def test_true_bf16_needs_twice_the_parameters_to_overflow_and_is_never_sharded():
    assert choose_strategy("bf16", 2, 1, "auto", None, 5_000_000_000) == ("ddp", None)  # 8 B/param
    with pytest.raises(ConfigError, match=r"^trainer.devices: .*use precision=bf16-mixed"):
        choose_strategy("bf16", 8, 1, "auto", None, 6_000_000_000)


def test_explicit_choices_win_over_size():
    assert kwargs(strategy="ddp", n_params=100)["strategy"] == "ddp"  # DDP on one device is allowed
    assert kwargs(strategy="deepspeed", n_params=100, devices=2)["strategy"] == "deepspeed_stage_1"
    assert kwargs(strategy="deepspeed", stage=3, n_params=100, devices=2)["strategy"] == "deepspeed_stage_3"
    assert kwargs(strategy="single", n_params=2_000_000_000)["strategy"] == "auto"


@pytest.mark.parametrize("args,message", [
    (dict(strategy="fsdp"), r"^trainer.strategy: unknown value 'fsdp'"),
    (dict(strategy="single", devices=2), r"^trainer.strategy: single trains on one device"),
    (dict(stage=2), r"^trainer.deepspeed_stage: 2 only applies with trainer.strategy=deepspeed"),
    (dict(strategy="deepspeed", stage=4), r"^trainer.deepspeed_stage: must be 1, 2, 3"),
    (dict(num_nodes=0), r"^trainer.num_nodes: must be an integer >= 1"),
    (dict(precision="fp16"), r"^precision: unknown value 'fp16'"),
    (dict(devices=3, batch_size=128), r"^trainer.batch_size: 128 does not split evenly over .* 3 ranks"),
])
def test_bad_choices_name_their_key(args, message):
    with pytest.raises(ConfigError, match=message):
        kwargs(**args)


def test_precision_pairing():
    assert kwargs(precision="bf16")["precision"] == "bf16-true"
    assert kwargs(precision="bf16-mixed")["precision"] == "bf16-mixed"
    assert kwargs(precision="fp32", strategy="deepspeed", devices=2)["precision"] == "32-true"
    assert kwargs(precision="bf16-mixed", strategy="deepspeed", devices=2)["precision"] == "bf16-mixed"
    with pytest.raises(ConfigError, match=r"^precision: bf16 .* cannot train under trainer.strategy=deepspeed"):
        kwargs(precision="bf16", strategy="deepspeed", devices=2)
    with pytest.raises(ConfigError, match=r"^trainer.strategy: deepspeed needs CUDA GPUs"):
        kwargs(accelerator="cpu", strategy="deepspeed", devices=2)


SRUN_2x1 = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "memsweep", "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "2"}


def test_slurm_allocation_check():
    check_slurm_allocation(2, 1, {})  # not under SLURM: nothing to check
    check_slurm_allocation(2, 1, SRUN_2x1, accelerator="gpu")
    check_slurm_allocation(4, 1, {**SRUN_2x1, "SLURM_JOB_NAME": "interactive"})  # Lightning ignores these
    with pytest.raises(ConfigError, match=r"^trainer.devices: .* = 1 ranks but SLURM runs 2 task\(s\).*#19883"):
        check_slurm_allocation(1, 1, SRUN_2x1)
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes: 2 but SLURM allocated 1 node"):
        check_slurm_allocation(1, 2, SRUN_2x1)
    with pytest.raises(ConfigError, match=r"^trainer.devices: 1 per node but SLURM runs 2 task\(s\) per node"):
        check_slurm_allocation(1, 2, {**SRUN_2x1, "SLURM_NNODES": "2"})
    with pytest.raises(ConfigError, match=r"no --ntasks-per-node"):
        check_slurm_allocation(2, 1, {k: v for k, v in SRUN_2x1.items() if k != "SLURM_NTASKS_PER_NODE"})
    with pytest.raises(ConfigError, match=r"^trainer.devices: 2 GPUs per node but SLURM gave this node 1"):
        check_slurm_allocation(2, 1, {**SRUN_2x1, "SLURM_GPUS_ON_NODE": "1"}, accelerator="gpu")
    multi = {**SRUN_2x1, "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2"}
    check_slurm_allocation(4, 2, multi)


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_under_slurm_lightning_does_not_own_the_requeue_signal():
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugin, _ = kwargs(devices=2, environ=SRUN_2x1)["plugins"]
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False
    with pytest.raises(ConfigError, match="#19883"):
        kwargs(devices=4, environ=SRUN_2x1)


# ---------------------------------------------------------------- real DDP on CPU


def _tokens() -> np.ndarray:
    return random_tokens(N_ROWS, TINY.seq_len, TINY.vocab_size, seed=0)


def _full_loss(model: torch.nn.Module, tokens: np.ndarray) -> float:
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        return F.cross_entropy(model(x).float().flatten(0, 1), x.flatten()).item()


class _Recorder(L.Callback):
    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.clone())


def _train_tiny(devices: int, environ: dict, root: Path) -> tuple[L.Trainer, MemorizationModule, _Recorder]:
    cfg = TrainerConfig(max_steps=STEPS, batch_size=BATCH, lr=1e-2, warmup_steps=0, grad_clip=1.0)
    L.seed_everything(SEED, verbose=False)
    module = MemorizationModule(TINY, cfg)
    recorder = _Recorder()
    trainer = L.Trainer(
        **trainer_kwargs("fp32", "cpu", devices, 1, "auto", None, module.model.n_params, batch_size=BATCH,
                         environ=environ),
        max_steps=STEPS, callbacks=[recorder], gradient_clip_val=cfg.grad_clip, logger=False,
        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(root))
    # As memsweep/cell.py: the rank is known once the Trainer exists (srun/torchrun set it).
    sampler = ShuffledBatches(N_ROWS, BATCH, SEED, rank=trainer.global_rank, world_size=trainer.world_size)
    trainer.fit(module, train_dataloaders=DataLoader(TokenRows(_tokens()), batch_size=None, sampler=sampler))
    return trainer, module, recorder


def _ddp_rank(out_dir: str) -> None:
    """One srun-style rank (run in a subprocess by the test below)."""
    torch.set_num_threads(1)
    out = Path(out_dir)
    trainer, module, recorder = _train_tiny(2, dict(os.environ), out)
    env = trainer.strategy.cluster_environment
    torch.save({"rank": trainer.global_rank, "world": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                "environment": type(env).__name__, "auto_requeue": getattr(env, "auto_requeue", None),
                "backend": torch.distributed.get_backend(), "steps": trainer.global_step,
                "state": module.model.state_dict(), "batches": recorder.batches},
               out / f"rank{trainer.global_rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                     "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, text in zip(procs, outputs):
        assert proc.returncode == 0, f"rank exited with {proc.returncode}:\n{text[-4000:]}"
    return outputs


def _srun_ranks(code: str) -> list[subprocess.Popen]:
    """Two processes running `code` with the environment srun gives the two tasks of one node."""
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = {**_clean_env(), **SRUN_2x1, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        env.pop("SLURM_GPUS_ON_NODE")
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_ddp_two_cpu_ranks_under_srun_variables(tmp_path, monkeypatch):
    procs = _srun_ranks(f"from tests.test_strategy import _ddp_rank; _ddp_rank({str(tmp_path)!r})")
    _wait(procs, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    for r, got in enumerate(ranks):
        assert (got["rank"], got["world"], got["steps"]) == (r, 2, STEPS)
        assert (got["strategy"], got["environment"], got["backend"]) == ("DDPStrategy", "SLURMEnvironment", "gloo")
        assert got["auto_requeue"] is False
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name  # DDP keeps the replicas bit-identical

    # Each rank saw its own half of every global batch of the single-process stream.
    tokens = torch.from_numpy(_tokens().astype(np.int64))
    for k, global_batch in zip(range(STEPS), ShuffledBatches(N_ROWS, BATCH, SEED)):
        for r in (0, 1):
            assert torch.equal(ranks[r]["batches"][k], tokens[torch.from_numpy(global_batch[r::2])])

    # Same training as one process on the whole batch (the global batch is trainer.batch_size).
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    _, single, _ = _train_tiny(1, {}, tmp_path / "single")
    d = TINY.d_model
    for name, value in single.model.state_dict().items():
        ddp = ranks[0]["state"][name]
        if name.endswith("attn.c_attn.bias"):
            # The key bias has an exact gradient of 0 (softmax ignores a shift shared by all keys),
            # so AdamW's normalised update of it is rounding noise, which differs between 1 and 2
            # ranks; compare the query and value biases only.
            ddp, value = torch.cat([ddp[:d], ddp[2 * d :]]), torch.cat([value[:d], value[2 * d :]])
        torch.testing.assert_close(ddp, value, rtol=1e-5, atol=1e-6, msg=name)

    L.seed_everything(SEED, verbose=False)
    before = _full_loss(GPT(TINY), _tokens())
    trained = GPT(TINY)
    trained.load_state_dict(ranks[0]["state"])
    after = _full_loss(trained, _tokens())
    assert after == pytest.approx(_full_loss(single.model, _tokens()), abs=1e-5)
    assert after < before - 0.5, (before, after)


CELL = ["logger=none", "model.n_layer=1", "model.d_model=16", "model.n_head=2", "data.vocab_size=64",
        "data.seq_len=8", "data.n_samples=32", "data.n_heldout=16", "trainer.max_steps=40", "trainer.eval_interval=20",
        f"trainer.batch_size={BATCH}", "trainer.saturation.min_steps=100000", "trainer.accelerator=cpu"]


def _cell_rank(run_dir: str, devices: int) -> None:
    """One rank of a whole memsweep cell (run_cell), as a queued job runs it under srun."""
    import json

    from memsweep.cell import run_cell
    from memsweep.config import cell_config
    from tests.conftest import compose_config

    torch.set_num_threads(1)
    record = run_cell(cell_config(compose_config([*CELL, f"trainer.devices={devices}"])), Path(run_dir))
    rank = os.environ.get("SLURM_PROCID", "single")
    Path(run_dir, f"record-{rank}.json").write_text(json.dumps(record, default=str))


@pytest.mark.slow
def test_ddp_cell_end_to_end_matches_one_device(tmp_path):
    """memsweep.cell.run_cell on 2 srun-style gloo ranks measures what one process measures."""
    import json

    procs = _srun_ranks(f"from tests.test_strategy import _cell_rank; _cell_rank({str(tmp_path / 'ddp')!r}, 2)")
    code = f"from tests.test_strategy import _cell_rank; _cell_rank({str(tmp_path / 'single')!r}, 1)"
    procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    _wait(procs, timeout=300)
    ddp = [json.loads((tmp_path / "ddp" / f"record-{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((tmp_path / "single" / "record-single.json").read_text())
    assert [r["status"] for r in ddp] == ["done", "done"] and single["status"] == "done"
    assert (ddp[0]["world_size"], single["world_size"]) == (2, 1)
    assert ddp[0]["steps"] == single["steps"] == 40
    assert ddp[0]["memorized_bits"] == pytest.approx(single["memorized_bits"], rel=1e-5)
    assert ddp[0]["memorized_bits"] == ddp[1]["memorized_bits"]
    assert ddp[0]["memorized_bits"] > 100  # it learned: about 4 bits at step 0, 172 at step 40


# ---------------------------------------------------------------- DeepSpeed on CPU

try:
    import deepspeed  # noqa: F401

    DEEPSPEED = None
except Exception as err:  # not installed, or installed without a usable torch
    DEEPSPEED = f"deepspeed is not importable ({type(err).__name__}: {err}); pip install -e '.[deepspeed]'"

needs_deepspeed = pytest.mark.skipif(DEEPSPEED is not None, reason=DEEPSPEED or "")
CONTINUE = 5


def _ds_engine(stage: int, seed: int, **extra):
    import deepspeed

    torch.manual_seed(seed)
    model = GPT(TINY)
    config = {"train_micro_batch_size_per_gpu": BATCH // torch.distributed.get_world_size(),
              "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, **extra}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def _ds_steps(engine, tokens: np.ndarray, batches: list[np.ndarray]) -> None:
    engine.train()
    for rows in batches:
        x = torch.from_numpy(tokens[rows].astype(np.int64))
        loss = F.cross_entropy(engine(x).float().flatten(0, 1), x.flatten())
        engine.backward(loss)
        engine.step()


def _ds_full_loss(engine, tokens: np.ndarray) -> float:
    engine.eval()  # every rank runs it: ZeRO-3 gathers the sharded weights collectively
    return _full_loss(engine, tokens)


def _deepspeed_ranks(out_dir: str) -> None:
    """One torchrun rank: ZeRO 1, 2, 3 in turn, train, checkpoint, reload, continue."""
    import deepspeed

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    tokens, out, results = _tokens(), Path(out_dir), {}
    for stage in (1, 2, 3):
        started = time.perf_counter()
        stream = iter(ShuffledBatches(N_ROWS, BATCH, SEED, rank=rank, world_size=2))
        train, more = [next(stream) for _ in range(STEPS)], [next(stream) for _ in range(CONTINUE)]
        engine = _ds_engine(stage, seed=SEED)
        before = _ds_full_loss(engine, tokens)
        _ds_steps(engine, tokens, train)
        trained = _ds_full_loss(engine, tokens)
        engine.save_checkpoint(str(out / f"zero{stage}"), tag="trained")
        _ds_steps(engine, tokens, more)
        continued = _ds_full_loss(engine, tokens)

        fresh = _ds_engine(stage, seed=SEED + 1)
        fresh.load_checkpoint(str(out / f"zero{stage}"), tag="trained")
        loaded = _ds_full_loss(fresh, tokens)
        _ds_steps(fresh, tokens, more)
        results[stage] = {"before": before, "trained": trained, "continued": continued, "loaded": loaded,
                          "loaded_continued": _ds_full_loss(fresh, tokens), "steps": engine.global_steps,
                          "zero_stage": engine.zero_optimization_stage(), "seconds": time.perf_counter() - started}
    # What DeepSpeed's bf16 mode (Lightning's "bf16-mixed" and "bf16-true" under DeepSpeed) stores:
    # the reason memsweep's true-bf16 precision is refused under DeepSpeed.
    engine = _ds_engine(1, seed=SEED, bf16={"enabled": True})
    _ds_steps(engine, tokens, [next(iter(ShuffledBatches(N_ROWS, BATCH, SEED, rank=rank, world_size=2)))])
    results["bf16"] = {"module": next(engine.module.parameters()).dtype,
                       "master": engine.optimizer.single_partition_of_fp32_groups[0].dtype}
    if rank == 0:
        torch.save(results, out / "results.pt")
    # Tear the group down before exit: left to interpreter shutdown, gloo's threads can outlive it
    # and abort the rank ("terminate called without an active exception", seen once in CI).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_engine_zero_1_2_3_on_two_cpu_ranks(tmp_path, monkeypatch):
    """The DeepSpeed engine itself (not Lightning's DeepSpeedStrategy, which needs CUDA): ZeRO 1-3,
    2 ranks under torchrun, CPU accelerator, gloo, fp32; checkpoint dirs saved, loaded, consolidated."""
    env = {**_clean_env(), "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tests.test_strategy", "deepspeed", str(tmp_path)]
    _wait([subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)],
          timeout=500)
    results = torch.load(tmp_path / "results.pt", weights_only=False)

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # DeepSpeed's bf16 mode: bf16 weights in the module, fp32 master weights in the optimizer.
    assert results.pop("bf16") == {"module": torch.bfloat16, "master": torch.float32}
    for stage, got in results.items():
        assert got["trained"] == pytest.approx(results[1]["trained"], abs=1e-5)  # ZeRO stages agree
        assert got["zero_stage"] == stage and got["steps"] == STEPS + CONTINUE
        assert got["trained"] < got["before"] - 0.2, got
        assert got["loaded"] == pytest.approx(got["trained"], abs=1e-6), got  # weights came back
        assert got["loaded_continued"] == pytest.approx(got["continued"], abs=1e-5), got  # and the optimizer state
        assert (tmp_path / f"zero{stage}" / "trained").is_dir()  # a checkpoint is a directory of shards
        state = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / f"zero{stage}"), tag="trained")
        model = GPT(TINY)
        model.load_state_dict(state)
        assert _full_loss(model, _tokens()) == pytest.approx(got["trained"], abs=1e-5), stage


@needs_deepspeed
@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_lightning_deepspeed_strategy_refuses_cpu(tmp_path):
    module = MemorizationModule(TINY, TrainerConfig(max_steps=1, batch_size=4, warmup_steps=0))
    loader = DataLoader(TokenRows(_tokens()), batch_size=None, sampler=ShuffledBatches(N_ROWS, 4, SEED))
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy="deepspeed_stage_2", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="only supported on CUDA GPUs"):
        trainer.fit(module, train_dataloaders=loader)


# ---------------------------------------------------------------- the images (no Docker engine here)


def _docker_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docker_check", REPO / "docker" / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dockerfiles_build_context_and_pins():
    check = _docker_check()
    assert [p for rel in check.DOCKERFILES for p in check.check_dockerfile(rel)] == []


def test_docker_check_catches_what_a_build_would(tmp_path, monkeypatch):
    check = _docker_check()
    (tmp_path / "docker").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.4"]\n'
                                             '[project.optional-dependencies]\ndeepspeed = ["deepspeed>=0.16"]\n')
    (tmp_path / ".dockerignore").write_text("pkg/\n")
    (tmp_path / "tests" / "test_x.py").write_text('P = Path(__file__).parents[1] / "launch"\n')
    (tmp_path / "docker" / "Dockerfile.cuda").write_text(
        "ARG BASE_IMAGE=pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime\nFROM ${BASE_IMAGE}\n"
        "ARG DEEPSPEED_VERSION=0.14.0\nCOPY pkg pkg\nCOPY missing missing\nRUN pip install pytest\n")
    monkeypatch.setattr(check, "ROOT", tmp_path)
    problems = "\n".join(check.check_dockerfile("docker/Dockerfile.cuda"))
    for expected in ("base torch 2.1.0 does not satisfy torch>=2.4", "'pkg' is excluded by .dockerignore",
                     "'missing' is not in the build context", "does not set ENV MEMSWEEP_IMAGE",
                     "deepspeed 0.14.0 does not satisfy deepspeed>=0.16", "no slurm-client",
                     "the tests open launch/"):
        assert expected in problems


if __name__ == "__main__" and sys.argv[1:2] == ["deepspeed"]:
    _deepspeed_ranks(sys.argv[2])
