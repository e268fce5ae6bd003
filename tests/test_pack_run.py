"""Packed cells through memsweep's sweep machinery (memsweep.pack.launch / runner): each cell of a
pack ends as its unpacked run (memsweep.cell.run_cell) ends, writes its own complete record,
survives a preemption of the pack, and fails or saturates without disturbing its pack-mates."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memsweep.callbacks import NonFiniteError
from memsweep.cell import run_cell, run_cell_dir
from memsweep.claim import CellClaim
from memsweep.cli import main as cli_main
from memsweep.config import CONFIG_FILE, cell_config, save_cell_config
from memsweep.pack.checkpoint import pack_checkpoints
from memsweep.pack.launch import train_members
from memsweep.pack.runner import PackRunner
from memsweep.sweepstate import counts, sweep_states
from tests.conftest import compose_config

TINY = ["logger=none", "model.n_layer=1", "model.d_model=16", "model.n_head=2", "data.vocab_size=64",
        "data.seq_len=16", "data.n_heldout=16", "trainer.batch_size=8", "trainer.warmup_steps=5",
        "trainer.max_steps=40", "trainer.eval_interval=10", "trainer.eval_batch_size=64",
        "trainer.saturation.min_steps=100000", "trainer.accelerator=cpu"]


def saturates(min_steps: int = 20) -> list[str]:
    """A cell saturated at its evaluation at min_steps (any gain is under 10x), which then cools
    down for a quarter of its steps: at min_steps 20 it ends at step 25."""
    return ["data.n_samples=8", f"trainer.saturation.min_steps={min_steps}", "trainer.saturation.window=1",
            "trainer.saturation.tolerance=10", "trainer.saturation.cooldown=0.25"]


def tiny(*overrides: str):
    keys = {o.split("=")[0] for o in overrides}
    return cell_config(compose_config([o for o in TINY if o.split("=")[0] not in keys] + list(overrides)))


def solo(cfg, root: Path) -> dict:
    """The cell's unpacked run (Lightning), in a dir of its own."""
    return run_cell(cfg, root / "solo" / cfg.cell_id)


def packed(cfgs, root: Path) -> dict[str, dict]:
    """Train the cells as one pack under `root`, as a worker does; {cell id: record}."""
    members = []
    for cfg in cfgs:
        cell_dir = root / cfg.cell_id
        save_cell_config(cfg, cell_dir / CONFIG_FILE)
        claim = CellClaim(cell_dir, cfg.trainer.lease_seconds)
        assert claim.acquire()
        members.append((str(cell_dir), cfg, claim))
    train_members(members)
    return {cfg.cell_id: record(root / cfg.cell_id) for cfg in cfgs}


def record(cell_dir: Path) -> dict:
    return json.loads((cell_dir / "result.json").read_text())


def metrics(cell_dir: Path) -> list[dict]:
    with (cell_dir / "metrics.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(fh)]


def assert_matches(packed_record: dict, solo_record: dict, rel: float = 1e-4) -> None:
    assert packed_record["status"] == solo_record["status"] == "done"
    assert packed_record["steps"] == solo_record["steps"]
    assert packed_record["stop_reason"] == solo_record["stop_reason"]
    for key in ("memorized_bits", "train_loss", "test_loss"):
        assert packed_record[key] == pytest.approx(solo_record[key], rel=rel), key


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-mixed"])
def test_a_pack_of_one_is_bit_identical_to_the_unpacked_cell(tmp_path, precision):
    cfg = tiny("data.n_samples=16", "seed=3", f"precision={precision}")
    expected = solo(cfg, tmp_path)
    got = packed([cfg], tmp_path / "packed")[cfg.cell_id]
    assert_matches(got, expected, rel=0)
    assert got["memorized_bits"] == expected["memorized_bits"] and got["train_loss"] == expected["train_loss"]
    assert metrics(tmp_path / "packed" / cfg.cell_id) == metrics(tmp_path / "solo" / cfg.cell_id)
    assert set(got) - set(expected) == {"pack"} and set(expected) - set(got) == set()
    assert got["pack"]["size"] == 1 and got["pack"]["cell_ids"] == [cfg.cell_id]


def test_bf16_mixed_cells_pack_under_autocast_and_match_their_unpacked_runs(tmp_path):
    """Lightning runs a bf16-mixed cell's forward under autocast (bf16 matmuls, fp32 weights): a
    pack of three does too, and each cell ends as alone, to bf16's rounding of differently batched
    matmuls (measured: up to 2.6e-3 relative in a loss after 40 steps, so 5e-3 here, not fp32's
    1e-4). That the pack autocasts at all is what the pack-of-one test above pins: without
    autocast a pack of one is not bit-identical to its Lightning cell."""
    cfgs = [tiny(f"data.n_samples={n}", f"seed={seed}", "precision=bf16-mixed") for n, seed in ((8, 0), (16, 1), (32, 2))]
    got = packed(cfgs, tmp_path / "packed")
    for cfg in cfgs:
        expected = solo(cfg, tmp_path)
        assert_matches(got[cfg.cell_id], expected, rel=5e-3)
        assert got[cfg.cell_id]["param_dtype"] == expected["param_dtype"] == "float32"
    assert got[cfgs[0].cell_id]["pack"]["size"] == 3


def test_memsweep_run_pack_4_writes_four_complete_records_matching_their_unpacked_runs(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["data.n_samples=8,32", "seed=0,1", "trainer.lr=0.01"]
    done = subprocess.run([sys.executable, "-m", "memsweep.cli", "run", *TINY, *grid, "--pack", "4", "--workers", "1",
                           "--no-report", "--sweep-dir", str(sweep)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    states = sweep_states(sweep)
    assert counts(states)["done"] == len(states) == 4
    packs = {json.dumps(c.record["pack"]["cell_ids"]) for c in states}
    assert len(packs) == 1 and sorted(c.record["pack"]["position"] for c in states) == [0, 1, 2, 3]
    for c in states:
        expected = solo(tiny(*c.overrides), tmp_path)
        assert_matches(c.record, expected)
        assert c.record["pack"]["tokens_per_sec"] > c.record["tokens_per_sec"] > 0
    assert cli_main(["collect", str(sweep), "--out", str(tmp_path / "cells.csv")]) == 0
    assert cli_main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()


def test_a_preempted_pack_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, monkeypatch):
    cfgs = [tiny("data.n_samples=16", "seed=0", "trainer.max_steps=60", "trainer.checkpoint_every_steps=10"),
            tiny("data.n_samples=32", "seed=1", "trainer.max_steps=50", "trainer.lr=0.02", "trainer.schedule=cosine",
                 "trainer.checkpoint_every_steps=10"),
            tiny(*saturates(30), "seed=2", "trainer.max_steps=60", "trainer.checkpoint_every_steps=10")]
    whole = packed(cfgs, tmp_path / "whole")

    train = PackRunner._train_one_step

    def preempt_at_step_23(runner):
        train(runner)
        if runner.active[0].step == 23:
            os.kill(os.getpid(), signal.SIGUSR2)  # what SLURM sends before preempting the job

    monkeypatch.setattr(PackRunner, "_train_one_step", preempt_at_step_23)
    stopped = packed(cfgs, tmp_path / "split")
    assert [r["status"] for r in stopped.values()] == ["preempted"] * 3
    assert all(r["steps"] == 23 and r["signal"] == "SIGUSR2" for r in stopped.values())
    assert all(pack_checkpoints(tmp_path / "split" / cfg.cell_id) for cfg in cfgs)
    monkeypatch.setattr(PackRunner, "_train_one_step", train)
    resumed = packed(cfgs, tmp_path / "split")
    for cfg in cfgs:
        got, expected = resumed[cfg.cell_id], whole[cfg.cell_id]
        assert got["resumed_from_step"] == 23
        assert_matches(got, expected, rel=0)
        assert metrics(tmp_path / "split" / cfg.cell_id) == metrics(tmp_path / "whole" / cfg.cell_id)
    assert whole[cfgs[2].cell_id]["stop_reason"] == "saturated"


def test_a_preempted_pack_cell_resumed_without_pack_loses_no_steps(tmp_path, monkeypatch):
    """Relaunching without --pack (run_cell_dir, as `memsweep run` and SLURM jobs call it): the
    cell resumes from its packed checkpoint as a pack of one, to the uninterrupted pack's results."""
    cfgs = [tiny("data.n_samples=16", "seed=0", "trainer.max_steps=50", "trainer.checkpoint_every_steps=10"),
            tiny("data.n_samples=32", "seed=1", "trainer.max_steps=50", "trainer.checkpoint_every_steps=10")]
    whole = packed(cfgs, tmp_path / "whole")
    train = PackRunner._train_one_step

    def preempt_at_step_23(runner):
        train(runner)
        if runner.active[0].step == 23:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: interrupted, checkpointed, no requeue

    monkeypatch.setattr(PackRunner, "_train_one_step", preempt_at_step_23)
    stopped = packed(cfgs, tmp_path / "split")
    assert [r["status"] for r in stopped.values()] == ["interrupted"] * 2
    monkeypatch.setattr(PackRunner, "_train_one_step", train)
    for cfg in cfgs:
        got = run_cell_dir(tmp_path / "split" / cfg.cell_id)
        assert got["resumed_from_step"] == 23 and got["pack"]["size"] == 1
        assert_matches(got, whole[cfg.cell_id], rel=1e-4)
        assert [r["step"] for r in metrics(tmp_path / "split" / cfg.cell_id)] == \
            [r["step"] for r in metrics(tmp_path / "whole" / cfg.cell_id)]
        again = CellClaim(tmp_path / "split" / cfg.cell_id, 60)
        assert again.acquire()  # the pack of one released its claim
        again.release()


def test_a_non_finite_cell_fails_alone_and_its_pack_mates_finish_as_alone(tmp_path):
    bad = tiny("data.n_samples=16", "seed=0", "trainer.lr=1e30")
    good = [tiny("data.n_samples=16", "seed=1"), tiny("data.n_samples=32", "seed=2", "trainer.weight_decay=0.1")]
    records = packed([good[0], bad, good[1]], tmp_path / "packed")
    failed = records[bad.cell_id]
    assert failed["status"] == "failed" and failed["error"].startswith("NonFiniteError: non-finite training loss")
    with pytest.raises(NonFiniteError) as alone:
        solo(bad, tmp_path)
    assert failed["error"] == f"NonFiniteError: {alone.value}"  # the same step as the unpacked cell
    for cfg in good:
        assert_matches(records[cfg.cell_id], solo(cfg, tmp_path))


def test_a_saturating_cell_leaves_the_pack_early_with_its_record(tmp_path, monkeypatch):
    early = tiny(*saturates(), "seed=0")
    others = [tiny("data.n_samples=32", "seed=1"), tiny("data.n_samples=16", "seed=2", "trainer.warmup_steps=10")]
    seen = {}
    write_done = PackRunner._write_done

    def note_the_others(runner, cell):
        write_done(runner, cell)
        seen[cell.cfg.cell_id] = {c.cell_id: record(runner_root / c.cell_id)["status"] for c in others}

    runner_root = tmp_path / "packed"
    monkeypatch.setattr(PackRunner, "_write_done", note_the_others)
    records = packed([others[0], early, others[1]], runner_root)
    assert records[early.cell_id]["stop_reason"] == "saturated" and records[early.cell_id]["steps"] == 25
    assert set(seen[early.cell_id].values()) == {"running"}  # written while its pack-mates still trained
    assert_matches(records[early.cell_id], solo(early, tmp_path))
    for cfg in others:
        assert records[cfg.cell_id]["steps"] == 40
        assert_matches(records[cfg.cell_id], solo(cfg, tmp_path))
