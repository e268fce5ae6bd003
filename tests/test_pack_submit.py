"""`memsweep submit --pack`: one pack per SLURM array task on the real local cluster
(launch/local-slurm; tests marked `slurm`), and the submission's checks, which need no cluster."""

from __future__ import annotations

import json
import subprocess

import pytest

from memsweep.launcher import submit_cells
from memsweep.pack.checkpoint import pack_checkpoints
from tests.test_slurm_sweep import SMOKE, final, memsweep, result, slurm_json, wait_until

PACK_OF_3 = [*SMOKE, "data.n_samples=8,16,32", "precision=fp32"]
"""The smoke grid as three fp32 cells of one shape (30 steps of 1L d16): one pack."""


@pytest.mark.slurm
def test_a_pack_of_three_runs_as_one_array_task_and_each_cell_records_its_pack(cluster, tmp_path):
    out = memsweep("submit", *PACK_OF_3, "--sweep-dir", str(tmp_path), "--pack", "3").stdout
    assert "3 cells in 1 packs, 0 unpacked, 1 tasks" in out and "queued 3 in 1 jobs" in out, out
    cells = [d for d in tmp_path.iterdir() if (d / "config.yaml").exists()]
    assert len(cells) == 3 and len({slurm_json(d)["job_id"] for d in cells}) == 1
    wait_until(lambda: all(final(d) for d in cells), 300, "the pack's three cells finished")
    records = [result(d) for d in cells]
    assert all(r["status"] == "done" and r["steps"] == 30 for r in records), [r.get("error") for r in records]
    packs = [r["pack"] for r in records]
    assert len({p["id"] for p in packs}) == 1 and {p["size"] for p in packs} == {3}
    assert sorted(p["position"] for p in packs) == [0, 1, 2]
    assert set(packs[0]["cell_ids"]) == {d.name for d in cells}
    planned = json.loads((tmp_path / "sweep.json").read_text())["packs"]
    assert [sorted(p) for p in planned] == [sorted(packs[0]["cell_ids"])]
    log = slurm_json(cells[0])["stdout"]
    assert f"pack {packs[0]['id']}: 3 cells" in open(log).read()


@pytest.mark.slurm
def test_a_preempted_pack_task_requeues_and_resumes_its_cells(cluster, tmp_path):
    grid = [*SMOKE, "data.n_samples=8,16", "precision=fp32", "trainer.max_steps=1000",
            "trainer.checkpoint_every_steps=20", "trainer.eval_interval=100"]
    memsweep("submit", *grid, "--sweep-dir", str(tmp_path), "--pack", "2")
    cells = [d for d in tmp_path.iterdir() if (d / "config.yaml").exists()]
    job = slurm_json(cells[0])["job_id"]
    wait_until(lambda: all(pack_checkpoints(d) for d in cells), 150, "a first checkpoint of each cell")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # SLURM's preemption warning
    wait_until(lambda: all((result(d) or {}).get("status") in ("preempted", "done") for d in cells), 60,
               "the signal handled")
    preempted = [result(d) for d in cells]
    # SLURM's requeue delay plus a fresh torch import and 1,000 steps: 240 s ran out once on a loaded 2-core CI
    wait_until(lambda: all(final(d) for d in cells), 480, "both cells finished after the requeue")
    assert all(r["status"] == "preempted" and r["requeue"] for r in preempted), "finished before the signal"
    for before, cell in zip(preempted, cells):
        done = result(cell)
        assert done["status"] == "done" and done["resumed_from_step"] == before["steps"] > 0, done.get("error")
        assert done["pack"]["id"] == before["pack"]["id"] and done["pack"]["size"] == 2
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "REQUEUED" in history, history


def test_packs_and_cells_per_job_are_one_or_the_other(tmp_path):
    done = memsweep("submit", *PACK_OF_3, "--sweep-dir", str(tmp_path), "--pack", "3", "--cells-per-job", "2",
                    check=False)
    assert done.returncode == 2 and "--cells-per-job: a packed job trains one pack" in done.stderr, done.stderr
    refused = memsweep("submit", *PACK_OF_3, "--pack", "0", check=False)
    assert refused.returncode == 2 and "argument --pack" in refused.stderr


def test_every_cell_to_queue_must_be_in_a_pack(tmp_path):
    cells = [tmp_path / name for name in ("a", "b")]
    with pytest.raises(ValueError, match="in no pack"):
        submit_cells(cells, {}, log_dir=tmp_path, max_array_size=10, array_parallelism=1, packs=[[cells[0]]])
