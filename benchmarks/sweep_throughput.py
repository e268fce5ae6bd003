"""Sweep throughput on this machine through the local SLURM of launch/local-slurm.

    launch/local-slurm start && python benchmarks/sweep_throughput.py [--per-job 1 2 4] [--repeats 3]

Prints, in one run:
  1. cells per hour for the smoke grid (experiment=smoke, here x `seed=0,1`: 8 cells) queued with
     `memsweep.launcher.submit_cells`, one cell per job vs several cells packed per job (from
     submission until every cell's result.json is final), and the ratio to one cell per job;
  2. the per-job overhead of submitit's local executor vs SLURM: time from submission until the
     job's result file exists, for a no-op job (`os.getpid`: scheduling + interpreter start) and
     for a trivial cell (one training step, through `memsweep.launcher.run_cells`: adds importing
     torch and Lightning and a cell's set-up, which every real cell job pays), with the ratio.
Why: small cells are dominated by per-job costs (scheduling, Python and torch start-up), which is
what `--cells-per-job` amortises. The machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import submitit

from memsweep.launcher import make_executor, run_cells, submit_cells
from memsweep.claim import read_claim
from memsweep.record import read_result
from memsweep.submit_cli import launch_settings
from memsweep.sweep import plan_sweep, write_plan

GRID = ["experiment=smoke", "cluster=slurm-local", "resources=cpu", "seed=0,1"]
TRIVIAL = ["experiment=smoke", "data.n_samples=8", "precision=fp32", "trainer.max_steps=1", "trainer.eval_interval=1"]


def _finished(cell_dir: Path) -> bool:
    claim = read_claim(cell_dir)
    return (read_result(cell_dir) or {}).get("status") in ("done", "failed") and (claim is None or claim.get("released"))


def grid_run(root: Path, per_job: int, params: dict, parallelism: int, timeout: float) -> tuple[float, int]:
    """Seconds from submission until every cell of a fresh copy of the grid is final."""
    plan = plan_sweep(GRID, root / f"per-job-{per_job}")
    write_plan(plan)
    cells = [c.cell_dir for c in plan.cells]
    began = time.perf_counter()
    submit_cells(cells, params, log_dir=plan.sweep_dir / ".submitit", array_parallelism=parallelism,
                 cells_per_job=per_job)
    while not all(_finished(c) for c in cells):
        if time.perf_counter() - began > timeout:
            raise SystemExit(f"grid with {per_job} cells per job not finished after {timeout:.0f} s")
        time.sleep(0.2)
    elapsed = time.perf_counter() - began
    failed = [c.name for c in cells if read_result(c)["status"] != "done"]
    if failed:
        raise SystemExit(f"cells failed: {failed}")
    return elapsed, len(cells)


def job_latency(executor: submitit.Executor, fn, *args) -> float:
    """Seconds from submit() until the job's result file is written (polled every 20 ms)."""
    began = time.perf_counter()
    job = executor.submit(fn, *args)
    while not job.paths.result_pickle.exists():
        if time.perf_counter() - began > 300:
            raise SystemExit(f"job {job.job_id} wrote no result in 300 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - began
    job.result()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-job", type=int, nargs="+", default=[1, 2, 4], help="cells per job to compare")
    parser.add_argument("--repeats", type=int, default=3, help="jobs per overhead measurement (median)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per grid run")
    args = parser.parse_args()
    params = launch_settings(GRID[1:3]).executor_params
    parallelism = int(params["array_parallelism"])
    with tempfile.TemporaryDirectory(prefix="memsweep-bench-") as tmp:
        root = Path(tmp)
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
              f"grid: {' '.join(GRID)}; array_parallelism {parallelism}")
        print(f"{'cells/job':>9} {'cells':>5} {'seconds':>8} {'cells/hour':>10} {'vs 1/job':>8}")
        base = None
        for per_job in args.per_job:
            seconds, n = grid_run(root, per_job, params, parallelism, args.timeout)
            rate = n / seconds * 3600
            base = base or rate
            print(f"{per_job:>9} {n:>5} {seconds:>8.1f} {rate:>10.0f} {rate / base:>7.2f}x", flush=True)

        local = submitit.LocalExecutor(folder=root / "local" / "%j")
        local.update_parameters(timeout_min=10)
        slurm = make_executor(root / "slurm" / "%j", params)
        seeds = iter(range(1000))

        def trivial_cell() -> list[str]:
            """A fresh one-step cell (a new seed each time, so never done)."""
            plan = plan_sweep([*TRIVIAL, f"seed={next(seeds)}"], root / "trivial")
            write_plan(plan)
            return [str(plan.cells[0].cell_dir)]

        print(f"\n{'per-job overhead (s, median of ' + str(args.repeats) + ')':40} {'local':>7} {'SLURM':>7} {'ratio':>6}")
        for label, fn, make_args in (("no-op job (os.getpid)", os.getpid, lambda: ()),
                                     ("trivial cell (1 step) via run_cells", run_cells, lambda: (trivial_cell(),))):
            times = {}
            for name, executor in (("local", local), ("slurm", slurm)):
                times[name] = statistics.median(job_latency(executor, fn, *make_args()) for _ in range(args.repeats))
            print(f"{label:40} {times['local']:>7.2f} {times['slurm']:>7.2f} {times['slurm'] / times['local']:>5.2f}x",
                  flush=True)
        print(f"# load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    sys.exit(main())
