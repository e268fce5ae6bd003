"""schedule=wsd cells in packs (memsweep.pack.monitor.Branch): each cell runs its decay branches in
its own slot and ends with the record and metrics rows of its unpacked run (memsweep.cell.run_cell,
MemorizationMonitor's branches), also when the pack is preempted in the middle of a branch."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from memsweep.cell import PER_SAMPLE_FILE, run_cell
from memsweep.config import cell_config
from memsweep.pack.checkpoint import newest_cell_checkpoint, pack_checkpoints
from memsweep.pack.cost import training_steps
from memsweep.pack.grouping import pack_key
from memsweep.pack.runner import PackRunner
from tests.conftest import compose_config
from tests.test_cell import metrics_rows
from tests.test_pack_run import packed
from tests.test_saturation import TINY  # 1L d16, V 64, S 16, N 16, batch 16, min_steps 20, wsd, eval every 20


def tiny(*overrides: str):
    return cell_config(compose_config([*TINY, *overrides]))


SATURATES = ("trainer.max_steps=400", "seed=0")  # probes 20, 40, 80, 160: saturated at 160 (0.7%/doubling)
SHORT = ("trainer.max_steps=100", "data.n_samples=64", "seed=1")  # probes 20, 40, 80; final decay 83-100
LONG = ("trainer.max_steps=300", "data.n_samples=32", "seed=2")  # probes 20 .. 160; final decay 250-300
CELLS = (SATURATES, SHORT, LONG)
EXACT = ("status", "steps", "tokens_seen", "stop_reason", "saturated_at_step", "saturation_rule", "branch_steps",
         "resumed_from_step")
MEMORIZED = ("memorized_bits", "memorized_bits_unclipped", "memorized_fraction", "heldout_memorized_bits")
LOSSES = ("train_loss", "train_loss_bits", "test_loss", "test_loss_bits")
LOSS_SLACK, STABLE_SLACK = 100, 10
"""In a pack of two or more, float reassociation (the batched forward) grows once a cell has
memorized its set at a high constant rate, in its losses most: without any branch (schedule=constant,
220 steps) the N = 16 cell of these packs measured 7e-5 relative in memorized bits, 1.6e-3 in train
loss and 4.9e-3 in test loss against its unpacked run. A decay to 0 damps it (the same cell's
decayed rows: <= 1.3e-5 in memorized bits, 2.8e-4 in train loss), its stable rows at the peak rate
do not (3.9e-4, 7.8e-3). So losses get LOSS_SLACK times the tolerance of memorized bits, and the
rows taken at the stable rate STABLE_SLACK times more; the records and decayed rows the tolerance."""


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """Each cell's unpacked run: {cell id: (record, run dir)}."""
    root = tmp_path_factory.mktemp("solo")
    runs = {}
    for overrides in CELLS:
        cfg = tiny(*overrides)
        runs[cfg.cell_id] = run_cell(cfg, root / cfg.cell_id), root / cfg.cell_id
    return runs


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The three cells as one uninterrupted pack: ({cell id: record}, root)."""
    root = tmp_path_factory.mktemp("whole")
    return packed([tiny(*o) for o in CELLS], root), root


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in metrics_rows(run_dir)]


def assert_same_run(got: dict, got_dir: Path, want: dict, want_dir: Path, rel: float) -> None:
    """Records and metrics rows alike: the bookkeeping exactly, the measurements within `rel`."""
    for key in EXACT:
        assert got[key] == want[key], key
    for key in MEMORIZED:
        assert got[key] == pytest.approx(want[key], rel=rel, abs=rel and 1e-3), key
    for key in LOSSES:
        assert got[key] == pytest.approx(want[key], rel=LOSS_SLACK * rel), key
    growth, expected = got["growth_per_doubling"] or [], want["growth_per_doubling"] or []
    assert (got["growth_per_doubling"] is None) == (want["growth_per_doubling"] is None)
    assert [(p["step"], p["decay_steps"], p["final"]) for p in growth] == \
        [(p["step"], p["decay_steps"], p["final"]) for p in expected]
    for p, q in zip(growth, expected):
        assert p["memorized_bits"] == pytest.approx(q["memorized_bits"], rel=rel)
        assert (p["gain_per_doubling"] is None) == (q["gain_per_doubling"] is None)
        if q["gain_per_doubling"] is not None:
            assert p["gain_per_doubling"] == pytest.approx(q["gain_per_doubling"], rel=rel, abs=rel and 1e-4)
    got_rows, want_rows = rows(got_dir), rows(want_dir)
    assert [(r["step"], r.get("branch_steps"), r["tokens_seen"], r["lr"]) for r in got_rows] == \
        [(r["step"], r.get("branch_steps"), r["tokens_seen"], r["lr"]) for r in want_rows]
    for r, w in zip(got_rows, want_rows):
        decayed = r.get("branch_steps") or r["lr"] == 0 or r is got_rows[-1]
        tolerance = rel if decayed else STABLE_SLACK * rel
        assert {k: r[k] for k in MEMORIZED} == \
            pytest.approx({k: w[k] for k in MEMORIZED}, rel=tolerance, abs=rel and 1e-3), r["step"]
        assert {k: r[k] for k in LOSSES} == pytest.approx({k: w[k] for k in LOSSES}, rel=LOSS_SLACK * tolerance)
        assert set(r) == set(w)


def test_wsd_cells_pack_with_each_other_and_with_other_schedules():
    wsd = tiny(*SATURATES)
    assert pack_key(wsd) is not None
    assert pack_key(wsd) == pack_key(tiny(*SHORT)) == pack_key(tiny(*SATURATES, "trainer.schedule=cosine"))
    assert training_steps(tiny(*SHORT)) == 100 + 4 + 8 + 16  # what the GPU cost model counts: branches too
    assert training_steps(tiny(*SHORT, "trainer.schedule=cosine")) == 100


BF16 = (*SHORT, "precision=bf16", "trainer.bf16_optimizer=stochastic-rounding")


@pytest.mark.parametrize("overrides", [SATURATES, SHORT, BF16], ids=["saturates", "max-steps", "bf16-stochastic"])
def test_a_pack_of_one_wsd_cell_is_bit_identical_to_run_cell(solo, tmp_path, overrides):
    cfg = tiny(*overrides)
    if overrides is BF16:  # the rounding stream goes back with the branch's copy, as the optimizer's state_dict
        want, want_dir = run_cell(cfg, tmp_path / "solo"), tmp_path / "solo"
        tmp_path = tmp_path / "packed"
    else:
        want, want_dir = solo[cfg.cell_id]
    got = packed([cfg], tmp_path)[cfg.cell_id]
    assert_same_run(got, tmp_path / cfg.cell_id, want, want_dir, rel=0)
    assert got["growth_per_doubling"] == want["growth_per_doubling"]
    assert rows(tmp_path / cfg.cell_id) == rows(want_dir)
    with np.load(tmp_path / cfg.cell_id / PER_SAMPLE_FILE) as a, np.load(want_dir / PER_SAMPLE_FILE) as b:
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_pack_of_three_wsd_cells_matches_each_unpacked_run(solo, whole):
    records, root = whole
    stops = {}
    for cell_id, (want, want_dir) in solo.items():
        assert_same_run(records[cell_id], root / cell_id, want, want_dir, rel=1e-4)
        stops[cell_id] = records[cell_id]["stop_reason"], records[cell_id]["steps"]
        assert records[cell_id]["pack"]["size"] == 3
    assert sorted(stops.values()) == [("max_steps", 100), ("max_steps", 300),
                                      ("saturated: gain 0.7%/doubling < 1% after decay at step 160", 160)]
    short = records[tiny(*SHORT).cell_id]
    assert [(p["step"], p["decay_steps"], p["final"]) for p in short["growth_per_doubling"]] == \
        [(20, 4, False), (40, 8, False), (80, 16, False), (83, 17, True)]


def test_wsd_cells_pack_with_cosine_and_constant_cells(tmp_path, monkeypatch):
    """The cosine cell ends at pack step 22, two steps into the wsd cell's branch from step 20: the
    pack is rebuilt around a branch in flight (its slot's state and the stable copy go on)."""
    cfgs = [tiny(*SHORT), tiny(*SATURATES, "trainer.schedule=cosine", "trainer.max_steps=22"),
            tiny(*LONG, "trainer.schedule=constant", "trainer.max_steps=60")]
    seen = []
    leave = PackRunner._leave

    def note_branches(runner, leaving):
        seen.extend((c.branch.start, c.branch.done) for c in runner.active if leaving and c.branch is not None)
        leave(runner, leaving)

    monkeypatch.setattr(PackRunner, "_leave", note_branches)
    records = packed(cfgs, tmp_path / "packed")
    assert seen == [(20, 2)]
    for cfg in cfgs:
        want = run_cell(cfg, tmp_path / "solo" / cfg.cell_id)
        assert_same_run(records[cfg.cell_id], tmp_path / "packed" / cfg.cell_id, want, tmp_path / "solo" / cfg.cell_id,
                        rel=1e-4)
    assert [records[c.cell_id]["saturation_rule"] for c in cfgs] == ["doubling", "plateau", "plateau"]


def signal_when(monkeypatch, cell_id: str, branch_from: int, done: int | None) -> None:
    """SIGUSR2 (SLURM's warning before a preemption) right after the pack step that leaves cell
    `cell_id` `done` steps into its branch from `branch_from` (None: at stable step branch_from,
    before its branch starts)."""
    train = PackRunner._train_one_step

    def train_and_signal(runner):
        train(runner)
        c = next((c for c in runner.active if c.cfg.cell_id == cell_id), None)
        if c is None:
            return
        if (done is None and c.branch is None and c.step == branch_from) or \
                (c.branch is not None and c.branch.start == branch_from and c.branch.done == done):
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(PackRunner, "_train_one_step", train_and_signal)


@pytest.mark.parametrize("done", [3, None], ids=["in-the-branch", "at-the-probe-step"])
def test_a_pack_preempted_in_a_branch_resumes_to_the_same_records(solo, whole, tmp_path, monkeypatch, done):
    cfgs = [tiny(*o) for o in CELLS]
    first = cfgs[0].cell_id
    with monkeypatch.context() as patch:
        signal_when(patch, first, 80, done)
        stopped = packed(cfgs, tmp_path)
    # The three cells step alike up to there: all of them are in (or at) their branch from step 80.
    assert all((r["status"], r["steps"], r["signal"]) == ("preempted", 80, "SIGUSR2") for r in stopped.values())
    for cfg in cfgs:
        state = newest_cell_checkpoint(tmp_path / cfg.cell_id)
        assert state["step"] == 80 and state["optimizer"]["step"] == 80
        assert state["branch"]["start"] == 80 and state["branch"]["done"] == (done or 0)
        assert state["branch"]["optimizer"]["step"] == 80 + (done or 0)
    resumed = packed(cfgs, tmp_path)
    records, root = whole
    for cfg in cfgs:
        got = resumed[cfg.cell_id]
        assert got["resumed_from_step"] == 80
        assert_same_run(got, tmp_path / cfg.cell_id, {**records[cfg.cell_id], "resumed_from_step": 80},
                        root / cfg.cell_id, rel=0)  # the branch goes on where it stopped: not one step again
        want, want_dir = solo[cfg.cell_id]
        assert_same_run(got, tmp_path / cfg.cell_id, {**want, "resumed_from_step": 80}, want_dir, rel=1e-4)


def test_a_resume_from_the_checkpoint_of_a_probe_step_keeps_its_branch(solo, tmp_path, monkeypatch):
    """The checkpoint at a probe step is written when its branch has ended, not kept: it holds the
    stable state and the branch's row (as the unpacked Checkpointer's after the monitor's probe)."""
    cfg = tiny(*SATURATES, "trainer.checkpoint_every_steps=40")  # at 40, 80, 120: probe steps and not
    with monkeypatch.context() as patch:
        signal_when(patch, cfg.cell_id, 85, None)
        assert packed([cfg], tmp_path)[cfg.cell_id]["steps"] == 85
    newest = pack_checkpoints(tmp_path / cfg.cell_id)[0]
    newest.unlink(), newest.with_name(newest.name + ".sha256").unlink()  # lost: fall back to step 80
    state = newest_cell_checkpoint(tmp_path / cfg.cell_id)
    assert state["step"] == 80 and state["branch"] is None and [p["step"] for p in state["monitor"]["doubling"]] == \
        [20, 40, 80]
    got = packed([cfg], tmp_path)[cfg.cell_id]
    want, want_dir = solo[tiny(*SATURATES).cell_id]
    assert_same_run(got, tmp_path / cfg.cell_id, {**want, "resumed_from_step": 80}, want_dir, rel=0)


def test_a_non_finite_branch_fails_its_cell_alone_as_unpacked(tmp_path, monkeypatch):
    import memsweep.callbacks as callbacks
    import memsweep.pack.monitor as monitor
    from memsweep.callbacks import NonFiniteError

    def blow_up(steps_into_decay, decay):  # a rate that drives the branch's loss to inf/NaN
        return 1e30

    wsd, mate = tiny(*SHORT), tiny(*LONG, "trainer.schedule=cosine", "trainer.max_steps=40")
    monkeypatch.setattr(monitor, "linear_decay", blow_up)
    records = packed([wsd, mate], tmp_path / "packed")
    monkeypatch.setattr(callbacks, "linear_decay", blow_up)
    with pytest.raises(NonFiniteError) as alone:
        run_cell(wsd, tmp_path / "solo")
    assert str(alone.value) == "non-finite training loss in the decay branch from step 20"
    failed = records[wsd.cell_id]
    assert failed["status"] == "failed" and failed["error"] == f"NonFiniteError: {alone.value}"
    want = run_cell(mate, tmp_path / "mate")
    assert_same_run(records[mate.cell_id], tmp_path / "packed" / mate.cell_id, want, tmp_path / "mate", rel=1e-4)
