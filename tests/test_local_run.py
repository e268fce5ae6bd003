"""`memsweep run` under faults: the issue's own reproduction, Ctrl-C, and a worker killed mid-cell."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from memsweep.checkpoint import checkpoints
from memsweep.claim import read_claim
from memsweep.sweepstate import counts, sweep_states

TINY = ["experiment=smoke", "logger=none", "model.n_head=1", "model.d_model=16", "data.vocab_size=64",
        "data.seq_len=16", "data.n_heldout=32", "trainer.saturation.min_steps=100000"]


def memsweep_run(sweep_dir: Path, *overrides: str, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "memsweep.cli", "run", *TINY, *overrides, "--workers",
                             str(workers), "--no-report", "--sweep-dir", str(sweep_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def trained_twice(cell_dir: Path) -> list[int]:
    """Evaluation steps that metrics.csv lists more than once: two trainers wrote, or a resume
    did not drop the rows after its checkpoint."""
    with (cell_dir / "metrics.csv").open() as fh:
        steps = Counter(int(row["step"]) for row in csv.DictReader(fh))
    return [s for s, n in steps.items() if n > 1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout:.0f} s")


def test_four_workers_on_eight_cells_train_each_cell_once(tmp_path):
    """The issue's reproduction: 4 workers raced into 8 cells and one cell listed every step twice."""
    proc = memsweep_run(tmp_path, "data.n_samples=8,16,32,64", "trainer.max_steps=60", workers=4)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    states = sweep_states(tmp_path)
    assert counts(states)["done"] == len(states) == 8
    assert all(trained_twice(c.cell_dir) == [] for c in states)
    assert all(read_claim(c.cell_dir)["generation"] == 1 for c in states)  # claimed once, never taken over


@pytest.mark.slow
def test_ctrl_c_checkpoints_running_cells_and_a_rerun_resumes_them(tmp_path):
    grid = ("data.n_samples=32", "precision=fp32,bf16", "trainer.max_steps=1500", "trainer.eval_interval=100",
            "trainer.checkpoint_every_steps=50")
    proc = memsweep_run(tmp_path, *grid)
    cells = lambda: [d for d in tmp_path.iterdir() if (d / "checkpoints").is_dir()]  # noqa: E731
    wait_for(lambda: len([d for d in cells() if checkpoints(d)]) == 2, 300, "both cells checkpointed")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert "rerun the same command to resume" in out
    records = [json.loads((d / "result.json").read_text()) for d in cells()]
    assert [r["status"] for r in records] == ["interrupted"] * 2, [r.get("error") for r in records]
    assert all(r["signal"] in ("SIGINT", "SIGTERM") and r["steps"] < 1500 for r in records)
    assert "SystemExit" not in out and "failed" not in out.lower()

    again = memsweep_run(tmp_path, *grid)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    for d in cells():
        done = json.loads((d / "result.json").read_text())
        assert done["status"] == "done" and done["resumed_from_step"] >= 50
        assert trained_twice(d) == []


@pytest.mark.slow
def test_a_killed_worker_leaves_its_cell_to_the_survivor(tmp_path):
    grid = ("data.n_samples=16,32,64", "precision=fp32", "trainer.max_steps=1000", "trainer.eval_interval=100",
            "trainer.checkpoint_every_steps=50")
    proc = memsweep_run(tmp_path, *grid)
    victim_cell = wait_for(lambda: next((d for d in tmp_path.iterdir() if d.is_dir() and checkpoints(d)), None),
                           300, "a checkpoint")
    os.kill(read_claim(victim_cell)["pid"], signal.SIGKILL)  # the worker process training that cell
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "failed" not in out.lower()
    states = sweep_states(tmp_path)
    assert counts(states)["done"] == len(states) == 3
    victim = json.loads((victim_cell / "result.json").read_text())
    assert victim["resumed_from_step"] and read_claim(victim_cell)["generation"] == 2
    assert all(trained_twice(c.cell_dir) == [] for c in states)
