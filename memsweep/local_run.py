"""Run a planned sweep on this machine with K worker processes (`memsweep run --workers K`).

Why not Hydra's basic launcher: it runs cells one after another in one process, and small cells
use a CPU core far better one per process than all cores per cell. Each worker walks the whole
plan in order and runs every cell through memsweep.launcher.run_cells, the same job function a
SLURM array runs: a cell's claim (memsweep.claim) makes the workers share out the cells with no
coordinator, a finished cell is skipped, and a killed run resumes from the cells' checkpoints
when started again. Threads are split evenly (OMP_NUM_THREADS = cores // K, unless set); on a
GPU machine worker i sees only GPU i mod (number of GPUs), so K = number of GPUs puts one cell on
each (untested here: no GPU).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from memsweep.sweep import read_plan


def plan_cell_dirs(sweep_dir: Path) -> list[str]:
    plan = read_plan(sweep_dir)
    if plan is None:
        raise FileNotFoundError(f"{sweep_dir} has no sweep.json: plan it first (memsweep plan ...)")
    return [str(Path(sweep_dir).resolve() / cell["cell_id"]) for cell in plan["cells"]]


def visible_gpus() -> list[str]:
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[:count] if visible else [str(i) for i in range(count)]


def default_workers() -> int:
    """One per GPU, or one per CPU core without GPUs."""
    return len(visible_gpus()) or os.cpu_count() or 1


def worker_env(index: int, workers: int, gpus: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def run_workers(sweep_dir: Path, workers: int) -> int:
    """Start the workers, wait for all; returns how many ended with failed cells. Ctrl-C sends
    them SIGTERM, on which each running cell checkpoints and stops."""
    gpus = visible_gpus()
    procs = [subprocess.Popen([sys.executable, "-m", "memsweep.local_run", str(sweep_dir)],
                              env=worker_env(i, workers, gpus)) for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait() for p in procs]
        raise
    return sum(code != 0 for code in codes)


def main() -> int:
    from memsweep.launcher import CellsFailed, run_cells

    try:
        run_cells(plan_cell_dirs(Path(sys.argv[1])))
    except CellsFailed as err:
        print(f"memsweep: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
