"""Planning packs (`memsweep plan --pack K|auto`, memsweep.pack.plan and .cost) and the report's
per-pack throughput (memsweep.analysis.throughput) on records of a tiny `memsweep run --pack 2`."""

from __future__ import annotations

import json
import math

import pytest

from memsweep.analysis.cells import load_sweep
from memsweep.analysis.report import build_report, markdown
from memsweep.analysis.throughput import pack_throughput, throughput_table
from memsweep.cli import main as cli_main
from memsweep.config import cell_config
from memsweep.model import training_flops_per_token
from memsweep.pack.cost import (BUDGETS, CPU_RATIOS, GPU_STEP_OVERHEAD_S, auto_size, cpu_speedup, gpu_speedup,
                                max_size, pack_bytes)
from memsweep.pack.grouping import pack_key
from memsweep.pack.plan import plan_packs
from memsweep.sweep import plan_sweep
from tests.conftest import compose_config

CAPACITY_1L_D32 = ["experiment=capacity", "model.n_layer=1", "model.d_model=32"]
"""The paper's capacity grid trimmed to its smallest model: 100 cells (10 N x 2 precisions x 5 seeds)."""


def test_plan_pack_auto_on_the_capacity_grid_prints_packs_and_their_cost(capsys, tmp_path):
    assert cli_main(["plan", *CAPACITY_1L_D32, "--pack", "auto", "--device", "gpu", "--sweep-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cost model GPU" in out and "ASSUMED" in out
    packs = [line.split() for line in out.splitlines() if line.split() and len(line.split()[0]) == 12
             and line.split()[1].isdigit()]
    assert packs and sum(int(p[1]) for p in packs) == 100  # every cell in a pack: they cannot fill a GPU
    assert all(p[9] == "8,192" and float(p[10].rstrip("x")) > 1.1 for p in packs)  # tokens/cell-step, speedup
    assert "100 cells in" in out and "device-hours unpacked" in out and "nothing written" in out
    assert not (tmp_path / "sweep.json").exists()


def test_auto_packs_on_cpu_only_where_the_measured_ratios_say_it_pays():
    plan = plan_sweep([*CAPACITY_1L_D32, "seed=0"])  # 20 cells, 8,192 tokens a cell-step
    at_8192 = plan_packs(plan.cells, "auto", "cpu", 5e13)
    assert not at_8192.packs and all("does not pay" in why for _, why in at_8192.unpacked)
    small = plan_sweep([*CAPACITY_1L_D32, "seed=0", "trainer.batch_size=4", "trainer.eval_batch_size=64"])
    at_256 = plan_packs(small.cells, "auto", "cpu", 5e13)  # 256 tokens a cell-step: packing pays
    assert [len(p.cells) for p in at_256.packs] == [10, 10]  # one pack per precision, K capped by the 10 cells
    assert all(p.speedup > 1.1 and p.seconds_packed < p.seconds_unpacked for p in at_256.packs)
    assert at_256.seconds_packed < at_256.seconds_unpacked


def test_pack_4_on_the_smoke_grid_groups_compatible_cells_only(capsys, tmp_path):
    assert cli_main(["plan", "experiment=smoke", "--pack", "4", "--device", "cpu", "--write",
                     "--sweep-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 cells in 2 packs, 0 unpacked, 2 tasks" in out, out
    plan = plan_sweep(["experiment=smoke"], tmp_path)
    by_id = {c.cell_id: c for c in plan.cells}
    packs = json.loads((tmp_path / "sweep.json").read_text())["packs"]
    assert sorted(len(p) for p in packs) == [2, 2]  # fp32 and bf16 never share a pack
    for pack in packs:
        assert len({pack_key(by_id[i].config) for i in pack}) == 1
        assert len({by_id[i].config.precision for i in pack}) == 1


@pytest.mark.parametrize("value", ["0", "-2", "x", "2.5"])
def test_pack_must_be_a_positive_whole_number_or_auto(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["plan", "experiment=smoke", "--pack", value])
    assert exit_.value.code == 2 and "argument --pack: must be a whole number >= 1 or 'auto'" in capsys.readouterr().err


def test_cpu_model_reads_the_measured_table_and_interpolates_in_log_space():
    for (width, tokens), by_k in CPU_RATIOS.items():
        for k, runs in by_k.items():
            assert cpu_speedup(width, tokens, k) == pytest.approx(min(runs))  # the most conservative run
    assert cpu_speedup(32, 256, 1) == 1.0
    assert cpu_speedup(32, 256, 2) == pytest.approx(math.sqrt(min(CPU_RATIOS[32, 256][4])))  # half way in log K
    between = cpu_speedup(64, 512, 4)  # log-midpoints of width and tokens: inside its four neighbours
    corners = [min(CPU_RATIOS[w, t][4]) for w in (32, 128) for t in (256, 1024)]
    assert min(corners) <= between <= max(corners)
    assert cpu_speedup(512, 8192, 4) == cpu_speedup(128, 8192, 4)  # held beyond the measured widths


def test_gpu_model_and_budgets():
    cfg = cell_config(compose_config(["model=paper-1L-d32"]))
    f = training_flops_per_token(2048, 64, 1, 32) * 128 * 64 / 5e13
    assert gpu_speedup(cfg, 8, 5e13) == pytest.approx(8 * (GPU_STEP_OVERHEAD_S + f) / (GPU_STEP_OVERHEAD_S + 8 * f))
    for device in ("cpu", "gpu"):
        size, why = max_size(device, cfg)
        assert size * 128 * 64 <= BUDGETS[device].tokens_per_step and pack_bytes(cfg, size) <= BUDGETS[device].memory_bytes
        assert pack_bytes(cfg, size + 1) > BUDGETS[device].memory_bytes or size == 64 or "token" in why
    assert auto_size("cpu", cfg, 50, 5e13)[0] == 1  # 8,192 tokens a cell-step: no gain on a CPU
    assert auto_size("gpu", cfg, 50, 5e13)[0] > 1


# ---- the report's throughput of packed cells ----------------------------------------------------

@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory):
    """The smoke grid shrunk to 20 steps of 1L d16 on V 64, S 16, run with `--pack 2` (two packs)."""
    sweep = tmp_path_factory.mktemp("packed")
    assert cli_main(["run", "experiment=smoke", "data.vocab_size=64", "data.seq_len=16", "trainer.max_steps=20",
                     "trainer.accelerator=cpu", "--pack", "2", "--workers", "1", "--no-report",
                     "--sweep-dir", str(sweep)]) == 0
    return sweep


def test_throughput_per_cell_and_per_pack_from_the_records(packed_sweep):
    cells = load_sweep(packed_sweep).done
    peak = 1e11
    table = throughput_table(cells, peak_flops=peak)
    assert len(table) == 4 and set(table["pack_size"]) == {2} and table["pack_id"].nunique() == 2
    flops = training_flops_per_token(64, 16, 1, 16)
    for _, row in table.iterrows():
        record = json.loads((packed_sweep / row["cell_id"] / "result.json").read_text())
        assert row["pack_id"] == record["pack"]["id"]
        assert row["tokens_per_sec_per_device"] == pytest.approx(record["tokens_per_sec"])
        assert row["mfu"] == pytest.approx(record["tokens_per_sec"] * flops / peak)
        assert row["pack_mfu"] == pytest.approx(record["pack"]["tokens_per_sec"] * flops / peak)
        assert row["pack_tokens_per_sec"] == pytest.approx(2 * row["tokens_per_sec_per_device"], rel=1e-6)
    packs = pack_throughput(table)
    assert len(packs) == 2 and list(packs["cells"]) == [2, 2]
    assert (packs["pack_mfu"] > packs["cell_mfu"]).all()


def test_the_report_shows_pack_size_and_per_pack_rows(packed_sweep):
    report = build_report(packed_sweep, n_boot=10, peak_flops=1e11)
    text = markdown(report)
    section = text[text.index("## Throughput"):]
    assert "pack_size" in section and "pack_mfu" in section and "Per pack" in section
    for pack_id in report.tables["throughput_packs"]["pack_id"]:
        assert pack_id in section
