"""The sweep planner, the grid presets and the size ladder, against the real conf/ and real Hydra."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from memsweep import ladder
from memsweep.cell import gpt_config
from memsweep.cli import main as cli
from memsweep.config import ConfigError, cell_config, load_cell_config
from memsweep.model import GPT, paper_param_count
from memsweep.record import write_json_atomic
from memsweep.sweep import CONFIG_FILE, SWEEP_FILE, SweepPlan, plan_sweep, write_plan
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SMOKE_GRID = [("data.n_samples=8", "precision=fp32"), ("data.n_samples=8", "precision=bf16"),
              ("data.n_samples=16", "precision=fp32"), ("data.n_samples=16", "precision=bf16")]


@pytest.mark.slow
def test_smoke_plan_is_the_cells_hydra_multirun_runs(tmp_path):
    swept = tmp_path / "multirun"
    out = subprocess.run([sys.executable, "-m", "memsweep.train", "-m", "experiment=smoke", f"hydra.sweep.dir={swept}"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = {}
    for cell_dir in (d for d in swept.iterdir() if (d / ".hydra").is_dir()):
        job = OmegaConf.load(cell_dir / ".hydra" / "hydra.yaml").hydra.job
        jobs[job.num] = (cell_dir.name, tuple(OmegaConf.load(cell_dir / ".hydra" / "overrides.yaml")))
        assert json.loads((cell_dir / "result.json").read_text())["status"] == "done"
    plan = plan_sweep(["experiment=smoke"])
    assert [(c.cell_id, c.overrides) for c in plan.cells] == [jobs[n] for n in sorted(jobs)]
    assert [c.overrides[:2] for c in plan.cells] == SMOKE_GRID

    assert cli(["status", str(swept), "--json"]) == 0  # a plain multirun's dir, no sweep.json


def test_a_grid_preset_names_its_sweep_and_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_sweep(["experiment=smoke"])
    assert plan.name == "smoke" and plan.sweep_dir == tmp_path / "runs" / "sweeps" / "smoke"
    assert all(c.cell_dir == plan.sweep_dir / c.cell_id and c.config.logger.group == "smoke" for c in plan.cells)


def test_sweep_name_and_sweep_dir_can_be_overridden(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert plan_sweep(["experiment=smoke", "sweep_name=mine"]).sweep_dir == tmp_path / "runs" / "sweeps" / "mine"
    assert plan_sweep(["experiment=smoke", f"hydra.sweep.dir={tmp_path}/x"]).sweep_dir == tmp_path / "x"
    assert plan_sweep(["experiment=smoke"], sweep_dir=tmp_path / "y").sweep_dir == tmp_path / "y"


def test_the_command_line_overrides_a_preset_axis_and_adds_axes():
    one_precision = plan_sweep(["experiment=smoke", "precision=bf16"])
    assert [c.overrides for c in one_precision.cells] == [
        ("data.n_samples=8", "precision=bf16", "experiment=smoke"), ("data.n_samples=16", "precision=bf16", "experiment=smoke")]
    seeds = plan_sweep(["experiment=smoke", "data.n_samples=4,32,8", "seed=range(0,3)"])
    assert len(seeds.cells) == 3 * 2 * 3
    assert [c.config.data.n_samples for c in seeds.cells[::6]] == [4, 32, 8]  # the command line's order
    assert [c.config.seed for c in seeds.cells[:3]] == [0, 1, 2]
    for cell in seeds.cells[::5]:  # the planner's composition is Hydra's compose
        assert cell_config(compose_config(list(cell.overrides))) == cell.config


def test_duplicate_cells_are_planned_once():
    plan = plan_sweep(["experiment=smoke", "logger=none,csv"])  # the logger does not change a result
    assert len(plan.cells) == 4 and len({c.cell_id for c in plan.cells}) == 4


@pytest.mark.parametrize("overrides,key", [
    (["model.n_head=5"], "model.d_model"),
    (["model.n_head=2,5"], "model.d_model"),
    (["model.d_modl=3,4"], "model.d_modl"),
    (["precision=fp16,bf16"], "precision"),
    (["data.n_samples=0,4"], "data.n_samples"),
    (["model=paper-3L-d32,paper-1L-d32"], "model"),
    (["model.n_layer=two"], "model.n_layer"),
    (["fooo=1,2"], "fooo"),
])
def test_a_bad_grid_is_refused_naming_the_key_and_the_cell(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        plan_sweep(["experiment=smoke", *overrides], sweep_dir=tmp_path / "sweep")
    assert str(err.value).startswith(f"{key}:")
    assert "(cell: " in str(err.value) and "experiment=smoke" in str(err.value)


@pytest.mark.parametrize("override", ["hydra.sweep.dir=a,b", "trainer.lr=interval(0.1,1)"])
def test_what_the_basic_sweeper_cannot_expand_is_refused(override):
    with pytest.raises(ConfigError, match=f"^{override.split('=')[0]}: the basic sweeper cannot sweep"):
        plan_sweep(["experiment=smoke", override])


def test_write_plan_writes_what_the_runner_reads(tmp_path):
    plan = plan_sweep(["experiment=smoke", "seed=3"], sweep_dir=tmp_path)
    write_plan(plan)
    for cell in plan.cells:
        assert load_cell_config(cell.cell_dir / CONFIG_FILE) == cell.config
    sweep = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert sweep["name"] == plan.name and sweep["overrides"] == ["experiment=smoke", "seed=3"]
    assert sweep["created"] and sweep["sweep_dir"] == str(tmp_path)
    assert sweep["cells"] == [{"cell_id": c.cell_id, "overrides": list(c.overrides), "after": None} for c in plan.cells]


def test_write_plan_never_touches_a_done_cell(tmp_path):
    plan = plan_sweep(["experiment=smoke"], sweep_dir=tmp_path)
    done, failed = plan.cells[0].cell_dir, plan.cells[1].cell_dir
    write_json_atomic(done / "result.json", {"status": "done", "cell_id": plan.cells[0].cell_id})
    (done / CONFIG_FILE).write_text("what the finished run read\n")
    os.utime(done / CONFIG_FILE, (1_000_000, 1_000_000))
    write_json_atomic(failed / "result.json", {"status": "failed", "error": "RuntimeError: boom"})
    before = sorted(p.name for p in done.iterdir())
    write_plan(plan)
    assert (done / CONFIG_FILE).read_text() == "what the finished run read\n"
    assert (done / CONFIG_FILE).stat().st_mtime == 1_000_000
    assert sorted(p.name for p in done.iterdir()) == before
    assert load_cell_config(failed / CONFIG_FILE) == plan.cells[1].config  # a failed cell is re-planned


@functools.cache
def preset_plan(experiment: str) -> SweepPlan:
    """Each experiment preset planned once (the 3,000-cell capacity grid takes tens of seconds to
    validate on 2 cores; it is only planned, never run)."""
    return plan_sweep([f"experiment={experiment}"], sweep_dir=Path("/nonexistent"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_expands_and_validates(experiment):
    plan = preset_plan(experiment)
    assert plan.cells and len({c.cell_id for c in plan.cells}) == len(plan.cells)


def test_smoke_grid_is_small_enough_for_ci():
    cells = preset_plan("smoke").cells
    assert len(cells) <= 4
    assert all(c.config.trainer.max_steps <= 50 and c.config.logger.name == "none" for c in cells)


def test_capacity_grid_spans_every_models_capacity():
    cells = preset_plan("capacity").cells
    assert len(cells) == 4 * 5 * 10 * 2 * 5
    shapes = {(c.config.model.n_layer, c.config.model.d_model) for c in cells}
    assert shapes == {(L, d) for L in (1, 2, 4, 8) for d in (32, 64, 128, 256, 512)}
    assert {c.config.precision for c in cells} == {"fp32", "bf16"} and {c.config.seed for c in cells} == set(range(5))
    for L, d in shapes:  # every model's own N*/8 ... 8 N*, sqrt(2)-spaced from N*/2 to 4 N*
        capacity = ladder.BITS_PER_PARAM * paper_param_count(2048, 64, L, d) / ladder.BITS_PER_SEQUENCE
        sizes = sorted({c.config.data.n_samples for c in cells
                        if (c.config.model.n_layer, c.config.model.d_model) == (L, d)})
        assert len(sizes) == 10 and sum(n < capacity for n in sizes) >= 4 and sum(n > capacity for n in sizes) >= 5
        assert sizes[0] == pytest.approx(capacity / 8, rel=0.01) and sizes[-1] == pytest.approx(8 * capacity, rel=0.01)
        middle = sizes[2:9]  # N*/2 ... 4 N*
        assert all(math.log2(b / a) == pytest.approx(0.5, abs=0.02) for a, b in zip(middle, middle[1:])), (L, d)


def test_ladder_files_are_the_generators_and_state_exact_counts():
    names = [r.name for r in ladder.LADDER]
    assert names[0] == "500K" and names[-1] == "1.5B"
    assert [r.params for r in ladder.LADDER] == sorted(r.params for r in ladder.LADDER)
    for rung in ladder.LADDER:
        text = (CONF / "model" / f"{rung.name}.yaml").read_text()
        assert text == ladder.preset_yaml(rung), f"conf/model/{rung.name}.yaml: rerun python -m memsweep.ladder --write"
        assert f"P = {paper_param_count(2048, 64, rung.n_layer, rung.d_model):,} " in text
        cell = cell_config(compose_config([f"model={rung.name}"]))
        assert (cell.model.n_layer, cell.model.d_model, cell.model.n_head) == (rung.n_layer, rung.d_model, rung.n_head)
        if rung.params < 5_000_000:  # building the large rungs would take GBs; the formula is tested in test_model
            assert GPT(gpt_config(cell, torch.device("cpu"))).n_params == rung.params


def test_ladder_follows_its_rule():
    gpt2 = {r.name: (r.n_layer, r.d_model, r.n_head) for r in ladder.LADDER if r.name in ladder.GPT2_SHAPES}
    assert gpt2 == {"100M": (12, 768, 12), "300M": (24, 1024, 16), "700M": (36, 1280, 20), "1.5B": (48, 1600, 25)}
    for rung in ladder.LADDER:
        assert rung.d_model == 64 * rung.n_head
        if rung.name in ladder.SMALL_SIZES:
            assert abs(math.log(rung.params / ladder.SMALL_SIZES[rung.name])) <= math.log(ladder.TOLERANCE)


def test_ladder_prints_every_rung(capsys):
    ladder.main([])
    out = capsys.readouterr().out
    for rung in ladder.LADDER:
        assert f"{rung.params:,}" in out and rung.name in out
