"""What memsweep prints: plain progress lines off a terminal, no Lightning banners unless verbose,
the cells' bits when they finish, and what a rerun skips."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from memsweep.console import VERBOSE_ENV, SweepProgress, cell_summary, emit, quiet_lightning
from memsweep.sweepstate import STATES

TINY = ["experiment=smoke", "logger=none", "model.n_head=1", "model.d_model=16", "data.vocab_size=64",
        "data.seq_len=16", "data.n_samples=8"]
BANNERS = ("GPU available", "TPU available", "litlogger", "LeafSpec", "`Trainer.fit` stopped", "srun")


def memsweep_run(sweep_dir: Path, *args: str) -> str:
    """`memsweep run` with its output piped, as in a SLURM log; a progress line at every evaluation."""
    env = {k: v for k, v in os.environ.items() if k != VERBOSE_ENV}
    done = subprocess.run([sys.executable, "-m", "memsweep.cli", "run", *TINY, *args, "--no-report",
                           "--sweep-dir", str(sweep_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, env={**env, "MEMSWEEP_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def test_a_non_tty_run_prints_plain_progress_lines_and_a_rerun_says_what_it_skipped(tmp_path):
    out = memsweep_run(tmp_path, "trainer.max_steps=60", "--workers", "2")
    assert "\r" not in out and not [b for b in BANNERS if b in out], out
    assert out.startswith(f"2 cells in {tmp_path}: 0 already done, 2 to train, 2 workers\n"), out
    cell_ids = sorted(d.name for d in tmp_path.iterdir() if (d / "result.json").exists())
    assert len(cell_ids) == 2
    for cell_id in cell_ids:
        assert re.search(rf"^memsweep: {cell_id} training 1L d16 \(P=4,592\) on 8 samples \(768 bits\)", out, re.M)
        assert re.search(rf"^memsweep: {cell_id} step 30/60 \(50\.0%\) memorized [\d,]+ bits \([\d.]+%\) "
                         r"[\d,]+ tok/s ETA \d+s$", out, re.M), out
        assert re.search(rf"^memsweep: {cell_id} done: memorized [\d,]+ of 768 bits \([\d.]+%\), "
                         r"0\.\d{3} bits/param, 60 steps \(max_steps\), \d+s$", out, re.M), out
    assert re.search(r"^memsweep: sweep 0/2 done, \d running, \d left$", out, re.M), out
    assert out.rstrip().endswith("memsweep: sweep 2/2 done, 0 running, 0 left"), out

    again = memsweep_run(tmp_path, "trainer.max_steps=60", "--workers", "2")
    assert again == f"all 2 cells already done in {tmp_path}; nothing to train\n"


def test_verbose_keeps_lightning_banners(tmp_path):
    out = memsweep_run(tmp_path, "precision=fp32", "trainer.max_steps=10", "--workers", "1", "--verbose")
    assert "GPU available" in out and "`Trainer.fit` stopped" in out, out


def test_quiet_lightning_leaves_lightning_alone_when_verbose(monkeypatch):
    import lightning.pytorch  # noqa: F401  sets its logger to INFO

    logger = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(logger, "level", logging.INFO)  # restored after the test
    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test, too
    quiet_lightning(verbose=True)
    assert os.environ[VERBOSE_ENV] == "1" and logger.level == logging.INFO
    quiet_lightning()  # a later cell's call keeps the verbose choice
    assert logger.level == logging.INFO
    monkeypatch.setenv(VERBOSE_ENV, "0")
    quiet_lightning()
    assert logger.level == logging.WARNING


def totals(**counts: int) -> dict[str, int]:
    return {s: counts.get(s, 0) for s in STATES}


def test_sweep_lines_when_counts_change_with_an_eta_once_cells_finish(monkeypatch):
    clock = iter([100.0, 160.0])
    monkeypatch.setattr("memsweep.console.time", SimpleNamespace(monotonic=lambda: next(clock)))
    stream = io.StringIO()
    progress = SweepProgress(totals(done=2, pending=4), stream)
    progress.update(totals(done=2, running=2, pending=2))  # the clock starts: cells are running
    progress.update(totals(done=2, running=2, pending=2))  # unchanged: no line
    progress.update(totals(done=3, failed=1, running=2))  # 2 settled in 60 s, 2 to go
    assert stream.getvalue().splitlines() == [
        "memsweep: sweep 2/6 done, 2 running, 2 left",
        "memsweep: sweep 3/6 done, 2 running, 1 failed, 0 left, ETA 1m00s",
    ]


def test_done_line_names_the_bits_per_param():
    record = {"cell_id": "abc", "memorized_bits": 44671.2, "dataset_bits": 45056.0, "memorized_fraction": 0.9915,
              "bits_per_param": 0.5559, "steps": 840, "stop_reason": "saturated", "wall_seconds": 12.3}
    assert cell_summary(record) == ("abc done: memorized 44,671 of 45,056 bits (99.2%), 0.556 bits/param, "
                                    "840 steps (saturated), 12s")


def test_a_line_and_its_newline_go_out_in_one_write():
    """Workers share the parent's pipe: under PYTHONUNBUFFERED each write is a system call, and a
    line written apart from its newline ran into another worker's line (seen in CI)."""
    class Recording(io.StringIO):
        writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    stream = Recording()
    emit("memsweep: abc done", stream)
    emit("memsweep: def done", stream)
    assert stream.writes == ["memsweep: abc done\n", "memsweep: def done\n"]
