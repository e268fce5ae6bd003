"""Faults during one cell: each ends in a state that says what happened, and nothing is lost.

Real signals, a real full filesystem (a tmpfs this test mounts, as root), a real planted pickle;
the only stand-ins are hooks that fire the fault at a chosen training step.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import memsweep.cell as cell_module
from memsweep.checkpoint import checkpoints, file_sha256, step_of
from memsweep.claim import CLAIM_DIR, CellClaim, read_claim
from memsweep.cell import run_cell, run_cell_dir
from memsweep.config import save_cell_config
from memsweep.sweepstate import cell_state
from tests.test_cell import metrics_rows
from tests.test_resume import RESUMABLE, signal_at_step, uninterrupted  # noqa: F401  (a fixture)


def at_step(monkeypatch, step: int, action) -> None:
    """Run `action(module)` once, at the start of training step `step`."""
    original = cell_module.MemorizationModule.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == step:
            action(self)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(cell_module.MemorizationModule, "training_step", training_step)


def record(cell_dir: Path) -> dict:
    return json.loads((cell_dir / "result.json").read_text())


def test_sigint_checkpoints_and_ends_interrupted(small_cell, tmp_path, monkeypatch, uninterrupted):
    cfg = small_cell(*RESUMABLE)
    save_cell_config(cfg, tmp_path / "config.yaml")
    with monkeypatch.context() as patch:
        signal_at_step(patch, 23, signal.SIGINT)
        stopped = run_cell_dir(tmp_path)
    assert (stopped["status"], stopped["signal"], stopped["steps"]) == ("interrupted", "SIGINT", 24)
    assert record(tmp_path)["status"] == "interrupted" and cell_state(tmp_path).state == "interrupted"
    assert step_of(checkpoints(tmp_path)[0]) == 24
    resumed = run_cell_dir(tmp_path)
    assert resumed["resumed_from_step"] == 24
    assert resumed["memorized_bits"] == uninterrupted[1]["memorized_bits"]


def test_a_claim_taken_over_mid_training_stops_the_old_holder_without_writing(small_cell, tmp_path, monkeypatch):
    cfg = small_cell(*RESUMABLE)
    save_cell_config(cfg, tmp_path / "config.yaml")
    usurper = {"host": "elsewhere", "pid": 1, "token": "usurper", "heartbeat": time.time() + 3600,
               "lease_seconds": 300}

    def take_over(module):  # what a process that judged this holder dead would have done
        (tmp_path / CLAIM_DIR / "000000002.json").write_text(json.dumps(usurper))

    with monkeypatch.context() as patch:
        at_step(patch, 25, take_over)
        outcome = run_cell_dir(tmp_path)
    assert outcome["status"] == "claim-lost"
    assert max(step_of(c) for c in checkpoints(tmp_path)) <= 25
    assert max(r["step"] for r in metrics_rows(tmp_path)) <= 25
    assert record(tmp_path)["status"] == "running"  # the old holder wrote no final record
    assert read_claim(tmp_path)["token"] == "usurper" and not read_claim(tmp_path).get("released")


def test_a_claim_that_cannot_be_renewed_checkpoints_and_stops(small_cell, tmp_path, monkeypatch):
    cfg = small_cell(*RESUMABLE, "trainer.lease_seconds=4")
    save_cell_config(cfg, tmp_path / "config.yaml")

    def renew_fails(self, **extra):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(CellClaim, "_renew", renew_fails)
    with monkeypatch.context() as patch:
        at_step(patch, 15, lambda module: time.sleep(3.5))  # a slow step while the disk misbehaves
        stopped = run_cell_dir(tmp_path)
    assert (stopped["status"], stopped["stop_cause"]) == ("interrupted", "claim could not be renewed")
    assert step_of(checkpoints(tmp_path)[0]) == stopped["steps"] == 16


def test_a_non_finite_loss_fails_the_cell_naming_the_step(small_cell, tmp_path, monkeypatch):
    cfg = small_cell(*RESUMABLE)
    save_cell_config(cfg, tmp_path / "config.yaml")

    def poison(module):
        with torch.no_grad():
            module.model.wte.weight.fill_(float("nan"))

    with monkeypatch.context() as patch, pytest.raises(Exception, match="non-finite training loss at step 8"):
        at_step(patch, 7, poison)
        run_cell_dir(tmp_path)
    failed = record(tmp_path)  # valid JSON: no NaN written
    assert failed["status"] == "failed" and "step 8" in failed["error"]
    assert all(step_of(c) <= 7 for c in checkpoints(tmp_path))  # a NaN model is never checkpointed
    assert cell_state(tmp_path).state == "failed"


class Planted:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_passes_its_digest_but_does_not_load_falls_back(small_cell, tmp_path, monkeypatch,
                                                                            uninterrupted):
    cfg = small_cell(*RESUMABLE)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 55)
        run_cell(cfg, tmp_path)
    newest, previous = checkpoints(tmp_path)[:2]
    marker = tmp_path / "code-ran"
    with open(newest, "wb") as fh:
        pickle.dump({"state_dict": Planted(marker)}, fh)
    newest.with_name(newest.name + ".sha256").write_text(file_sha256(newest) + "\n")  # the digest matches
    with pytest.warns(UserWarning, match="does not load with weights_only=True"):
        resumed = run_cell(cfg, tmp_path)
    assert not marker.exists()
    assert resumed["resumed_from_step"] == step_of(previous) == 50
    assert resumed["memorized_bits"] == uninterrupted[1]["memorized_bits"]
    assert (newest.parent / (newest.name + ".corrupt")).exists()  # kept aside for inspection


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs mounted for this test (root only, as in CI)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass
    return filler


def test_disk_full_mid_training_fails_with_its_cause_and_resumes_after(small_cell, small_fs, monkeypatch,
                                                                       uninterrupted):
    cell_dir = small_fs / "cell"
    cfg = small_cell(*RESUMABLE)
    save_cell_config(cfg, cell_dir / "config.yaml")
    filled = {}
    with monkeypatch.context() as patch, pytest.raises(Exception):
        at_step(patch, 33, lambda module: filled.setdefault("filler", fill(small_fs)))
        run_cell_dir(cell_dir)
    failed = record(cell_dir)
    assert failed["status"] == "failed" and failed["error"].startswith("disk full"), failed["error"]
    assert not list((cell_dir / "checkpoints").glob(".*.partial"))
    assert cell_state(cell_dir).state == "failed"
    filled["filler"].unlink()
    (cell_dir / "result.json").rename(cell_dir / "result.failed.json")  # what --retry-failed does
    resumed = run_cell_dir(cell_dir)
    assert resumed["status"] == "done" and resumed["resumed_from_step"] == 30
    assert resumed["memorized_bits"] == uninterrupted[1]["memorized_bits"]


def test_a_dataset_larger_than_the_disk_is_refused_before_training(small_fs):
    run_dir = small_fs / "cell"
    out = subprocess.run([sys.executable, "-m", "memsweep.train", f"hydra.run.dir={run_dir}", "logger=none",
                          "data.vocab_size=64", "data.seq_len=16", "data.n_samples=10000000000"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "data.n_samples" in out.stderr and "free" in out.stderr
    assert not (run_dir / "result.json").exists() and not list(run_dir.glob("*.npy"))


def test_kill_9_loses_at_most_the_default_checkpoint_interval(tmp_path):
    run_dir = tmp_path / "cell"
    args = [sys.executable, "-m", "memsweep.train", f"hydra.run.dir={run_dir}", "logger=none", "model.n_head=1",
            "model.d_model=16", "data.vocab_size=64", "data.seq_len=16", "data.n_samples=32",
            "trainer.batch_size=16", "trainer.max_steps=3000", "trainer.eval_interval=500",
            "trainer.saturation.min_steps=100000"]  # no checkpoint_every_steps: the default, 60 steps
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(step_of(c) >= 400 for c in checkpoints(run_dir)):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = max(step_of(c) for c in checkpoints(run_dir))
    finally:
        proc.kill()
    assert killed_at >= 400
    assert cell_state(run_dir).state == "stale"  # the record says running; the process is gone
    resumed = run_cell_dir(run_dir)
    assert resumed["status"] == "done" and resumed["resumed_from_step"] >= killed_at - 60
