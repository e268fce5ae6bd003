"""Run a planned sweep on this machine with K worker processes (`memsweep run --workers K`).

Why not Hydra's basic launcher: it runs cells one after another in one process, and small cells
use a CPU core far better one per process than all cores per cell. Each worker walks the whole
plan in order and runs every cell through memsweep.launcher.run_cells, the same job function a
SLURM array runs: a cell's claim (memsweep.claim) makes the workers share out the cells with no
coordinator, a finished cell is skipped, and a killed run resumes from the cells' checkpoints
when started again. A worker keeps going until no cell is left that it could claim or that a
live worker trains, so the cell of a worker that was killed is taken over by the others. Threads are split evenly (OMP_NUM_THREADS = cores // K, unless set); on a
GPU machine worker i sees only GPU i mod (number of GPUs), so K = number of GPUs puts one cell on
each (untested here: no GPU). While the workers run, `memsweep run` shows the sweep's progress,
read from the cells' files (memsweep.console). With `--pack K` each worker claims up to K
compatible cells at a time and trains them as one pack (memsweep.pack.launch), every cell still
its own claim, checkpoints and record; with `--pack auto` the workers train the packs that the
cost model chose (memsweep.pack.plan, written to sweep.json by memsweep.cli), the others unpacked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from memsweep.sweep import read_plan


def plan_cell_dirs(sweep_dir: Path) -> list[str]:
    plan = read_plan(sweep_dir)
    if plan is None:
        raise FileNotFoundError(f"{sweep_dir} has no sweep.json: plan it first (memsweep plan ...)")
    return [str(Path(sweep_dir).resolve() / cell["cell_id"]) for cell in plan["cells"]]


def planned_packs(sweep_dir: Path) -> list[list[str]]:
    """sweep.json's packs (`run --pack auto`, memsweep.pack.plan) as lists of cell dirs."""
    root = Path(sweep_dir).resolve()
    return [[str(root / cell_id) for cell_id in pack] for pack in (read_plan(sweep_dir) or {}).get("packs", [])]


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


RESUMABLE_STATES = ("pending", "stale", "interrupted", "preempted")
"""States a worker (re)claims: never started, holder died, or stopped with a checkpoint."""
POLL_SECONDS = 2.0
PROGRESS_SECONDS = 3.0
"""How often `memsweep run` reads the cells' states for its progress display (memsweep.console)."""
MAX_ROUNDS = 3
"""Rounds of workers `memsweep run` starts while workers die (killed) with cells left to run."""


def _open_cells(cell_dirs: list[str]) -> tuple[list[str], list[str]]:
    """(cells a worker can claim now, cells a live worker is training)."""
    from memsweep.sweepstate import cell_state

    states = {d: cell_state(Path(d)).state for d in cell_dirs}
    return ([d for d, s in states.items() if s in RESUMABLE_STATES],
            [d for d, s in states.items() if s == "running"])


class _Forwarder:
    """While workers run, SIGINT/SIGTERM to `memsweep run` are passed on to them as SIGTERM (each
    running cell checkpoints and stops) instead of killing the parent mid-wait."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs, self.signal_name, self._previous = procs, None, {}

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def __enter__(self) -> "_Forwarder":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_workers(sweep_dir: Path, workers: int, pack: int | str | None = None) -> str | None:
    """Start the workers and wait for all, showing the sweep's progress; start another round if
    workers were killed and cells are left (at most MAX_ROUNDS). `pack`: cells per pack (None:
    no packing; `auto`: sweep.json's packs, memsweep.cli's `run --pack auto`). Returns the name of the signal that stopped the run, if any."""
    from memsweep.console import SweepProgress

    gpus = visible_gpus()
    cell_dirs = plan_cell_dirs(sweep_dir)
    with SweepProgress(_totals(cell_dirs)) as progress:
        for _ in range(MAX_ROUNDS):
            procs = [_start_worker(sweep_dir, worker_env(i, workers, gpus), progress, pack) for i in range(workers)]
            with _Forwarder(procs) as forwarder:
                codes = _wait(procs, cell_dirs, progress)
            if forwarder.signal_name is not None:
                return forwarder.signal_name
            killed = [c for c in codes if c < 0]
            if not killed or not any(_open_cells(cell_dirs)):
                return None
            progress.write(f"memsweep: {len(killed)} worker(s) killed "
                           f"({', '.join(signal.Signals(-c).name for c in killed)}); "
                           "starting the workers again for the cells left", sys.stderr)
    return None


def _totals(cell_dirs: list[str]) -> dict[str, int]:
    """How many of the planned cells are in each state (other cell dirs in the sweep dir aside)."""
    from memsweep.sweepstate import cell_state, counts

    return counts([cell_state(Path(d)) for d in cell_dirs])


def _start_worker(sweep_dir: Path, env: dict[str, str], progress, pack: int | str | None = None) -> subprocess.Popen:
    """A worker process. Under a progress bar its output is relayed above the bar (written
    straight to the terminal it would break the bar); otherwise it goes where ours goes."""
    command = [sys.executable, "-m", "memsweep.local_run", str(sweep_dir), *([str(pack)] if pack else [])]
    if progress.bar is None:
        return subprocess.Popen(command, env=env)
    proc = subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress.relay(proc.stdout, sys.stdout)
    progress.relay(proc.stderr, sys.stderr)
    return proc


def _wait(procs: list[subprocess.Popen], cell_dirs: list[str], progress) -> list[int]:
    """Wait for every worker, updating the progress display every PROGRESS_SECONDS."""
    while alive := [p for p in procs if p.poll() is None]:
        progress.update(_totals(cell_dirs))
        try:
            alive[0].wait(timeout=PROGRESS_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    progress.update(_totals(cell_dirs))
    return [p.returncode for p in procs]


def main() -> int:
    """A worker (`python -m memsweep.local_run SWEEP_DIR [PACK]`): pass over the plan until no
    cell is left that this worker could claim or that a live worker is training (a worker that
    was killed leaves its cell to the survivors); with PACK, in packs of up to PACK cells; with
    `auto`, in sweep.json's packs (the others unpacked)."""
    from memsweep.launcher import CellsFailed, run_cells

    cell_dirs = plan_cell_dirs(Path(sys.argv[1]))
    pack = (sys.argv[2] if sys.argv[2] == "auto" else int(sys.argv[2])) if len(sys.argv) > 2 else None
    planned = planned_packs(Path(sys.argv[1])) if pack == "auto" else None
    failed = False
    claimable = cell_dirs
    while True:
        try:
            if pack:
                from memsweep.pack.launch import run_packed_cells

                run_packed_cells(claimable, 0 if planned is not None else pack, planned)
            else:
                run_cells(claimable, wait_for_reference=False)  # a cell whose reference runs elsewhere waits its turn
        except CellsFailed as err:
            print(f"memsweep: {err}", file=sys.stderr)
            failed = True
        tried, (claimable, running) = claimable, _open_cells(cell_dirs)
        if not claimable and not running:
            return 1 if failed else 0
        if claimable == tried and not running:
            return 1  # these cells cannot be started (e.g. a missing config.yaml); status names them
        if not claimable or claimable == tried:
            time.sleep(POLL_SECONDS)
            claimable, _ = _open_cells(cell_dirs)


if __name__ == "__main__":
    sys.exit(main())
