"""The report's time-to-capacity section on a real sweep of schedule=wsd cells."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from memsweep.analysis.time_to_capacity import growth_laws
from tests.conftest import run_sweep

# Two tiny wsd cells that run to max_steps: decays at 20, 40, 80 steps and a final one from 83 to 100.
GRID = ["experiment=smoke", "precision=fp32", "data.n_samples=16,64", "model.d_model=16", "model.n_head=2",
        "data.vocab_size=64", "data.seq_len=16", "data.n_heldout=32", "trainer.batch_size=16",
        "trainer.warmup_steps=10", "trainer.eval_interval=20", "trainer.max_steps=100", "trainer.schedule=wsd",
        "trainer.saturation.min_steps=20", "trainer.saturation.tolerance=0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory, "wsd", GRID, bootstrap=50)


def test_the_report_draws_each_decay_at_the_tokens_behind_it(sweep):
    report = sweep / "report"
    points = pd.read_csv(report / "time_to_capacity.csv")
    cells = pd.read_csv(report / "cells.csv")
    assert len(points) == 2 * 4 and set(points["n_samples"]) == {16, 64}
    for cell in cells.itertuples():
        growth = json.loads(cell.growth_per_doubling)
        mine = points[points["cell_id"] == cell.cell_id]
        assert list(mine["stable_steps"]) == [20, 40, 80, 83] and list(mine["final"]) == [False, False, False, True]
        # tokens behind a decayed model = (stable + decay steps) x batch 16 x 16 tokens
        assert list(mine["tokens"]) == [(g["step"] + g["decay_steps"]) * 256 for g in growth]
        assert list(mine["memorized_bits"]) == [g["memorized_bits"] for g in growth]
        assert mine["memorized_bits"].iloc[-1] == cell.memorized_bits  # the final decay is the cell's result
    text = (report / "report.md").read_text()
    assert "## Time to capacity (schedule=wsd cells)" in text and "(time_to_capacity.png)" in text
    assert (report / "time_to_capacity.png").read_bytes()[:4] == b"\x89PNG"


def test_the_growth_law_is_the_gain_between_the_last_two_decays(sweep):
    laws = pd.read_csv(sweep / "report" / "growth_laws.csv")
    points = pd.read_csv(sweep / "report" / "time_to_capacity.csv")
    for law in laws.itertuples():
        p = points[points["cell_id"] == law.cell_id].sort_values("tokens")
        by_hand = (p["memorized_bits"].iloc[-1] - p["memorized_bits"].iloc[-2]) / \
            math.log2(p["tokens"].iloc[-1] / p["tokens"].iloc[-2])
        assert law.bits_per_doubling_last == pytest.approx(by_hand)
        assert math.isnan(law.table1_bits_per_param)  # V = 64: no Table 1 row to extrapolate to


def test_the_extrapolation_to_table1_uses_the_last_gain_and_says_when_it_is_optimistic():
    # 1L d32 fp32 at V = 2048, S = 64: Table 1 says 4.23 bits/param (339,889 bits for P = 80,352).
    p = 80_352
    points = pd.DataFrame({"cell_id": "c", "tokens": [1e7, 2e7, 4e7], "memorized_bits": [2.4e5, 2.6e5, 2.7e5]})
    cells = pd.DataFrame([{"cell_id": "c", "model": "1L d32", "precision": "fp32", "n_samples": 1024,
                           "n_params": p, "vocab_size": 2048, "seq_len": 64, "n_layer": 1, "d_model": 32}])
    law = growth_laws(points, cells).iloc[0]
    assert law.bits_per_doubling_last == pytest.approx(1e4) and law.per_doubling_falls
    assert law.doublings_to_table1 == pytest.approx((4.23 * p - 2.7e5) / 1e4)
    assert law.tokens_to_table1 == pytest.approx(4e7 * 2 ** law.doublings_to_table1)
    # Gains of 20k then 10k bits per doubling: ratio 0.5, so the curve levels off 10k bits above the last point.
    assert law.gain_ratio == pytest.approx(0.5)
    assert law.plateau_bits_per_param == pytest.approx((2.7e5 + 1e4) / p)


def test_no_plateau_is_projected_from_gains_that_do_not_shrink():
    points = pd.DataFrame({"cell_id": "c", "tokens": [1e7, 2e7, 4e7], "memorized_bits": [2.4e5, 2.5e5, 2.6e5]})
    cells = pd.DataFrame([{"cell_id": "c", "model": "m", "precision": "fp32", "n_samples": 8, "n_params": 100,
                           "vocab_size": 64, "seq_len": 16, "n_layer": 1, "d_model": 16}])
    law = growth_laws(points, cells).iloc[0]
    assert law.gain_ratio == pytest.approx(1.0) and law.plateau_bits_per_param is None
