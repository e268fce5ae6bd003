"""`memsweep submit`: expand a grid, check everything, queue it on SLURM as job arrays, and exit.

    memsweep submit experiment=capacity cluster=slurm resources=gpu-1 [--cells-per-job 4 | --pack K|auto] [--retry-failed]

Why a command of its own: Hydra's submitit launcher blocks until every job ends and reports
failures only at the end (hydra #2479, #2284). Here the sweep's state lives on disk (the plan, each
cell's result.json, claims/ and slurm.json), so this exits once the jobs are queued and
`memsweep status` / `memsweep collect` read the sweep dir later. Nothing is queued or written
unless the whole grid, the cluster preset and the allocation of every cell pass their checks.
Relaunching skips done cells and cells whose job is still queued; `--retry-failed` also re-runs
failed and stale ones (a failed result.json is kept as result.failed-<time>.json). With --pack,
the cells to queue are grouped into packs (memsweep.pack.plan, as `memsweep plan --pack` shows
them) and each array task trains one pack; a preempted pack task requeues and resumes each of its
unfinished cells from its own checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCHER_ONLY_KEYS = ("_target_", "submitit_folder", "pack")
"""hydra.launcher keys that are no sbatch option: memsweep picks a fresh submitit folder per
submission, and `pack` is hydra_plugins.memsweep_launcher's (memsweep submit takes --pack)."""
SKIP_UNLESS_RETRY = ("failed", "stale")
"""States re-run only with --retry-failed (stale: a process that died without a final record)."""


@dataclass(frozen=True)
class Launch:
    """Where and how a sweep's jobs run, composed from conf/cluster and conf/resources."""

    executor_params: dict[str, Any]
    """The composed `hydra.launcher` node (what Hydra's launcher would use), plus cluster.python,
    cluster.srun_args and hydra.job.env_set (as `env`)."""
    max_array_size: int | None
    array_parallelism: int


def launch_settings(overrides: list[str]) -> Launch:
    """Compose the config's SLURM settings (sweep overrides left out; sweeping them is refused)."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from memsweep.config import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()
             and o.key_or_group.split(".")[0] in ("cluster", "resources", "hydra", "hydra/launcher")]
    if swept:
        raise ConfigError(f"{swept[0]}: one sweep runs on one cluster and resources preset; do not sweep it")
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        with initialize_config_module("memsweep.conf", version_base="1.3"):
            cfg = compose("train", overrides=fixed, return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    return settings_of(cfg)


def settings_of(cfg) -> Launch:
    """The SLURM settings of a composed config with its `hydra` node (memsweep submit's, or the
    one Hydra's multirun hands its launcher, hydra_plugins.memsweep_launcher)."""
    from omegaconf import OmegaConf

    from memsweep.config import ConfigError

    launcher = cfg.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        raise ConfigError(f"cluster: {cfg.get('cluster', {}).get('name', '?')} has no scheduler "
                          f"(hydra/launcher is {cfg.hydra.runtime.choices.get('hydra/launcher')}); memsweep submit "
                          "queues on SLURM: pick cluster=slurm or cluster=slurm-local (or run memsweep-train -m)")

    def value(key: str) -> Any:
        node = OmegaConf.select(cfg, key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    params = {k: value(f"hydra.launcher.{k}") for k in launcher if k not in LAUNCHER_ONLY_KEYS}
    cluster = cfg.get("cluster") or {}
    for key in ("python", "srun_args"):
        if cluster.get(key):
            params[key] = value(f"cluster.{key}")
    if cfg.hydra.job.get("env_set"):
        params["env"] = value("hydra.job.env_set")
    return Launch(params, cluster.get("max_array_size"), int(params.get("array_parallelism") or 256))


def check_allocation(cells, params: dict[str, Any]) -> None:
    """One task per device: each cell's trainer.devices x trainer.num_nodes must equal
    tasks_per_node x nodes, or Lightning waits for ranks that never start (Lightning #19883)."""
    from memsweep.config import ConfigError

    tasks, nodes = params.get("tasks_per_node") or 1, params.get("nodes") or 1
    gpus = params.get("gpus_per_node")
    if gpus and gpus != tasks:
        raise ConfigError(f"resources.gpus_per_node: {gpus} GPUs but resources.tasks_per_node={tasks}: "
                          "memsweep runs one task per GPU; make them equal")
    for cell in cells:
        t = cell.config.trainer
        devices, num_nodes = t.devices, getattr(t, "num_nodes", 1)
        if devices * num_nodes != tasks * nodes:
            raise ConfigError(
                f"trainer.devices: trainer.devices x trainer.num_nodes = {devices} x {num_nodes} = "
                f"{devices * num_nodes} but resources.tasks_per_node x resources.nodes (hydra.launcher."
                f"tasks_per_node x hydra.launcher.nodes) = {tasks} x {nodes} = {tasks * nodes}: SLURM starts one "
                f"task per device; make them equal (cell: {' '.join(cell.overrides) or 'no overrides'})")


def select_cells(cells, retry_failed: bool, active: set[str]) -> tuple[list, dict[str, int]]:
    """The cells to queue and, by reason, how many are left alone."""
    from memsweep.launcher import is_queued
    from memsweep.sweepstate import cell_state

    chosen, skipped = [], {}
    for cell in cells:
        state = cell_state(cell.cell_dir).state
        if state in ("done", "corrupt", "running") or is_queued(cell.cell_dir, active):
            reason = state if state in ("done", "corrupt") else "queued or running"
        elif state in SKIP_UNLESS_RETRY and not retry_failed:
            reason = f"{state} (--retry-failed re-runs them)"
        else:
            chosen.append((cell, state))
            continue
        skipped[reason] = skipped.get(reason, 0) + 1
    return chosen, skipped


def _submit(args: argparse.Namespace) -> int:
    from memsweep.config import ConfigError
    from memsweep.launcher import active_jobs, check_sbatch, make_executor, read_max_array_size, submit_cells
    from memsweep.sweep import plan_sweep, write_plan

    try:
        plan = plan_sweep(args.overrides, args.sweep_dir)
        launch = launch_settings(args.overrides)
        check_allocation(plan.cells, launch.executor_params)
        if args.cells_per_job < 1:
            raise ConfigError(f"--cells-per-job: must be >= 1, got {args.cells_per_job}")
        if args.pack and args.cells_per_job != 1:
            raise ConfigError("--cells-per-job: a packed job trains one pack; give --pack or --cells-per-job")
        check_sbatch(make_executor(plan.sweep_dir / ".submitit" / "check", launch.executor_params))
        max_array_size = launch.max_array_size or read_max_array_size()
    except (ConfigError, ValueError, RuntimeError) as err:
        print(f"memsweep: {'config error: ' if isinstance(err, ConfigError) else ''}{err}\nnothing was queued",
              file=sys.stderr)
        return 2
    chosen, skipped = select_cells(plan.cells, args.retry_failed, active_jobs())
    packs = _packs([c for c, _ in chosen], args) if args.pack and chosen else None
    write_plan(plan, None if packs is None else [[d.name for d in p] for p in packs if len(p) > 1])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for cell, state in chosen:
        if state == "failed":
            (cell.cell_dir / "result.json").rename(cell.cell_dir / f"result.failed-{stamp}.json")
    jobs = submit_cells([c.cell_dir for c, _ in chosen], launch.executor_params,
                        log_dir=plan.sweep_dir / ".submitit", max_array_size=max_array_size,
                        array_parallelism=launch.array_parallelism, cells_per_job=args.cells_per_job, packs=packs)
    arrays: dict[str, int] = {}
    for job in jobs:
        arrays[job.job_id.split("_")[0]] = arrays.get(job.job_id.split("_")[0], 0) + 1
    left = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
    print(f"memsweep: sweep {plan.name!r}: {len(plan.cells)} cells; queued {len(chosen)} in {len(jobs)} jobs "
          f"({len(arrays)} arrays){'; left alone: ' + left if left else ''}")
    for array_id, n in arrays.items():
        print(f"  job {array_id}: {n} task{'s' * (n > 1)}")
    print(f"sweep dir: {plan.sweep_dir}\n  memsweep status {plan.sweep_dir}")
    return 0


def _packs(cells, args: argparse.Namespace) -> list[list[Path]]:
    """The cells to queue as packs (one per array task), printed as `memsweep plan --pack` prints them."""
    from memsweep.cli import ASSUMED_FLOPS_PER_SECOND, LIST_CELLS_UP_TO
    from memsweep.pack.cost import device_of
    from memsweep.pack.plan import pack_lines, plan_packs

    packs = plan_packs(cells, args.pack, args.device or device_of(cells[0].config), ASSUMED_FLOPS_PER_SECOND)
    print("\n".join(pack_lines(packs, args.pack, list_packs=len(packs.packs) <= LIST_CELLS_UP_TO, all_ids=False)))
    return [[c.cell_dir for c in task] for task in packs.tasks]


def _pack_value(text: str) -> int | str:
    """argparse's type for --pack: argparse's refusal names the flag (`argument --pack: ...`)."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or 'auto', got {text!r}")
    return int(text)


def add_pack_options(p) -> None:
    """--pack and --device, shared by `memsweep plan` and `memsweep submit`."""
    p.add_argument("--pack", type=_pack_value, metavar="K|auto",
                   help="train compatible cells K at a time as one stacked model (memsweep.pack); auto: K per "
                        "model shape from the cost model (memsweep/pack/cost.py), packing only where it pays")
    p.add_argument("--device", choices=("cpu", "gpu"),
                   help="the device the --pack cost model assumes (default: the cells' trainer.accelerator; "
                        "auto: this machine)")


def add_submit_command(commands) -> None:
    """Register `memsweep submit` on cli.py's subparsers."""
    p = commands.add_parser("submit", help="queue a grid on SLURM as job arrays and exit (no waiting)")
    p.add_argument("overrides", nargs="*",
                   help="Hydra overrides, as for memsweep-train -m (experiment=smoke cluster=slurm resources=gpu-1)")
    p.add_argument("--sweep-dir", type=Path, help="default: hydra.sweep.dir, i.e. runs/sweeps/<sweep_name>")
    p.add_argument("--cells-per-job", type=int, default=1,
                   help="run this many cells one after another in each job (small cells; default 1)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also re-run failed and stale cells (done cells are never touched)")
    add_pack_options(p)
    p.set_defaults(handler=_submit)


def main(argv: list[str] | None = None) -> int:
    """`python -m memsweep.submit_cli ...`, until cli.py registers the command."""
    parser = argparse.ArgumentParser(prog="memsweep")
    add_submit_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
