"""Queue cells on SLURM as job arrays through submitit, and return at once.

Why not Hydra's submitit launcher: it blocks until every job ends (hydra #2479) and knows nothing
of which cells are done. Here a job gets only cell *directories*; it reads each cell's config.yaml
and newest checkpoint from disk when it starts, so a requeued job resumes what is on disk, never
state pickled at submission (fairchem #1055). Cells go `cells_per_job` to a job (or one pack of
stacked cells, memsweep.pack, per job), jobs go
into arrays no larger than the cluster's MaxArraySize (read from `scontrol show config`; the
limit is on the index, submitit #1624), and the `%N` throttle is shared between the arrays.

Signals: exactly one component acts on them, memsweep's PreemptionFlag. Before it calls the job
function submitit installs a USR2 handler that would requeue the job itself (or, when its
wall-time rule calls the job "timed out", refuse and end it) and a SIGTERM handler that ignores
the signal. `run_cells` replaces both with a PreemptionFlag for the whole job, and `run_cell_dir`
installs its own while a cell trains; between cells, a pending signal stops the job (requeueing
it first for USR1/USR2).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import submitit

from memsweep.config import CONFIG_FILE, ConfigError
from memsweep.console import cell_summary, emit
from memsweep.preemption import EXIT_RESUMABLE, PreemptionFlag, requeue_slurm_job
from memsweep.record import is_done, write_json_atomic

SLURM_FILE = "slurm.json"
"""Per cell: the SLURM job that runs it (latest first, earlier submissions under `previous`)."""
BASE_PARAMS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
               "name", "stderr_to_stdout"}
"""submitit's executor-independent names (as in hydra-submitit-launcher's BaseQueueConf)."""
INIT_PARAMS = {"max_num_timeout", "python"}
IGNORED_PARAMS = {"_target_", "submitit_folder"}
"""The Hydra launcher's own keys: memsweep picks a fresh folder per submission."""


class CellsFailed(RuntimeError):
    """Raised by a job once all its cells have run and some failed, so SLURM records FAILED."""


def run_cells(cell_dirs: list[str], wait_for_reference: bool = True) -> dict[str, str]:
    """The job function: run each cell dir in order, one failure does not stop the others.

    Module-level so submitit pickles it by reference. Returns {cell dir: status}; raises
    CellsFailed at the end naming the failed cells. After a signal (caught by a cell's training,
    or by this job between cells) no further cell starts: on USR1/USR2 the job requeues itself,
    on SIGTERM (scancel, or SLURM's own requeue) it just exits; either way without a result file.
    """
    outcomes: dict[str, str] = {}
    failed: dict[str, str] = {}
    with PreemptionFlag() as guard:
        for cell_dir in cell_dirs:
            if guard.requested:
                _interrupted(guard.signal_name, guard.wants_requeue, cell_dirs, outcomes)
            if is_done(Path(cell_dir)):  # e.g. a requeued job's first cells: skip torch's import too
                outcomes[cell_dir] = "done"
                continue
            try:
                from memsweep.cell import run_cell_dir  # torch and Lightning load in the job only

                # raises SystemExit once it has requeued the job
                record = run_cell_dir(Path(cell_dir), wait_for_reference=wait_for_reference)
            except Exception as err:
                failed[cell_dir] = outcomes[cell_dir] = f"failed: {type(err).__name__}: {err}"
                traceback.print_exc()
            else:
                outcomes[cell_dir] = record["status"]
                if record["status"] in ("preempted", "interrupted"):  # checkpointed and stopped, not requeued
                    _interrupted(record.get("signal") or record.get("stop_cause"), record.get("requeue", False),
                                 cell_dirs, outcomes)
            if outcomes[cell_dir] == "done":  # trained here: what it memorized
                emit(f"memsweep: {cell_summary(record)}", sys.stdout)
            elif outcomes[cell_dir] not in ("claimed", "waiting"):  # another live process trains it (or its reference)
                emit(f"memsweep: {cell_dir}: {outcomes[cell_dir]}", sys.stdout)
    if failed:
        raise CellsFailed(f"{len(failed)} of {len(cell_dirs)} cells failed:\n"
                          + "\n".join(f"  {d}: {e}" for d, e in failed.items()))
    return outcomes


def _interrupted(signal_name: str | None, requeue: bool, cell_dirs: list[str], outcomes: dict[str, str]) -> None:
    """Stop the job after a signal: requeue it first if the signal asked for that."""
    left = [d for d in cell_dirs if d not in outcomes or outcomes[d] in ("preempted", "interrupted")]
    requeued = requeue and requeue_slurm_job()
    emit(f"memsweep: {signal_name}: {'requeued the job' if requeued else 'stopping'}; "
         f"{len(left)} cell(s) left: {' '.join(left)}", sys.stdout)
    # No result file: a requeued job carries on, a cancelled one ends; locally the exit code says
    # "resumable" (memsweep run tells it from a failure).
    raise SystemExit(-1 if requeued else EXIT_RESUMABLE)


def read_max_array_size() -> int:
    """The cluster's MaxArraySize: array indices must be below it."""
    out = _slurm("scontrol", "show", "config")
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    if found is None:
        raise RuntimeError("`scontrol show config` does not list MaxArraySize")
    return int(found.group(1))


def _slurm(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} is not on PATH: is this a SLURM login node?") from None
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def array_plan(n_jobs: int, max_array_size: int, array_parallelism: int) -> list[tuple[int, int, int, int | None]]:
    """Split n_jobs into arrays: (start, stop, throttle, index of the array it must wait for).

    Arrays are as even as possible, each at most max_array_size long. The throttle is divided so
    that at most array_parallelism tasks run in all; with more arrays than that, each runs one
    task at a time and array i waits (afterany) for array i - array_parallelism.
    """
    if max_array_size < 1 or array_parallelism < 1:
        raise ValueError(f"max_array_size ({max_array_size}) and array_parallelism ({array_parallelism}) must be >= 1")
    n_arrays = -(-n_jobs // max_array_size)
    bounds = [round(i * n_jobs / n_arrays) for i in range(n_arrays + 1)]
    plan = []
    for i in range(n_arrays):
        if n_arrays <= array_parallelism:
            throttle = array_parallelism // n_arrays + (i < array_parallelism % n_arrays)
            wait_for = None
        else:
            throttle, wait_for = 1, (i - array_parallelism if i >= array_parallelism else None)
        plan.append((bounds[i], bounds[i + 1], throttle, wait_for))
    return plan


PARAM_SOURCES = {"env": "hydra.job.env_set", "python": "cluster.python", "srun_args": "cluster.srun_args"}
"""Where launch_settings takes make_executor's parameters from (the rest: hydra.launcher.<key>)."""


def _check_script_safe(name: str, value: Any) -> None:
    """submitit writes parameter values into the sbatch script line by line, so a newline, carriage
    return or NUL anywhere in one (a list item, a dict key) would add lines of its own."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_script_safe(name, key)
            _check_script_safe(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_script_safe(f"{name}[{i}]", item)
    elif isinstance(value, str) and any(c in value for c in "\n\r\0"):
        raise ConfigError(f"{name}: {value!r} holds a newline or NUL, which would add lines to the sbatch script")


def _check_params(params: dict[str, Any]) -> None:
    """Refuse what could change the sbatch script beyond the option it sets (see _check_script_safe)."""
    for key, value in params.items():
        _check_script_safe(PARAM_SOURCES.get(key, f"hydra.launcher.{key}"), value)
    for key in params.get("env") or {}:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise ConfigError(f"hydra.job.env_set: {key!r} is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)")
    for key in params.get("additional_parameters") or {}:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", str(key)):
            raise ConfigError(f"hydra.launcher.additional_parameters: {key!r} is not an sbatch option name "
                              "([a-z][a-z0-9_-]*)")


def make_executor(folder: Path, params: dict[str, Any]) -> submitit.AutoExecutor:
    """A SLURM executor from hydra-submitit-launcher style parameters (the composed
    `hydra.launcher` node), mapped the way that launcher maps them, plus `python` (the command
    that runs Python, e.g. a container entry), `srun_args` and `env` (exported in the sbatch
    script before srun). Raises ConfigError, naming the key, for a value that would inject lines
    into the sbatch script and for keys submitit does not know."""
    params = {k: v for k, v in params.items() if k not in IGNORED_PARAMS and v is not None}
    _check_params(params)
    env = params.pop("env", None) or {}
    init = {f"slurm_{k}": params.pop(k) for k in INIT_PARAMS & set(params)}
    if env:
        exports = [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
        params["setup"] = [*exports, *(params.get("setup") or [])]
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", **init)
    try:
        executor.update_parameters(**{k if k in BASE_PARAMS else f"slurm_{k}": v for k, v in params.items()})
    except NameError as err:  # submitit's refusal of an unknown key, naming the valid ones
        raise ConfigError(f"hydra.launcher: {str(err).splitlines()[0]}") from None
    return executor


def check_sbatch(executor: submitit.AutoExecutor) -> None:
    """Ask SLURM whether it would accept these options (`sbatch --test-only`: nothing is queued),
    so a wrong partition, account or QoS fails before any array of a sweep is submitted."""
    import tempfile

    script = executor._executor._make_submission_file_text("true", "check")  # submitit's own sbatch text
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as fh:
        fh.write(script)
        fh.flush()
        try:
            _slurm("sbatch", "--test-only", fh.name)
        except RuntimeError as err:
            raise RuntimeError(f"SLURM refuses this sweep's sbatch options: {err}") from None


def active_jobs() -> set[str]:
    """Ids of queued or running jobs, array tasks expanded (`123_4`); empty if squeue fails."""
    try:
        out = _slurm("squeue", "-h", "-r", "-o", "%i")
    except RuntimeError:
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


def slurm_record(cell_dir: Path) -> dict[str, Any] | None:
    """A cell's slurm.json, or None (none yet, unreadable, or not a JSON object)."""
    try:
        record = json.loads((Path(cell_dir) / SLURM_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_queued(cell_dir: Path, active: set[str]) -> bool:
    """Whether the job last submitted for this cell is still queued or running."""
    record = slurm_record(cell_dir)
    return record is not None and record.get("job_id") in active


def submit_cells(cell_dirs: list[Path], executor_params: dict[str, Any], *, log_dir: Path,
                 max_array_size: int | None = None, array_parallelism: int,
                 cells_per_job: int = 1, packs: list[list[Path]] | None = None) -> list[submitit.Job]:
    """Queue every cell that is not done and not already queued; return without waiting.

    `log_dir` is the parent of this submission's submitit folder (`<log_dir>/<timestamp>/%j`), new
    for every call: SLURM job ids restart when its state is wiped, and a reused folder would hand
    back stale results. Each cell gets `slurm.json`: job id, array task, time, log paths.

    `packs` (memsweep.pack.plan: every cell dir in one, a pack of one trains unpacked) replaces
    cells_per_job: one pack per array task, run by memsweep.pack.launch.run_packed_cells, which
    claims, checkpoints and requeues per cell as run_cells does.
    """
    if cells_per_job < 1:
        raise ValueError(f"cells_per_job must be >= 1, got {cells_per_job}")
    active = active_jobs()
    todo = [Path(d).resolve() for d in cell_dirs]
    todo = [d for d in todo if not is_done(d) and not is_queued(d, active)]
    if not todo:
        return []
    if packs is not None:
        packs = [[Path(d).resolve() for d in pack] for pack in packs]
        loose = set(todo) - {d for pack in packs for d in pack}
        if loose:
            raise ValueError(f"{len(loose)} cell dirs are in no pack, e.g. {sorted(loose)[0]}")
    limit = max_array_size if max_array_size is not None else read_max_array_size()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
    folder = Path(log_dir).resolve() / stamp / "%j"
    executor = make_executor(folder, executor_params)
    extra = dict(executor_params.get("additional_parameters") or {})
    submitted: list[submitit.Job] = []
    first, after = _by_reference(todo)
    for phase in (first, after):
        if packs is None:
            groups = [phase[i:i + cells_per_job] for i in range(0, len(phase), cells_per_job)]
        else:
            members = set(phase)
            groups = [group for group in ([d for d in pack if d in members] for pack in packs) if group]
        if not groups:
            continue
        waits_for = _array_ids(submitted)  # empty for the first phase
        arrays: list[list[submitit.Job]] = []
        for start, stop, throttle, wait_for in array_plan(len(groups), limit, array_parallelism):
            ids = waits_for + ([arrays[wait_for][0].job_id.split("_")[0]] if wait_for is not None else [])
            dependency = {"dependency": "afterany:" + ":".join(ids)} if ids else {}
            executor.update_parameters(slurm_array_parallelism=throttle,
                                       slurm_additional_parameters={**extra, **dependency})
            chunk = groups[start:stop]
            jobs = executor.map_array(*_job(chunk, packed=packs is not None))
            arrays.append(jobs)
            for job, group in zip(jobs, chunk):
                _record(job, group, folder.parent)
        submitted += [job for jobs in arrays for job in jobs]
    return submitted


def _job(groups: list[list[Path]], packed: bool) -> tuple:
    """map_array's function and arguments: run_cells over each group, or each group as one pack."""
    dirs = [[str(d) for d in group] for group in groups]
    if not packed:
        return run_cells, dirs
    from memsweep.pack.launch import run_packed_cells  # torch loads here only for a packed submission

    return run_packed_cells, dirs, [len(group) for group in groups]


def _by_reference(cell_dirs: list[Path]) -> tuple[list[Path], list[Path]]:
    """(cells that need nothing first, text cells whose reference cell is queued with them): the
    second set is submitted with an `afterany` dependency on the first set's arrays, so no cell
    holds a node waiting for its reference. afterany, not afterok: a dependent of a failed
    reference then starts, sees it failed and ends at once as blocked, instead of pending forever."""
    from memsweep.config import load_cell_config
    from memsweep.text.reference import reference_dir

    queued = {d.name for d in cell_dirs}
    first, after = [], []
    for d in cell_dirs:
        ref = None
        if (d / CONFIG_FILE).exists() and "kind: text" in (d / CONFIG_FILE).read_text():
            ref = reference_dir(load_cell_config(d / CONFIG_FILE), d)
        (after if ref is not None and ref.name in queued else first).append(d)
    return first, after


def _array_ids(jobs: list[submitit.Job]) -> list[str]:
    return list(dict.fromkeys(job.job_id.split("_")[0] for job in jobs))


def _record(job: submitit.Job, group: list[Path], folder: Path) -> None:
    array_job_id, _, task = job.job_id.partition("_")
    entry = {"job_id": job.job_id, "array_job_id": array_job_id if task else None,
             "array_task_id": int(task) if task else None,
             "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "submitted_unix": time.time(),
             "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "submitit_folder": str(folder),
             "cells_in_job": [d.name for d in group]}
    for position, cell_dir in enumerate(group):
        old = slurm_record(cell_dir)
        previous = [] if old is None else [{k: v for k, v in old.items() if k != "previous"}, *old.get("previous", [])]
        write_json_atomic(cell_dir / SLURM_FILE, {**entry, "position_in_job": position, "previous": previous})


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (`123` or `123_4`) from sacct; pending array tasks that sacct
    lists as a range (`123_[4-9%2]`) are expanded. Ids sacct does not know are left out."""
    if not job_ids:
        return {}
    out = _slurm("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j",
                 ",".join(sorted({j.split("_")[0] for j in job_ids})))
    states: dict[str, str] = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        for expanded in _expand(job):
            states[expanded] = state.split()[0] if state else state
    return {j: states[j] for j in job_ids if j in states}


def _expand(job: str) -> list[str]:
    found = re.fullmatch(r"(\d+)_\[([^\]%]+)(?:%\d+)?\]", job)
    if found is None:
        return [job]
    ids = []
    for part in found.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{found.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


if __name__ == "__main__":  # pragma: no cover - a job is run by submitit, this is for debugging
    print(run_cells(sys.argv[1:]))
