"""Packed cells log as their unpacked runs do (memsweep.loggers through memsweep.pack.runner), and
`memsweep run --pack auto` packs by the cost model (memsweep.pack.plan), unpacked where it does not pay."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from memsweep.cli import main as cli_main
from memsweep.sweepstate import sweep_states
from tests.test_pack_run import TINY, packed, solo, tiny
from tests.wandb_offline import history_and_summary, records

TWO_CELLS = ["data.n_samples=8,16", "trainer.max_steps=60", "trainer.eval_interval=20"]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def memsweep_run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "memsweep.cli", "run", *args, "--workers", "1", "--no-report"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def tiny_overrides(*overrides: str) -> list[str]:
    keys = {o.split("=")[0] for o in overrides}
    return [o for o in TINY if o.split("=")[0] not in keys] + list(overrides)


def wandb_run(cell_dir):
    (run_file,) = cell_dir.glob("wandb/offline-run-*/run-*.wandb")
    (run,) = [r.run for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    config.update({item.key: json.loads(item.value_json) for r in records(run_file)
                   if r.WhichOneof("record_type") == "config" for item in r.config.update})
    return run, config, *history_and_summary(run_file)


def memorized(cell_dir) -> list[float]:
    with (cell_dir / "metrics.csv").open() as fh:
        return [float(row["memorized_bits"]) for row in csv.DictReader(fh)]


def test_run_pack_2_gives_each_cell_its_own_wandb_run_as_unpacked(tmp_path, wandb_offline):
    sweep = tmp_path / "sweep"
    memsweep_run(*tiny_overrides("logger=wandb", "sweep_name=packlog", *TWO_CELLS), "--pack", "2",
                 "--sweep-dir", str(sweep))
    states = sweep_states(sweep)
    assert len(states) == 2 and all(c.record["status"] == "done" and c.record["pack"]["size"] == 2 for c in states)
    alone = solo(tiny("logger=wandb", "sweep_name=packlog", "data.n_samples=8", *TWO_CELLS[1:]), tmp_path)
    solo_run, solo_config, solo_history, solo_summary = wandb_run(tmp_path / "solo" / alone["cell_id"])
    for c in states:
        run, config, history, summary = wandb_run(c.cell_dir)
        assert run.run_id == c.record["cell_id"] and run.run_group == solo_run.run_group == "packlog"
        assert run.display_name == f"1L-d16-N{c.record['n_samples']}-fp32-s0"
        assert {k: v for k, v in config.items() if k != "pack"}.keys() == solo_config.keys()
        assert config["pack"]["size"] == 2 and config["pack"]["id"] == c.record["pack"]["id"]
        logged = [row["eval/memorized_bits"] for row in history if "eval/memorized_bits" in row]
        assert logged == pytest.approx(memorized(c.cell_dir))
        assert {k for row in history for k in row} == {k for row in solo_history for k in row}
        assert [r["trainer/global_step"] for r in history if "train/batch_loss" in r] == [49]
        assert summary["memorized_bits"] == pytest.approx(c.record["memorized_bits"])
        assert set(summary) - set(solo_summary) == {"pack/id", "pack/size", "pack/position", "pack/tokens_per_sec"}
        if c.record["n_samples"] == 8:  # the same cell as `alone`
            assert logged == pytest.approx([r["eval/memorized_bits"] for r in solo_history
                                            if "eval/memorized_bits" in r], rel=1e-4)


def test_a_packed_csv_logger_cell_writes_its_logs_where_the_unpacked_cell_does(tmp_path):
    cfgs = [tiny("logger=csv", f"data.n_samples={n}", *TWO_CELLS[1:]) for n in (8, 16)]
    alone = solo(cfgs[0], tmp_path)
    packed(cfgs, tmp_path / "packed")

    def rows(cell_dir):
        with (cell_dir / "logs" / "metrics.csv").open() as fh:
            return list(csv.DictReader(fh))

    expected = rows(tmp_path / "solo" / alone["cell_id"])
    for cfg in cfgs:
        got = rows(tmp_path / "packed" / cfg.cell_id)
        assert list(got[0]) == list(expected[0])
        assert [r["step"] for r in got] == [r["step"] for r in expected]
        bits = [float(r["eval/memorized_bits"]) for r in got if r["eval/memorized_bits"]]
        assert bits == pytest.approx(memorized(tmp_path / "packed" / cfg.cell_id))
    got = rows(tmp_path / "packed" / cfgs[0].cell_id)
    assert [float(r["eval/memorized_bits"] or 0) for r in got] == \
        pytest.approx([float(r["eval/memorized_bits"] or 0) for r in expected], rel=1e-4)


def run_auto(tmp_path, monkeypatch, capsys, *overrides: str) -> tuple[list, str]:
    """`memsweep run experiment=smoke ... --pack auto`, the workers replaced: what they were given."""
    import memsweep.local_run

    started = []
    monkeypatch.setattr(memsweep.local_run, "run_workers", lambda sweep_dir, workers, pack: started.append(pack))
    cli_main(["run", "experiment=smoke", *overrides, "--pack", "auto", "--device", "cpu", "--workers", "1",
              "--no-report", "--sweep-dir", str(tmp_path / "sweep")])
    return started, capsys.readouterr().out


def test_run_pack_auto_packs_the_smoke_grid_where_the_cost_model_says_it_pays(tmp_path, monkeypatch, capsys):
    started, out = run_auto(tmp_path, monkeypatch, capsys, "trainer.batch_size=2")  # 128 tokens/cell-step
    assert started == ["auto"]
    packs = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["packs"]
    assert sorted(len(p) for p in packs) == [2, 2]  # fp32 and bf16: two pack keys
    assert "packs (--pack auto)" in out and "speedup" in out and "2 packs" in out, out
    assert "in the packs above" in out


def test_run_pack_auto_trains_unpacked_where_packing_does_not_pay(tmp_path, monkeypatch, capsys):
    started, out = run_auto(tmp_path, monkeypatch, capsys, "model.d_model=32", "trainer.batch_size=128")
    assert started == [None]  # 8,192 tokens per cell-step at d32
    assert "packing does not pay" in out and "training them unpacked" in out, out
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["packs"] == []


def test_memsweep_run_pack_auto_trains_the_planned_packs(tmp_path):
    sweep = tmp_path / "sweep"
    done = memsweep_run(*tiny_overrides("data.n_samples=8,16", "trainer.max_steps=20"), "--pack", "auto",
                        "--sweep-dir", str(sweep))
    assert "packs (--pack auto)" in done.stdout, done.stdout
    states = sweep_states(sweep)
    assert len(states) == 2 and all(c.record["status"] == "done" for c in states)
    assert {c.record["pack"]["size"] for c in states} == {2}
