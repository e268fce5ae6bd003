"""Preemption, checkpoints, resume and claims, with real signals and real files."""

import json
import os
import signal
import socket
import time

import pytest

import memsweep.cell as cell_module
from memsweep.cell import run_cell, run_cell_dir
from memsweep.checkpoint import checkpoints, newest_valid_checkpoint, step_of
from memsweep.claim import CLAIM_DIR, CellClaim, read_claim
from memsweep.config import save_cell_config
from tests.test_cell import metrics_rows

RESUMABLE = ("trainer.max_steps=80", "trainer.eval_interval=20", "trainer.checkpoint_every_steps=10")


def signal_at_step(monkeypatch, step: int, sig=signal.SIGUSR2):
    """Deliver a real preemption signal to this process during training step `step`."""
    original = cell_module.MemorizationModule.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == step:
            os.kill(os.getpid(), sig)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(cell_module.MemorizationModule, "training_step", training_step)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from memsweep.config import cell_config
    from tests.conftest import SMALL, compose_config

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run_dir, run_cell(cell_config(compose_config([*SMALL, *RESUMABLE])), run_dir)


def test_preempted_cell_resumes_to_the_same_result(small_cell, tmp_path, monkeypatch, uninterrupted):
    cfg = small_cell(*RESUMABLE)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 37)
        first = run_cell(cfg, tmp_path)
    assert first["status"] == "preempted" and first["steps"] == 38  # checkpointed at the next boundary
    assert (first["signal"], first["requeue"]) == ("SIGUSR2", True)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "preempted"
    assert step_of(newest_valid_checkpoint(tmp_path)) == 38
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # handler given back

    resumed = run_cell(cfg, tmp_path)
    reference_dir, reference = uninterrupted
    assert resumed["status"] == "done" and resumed["resumed_from_step"] == 38
    assert resumed["steps"] == reference["steps"] == 80
    assert resumed["memorized_bits"] == reference["memorized_bits"]
    assert resumed["train_loss"] == reference["train_loss"]
    for got, want in zip(metrics_rows(tmp_path), metrics_rows(reference_dir), strict=True):
        got.pop("train_seconds"), want.pop("train_seconds")
        assert got == want
    assert [r["step"] for r in metrics_rows(tmp_path)] == [0, 20, 40, 60, 80]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(small_cell, tmp_path, monkeypatch, uninterrupted):
    cfg = small_cell(*RESUMABLE)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 55)
        run_cell(cfg, tmp_path)
    newest, previous = checkpoints(tmp_path)[:2]
    assert (step_of(newest), step_of(previous)) == (56, 50)
    with open(newest, "r+b") as fh:  # flip bytes in the middle: still a file, no longer intact
        fh.seek(newest.stat().st_size // 2)
        fh.write(b"\x00" * 64)
    with pytest.warns(UserWarning, match="corrupt"):
        resumed = run_cell(cfg, tmp_path)
    assert resumed["resumed_from_step"] == 50
    assert resumed["memorized_bits"] == uninterrupted[1]["memorized_bits"]


def test_run_cell_dir_runs_once(small_cell, tmp_path):
    cfg = small_cell("trainer.max_steps=10", "trainer.eval_interval=5")
    save_cell_config(cfg, tmp_path / "config.yaml")
    record = run_cell_dir(tmp_path)
    assert record["status"] == "done" and record["cell_id"] == cfg.cell_id
    assert read_claim(tmp_path)["released"] and read_claim(tmp_path)["final_status"] == "done"
    assert run_cell_dir(tmp_path) == record



def test_a_worker_that_saw_the_cell_unfinished_does_not_reclaim_it_once_done(small_cell, tmp_path, monkeypatch):
    """CI's race (4 workers, 8 cells): a worker reads result.json just before the holder writes
    `done` and releases; it must not take generation 2 and run over the finished cell."""
    cfg = small_cell("trainer.max_steps=10", "trainer.eval_interval=5")
    save_cell_config(cfg, tmp_path / "config.yaml")
    record = run_cell_dir(tmp_path)
    assert not CellClaim(tmp_path).acquire(finished=lambda: (tmp_path / "result.json").exists())
    real_read, stale = cell_module.read_result, iter([None])
    monkeypatch.setattr(cell_module, "read_result", lambda d: next(stale, None) or real_read(d))
    result_mtime = (tmp_path / "result.json").stat().st_mtime_ns
    assert run_cell_dir(tmp_path) == record
    assert read_claim(tmp_path)["generation"] == 1
    assert (tmp_path / "result.json").stat().st_mtime_ns == result_mtime

def test_a_live_claim_keeps_other_processes_out(small_cell, tmp_path):
    cfg = small_cell("trainer.max_steps=10")
    save_cell_config(cfg, tmp_path / "config.yaml")
    holder = CellClaim(tmp_path)
    assert holder.acquire()
    try:
        assert not CellClaim(tmp_path).acquire()
        assert run_cell_dir(tmp_path) == {"status": "claimed", "cell_id": cfg.cell_id}
        assert not (tmp_path / "result.json").exists()
    finally:
        holder.release()
    assert CellClaim(tmp_path).acquire()


def write_claim(cell_dir, generation=1, **fields):
    claim = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None, "token": "x",
             "heartbeat": time.time(), "lease_seconds": 300, **fields}
    (cell_dir / CLAIM_DIR).mkdir(exist_ok=True)
    (cell_dir / CLAIM_DIR / f"{generation:09d}.json").write_text(json.dumps(claim))


@pytest.mark.parametrize("dead", [
    {"heartbeat": time.time() - 3600},            # lease expired
    {"pid": 2**22 + 12345},                       # holder process gone from this host
])
def test_dead_claims_are_taken_over(tmp_path, dead):
    write_claim(tmp_path, **dead)
    claim = CellClaim(tmp_path)
    assert claim.acquire()
    claim.release()


def test_a_requeued_job_takes_back_its_own_claim(tmp_path, monkeypatch):
    write_claim(tmp_path, host="other-node", slurm_job_id="77_3")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert CellClaim(tmp_path).acquire()
    write_claim(tmp_path, generation=5, host="other-node", slurm_job_id="78_0")
    assert not CellClaim(tmp_path).acquire()


def test_sigterm_stops_with_a_checkpoint_and_no_requeue(small_cell, tmp_path, monkeypatch):
    cfg = small_cell("trainer.max_steps=12", "trainer.eval_interval=4")
    save_cell_config(cfg, tmp_path / "config.yaml")
    monkeypatch.setenv("SLURM_JOB_ID", "999999")  # a requeue would run scontrol and fail loudly
    with monkeypatch.context() as patch:
        signal_at_step(patch, 5, signal.SIGTERM)
        stopped = run_cell_dir(tmp_path)
    assert (stopped["status"], stopped["signal"], stopped["requeue"]) == ("interrupted", "SIGTERM", False)
    assert stopped["steps"] == 6
    assert run_cell_dir(tmp_path)["steps"] == 12
