"""The saturation rules on synthetic curves, and wsd cells (decay branches) trained for real."""

import math
import signal

import pytest

from memsweep.cell import run_cell
from memsweep.checkpoint import newest_valid_checkpoint, step_of
from memsweep.config import ConfigError, SaturationConfig, cell_config
from memsweep.saturation import (DoublingRule, Plateau, decay_steps, final_decay_start, gain_per_doubling,
                                 probe_steps)
from memsweep.schedule import LRSchedule
from tests.conftest import SMALL, compose_config
from tests.test_cell import metrics_rows
from tests.test_resume import signal_at_step

# 1L d16 (4,592 parameters) on 16 sequences of 16 tokens from V = 64 (1,536 bits): memorized in ~100 steps.
TINY = [*SMALL, "model.d_model=16", "model.n_head=2", "data.vocab_size=64", "data.seq_len=16", "data.n_samples=16",
        "data.n_heldout=32", "trainer.batch_size=16", "trainer.warmup_steps=10", "trainer.eval_interval=20",
        "trainer.schedule=wsd", "trainer.saturation.min_steps=20", "trainer.checkpoint_every_steps=30"]
PROBES = [20, 40, 80, 160, 320, 640]  # min_steps * 2^k below the final decay (from step 833 of 1,000)


def tiny_cell(*overrides):
    return cell_config(compose_config([*TINY, "trainer.max_steps=1000", *overrides]))


def run_doubling_rule(curve, min_steps=500, max_steps=1_000_000, cooldown=0.2, tolerance=0.01):
    """Feed the rule the curve's value at the end of each decay branch; the step it stops at (or None)."""
    rule = DoublingRule(SaturationConfig(tolerance=tolerance))
    for step in probe_steps(min_steps, max_steps, cooldown):
        probe = rule.add(step, decay_steps(step, cooldown), curve(step + decay_steps(step, cooldown)))
        if rule.saturated(probe):
            return step, rule
    return None, rule


def test_probes_double_from_min_steps_and_end_before_the_final_decay():
    assert final_decay_start(50_000, 0.2) == 41_666
    assert probe_steps(2000, 50_000, 0.2) == [2000, 4000, 8000, 16_000, 32_000]
    assert probe_steps(20, 1000, 0.2) == PROBES
    assert probe_steps(50_000, 50_000, 0.2) == []
    assert [decay_steps(s, 0.2) for s in (20, 2000, 2001)] == [4, 400, 401]
    assert all(s + decay_steps(s, 0.1) <= 1000 for s in probe_steps(1, 1000, 0.1))


def test_gain_per_doubling_by_hand():
    assert gain_per_doubling(1000, 100.0, 2000, 108.0) == pytest.approx(0.08)
    assert gain_per_doubling(1000, 100.0, 4000, 121.0) == pytest.approx(0.10)  # 1.1^2 over two doublings
    assert gain_per_doubling(1000, 0.0, 2000, 0.5) == 0.0  # nothing memorized: floored at one bit, saturated
    assert gain_per_doubling(1000, 100.0, 2000, 99.0) == pytest.approx(-0.01)


def test_a_saturating_curve_stops_where_the_gain_falls_below_tolerance():
    tau = 1000.0
    stopped, rule = run_doubling_rule(lambda t: 1e5 * (1 - math.exp(-t / tau)))
    # Measured at 1.2 T, the gain from probe T/2 to probe T is exactly exp(-0.6 T / tau): 9.1% at 4,000, 0.82% at 8,000.
    assert stopped == 8000
    assert [p.step for p in rule.probes] == [500, 1000, 2000, 4000, 8000]
    assert rule.probes[-2].gain_per_doubling == pytest.approx(math.exp(-2.4))
    assert rule.probes[-1].gain_per_doubling == pytest.approx(math.exp(-4.8))
    assert rule.reason(rule.probes[-1]) == "saturated: gain 0.8%/doubling < 1% after decay at step 8,000"


def test_a_log_growing_curve_runs_to_max_steps_where_the_plateau_rule_stops_it():
    curve = lambda t: 1e4 * math.log(t / 4)  # ~8% per doubling near step 20k
    stopped, rule = run_doubling_rule(curve)
    assert stopped is None and rule.probes[-1].step == 512_000  # 500 * 2^10, the last before max_steps
    assert all(p.gain_per_doubling > 0.05 for p in rule.probes[1:])
    by_hand = math.log(9600) / math.log(4800) - 1  # measured at 1.2 * 16k and 1.2 * 32k
    assert gain_per_doubling(16_000, curve(19_200), 32_000, curve(38_400)) == pytest.approx(by_hand)
    # The plateau rule with its defaults (10 evaluations of 200 steps, 1%) calls the same curve saturated.
    cfg = cell_config(compose_config([])).trainer.saturation
    plateau = Plateau(cfg)
    fired = next(step for step in range(0, 10**6, 200) if plateau.update(step, curve(max(step, 4))))
    assert 20_000 < fired < 30_000
    assert gain_per_doubling(fired // 2, curve(fired / 2), fired, curve(fired)) > 0.07


@pytest.mark.parametrize("override,key", [
    ("trainer.saturation.cooldown=0", "trainer.saturation.cooldown"),
    ("trainer.saturation.min_steps=0", "trainer.saturation.min_steps"),
    ("trainer.strategy=deepspeed", "trainer.strategy"),
    ("trainer.schedule=wsdd", "trainer.schedule"),
])
def test_wsd_config_errors_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        cell_config(compose_config(["trainer.schedule=wsd", override]))
    assert str(err.value).startswith(key)


def test_wsd_is_flat_after_warmup_and_decays_to_zero_at_max_steps():
    t = tiny_cell().trainer  # warmup 10, max_steps 1,000, final decay from 833 over 167 steps
    lr = LRSchedule(t)
    assert [lr(s) for s in (0, 9, 10, 500, 833)] == [0.1, 1.0, 1.0, 1.0, 1.0]
    assert lr(834) == pytest.approx(1 - 1 / 167) and lr(999) == pytest.approx(1 / 167) and lr(1000) == 0.0


@pytest.fixture(scope="module")
def saturated(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("saturated")
    return run_dir, run_cell(tiny_cell(), run_dir)


def test_a_tiny_wsd_cell_saturates_and_records_its_growth(saturated):
    run_dir, record = saturated
    assert record["status"] == "done" and record["saturation_rule"] == "doubling"
    growth, at = record["growth_per_doubling"], record["saturated_at_step"]
    assert at in PROBES and record["steps"] == at < 1000
    assert record["stop_reason"] == f"saturated: gain {100 * growth[-1]['gain_per_doubling']:.1f}%/doubling < 1% " \
                                    f"after decay at step {at:,}"
    assert [p["step"] for p in growth] == PROBES[:PROBES.index(at) + 1]
    assert growth[0]["gain_per_doubling"] is None
    for before, probe in zip(growth, growth[1:]):  # every probe is one doubling: g = M_k / M_(k-1) - 1
        assert probe["gain_per_doubling"] == pytest.approx(probe["memorized_bits"] / before["memorized_bits"] - 1)
        assert probe["gain_per_doubling"] >= 0.01 or probe is growth[-1]
    assert growth[-1]["gain_per_doubling"] < 0.01
    assert record["memorized_fraction"] > 0.9
    assert record["branch_steps"] == sum(p["decay_steps"] for p in growth) == \
        sum(math.ceil(0.2 * s) for s in PROBES[:len(growth)])
    # metrics.csv: a row per branch, at the step it branched from; the cell's result is the kept branch.
    rows = metrics_rows(run_dir)
    branches = [r for r in rows if r["branch_steps"]]
    assert [(r["step"], r["branch_steps"]) for r in branches] == [(p["step"], p["decay_steps"]) for p in growth]
    assert [r["memorized_bits"] for r in branches] == [p["memorized_bits"] for p in growth]
    assert rows[-1] == branches[-1] and rows[-1]["memorized_bits"] == record["memorized_bits"]
    assert rows[-1]["tokens_seen"] == (at + growth[-1]["decay_steps"]) * 16 * 16 and rows[-1]["lr"] == 0.0


def test_branches_leave_the_stable_run_as_it_would_be_without_them(saturated, tmp_path):
    run_dir, record = saturated
    # No probes, and a final decay from step 166: the same flat rate up to there as the branched cell's.
    plain = run_cell(tiny_cell("trainer.max_steps=200", "trainer.saturation.min_steps=100000"), tmp_path)
    assert plain["branch_steps"] == 0 and plain["stop_reason"] == "max_steps" and plain["steps"] == 200
    assert [p["step"] for p in plain["growth_per_doubling"]] == [166]
    stable = [r for r in metrics_rows(run_dir) if not r["branch_steps"]]
    unbranched = {r["step"]: r for r in metrics_rows(tmp_path)}
    for row in stable:
        want = unbranched[row["step"]]
        row.pop("train_seconds"), want.pop("train_seconds")
        assert row == want


def test_a_branch_step_is_the_step_lightning_would_take(tmp_path):
    """A branch's first step runs at the stable rate, so a 1-step branch is the stable run's next step."""
    run_cell(tiny_cell("trainer.max_steps=50", "trainer.eval_interval=1", "trainer.saturation.cooldown=0.01"), tmp_path)
    rows = {(r["step"], r["branch_steps"]): r for r in metrics_rows(tmp_path)}
    for step in (20, 40):
        branch, stable = rows[(step, 1)], rows[(step + 1, 0)]
        for key in ("memorized_bits", "train_loss", "test_loss", "tokens_seen"):
            assert branch[key] == stable[key], key


def signal_in_branch(monkeypatch, branch_step: int, at: int, sig=signal.SIGUSR2):
    """A real preemption signal during step `at` of the decay branch from stable step `branch_step`."""
    import os

    import memsweep.callbacks as callbacks

    original = callbacks.linear_decay

    def linear_decay(steps_into_decay, decay):
        if decay == decay_steps(branch_step, 0.2) and steps_into_decay == at:
            os.kill(os.getpid(), sig)
        return original(steps_into_decay, decay)

    monkeypatch.setattr(callbacks, "linear_decay", linear_decay)


def test_a_cell_preempted_in_a_branch_resumes_to_the_same_result(saturated, tmp_path, monkeypatch):
    reference_dir, reference = saturated
    cfg = tiny_cell()
    with monkeypatch.context() as patch:
        signal_in_branch(patch, 80, at=3)
        first = run_cell(cfg, tmp_path)
    assert (first["status"], first["steps"]) == ("preempted", 80)  # abandoned after 4 branch steps
    assert step_of(newest_valid_checkpoint(tmp_path)) == 80
    assert [(r["step"], r["branch_steps"]) for r in metrics_rows(tmp_path)][-1] == (80, 0)
    with monkeypatch.context() as patch:  # preempted again while the resumed run replays the branch
        signal_in_branch(patch, 80, at=5)
        second = run_cell(cfg, tmp_path)
    assert (second["status"], second["steps"], second["resumed_from_step"]) == ("preempted", 80, 80)
    resumed = run_cell(cfg, tmp_path)
    assert resumed["status"] == "done" and resumed["resumed_from_step"] == 80
    for key in ("steps", "memorized_bits", "train_loss", "test_loss", "stop_reason", "saturated_at_step",
                "growth_per_doubling"):
        assert resumed[key] == reference[key], key
    assert resumed["branch_steps"] == reference["branch_steps"] + 4 + 6  # the abandoned steps were trained too
    for got, want in zip(metrics_rows(tmp_path), metrics_rows(reference_dir), strict=True):
        got.pop("train_seconds"), want.pop("train_seconds")
        assert got == want


def test_a_resume_from_a_probe_step_keeps_its_branch(saturated, tmp_path, monkeypatch):
    """The checkpoint at a probe step holds the stable state after its (discarded) branch, and
    resuming from it keeps the branch's row and does not train it again."""
    reference_dir, reference = saturated
    cfg = tiny_cell("trainer.checkpoint_every_steps=40")  # checkpoints at 40, 80, ...: probe steps
    with monkeypatch.context() as patch:
        signal_at_step(patch, 85)
        assert run_cell(cfg, tmp_path)["steps"] == 86
    newest = newest_valid_checkpoint(tmp_path)
    newest.unlink(), newest.with_name(newest.name + ".sha256").unlink()  # lost: fall back to step 80
    resumed = run_cell(cfg, tmp_path)
    assert resumed["resumed_from_step"] == 80
    for key in ("steps", "memorized_bits", "stop_reason", "growth_per_doubling", "branch_steps"):
        assert resumed[key] == reference[key], key
    for got, want in zip(metrics_rows(tmp_path), metrics_rows(reference_dir), strict=True):
        got.pop("train_seconds"), want.pop("train_seconds")
        assert got == want


def test_a_wsd_cell_that_reaches_max_steps_ends_with_its_final_decay(tmp_path):
    record = run_cell(tiny_cell("trainer.max_steps=100"), tmp_path)  # probes at 20, 40, 80; final decay 83-100
    assert record["stop_reason"] == "max_steps" and record["steps"] == 100 and record["saturated_at_step"] is None
    growth = record["growth_per_doubling"]
    assert [(p["step"], p["decay_steps"], p["final"]) for p in growth] == \
        [(20, 4, False), (40, 8, False), (80, 16, False), (83, 17, True)]
    rows = metrics_rows(tmp_path)
    assert (rows[-1]["step"], rows[-1]["branch_steps"], rows[-1]["lr"]) == (100, 0, 0.0)
    assert growth[-1]["memorized_bits"] == rows[-1]["memorized_bits"] == record["memorized_bits"]
    assert growth[-1]["gain_per_doubling"] == pytest.approx(
        gain_per_doubling(80, growth[-2]["memorized_bits"], 83, growth[-1]["memorized_bits"]))


def test_the_planned_cost_of_a_wsd_cell_counts_its_decay_branches():
    from memsweep.sweep import estimated_flops

    plain = tiny_cell("trainer.schedule=cosine")
    wsd = tiny_cell()  # max_steps 1,000, branches at PROBES, each 20% of its stable steps
    tokens_per_step, eval_tokens = 16 * 16, (16 + 32) * 16
    branch_steps = sum(math.ceil(0.2 * s) for s in PROBES)  # 4 + 8 + 16 + 32 + 64 + 128 = 252
    p = 4_592
    assert estimated_flops(plain, p) == 6 * p * 1000 * tokens_per_step + 2 * p * (1000 // 20) * eval_tokens
    assert estimated_flops(wsd, p) == 6 * p * (1000 + branch_steps) * tokens_per_step + \
        2 * p * (1000 // 20 + len(PROBES)) * eval_tokens
