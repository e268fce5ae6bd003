"""launch/local-slurm stands up a real one-node SLURM cluster with accounting (needs root).

The cluster is left running at the end: later tests submit to it.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import local_slurm


pytestmark = pytest.mark.slurm



def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout



def job_state(job_id: str) -> str:
    out = run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
    return out.strip().splitlines()[0] if out.strip() else ""


def test_a_job_runs_and_sacct_records_it(cluster, tmp_path):
    job_id = run(
        "sbatch", "--parsable", "-D", str(tmp_path), "-o", str(tmp_path / "%j.out"),
        "--wrap", "echo hello from slurm",
    ).strip().split(";")[0]
    deadline = time.monotonic() + 60
    while (state := job_state(job_id)) != "COMPLETED" and time.monotonic() < deadline:
        assert state not in {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}, state
        time.sleep(0.5)
    assert state == "COMPLETED", f"job {job_id} is {state!r} after 60 s"
    assert (tmp_path / f"{job_id}.out").read_text().strip() == "hello from slurm"


def test_start_again_is_a_fast_no_op_and_status_is_up(cluster):
    began = time.monotonic()
    again = local_slurm("start", timeout=60)
    elapsed = time.monotonic() - began
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert elapsed < 5, f"a second start took {elapsed:.1f} s"
    status = local_slurm("status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}: running" in status.stdout
    assert "debug*" in status.stdout and "urgent" in status.stdout
