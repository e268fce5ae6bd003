"""Sweeps on the real local SLURM of launch/local-slurm: submit and exit, relaunch, failures,
array splitting, requeue and resume, and Hydra's own submitit launcher.

The tests marked `slurm` start the cluster (root only) and leave it running; the others check the
pure parts (array split, presets, the allocation check) anywhere. Cells are tiny (1L d16, tens to
a few hundred steps) because the machine has 2 shared cores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memsweep.checkpoint import checkpoint_dir, checkpoints, step_of
from memsweep.claim import read_claim
from memsweep.config import ConfigError
from memsweep.launcher import array_plan, job_states, read_max_array_size, submit_cells
from memsweep.submit_cli import check_allocation, launch_settings
from memsweep.sweep import plan_sweep, write_plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "cluster=slurm-local", "resources=cpu"]
LOCAL = {"partition": "debug", "timeout_min": 10, "cpus_per_task": 1, "name": "memsweep-test"}
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"}



def memsweep(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`memsweep submit|status ...` as a user runs it (a separate process)."""
    registered = "add_submit_command" in (ROOT / "memsweep" / "cli.py").read_text()
    module = "memsweep.submit_cli" if args[0] == "submit" and not registered else "memsweep.cli"
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180,
                          cwd=ROOT)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


def wait_until(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(every)


def result(cell_dir: Path) -> dict | None:
    try:
        return json.loads((cell_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def final(cell_dir: Path) -> bool:
    claim = read_claim(cell_dir)
    return (result(cell_dir) or {}).get("status") in ("done", "failed") and (claim is None or claim.get("released"))


def slurm_json(cell_dir: Path) -> dict:
    return json.loads((cell_dir / "slurm.json").read_text())


def live_states(job_ids: list[str]) -> dict[str, str]:
    """squeue for jobs still queued (sacct can lag behind a fresh submission), sacct for the rest."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    queued = dict(line.split() for line in out.splitlines() if line.strip())
    return {**job_states([j for j in job_ids if j not in queued]), **{j: queued[j] for j in job_ids if j in queued}}


def plant_a_file_where_checkpoints_go(cell_dir: Path) -> Path:
    """A file where the cell's checkpoints/ directory must be: the cell fails deterministically at
    its first checkpoint, inside the job. (An unloadable checkpoint no longer fails a cell: it is
    set aside for the one before, tests/test_faults.py.)"""
    path = checkpoint_dir(cell_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file, not a directory\n")
    return path


# ---- (a) (b) (c): one smoke sweep, submitted and left, relaunched, a failed cell retried ----------

@pytest.fixture(scope="module")
def smoke(cluster, tmp_path_factory):
    """The smoke grid (4 cells, 2 per job) with one cell made to fail, submitted with `memsweep
    submit`; the job states are read the moment submit returns."""
    sweep = tmp_path_factory.mktemp("smoke-sweep")
    plan = plan_sweep(SMOKE, sweep)
    write_plan(plan)
    bad = plan.cells[0].cell_dir  # first in its job: its partner must still run
    plant_a_file_where_checkpoints_go(bad)
    began = time.monotonic()
    out = memsweep("submit", *SMOKE, "--sweep-dir", str(sweep), "--cells-per-job", "2").stdout
    returned_after = time.monotonic() - began
    ids = sorted({slurm_json(c.cell_dir)["job_id"] for c in plan.cells})
    states = live_states(ids)
    return {"dir": sweep, "plan": plan, "bad": bad, "out": out, "ids": ids, "states_at_return": states,
            "returned_after": returned_after}


@pytest.fixture(scope="module")
def smoke_finished(smoke):
    cells = [c.cell_dir for c in smoke["plan"].cells]
    wait_until(lambda: all(final(c) for c in cells), 240, "every smoke cell finished")
    wait_until(lambda: all(s not in ACTIVE for s in live_states(smoke["ids"]).values()), 60, "every job ended")
    return smoke


@pytest.mark.slurm
def test_submit_exits_while_jobs_are_queued_then_every_cell_finishes(smoke_finished):
    smoke = smoke_finished
    assert len(smoke["plan"].cells) == 4 and len(smoke["ids"]) == 2, smoke["out"]
    assert "queued 4 in 2 jobs (1 arrays)" in smoke["out"]
    # submit returned while its jobs were still queued or running: it does not wait for them.
    assert set(smoke["states_at_return"]) == set(smoke["ids"])
    assert set(smoke["states_at_return"].values()) <= {"PENDING", "RUNNING"}, smoke["states_at_return"]
    for cell in smoke["plan"].cells:
        record = slurm_json(cell.cell_dir)
        assert record["array_task_id"] in (0, 1) and Path(record["stdout"]).exists()
        assert ".submitit" in record["submitit_folder"]
        if cell.cell_dir != smoke["bad"]:
            assert result(cell.cell_dir)["status"] == "done", result(cell.cell_dir)
            assert result(cell.cell_dir)["steps"] == 30
    # The failing cell says so, with its error and traceback, and its job is FAILED in SLURM,
    # while the other cell of the same job finished.
    failed = result(smoke["bad"])
    assert failed["status"] == "failed" and "FileExistsError" in failed["error"], failed.get("error")
    assert "Traceback" in failed["traceback"]
    bad_job = slurm_json(smoke["bad"])
    partner = [c.cell_dir for c in smoke["plan"].cells if slurm_json(c.cell_dir)["job_id"] == bad_job["job_id"]]
    assert len(partner) == 2 and all(result(c)["status"] in ("done", "failed") for c in partner)
    assert live_states([bad_job["job_id"]])[bad_job["job_id"]] == "FAILED"
    log = Path(bad_job["stderr"]).read_text()
    assert "CellsFailed: 1 of 2 cells failed" in log
    status = json.loads(memsweep("status", str(smoke["dir"]), "--json").stdout)
    assert status["counts"]["done"] == 3 and status["counts"]["failed"] == 1


@pytest.mark.slurm
def test_relaunch_queues_nothing_and_leaves_finished_cells_alone(smoke_finished):
    smoke = smoke_finished
    cells = [c.cell_dir for c in smoke["plan"].cells]
    before = {c: ((c / "result.json").read_bytes(), (c / "slurm.json").read_bytes()) for c in cells}
    out = memsweep("submit", *SMOKE, "--sweep-dir", str(smoke["dir"]), "--cells-per-job", "2").stdout
    assert "queued 0 in 0 jobs" in out and "3 done" in out and "1 failed (--retry-failed" in out, out
    assert {c: ((c / "result.json").read_bytes(), (c / "slurm.json").read_bytes()) for c in cells} == before


@pytest.mark.slurm
def test_retry_failed_reruns_only_the_failed_cell(smoke_finished):
    smoke = smoke_finished
    bad, cells = smoke["bad"], [c.cell_dir for c in smoke["plan"].cells]
    done_before = {c: (c / "result.json").read_bytes() for c in cells if c != bad}
    checkpoint_dir(bad).unlink()  # the cause is fixed; now run it again
    out = memsweep("submit", *SMOKE, "--sweep-dir", str(smoke["dir"]), "--retry-failed").stdout
    assert "queued 1 in 1 jobs" in out, out
    kept = list(bad.glob("result.failed-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["status"] == "failed"
    assert slurm_json(bad)["previous"][0]["job_id"] in smoke["ids"]
    wait_until(lambda: final(bad), 180, "the retried cell finished")
    assert result(bad)["status"] == "done"
    assert {c: (c / "result.json").read_bytes() for c in cells if c != bad} == done_before
    status = json.loads(memsweep("status", str(smoke["dir"]), "--json").stdout)
    assert status["counts"]["done"] == 4


@pytest.mark.slurm
def test_a_bad_grid_or_allocation_queues_nothing(cluster, tmp_path):
    for extra, message in ((["model.d_model=17"], "model.d_model"),
                           (["trainer.devices=2"], "resources.tasks_per_node"),
                           (["cluster.partition=nope"], "invalid partition"),
                           (["cluster=local"], "memsweep submit queues on SLURM")):
        done = memsweep("submit", *SMOKE, *extra, "--sweep-dir", str(tmp_path / "s"), check=False)
        assert done.returncode == 2 and message in done.stderr and "nothing was queued" in done.stderr, done.stderr
    assert not (tmp_path / "s").exists()  # no plan, no submitit folder: nothing went to sbatch
    assert str(tmp_path) not in subprocess.run(["squeue", "-h", "-o", "%o"], capture_output=True, text=True).stdout


# ---- (d) MaxArraySize -------------------------------------------------------------------------

@pytest.mark.slurm
def test_max_array_size_is_read_from_the_live_cluster(cluster):
    conf = Path("/etc/slurm/slurm.conf").read_text()
    configured = int(re.search(r"^MaxArraySize=(\d+)", conf, re.MULTILINE).group(1))
    assert read_max_array_size() == configured


@pytest.mark.slurm
def test_an_array_larger_than_max_array_size_is_split_and_throttled(cluster, tmp_path):
    plan = plan_sweep(["experiment=smoke", "data.n_samples=8", "precision=fp32", "seed=0,1,2,3,4"], tmp_path)
    write_plan(plan)
    held = {**LOCAL, "additional_parameters": {"hold": True}}  # never runs: only the layout is checked
    jobs = submit_cells([c.cell_dir for c in plan.cells], held, log_dir=tmp_path / ".submitit",
                        max_array_size=2, array_parallelism=4)
    try:
        arrays: dict[str, list[int]] = {}
        for job in jobs:
            array, _, task = job.job_id.partition("_")
            arrays.setdefault(array, []).append(int(task or 0))
        assert sorted(len(t) for t in arrays.values()) == [1, 2, 2]
        assert all(max(tasks) < 2 for tasks in arrays.values())  # indices below MaxArraySize
        throttles = []
        for array in arrays:
            shown = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True).stdout
            found = re.search(r"ArrayTaskThrottle=(\d+)", shown)
            throttles.append(int(found.group(1)) if found else 1)  # a one-task "array" is a plain job
        assert sum(throttles) <= 4
        assert {slurm_json(c.cell_dir)["job_id"] for c in plan.cells} == {j.job_id for j in jobs}
    finally:
        subprocess.run(["scancel", *{j.job_id.split("_")[0] for j in jobs}], check=False)


def test_array_plan_respects_both_limits():
    for n, size, parallel in [(1, 1001, 256), (10, 3, 8), (10, 3, 2), (1001, 1000, 5), (7, 7, 1)]:
        plan = array_plan(n, size, parallel)
        assert plan[0][0] == 0 and plan[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
        assert all(0 < stop - start <= size for start, stop, _, _ in plan)
        running = [t for _, _, t, wait in plan if wait is None]
        assert sum(running) <= parallel and all(t >= 1 for _, _, t, _ in plan)
        assert all(wait is None or wait < i for i, (_, _, _, wait) in enumerate(plan))


def test_cluster_presets_feed_hydra_launcher_and_submit():
    launch = launch_settings([*SMOKE, "resources.mem_gb=2", "seed=0,1"])
    params = launch.executor_params
    assert params["partition"] == "debug" and params["mem_gb"] == 2 and params["tasks_per_node"] == 1
    assert params["signal_delay_s"] == 30 and launch.array_parallelism == 8 and launch.max_array_size is None
    with pytest.raises(ConfigError, match="memsweep submit queues on SLURM"):
        launch_settings(["experiment=smoke"])  # cluster=local
    with pytest.raises(ConfigError, match="resources"):
        launch_settings([*SMOKE, "resources=cpu,gpu-1"])


def test_allocation_check_names_both_keys():
    gpu8 = plan_sweep(["experiment=smoke", "data.n_samples=8", "precision=fp32", "resources=gpu-8"], None)
    params = launch_settings(["cluster=slurm", "resources=gpu-8"]).executor_params
    check_allocation(gpu8.cells, params)  # resources set trainer.devices: they agree
    with pytest.raises(ConfigError, match=r"trainer.devices x trainer.num_nodes = 8 x 1 = 8 .*resources.tasks_per_node"):
        check_allocation(gpu8.cells, {**params, "tasks_per_node": 4, "gpus_per_node": 4})
    with pytest.raises(ConfigError, match="resources.gpus_per_node"):
        check_allocation(gpu8.cells, {**params, "gpus_per_node": 4})


# ---- (e) requeue and preemption signal: resume from the newest checkpoint ---------------------

@pytest.mark.slurm
def test_requeued_and_signalled_cell_resumes_to_the_uninterrupted_result(cluster, tmp_path):
    # Long enough that `scancel --signal` (which slurmctld may make wait a few seconds under load)
    # lands before the resumed run ends.
    grid = ["experiment=smoke", "data.n_samples=16", "precision=fp32", "trainer.max_steps=800",
            "trainer.eval_interval=60", "trainer.checkpoint_every_steps=20"]
    runs = [plan_sweep(grid, tmp_path / name) for name in ("interrupted", "reference")]
    for plan in runs:
        write_plan(plan)
    cell, reference = (plan.cells[0].cell_dir for plan in runs)
    # timeout_min <= 10: submitit's own rule would call any USR2 a time-out and refuse to requeue a
    # non-checkpointable job; memsweep's handler owns the signal, so the cell must requeue anyway.
    jobs = submit_cells([cell, reference], {**LOCAL, "timeout_min": 5, "signal_delay_s": 30},
                        log_dir=tmp_path / ".submitit", array_parallelism=2)
    job = slurm_json(cell)["job_id"]

    # 1. `scontrol requeue` (SIGTERM, then SIGKILL after KillWait) once a checkpoint is written.
    wait_until(lambda: checkpoints(cell), 150, "a first checkpoint")
    first_pid = read_claim(cell)["pid"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    # 2. Once the requeued job has claimed the cell again and written a checkpoint of its own,
    #    SLURM's warning signal (what preemption and the time limit send: --signal=USR2@N).
    wait_until(lambda: (read_claim(cell) or {}).get("pid") not in (None, first_pid), 150, "the job restarted")
    resumed = step_of(checkpoints(cell)[0])
    wait_until(lambda: step_of(checkpoints(cell)[0]) > resumed, 150, "a checkpoint of the resumed run")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: (result(cell) or {}).get("status") in ("preempted", "done"), 60, "the signal handled")
    preempted = result(cell)
    wait_until(lambda: final(cell) and final(reference), 240, "both cells finished")

    done, ref = result(cell), result(reference)
    assert preempted["status"] == "preempted", "the cell finished before the signal: make it longer"
    assert done["status"] == ref["status"] == "done", (done.get("error"), ref.get("error"))
    assert done["resumed_from_step"] >= preempted["steps"] > 0
    assert done["steps"] == ref["steps"] == 800
    assert done["memorized_bits"] == ref["memorized_bits"]
    assert done["train_loss"] == ref["train_loss"]
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job],
                             capture_output=True, text=True, check=True).stdout.split()
    assert history.count("REQUEUED") >= 2, history
    # Exactly one component acted on USR2: not submitit's handler, not Lightning's auto-requeue.
    logs = "".join(Path(slurm_json(cell)[k]).read_text() for k in ("stdout", "stderr"))
    assert "Caught signal" not in logs and "Handling auto-requeue signal" not in logs
    assert len(jobs) == 2


@pytest.mark.slurm
def test_scancel_stops_a_packed_job_without_starting_its_next_cell(cluster, tmp_path):
    long = plan_sweep(["experiment=smoke", "data.n_samples=16", "precision=fp32", "trainer.max_steps=400",
                       "trainer.checkpoint_every_steps=20", "seed=7"], tmp_path)
    short = plan_sweep(["experiment=smoke", "data.n_samples=8", "precision=fp32", "seed=7"], tmp_path)
    for plan in (long, short):
        write_plan(plan)
    first, second = long.cells[0].cell_dir, short.cells[0].cell_dir
    [job] = submit_cells([first, second], LOCAL, log_dir=tmp_path / ".submitit", array_parallelism=1,
                         cells_per_job=2)
    wait_until(lambda: checkpoints(first), 150, "a first checkpoint")
    subprocess.run(["scancel", job.job_id], check=True)
    wait_until(lambda: live_states([job.job_id]).get(job.job_id, "").startswith("CANCELLED"), 60, "cancelled")
    wait_until(lambda: (result(first) or {}).get("status") == "interrupted", 90,
               f"the first cell checkpointed (job {job.job_id}, {first})")
    stopped = result(first)
    assert stopped["signal"] == "SIGTERM" and stopped["requeue"] is False
    assert checkpoints(first) and stopped["steps"] < 400
    time.sleep(6)  # the job exits on its own after the first cell; a second cell would have started by now
    assert not (second / "result.json").exists()  # SIGTERM means stop: the next cell never started
    assert "SIGTERM: stopping" in Path(slurm_json(first)["stdout"]).read_text()


# ---- (f) Hydra's own launcher -----------------------------------------------------------------

@pytest.mark.slurm
def test_hydra_submitit_launcher_runs_the_grid_as_one_array(cluster, tmp_path):
    sweep = tmp_path / "hydra-sweep"
    done = subprocess.run(
        [shutil.which("memsweep-train") or "memsweep-train", "-m", "experiment=smoke",
         "hydra/launcher=submitit_slurm", "cluster=slurm-local", "resources=cpu", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = [d for d in sweep.iterdir() if (d / "result.json").exists()]
    assert len(cells) == 4 and all(result(d)["status"] == "done" for d in cells)
    assert all((d / "config.yaml").exists() for d in cells)
    job_dirs = [p.name for p in (sweep / ".submitit").glob("*/*") if p.is_dir()]
    assert len({name.split("_")[0] for name in job_dirs}) == 1, job_dirs  # one array


@pytest.mark.slurm
def test_hydra_launcher_with_pack_queues_one_pack_per_array_task(cluster, tmp_path):
    """hydra.launcher.pack=2 on four packable cells: two array tasks of two cells each, every cell
    its own complete record naming its pack, and the multirun returns once they are done."""
    sweep = tmp_path / "hydra-packed"
    done = subprocess.run(
        [shutil.which("memsweep-train") or "memsweep-train", "-m", "experiment=smoke", "precision=fp32",
         "seed=0,1", "cluster=slurm-local", "resources=cpu", "hydra.launcher.pack=2", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = [d for d in sweep.iterdir() if (d / "result.json").exists()]
    assert len(cells) == 4 and all(result(d)["status"] == "done" for d in cells)
    packs = {result(d)["pack"]["id"] for d in cells}
    assert len(packs) == 2 and all(result(d)["pack"]["size"] == 2 for d in cells), packs
    tasks = {slurm_json(d)["job_id"] for d in cells}
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks  # one array, a pack per task
    assert {p for plan in json.loads((sweep / "sweep.json").read_text())["packs"] for p in plan} == {d.name for d in cells}

    again = subprocess.run(done.args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {slurm_json(d)["job_id"] for d in cells} == tasks  # done cells are not queued again


def test_hydra_launcher_refuses_a_pack_size_that_is_not_one(tmp_path):
    from memsweep.config import ConfigError
    from hydra_plugins.memsweep_launcher.memsweep_launcher import _pack_size

    assert _pack_size("4") == 4
    for bad in ("0", "four", "-1"):
        with pytest.raises(ConfigError, match="hydra.launcher.pack"):
            _pack_size(bad)
