"""The report's fits recover constants planted in synthetic cell records, the attack scores
what it should on synthetic losses, and a report says plainly what it cannot fit. No training
here: tests/test_report.py runs a real sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memsweep.analysis import plots, report
from scipy import stats

from memsweep.analysis.capacity import capacities, capacity_summary, fit_alpha, model_label
from memsweep.analysis.cells import SweepCells
from memsweep.analysis.double_descent import double_descent_points, locate_peak, resolution_line
from memsweep.analysis.membership import (PAPER_LAW, fit_law, law_f1, loss_threshold_attack, oracle_f1,
                                          samples_for_f1)
from memsweep.analysis.paper import (APPENDIX_A1_ALPHA, PAPER_INCONSISTENCIES, appendix_a1_ceilings,
                                     appendix_a1_comparison, table1_comparison, verdict)

BITS_PER_SEQ = 512.0
SIZES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def synthetic_cells(capacity_of, seeds=(0, 1, 2, 3), precisions=("fp32",), test_loss=None, rng_seed=0) -> pd.DataFrame:
    """Cells whose memorized bits follow min(H, capacity(P, seed)) minus a little shortfall
    near the knee, as a trained model's would."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for precision in precisions:
        for d, n_params in [(16, 8_000), (32, 20_000), (48, 40_000)]:
            for seed in seeds:
                cap = capacity_of(n_params, seed, precision)
                for n in SIZES:
                    h = n * BITS_PER_SEQ
                    mem = min(h, cap) * (0.97 if abs(np.log2(h / cap)) < 1 else 1.0)
                    rows.append({"n_layer": 1, "d_model": d, "n_head": 2, "vocab_size": 256, "seq_len": 64,
                                 "precision": precision, "seed": seed, "n_params": n_params, "n_samples": n,
                                 "dataset_bits": h, "memorized_bits": mem, "stop_reason": "saturated",
                                 "model": f"1L d{d}", "train_loss": 1.0,
                                 "test_loss": test_loss(h / cap, rng) if test_loss else 6.0})
    return pd.DataFrame(rows)


def test_capacity_is_the_max_over_dataset_sizes_and_alpha_is_recovered():
    noise = {0: -0.04, 1: 0.02, 2: 0.05, 3: -0.03}
    cells = synthetic_cells(lambda p, seed, _: 3.5 * p * (1 + noise[seed]))
    caps = capacities(cells)
    assert len(caps) == 3 * 4
    first = caps[(caps["n_params"] == 8_000) & (caps["seed"] == 0)].iloc[0]
    assert first["capacity_bits"] == pytest.approx(3.5 * 8_000 * 0.96)
    assert first["maximum"] == "bracketed" and not first["hit_max_steps"] and not first["lower_bound"]

    fit = fit_alpha(caps, "fp32")
    assert fit.alpha == pytest.approx(3.5 * (1 + np.mean(list(noise.values()))), rel=1e-6)
    assert fit.n_seeds == 4 and fit.alpha_seed_range == pytest.approx((3.5 * 0.96, 3.5 * 1.05))
    assert fit.alpha_t95 is None and fit.slope_t95 is None  # 4 seeds: a range, no interval called 95%
    assert fit.intercept == pytest.approx(0, abs=50)


def test_alpha_with_an_intercept_separates_a_fixed_cost():
    cells = synthetic_cells(lambda p, seed, _: 3.0 * p + 20_000, seeds=(0, 1))
    fit = fit_alpha(capacities(cells), "fp32")
    assert fit.slope == pytest.approx(3.0, rel=1e-6)
    assert fit.intercept == pytest.approx(20_000, rel=1e-6)
    assert fit.alpha > 3.3  # the line through the origin absorbs the fixed cost


def test_a_single_seed_gives_no_interval_and_a_max_at_grid_edge_is_a_lower_bound():
    cells = synthetic_cells(lambda p, seed, _: 1e9, seeds=(0,))  # capacity beyond every N
    caps = capacities(cells)
    assert (caps["maximum"] == "at grid edge").all() and caps["at_data_ceiling"].all() and caps["lower_bound"].all()
    summary = capacity_summary(caps)
    assert (summary["seeds_at_grid_edge"] == 1).all() and summary["lower_bound"].all()
    fit = fit_alpha(caps, "fp32")
    assert fit.alpha_seed_range is None and fit.alpha_t95 is None and fit.n_seeds == 1 and fit.lower_bound


def test_two_models_get_no_intercept_fit():
    cells = synthetic_cells(lambda p, seed, _: 3.0 * p + 20_000, seeds=(0, 1))
    fit = fit_alpha(capacities(cells[cells["n_params"] < 40_000]), "fp32")
    assert fit.n_models == 2 and fit.slope is None and fit.intercept is None and fit.slope_seed_range is None


def test_fp32_and_bf16_are_fitted_separately():
    cells = synthetic_cells(lambda p, seed, prec: (3.8 if prec == "fp32" else 3.5) * p, seeds=(0, 1),
                            precisions=("fp32", "bf16"))
    caps = capacities(cells)
    assert fit_alpha(caps, "fp32").alpha == pytest.approx(3.8)
    assert fit_alpha(caps, "bf16").alpha == pytest.approx(3.5)


@pytest.mark.parametrize("true_peak", [0.8, 1.0, 1.7])
def test_double_descent_peak_is_located_between_grid_points(true_peak):
    def loss(ratio, rng):  # a smooth hump in log(ratio), plus seed noise
        return 8.0 + 2.0 * np.exp(-((np.log10(ratio) - np.log10(true_peak)) ** 2) / 0.5) + rng.normal(0, 0.01)

    cells = synthetic_cells(lambda p, seed, _: 3.5 * p, seeds=(0, 1, 2), test_loss=loss)
    points = double_descent_points(cells, {"fp32": 3.5}, n_boot=200)
    assert len(points) == 3 and (points["maximum"] == "bracketed").all()
    for row in points.itertuples():
        assert row.ratio_at_max == pytest.approx(true_peak, rel=0.15)
        assert row.ratio_low <= row.ratio_at_max <= row.ratio_high
        assert isinstance(row.n_samples_at_max, int)


def test_a_maximum_at_the_grid_edge_is_not_a_peak():
    peak = locate_peak(np.log10(np.array([1, 2, 4, 8.0])), np.array([1.0, 2.0, 3.0, 4.0]))
    assert not peak.bracketed and peak.log_ratio == pytest.approx(np.log10(8))
    cells = synthetic_cells(lambda p, seed, _: 3.5 * p, seeds=(0, 1), test_loss=lambda ratio, rng: 10 - ratio)
    points = double_descent_points(cells, {"fp32": 3.5}, n_boot=20)
    assert (points["maximum"] == "at grid edge").all() and points["ratio_low"].isna().all()
    assert (points["n_samples_at_max"] == min(SIZES)).all()


def test_attack_on_indistinguishable_losses_scores_one_half():
    rng = np.random.default_rng(0)
    result = loss_threshold_attack(rng.normal(500, 20, 4000), rng.normal(500, 20, 4000))
    assert result.f1 == pytest.approx(0.5, abs=0.03)
    assert result.auc == pytest.approx(0.5, abs=0.03)
    assert result.n_per_class == 2000


def test_attack_on_separated_losses_scores_one():
    rng = np.random.default_rng(1)
    result = loss_threshold_attack(rng.normal(100, 5, 300), rng.normal(700, 5, 500))
    assert result.f1 == 1.0 and result.f1_oracle == 1.0 and result.auc == 1.0
    assert 100 < result.threshold_bits < 700


def test_oracle_f1_and_auc_on_a_hand_example():
    members, nonmembers = np.array([1.0, 2.0, 5.0]), np.array([3.0, 4.0, 6.0])
    # calling the two lowest members: precision 1, recall 2/3 -> F1 0.8; calling 5 lowest: 3/5, 1 -> 0.75
    assert oracle_f1(members, nonmembers) == pytest.approx(0.8)
    # pairs (member < non-member): 1 and 2 beat all 3, 5 beats only 6 -> 7 of 9
    from memsweep.analysis.membership import auc
    assert auc(members, nonmembers) == pytest.approx(7 / 9)


def test_the_sigmoid_law_is_recovered_from_planted_points():
    rng = np.random.default_rng(2)
    x = np.geomspace(1e-3, 0.3, 30)
    planted = (1.0, -150.0, 0.02)
    f1 = law_f1(x, *planted) + rng.normal(0, 0.005, len(x))
    fit = fit_law(x, f1)
    assert fit.c1 == pytest.approx(planted[0], rel=0.05)
    assert fit.c2 == pytest.approx(planted[1], rel=0.15)
    assert fit.c3 == pytest.approx(planted[2], rel=0.1)
    assert fit.rmse < 0.01


def test_the_law_is_not_fitted_to_a_degenerate_f1_range_or_outside_its_data():
    x = np.geomspace(1e-3, 0.1, 12)
    with pytest.raises(ValueError, match="spans only 0.990-1.000"):
        fit_law(x, np.linspace(0.99, 1.0, 12))
    with pytest.raises(ValueError, match="midpoint"):  # still falling at the largest |D|/P measured
        fit_law(x, law_f1(x, 1.0, -20.0, 0.5))


def test_paper_law_reproduces_table2_sizes():
    """Table 2's |D| (docs/papers.md) for target F1 0.55/0.75/0.95, within 3%."""
    table2 = {(1_556_075_200, 0.55): 170_654_583, (1_556_075_200, 0.75): 76_795_021,
              (1_556_075_200, 0.95): 18_851_574, (123_702_528, 0.55): 13_566_442,
              (123_702_528, 0.75): 6_104_935, (123_702_528, 0.95): 1_498_634}
    for (n_params, target), sequences in table2.items():
        assert samples_for_f1(target, n_params, *PAPER_LAW) == pytest.approx(sequences, rel=0.03)
    assert samples_for_f1(0.999, 1e6, 1.0, -30, 0.03) is None  # beyond the law's range 0.5..1


def test_verdicts_say_agreement_or_distance_and_a_lower_bound():
    assert verdict(3.3e5, 3.39e5, False) == "agrees: within 3%"
    assert verdict(2.0e5, 3.39e5, True) == "off: 41% below; measured value is a lower bound"


def test_table1_row_is_matched_by_config_and_another_config_by_the_mean():
    base = {"precision": "fp32", "n_seeds": 2, "n_layer": 1, "d_model": 32, "seq_len": 64, "lower_bound": False}
    summary = pd.DataFrame([{**base, "model": "1L d32", "vocab_size": 2048, "n_params": 80_352,
                             "capacity_bits": 3.3e5, "bits_per_param": 3.3e5 / 80_352},
                            {**base, "model": "1L d32 V256 S64", "vocab_size": 256, "n_params": 23_008,
                             "capacity_bits": 6e4, "bits_per_param": 6e4 / 23_008, "lower_bound": True}])
    same, other = table1_comparison(summary).to_dict("records")
    assert same["paper_capacity_bits"] == 3.39e5 and same["paper_bits_per_param"] == 4.23
    assert same["verdict"] == "agrees: within 3%" and same["compared_with"] == "Table 1 row (same config)"
    assert pd.isna(other["paper_capacity_bits"]) and other["paper_bits_per_param"] == 3.83
    assert other["compared_with"].startswith("Table 1 mean α (V = 2048")
    assert other["verdict"] == "off: 32% below; measured value is a lower bound"


def _as_loaded(cells: pd.DataFrame, f1: float = 1.0, stop_reason: str = "saturated") -> pd.DataFrame:
    """Synthetic cells with the columns load_sweep gives a report."""
    cells = cells.reset_index(drop=True)
    cells["model"] = cells.apply(model_label, axis=1)
    cells["samples_per_param"] = cells["n_samples"] / cells["n_params"]
    return cells.assign(mi_f1=f1, cell_id=[f"cell{i}" for i in range(len(cells))], steps=600,
                        stop_reason=stop_reason, tokens_per_sec=1e4, world_size=1, device="cpu", device_name="x86_64")


def _one_seed_two_models(f1: float) -> pd.DataFrame:
    """What a one-seed, two-model sweep's load_sweep returns: every cell stopped at max_steps."""
    cells = synthetic_cells(lambda p, seed, _: 3.0 * p, seeds=(0,))
    return _as_loaded(cells[cells["n_params"] < 40_000], f1, stop_reason="max_steps")


def test_a_one_seed_two_model_report_fits_nothing_it_cannot(tmp_path, monkeypatch):
    """No intercept fit, no 'mean over seeds', no membership predictions from a degenerate F1
    range, and the grid and max_steps named in the verdict; a rerun rewrites nothing."""
    cells = _one_seed_two_models(f1=1.0)
    monkeypatch.setattr(report, "load_sweep", lambda _: SweepCells(cells, []))
    built = report.build_report(tmp_path / "sweep", n_boot=20)
    text = report.write_report(built, tmp_path / "out").read_text()
    assert "With an intercept" not in text and "No fit with an intercept" in text
    assert "mean over seeds" not in text.lower()
    assert "No law fitted to this sweep" in text and "spans only 1.000-1.000" in text
    assert set(built.tables["membership_predictions"]["law"]) == {"paper (text)"}
    verdict_text = " ".join(built.summary["verdict"])
    assert "V = 256, S = 64, 1 layer" in verdict_text and "hit max_steps (600 steps)" in verdict_text
    assert "step budget" not in text and "shared/reference" not in text
    assert "| ≥ 24,000 |" in text  # a lower bound is marked in the table
    legends = [t.get_text() for name, (function, *args) in built.plots.items()
               for t in getattr(plots, function)(*args).legends[0].get_texts()]
    assert legends and not any("mean over" in t for t in legends)
    points = pd.read_csv(tmp_path / "out" / "double_descent.csv")
    assert points["n_samples_at_max"].dtype.kind == "i"

    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = report.build_report(tmp_path / "sweep", n_boot=20)
    report.write_report(again, tmp_path / "out")
    assert again.written == [] and mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}


NOISE = {0: -0.04, 1: 0.02, 2: 0.05, 3: -0.03, 4: 0.01}


def _report_text(cells: pd.DataFrame, tmp_path, monkeypatch) -> tuple[str, dict]:
    monkeypatch.setattr(report, "load_sweep", lambda _: SweepCells(cells, []))
    built = report.build_report(tmp_path / "sweep", n_boot=50)
    return report.write_report(built, tmp_path / "out").read_text(), built.summary


@pytest.mark.parametrize("n_seeds", [2, 4])
def test_fewer_than_five_seeds_print_no_95_percent_anywhere(n_seeds, tmp_path, monkeypatch):
    cells = _as_loaded(synthetic_cells(lambda p, seed, _: 3.5 * p * (1 + NOISE[seed]), seeds=range(n_seeds)))
    text, summary = _report_text(cells, tmp_path, monkeypatch)
    assert "95%" not in text and "confidence interval" in text
    low, high = summary["alpha"]["fp32"]["alpha_seed_range"]
    assert f"seed range {low:.2f}–{high:.2f} over {n_seeds} seeds" in text
    assert summary["alpha"]["fp32"]["alpha_t95"] is None
    assert "95%" not in (tmp_path / "out" / "alpha.csv").read_text() + (tmp_path / "out" / "report.json").read_text()


def test_five_seeds_give_a_student_t_interval(tmp_path, monkeypatch):
    cells = _as_loaded(synthetic_cells(lambda p, seed, _: 3.5 * p * (1 + NOISE[seed]), seeds=range(5)))
    fit = fit_alpha(capacities(cells), "fp32")
    per_seed = np.array([3.5 * (1 + v) for v in NOISE.values()])  # every model has the seed's alpha
    half = stats.t.ppf(0.975, 4) * per_seed.std(ddof=1) / np.sqrt(5)
    assert stats.t.ppf(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert fit.alpha_t95 == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert fit.alpha_seed_range == pytest.approx((per_seed.min(), per_seed.max()))
    text, _ = _report_text(cells, tmp_path, monkeypatch)
    assert f"95% t-interval over 5 seeds {fit.alpha_t95[0]:.2f}–{fit.alpha_t95[1]:.2f}" in text


def test_the_unweighted_mean_of_bits_per_param_is_reported_beside_the_weighted_fit(tmp_path, monkeypatch):
    bpp = {8_000: 4.0, 20_000: 3.0, 40_000: 2.0}  # the largest model holds the least per parameter
    cells = _as_loaded(synthetic_cells(lambda p, seed, _: bpp[p] * p, seeds=(0, 1)))
    fit = fit_alpha(capacities(cells), "fp32")
    p = np.array(list(bpp), float)
    assert fit.alpha == pytest.approx((p * p * list(bpp.values())).sum() / (p @ p))  # 2.26: P^2-weighted
    assert fit.mean_bits_per_param == pytest.approx(3.0) and fit.model_bits_per_param_range == (2.0, 4.0)
    assert fit.model_residual_std == pytest.approx(1.0)  # residuals around alpha: the bpp's spread
    text, summary = _report_text(cells, tmp_path, monkeypatch)
    assert "Unweighted mean of per-model bits/param: **3.00** (comparable to Table 1's column means" in text
    assert "unweighted mean of per-model bits/param 3.00 over 3 models, 22% below Table 1's fp32 mean" in text
    assert f"α = {fit.alpha:.2f} bits/param**, fitted through the origin over 3 models (P²-weighted" in text


def test_data_ceiling_comes_from_gibbs_not_from_the_dataset_bits():
    cells = synthetic_cells(lambda p, seed, _: 955_000, seeds=(0,))  # 0.97 x 955k at N = 2048
    caps = capacities(cells)
    ceiling = 2048 * (512 - 11)  # N (S log2 V - log2 N)
    assert (caps["data_ceiling_bits"] == ceiling).all()
    assert (caps["capacity_bits"] < 0.9 * 2048 * BITS_PER_SEQ).all()  # under 90% of H: the old rule said no
    assert caps["at_data_ceiling"].all() and caps["lower_bound"].all()

    a1 = appendix_a1_comparison(_as_loaded(synthetic_cells(lambda p, seed, _: 3.5 * p, seeds=(0,))))
    ceilings = a1["n_samples"] * (BITS_PER_SEQ - np.log2(a1["n_samples"]))
    assert a1["data_ceiling_bits"].to_numpy() == pytest.approx(ceilings.to_numpy())
    assert a1["expected_bits"].to_numpy() == pytest.approx(np.minimum(APPENDIX_A1_ALPHA * a1["n_params"], ceilings))
    assert (a1["limited_by"] == np.where(ceilings <= APPENDIX_A1_ALPHA * a1["n_params"], "data", "capacity")).all()


def test_appendix_a1_data_limited_rows_exceed_the_data_ceiling():
    """The issue's figures: N = 4096, V = 2048, S = 4 / 8 / 16 / 32."""
    rows = appendix_a1_ceilings()
    assert rows["data_ceiling_bits"].tolist() == pytest.approx([1.31e5, 3.11e5, 6.72e5, 1.39e6], rel=5e-3)
    assert rows["memorized_bits"].tolist() == [1.73e5, 3.54e5, 7.15e5, 1.44e6]
    assert (rows["memorized_bits"] > rows["data_ceiling_bits"]).all()
    words = next(n for n in PAPER_INCONSISTENCIES if "Gibbs" in n)
    assert "S = 4: 1.73e5 > 1.31e5" in words and "No such model reproduces them" in words


def _hump(true_peak: float, noise: float):
    return lambda ratio, rng: 8.0 + 2.0 * np.exp(-((np.log10(ratio) - np.log10(true_peak)) ** 2) / 0.5) \
        + rng.normal(0, noise)


def test_a_peak_interval_no_wider_than_the_grid_is_resolution_limited():
    cells = synthetic_cells(lambda p, seed, _: 3.5 * p, seeds=(0, 1, 2), test_loss=_hump(1.3, 0.001))
    points = double_descent_points(cells, {"fp32": 3.5}, n_boot=200)
    assert points["grid_resolution"].to_numpy() == pytest.approx(np.sqrt(2))  # 2x spacing: x1.41 each side
    assert points["resolution_limited"].all()
    assert points["ratio_low"].to_numpy() == pytest.approx(points["ratio_at_max"] / np.sqrt(2))
    assert points["ratio_high"].to_numpy() == pytest.approx(points["ratio_at_max"] * np.sqrt(2))
    assert (points["ratio_low"] < 1).all()  # "contains 1" though the peak is at 1.3: the grid says so
    assert "3 of 3 double-descent peaks are resolution-limited" in resolution_line(points)
    assert "×1.41" in resolution_line(points)

    noisy = synthetic_cells(lambda p, seed, _: 3.5 * p, seeds=(0, 1, 2), test_loss=_hump(1.3, 0.5))
    points = double_descent_points(noisy, {"fp32": 3.5}, n_boot=200)
    wider = points[~points["resolution_limited"] & (points["maximum"] == "bracketed")]
    assert len(wider) and ((wider["ratio_high"] / wider["ratio_low"]) > 2.0 + 1e-9).all()


def test_a_maximum_at_its_own_models_largest_n_is_called_at_the_largest_n():
    """With capacity_ratio each model has its own N grid: d16's largest N is not the sweep's."""
    import pandas as pd

    from memsweep.analysis.paper import verdict_lines

    caps = pd.DataFrame({"model": ["small", "large"], "n_samples_at_max": [395, 12], "maximum": ["at grid edge"] * 2,
                         "hit_max_steps": [False, False], "at_data_ceiling": [False, False], "lower_bound": [True, True]})
    grid = {"n_samples": [12, 395, 2050], "largest_n_by_model": {"small": 395, "large": 2050},
            "cells_hit_max_steps": 0, "cells": 2, "max_steps": [], "seeds": [0, 1, 2, 3, 4], "vocab_size": [256],
            "seq_len": [64], "n_layer": [1], "d_model": [16, 48], "precisions": ["fp32"]}
    text = "\n".join(verdict_lines(grid, pd.DataFrame(), caps, {}))
    assert "(1 at the largest N, 1 at the smallest)" in text, text
