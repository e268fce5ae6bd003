"""`memsweep plan | status | collect` on real sweep dirs in tmp_path (synthetic cells, no training)."""

from __future__ import annotations

import csv
import importlib.util
import json
import socket
import subprocess
import time
from importlib import metadata

import pytest

from memsweep.claim import CLAIM_DIR
from memsweep.cli import main
from memsweep.record import write_json_atomic
from memsweep.sweep import CONFIG_FILE, SWEEP_FILE, plan_sweep, write_plan

DONE = {"status": "done", "memorized_bits": 4356.5, "n_params": 37104, "stop_reason": "max_steps",
        "config": {"model": {"n_layer": 1}}, "versions": {"torch": "2.13.0", "git_sha": "abc"}}
FAILED = {"status": "failed", "error": "RuntimeError: CUDA out of memory\nTried to allocate 2 GiB",
          "traceback": "Traceback (most recent call last):\n  ...", "config": {}}


def write_claim(cell_dir, generation: int = 1, **payload) -> None:
    """A claim as memsweep.claim.CellClaim writes it: claims/<generation>.json with its payload."""
    fields = {"host": "gpu-node-7", "pid": 4242, "pid_start": None, "slurm_job_id": None, "token": "t" * 32,
              "heartbeat": time.time(), "lease_seconds": 300.0}
    write_json_atomic(cell_dir / CLAIM_DIR / f"{generation:09d}.json", {**fields, **payload})


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def sweep(tmp_path):
    """A planned 8-cell sweep whose cells are in every state status knows, plus one cell dir that
    a plain `memsweep-train -m` left (no plan entry, overrides in .hydra/)."""
    plan = plan_sweep(["experiment=smoke", "seed=0,1"], sweep_dir=tmp_path)
    write_plan(plan)
    now = time.time()
    dirs = [c.cell_dir for c in plan.cells]
    ids = [c.cell_id for c in plan.cells]
    write_json_atomic(dirs[0] / "result.json", {**DONE, "cell_id": ids[0]})
    write_json_atomic(dirs[1] / "result.json", {**FAILED, "cell_id": ids[1]})
    write_json_atomic(dirs[2] / "result.json", {"status": "running", "cell_id": ids[2]})
    write_claim(dirs[2], generation=2, slurm_job_id="17_3", heartbeat=now - 5)
    write_json_atomic(dirs[3] / "result.json", {"status": "running", "cell_id": ids[3]})
    write_claim(dirs[3], pid=4243, heartbeat=now - 3600)
    write_claim(dirs[4], host=socket.gethostname(), pid=dead_pid(), heartbeat=now)
    write_json_atomic(dirs[5] / "result.json", {"status": "preempted", "cell_id": ids[5]})
    write_json_atomic(dirs[6] / "result.json", {"status": "interrupted", "cell_id": ids[6], "signal": "SIGTERM",
                                                "stop_cause": "signal SIGTERM"})
    loose = tmp_path / "0123456789ab"
    write_json_atomic(loose / "result.json", {**DONE, "cell_id": "0123456789ab"})
    (loose / ".hydra").mkdir()
    (loose / ".hydra" / "overrides.yaml").write_text("- precision=bf16\n- seed=9\n")
    (tmp_path / "not-a-cell").mkdir()
    expected = dict(zip(ids, ["done", "failed", "running", "stale", "stale", "preempted", "interrupted", "pending"]))
    return tmp_path, plan, {**expected, "0123456789ab": "done"}


def test_status_reports_every_cells_state(sweep, capsys):
    sweep_dir, plan, expected = sweep
    assert main(["status", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.split()[0]: line.split()[1] for line in lines[:-1]} == expected
    by_id = {line.split()[0]: line for line in lines[:-1]}
    assert by_id[plan.cells[1].cell_id].endswith("RuntimeError: CUDA out of memory")  # the error's first line
    assert "gpu-node-7 pid 4242 job 17_3, heartbeat 5s ago, generation 2" in by_id[plan.cells[2].cell_id]
    assert "process gone: claim expired (gpu-node-7 pid 4243" in by_id[plan.cells[3].cell_id]
    assert "claim holder process gone" in by_id[plan.cells[4].cell_id]
    assert by_id[plan.cells[6].cell_id].endswith("resumable; stopped by signal SIGTERM")
    assert "data.n_samples=8 precision=fp32 experiment=smoke seed=0" in by_id[plan.cells[0].cell_id]
    assert "precision=bf16 seed=9" in by_id["0123456789ab"]
    assert lines[-1] == "9 cells: 2 done, 1 failed, 1 running, 1 interrupted, 1 preempted, 2 stale, 1 pending"


def test_status_json(sweep, capsys):
    sweep_dir, plan, expected = sweep
    assert main(["status", str(sweep_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {c["cell_id"]: c["state"] for c in report["cells"]} == expected
    assert report["counts"] == {"done": 2, "failed": 1, "running": 1, "interrupted": 1, "preempted": 1, "stale": 2,
                                "pending": 1, "blocked": 0, "corrupt": 0}
    assert report["cells"][0]["overrides"] == list(plan.cells[0].overrides)


def test_status_of_a_missing_dir_is_an_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "is not a sweep dir: no such directory" in capsys.readouterr().err


def test_collect_writes_one_csv_row_per_cell(sweep):
    sweep_dir, plan, expected = sweep
    assert main(["collect", str(sweep_dir)]) == 0
    with (sweep_dir / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["cell_id"]: r["status"] for r in rows} == expected
    done = next(r for r in rows if r["cell_id"] == plan.cells[0].cell_id)
    assert float(done["memorized_bits"]) == 4356.5 and done["versions.torch"] == "2.13.0"
    assert done["overrides"] == " ".join(plan.cells[0].overrides)
    failed = next(r for r in rows if r["cell_id"] == plan.cells[1].cell_id)
    assert failed["error"].startswith("RuntimeError: CUDA out of memory") and failed["memorized_bits"] == ""
    assert not {"config", "traceback"} & set(rows[0])


def test_collect_to_parquet_needs_pyarrow(sweep, capsys):
    sweep_dir, _, expected = sweep
    out = sweep_dir / "results.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        assert main(["collect", str(sweep_dir), "--out", str(out)]) == 2
        assert "pyarrow" in capsys.readouterr().err and not out.exists()
    else:
        import pyarrow.parquet as pq

        assert main(["collect", str(sweep_dir), "--out", str(out)]) == 0
        assert sorted(pq.read_table(out).column("cell_id").to_pylist()) == sorted(expected)


def test_plan_prints_cells_and_cost_and_writes_the_plan(tmp_path, capsys):
    assert main(["plan", "experiment=smoke", "seed=0,1", "--sweep-dir", str(tmp_path)]) == 0
    assert "nothing written" in capsys.readouterr().out and not list(tmp_path.iterdir())  # a dry run
    assert main(["plan", "experiment=smoke", "seed=0,1", "--sweep-dir", str(tmp_path), "--write"]) == 0
    out = capsys.readouterr().out.splitlines()
    plan = plan_sweep(["experiment=smoke", "seed=0,1"], sweep_dir=tmp_path)
    rows = [line.split() for line in out if line.split()[0] in {c.cell_id for c in plan.cells}]
    assert [r[0] for r in rows] == [c.cell_id for c in plan.cells]
    assert rows[0][1:8] == ["1", "16", "37,104", "8", "5,632", "fp32", "0"]  # L d P N bits precision seed
    assert "8 cells (0 already done" in out[-2] and "FLOP/s" in out[-2] and "wrote" in out[-1]
    assert json.loads((tmp_path / SWEEP_FILE).read_text())["cells"][0]["cell_id"] == plan.cells[0].cell_id
    assert all((c.cell_dir / CONFIG_FILE).exists() for c in plan.cells)

    write_json_atomic(plan.cells[0].cell_dir / "result.json", {"status": "done"})
    assert main(["plan", "experiment=smoke", "seed=0,1", "--sweep-dir", str(tmp_path), "--write"]) == 0
    assert "8 cells (1 already done" in capsys.readouterr().out


def test_plan_of_the_capacity_grid_summarises_it_in_well_under_a_minute(tmp_path, capsys):
    started = time.process_time()  # CPU time: the wall time depends on what else the machine runs
    assert main(["plan", "experiment=capacity", "--sweep-dir", str(tmp_path / "s")]) == 0
    assert time.process_time() - started < 60
    out = capsys.readouterr().out.splitlines()
    assert len(out) < 30 and out[0].split()[:6] == ["L", "d", "V", "S", "P", "cells"]
    assert sum(line.split()[5] == "100" for line in out[1:-2]) == 20  # 20 model shapes x 100 cells
    assert out[-2].startswith("2000 cells (0 already done") and "device-hours" in out[-2]
    assert not (tmp_path / "s").exists()


def test_a_misspelled_key_gets_a_did_you_mean(tmp_path, capsys):
    assert main(["plan", "model.d_modle=3", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "memsweep: config error: model.d_modle: unknown key; did you mean model.d_model?" in capsys.readouterr().err


def test_plan_refuses_a_bad_grid_and_writes_nothing(tmp_path, capsys):
    assert main(["plan", "experiment=smoke", "model.n_head=2,5", "--sweep-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "model.d_model: 16 is not divisible by model.n_head=5" in err
    assert "data.n_samples=8 precision=fp32 experiment=smoke model.n_head=5" in err
    assert not (tmp_path / "s").exists()


def test_plan_checks_devices_against_the_slurm_allocation(tmp_path, capsys):
    args = ["plan", "experiment=smoke", "cluster=slurm-local", "resources=cpu", "--sweep-dir", str(tmp_path / "s")]
    assert main([*args[:4], "trainer.devices=2", *args[4:]]) == 2
    err = capsys.readouterr().err
    assert "trainer.devices" in err and "resources.tasks_per_node" in err
    assert not (tmp_path / "s").exists()
    assert main(args) == 0


def test_memsweep_console_script_is_registered():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("memsweep") == "memsweep.cli:main"


def test_a_grid_placed_by_capacity_ratio_refuses_an_n_samples_that_it_would_ignore(tmp_path, capsys):
    assert main(["plan", "experiment=reproduce-quick", "data.n_samples=64", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "data.n_samples: this grid places N by data.capacity_ratio=" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["plan", "experiment=reproduce-quick", "data.capacity_ratio=null", "data.n_samples=64",
                 "--sweep-dir", str(tmp_path / "s")]) == 0
    assert "2 cells (0 already done" in capsys.readouterr().out  # d16 and d32, both at N = 64
