"""Hydra's submitit SLURM launcher, with packed cells: `memsweep-train -m ... hydra.launcher.pack=K|auto`.

Why a launcher of its own: Hydra's submitit launcher queues one array task per multirun job, each
running the app on one cell, so it cannot train K cells as one stacked model (memsweep.pack).
With `pack` unset this is that launcher, unchanged (cluster=slurm selects it). With `pack` set,
the grid goes through memsweep's own sweep engine instead, as `memsweep submit --pack` does: each
job's config becomes a cell dir (`<hydra.sweep.dir>/<cell id>/config.yaml`), memsweep.pack.plan
groups the cells that are not done into packs (K, or the cost model's `auto`), and
memsweep.launcher.submit_cells queues one pack per array task (claims, checkpoints and requeue
per cell). Then, as Hydra's launcher does, it waits for the jobs and returns one JobReturn per
multirun job: its memorized bits, or the cell's error (so a failed cell fails the multirun).

Hydra's per-job files (`.hydra/`, the job log) are not written for packed cells: no Hydra app
runs inside a pack. The cell's config.yaml and result.json are its record, as everywhere.
Only the module-level imports Hydra's plugin discovery needs are here; torch loads at launch.
It lives under hydra_plugins/ because Hydra instantiates launchers from that package only, and
has no `from __future__ import annotations`: Hydra's scan runs it outside sys.modules, where a
dataclass cannot resolve string annotations.
"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class MemsweepSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.memsweep_launcher.memsweep_launcher.MemsweepSlurmLauncher"
    pack: Optional[str] = None
    """null: one cell per array task (Hydra's launcher); K or `auto`: one pack per array task."""


ConfigStore.instance().store(group="hydra/launcher", name="memsweep_slurm", node=MemsweepSlurmQueueConf,
                             provider="memsweep")


class MemsweepSlurmLauncher(SlurmLauncher):
    def __init__(self, pack: Optional[str] = None, **params: Any) -> None:
        super().__init__(**params)
        self.pack = pack

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.pack is None:
            return super().launch(job_overrides, initial_job_idx)
        return self._launch_packed(job_overrides)

    def _launch_packed(self, job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
        from memsweep.cli import ASSUMED_FLOPS_PER_SECOND
        from memsweep.config import ConfigError, cell_config
        from memsweep.launcher import submit_cells
        from memsweep.pack.cost import device_of
        from memsweep.pack.plan import AUTO, pack_lines, plan_packs
        from memsweep.submit_cli import check_allocation, settings_of
        from memsweep.sweep import PlannedCell, SweepPlan, write_plan
        from memsweep.sweepstate import cell_state

        assert self.config is not None and self.hydra_context is not None
        size: int | str = AUTO if str(self.pack) == AUTO else _pack_size(self.pack)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        cells, jobs = [], []
        for overrides in job_overrides:
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            cell = cell_config(_task_config(sweep_config))
            cells.append(PlannedCell(cell.cell_id, sweep_dir / cell.cell_id, cell, tuple(overrides)))
            jobs.append((list(overrides), sweep_config))
        unique = list({c.cell_id: c for c in cells}.values())
        plan = SweepPlan(str(self.config.get("sweep_name", sweep_dir.name)), sweep_dir, unique)
        launch = settings_of(self.config)
        try:
            check_allocation(unique, launch.executor_params)
        except ConfigError as err:
            raise ConfigError(f"{err}; nothing was queued") from None
        todo = [c for c in unique if cell_state(c.cell_dir).state != "done"]
        packs = plan_packs(todo, size, device_of(todo[0].config), ASSUMED_FLOPS_PER_SECOND) if todo else None
        write_plan(plan, None if packs is None else [[c.cell_id for c in p.cells] for p in packs.packs])
        if packs is not None:
            for line in pack_lines(packs, size, list_packs=False, all_ids=False):
                log.info(line)
            submitted = submit_cells([c.cell_dir for c in todo], launch.executor_params,
                                     log_dir=sweep_dir / ".submitit", max_array_size=launch.max_array_size,
                                     array_parallelism=launch.array_parallelism,
                                     packs=[[c.cell_dir for c in task] for task in packs.tasks])
            log.info(f"memsweep: {len(todo)} cells in {len(submitted)} array tasks; waiting for them")
            for job in submitted:
                job.wait()
        return [_job_return(overrides, sweep_config, cell.cell_dir) for (overrides, sweep_config), cell
                in zip(jobs, cells)]


def _pack_size(value: Any) -> int:
    from memsweep.config import ConfigError

    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ConfigError(f"hydra.launcher.pack: {value!r} is not a pack size; give a count >= 1 or auto")
    return size


def _task_config(sweep_config):
    """The job's config without its `hydra` node (whose run-time values only a running job has)."""
    return OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])


def _job_return(overrides: list[str], sweep_config, cell_dir: Path) -> JobReturn:
    """A multirun job's outcome, from its cell's result.json (the job's own record)."""
    from memsweep.record import read_result

    try:
        record = read_result(cell_dir) or {}
    except ValueError as err:
        record = {"status": "corrupt", "error": str(err)}
    ret = JobReturn(overrides=overrides, cfg=_task_config(sweep_config), hydra_cfg=sweep_config, working_dir=str(cell_dir),
                    task_name=str(sweep_config.hydra.job.name))
    if record.get("status") == "done":
        ret.status, ret.return_value = JobStatus.COMPLETED, record["memorized_bits"]
    else:
        why = record.get("error") or f"status {record.get('status', 'missing: no result.json')}"
        ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(f"cell {cell_dir.name}: {why} ({cell_dir})")
    return ret
