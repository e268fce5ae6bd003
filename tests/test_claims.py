"""Claims under real races: processes started together, dead and unreadable claims, a paused holder.

Every race is between separate processes released by one barrier, so they reach `acquire` at the
same moment; each winner leaves a file named after itself, and a cell with two such files was
claimed twice. The old claim (create, then fill in) lost about 60% of these races.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from memsweep.claim import CLAIM_DIR, CellClaim, ClaimLost, claim_is_live, generations, read_claim
from memsweep.config import save_cell_config

CONTENDERS = 6
CELLS_PER_CASE = 40


def _contend(cells: list[str], barrier, lease: float) -> None:
    for cell in cells:
        barrier.wait()
        claim = CellClaim(Path(cell), lease_seconds=lease)
        won = claim.acquire()
        if won:
            (Path(cell) / f"won-{os.getpid()}").touch()
            claim.check()
        barrier.wait()  # winners hold until every contender has tried: a holder is never alone by luck
        if won:
            claim.release()


def _race(cells: list[Path], lease: float = 300.0) -> dict[Path, int]:
    """Run CONTENDERS processes over the cells, one barrier-synchronised race per cell; return the
    number of winners of each cell."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(CONTENDERS)
    procs = [ctx.Process(target=_contend, args=([str(c) for c in cells], barrier, lease)) for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return {c: len(list(c.glob("won-*"))) for c in cells}


def _dead_claim(cell: Path, generation: int = 1, **fields) -> None:
    (cell / CLAIM_DIR).mkdir(parents=True, exist_ok=True)
    claim = {"host": "node-that-died", "pid": 1, "slurm_job_id": None, "token": "old",
             "heartbeat": time.time() - 3600, "lease_seconds": 300, **fields}
    (cell / CLAIM_DIR / f"{generation:09d}.json").write_text(json.dumps(claim))


def _cells(root: Path, name: str) -> list[Path]:
    cells = [root / f"{name}-{i}" for i in range(CELLS_PER_CASE)]
    for c in cells:
        c.mkdir()
    return cells


def test_fresh_cells_have_exactly_one_winner_per_race(tmp_path):
    winners = _race(_cells(tmp_path, "fresh"))
    assert set(winners.values()) == {1}, winners
    assert all(generations(c) == [1] and read_claim(c)["released"] for c in winners)


def test_a_dead_claim_is_taken_over_by_exactly_one_contender(tmp_path):
    cells = _cells(tmp_path, "dead")
    for c in cells:
        _dead_claim(c)
    winners = _race(cells)
    assert set(winners.values()) == {1}, winners
    assert all(generations(c)[0] == 2 for c in cells)


def test_an_unreadable_claim_is_live_for_its_grace_period_then_taken_over(tmp_path):
    recent, old = _cells(tmp_path, "recent")[:3], _cells(tmp_path, "old")[:3]
    for c in recent + old:
        (c / CLAIM_DIR).mkdir()
        (c / CLAIM_DIR / "000000001.json").write_text("")  # e.g. a holder on a failing disk
    for c in old:
        os.utime(c / CLAIM_DIR / "000000001.json", (time.time() - 3600,) * 2)
    assert all(read_claim(c)["unreadable"] and claim_is_live(read_claim(c)) for c in recent)
    winners = _race(recent + old)
    assert [winners[c] for c in recent] == [0] * 3
    assert [winners[c] for c in old] == [1] * 3


HOLDER = textwrap.dedent("""
    import sys, time
    from memsweep.claim import CellClaim, ClaimLost
    claim = CellClaim(sys.argv[1], lease_seconds=4)
    assert claim.acquire()
    print("held", claim.generation, flush=True)
    while True:
        try:
            claim.check()
        except ClaimLost:
            print("lost", claim.lost, flush=True)
            sys.exit(3)
        time.sleep(0.1)
""")


def test_a_paused_holder_comes_back_to_a_lost_claim_and_overwrites_nothing(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().split() == ["held", "1"]
        assert not CellClaim(tmp_path, lease_seconds=4).acquire()  # live: its heartbeat is fresh
        os.kill(holder.pid, signal.SIGSTOP)
        time.sleep(5)  # past its lease
        taker = CellClaim(tmp_path, lease_seconds=60)
        assert taker.acquire() and taker.generation == 2
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.wait(30) == 3
        assert holder.stdout.readline().split() == ["lost", "True"]
        time.sleep(1.5)  # a stray heartbeat of the old holder would land here
        current = read_claim(tmp_path)
        assert current["generation"] == 2 and current["token"] == taker.token
        taker.check()
        taker.release()
    finally:
        holder.kill()


def test_the_heartbeat_survives_transient_errors_and_reports_when_it_cannot_renew(tmp_path, monkeypatch):
    claim = CellClaim(tmp_path, lease_seconds=4)
    failures = {"left": 2}
    real_renew = claim._renew

    def flaky_renew(**extra):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error")
        real_renew(**extra)

    monkeypatch.setattr(claim, "_renew", flaky_renew)
    assert claim.acquire()
    time.sleep(3.6)  # three beats: two fail, one renews
    assert claim.renew_errors == 2 and not claim.unrenewable and claim._thread.is_alive()
    assert time.time() - read_claim(tmp_path)["heartbeat"] < 1.5
    failures["left"] = 10**6
    deadline = time.time() + 10
    while not claim.unrenewable and time.time() < deadline:
        time.sleep(0.1)
    assert claim.unrenewable and claim.must_stop and not claim.lost
    claim.release()


def test_a_released_claim_keeps_its_number_so_an_old_holder_stays_fenced(tmp_path):
    first = CellClaim(tmp_path)
    assert first.acquire()
    first.release()
    second = CellClaim(tmp_path)
    assert second.acquire() and second.generation == 2
    with pytest.raises(ClaimLost):
        first.check()
    second.release()


def test_concurrent_config_writers_do_not_collide(small_cell, tmp_path):
    cfg = small_cell()
    errors = []

    def write():
        try:
            for _ in range(30):
                save_cell_config(cfg, tmp_path / "config.yaml")
        except Exception as err:  # the old fixed temp name: FileNotFoundError on replace
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and not list(tmp_path.glob(".*.tmp"))
