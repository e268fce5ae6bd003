"""bf16 weights with fp32 AdamW state and stochastic rounding (memsweep/optim.py), and the fp32
forward evaluation of bf16 cells."""

import math

import pytest
import torch

from memsweep.cell import run_cell
from memsweep.config import BF16_OPTIMIZERS, ConfigError, cell_config
from memsweep.optim import Fp32StateAdamW, round_to_bf16
from tests.conftest import SMALL, compose_config
from tests.test_cell import metrics_rows
from tests.test_resume import RESUMABLE, signal_at_step


def bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 numbers on either side of fp32 `x` (toward and away from zero), in float64 from
    the bf16 spacing 2^(exponent - 7), not from bits."""
    value = x.double()
    ulp = torch.exp2(torch.floor(torch.log2(value.abs())) - 7)
    toward = torch.trunc(value / ulp) * ulp
    return toward, toward + torch.sign(value) * ulp


VALUES = torch.tensor([0.5 - 1e-4, 0.3, -0.3, 1.0 - 2.0**-20, -7.123, 3.0e4 + 17.0, 1.0 + 2.0**-9, 1e-20])
"""Between bf16 neighbours: just below a binade, negative, a remainder of 1/2 ulp, tiny, large."""


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    draws = 40_000
    generator = torch.Generator().manual_seed(0)
    rounded = round_to_bf16(VALUES.repeat(draws, 1), generator).double()  # (draws, values)
    toward, away = bf16_neighbours(VALUES)
    assert ((rounded == toward) | (rounded == away)).all()
    p_away = (VALUES.double() - toward) / (away - toward)  # the remainder in ulps
    assert ((p_away > 0) & (p_away < 1)).all()
    std_of_mean = (away - toward).abs() * torch.sqrt(p_away * (1 - p_away) / draws)
    error = rounded.mean(dim=0) - VALUES.double()
    assert (error.abs() < 5 * std_of_mean).all(), (error / std_of_mean).tolist()


def test_stochastic_rounding_keeps_bf16_numbers_and_follows_its_seed():
    exact = torch.randn(10_000).to(torch.bfloat16).float()
    assert torch.equal(round_to_bf16(exact, torch.Generator().manual_seed(1)).float(), exact)
    x = torch.randn(10_000)
    first, again, other = (round_to_bf16(x, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_round_to_nearest_equals_to_bfloat16():
    x = torch.randn(100_000) * torch.exp2(torch.randint(-30, 30, (100_000,)).float())
    assert torch.equal(round_to_bf16(x).view(torch.int16), x.to(torch.bfloat16).view(torch.int16))


def test_the_nearest_mode_weight_is_the_fp32_step_rounded_to_nearest():
    torch.manual_seed(0)
    start, grads = torch.randn(64, 32).to(torch.bfloat16), [torch.randn(64, 32) for _ in range(3)]
    bf16 = torch.nn.Parameter(start.clone())
    optimizer = Fp32StateAdamW([bf16], lr=1e-2, betas=(0.9, 0.98), rounding="nearest")
    fp32 = torch.nn.Parameter(start.float())
    reference = torch.optim.AdamW([fp32], lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    for grad in grads:  # from the same bf16 weight every step, with the same fp32 moments
        fp32.data.copy_(bf16.data.float())
        bf16.grad, fp32.grad = grad.to(torch.bfloat16), grad.to(torch.bfloat16).float()
        optimizer.step()
        reference.step()
        assert torch.equal(bf16.data, fp32.data.to(torch.bfloat16))


def test_on_fp32_parameters_it_is_torch_adamw_bit_for_bit():
    torch.manual_seed(0)
    shapes = [(48, 16), (16,), (16, 16), (7,)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(params):
        return [{"params": params[::2], "weight_decay": 0.1}, {"params": params[1::2], "weight_decay": 0.0}]

    optimizer = Fp32StateAdamW(groups(ours), lr=3e-2, betas=(0.9, 0.999))
    reference = torch.optim.AdamW(groups(theirs), lr=3e-2, betas=(0.9, 0.999))
    for step in range(50):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a) * 10.0 ** (step % 5 - 2)
            b.grad = a.grad.clone()
        for opt in (optimizer, reference):
            for group in opt.param_groups:
                group["lr"] = 3e-2 * (1 - step / 50)  # as the LR schedule sets it
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), f"step {step}"
    assert all(torch.equal(optimizer.state[a]["exp_avg_sq"], reference.state[b]["exp_avg_sq"])
               for a, b in zip(ours, theirs))


def constant_gradient_steps(mode: str, steps: int, lr: float = 1e-4, size: int = 4096) -> torch.Tensor:
    """bf16 weights of 0.5 after `steps` AdamW steps with gradient 1: each step moves an fp32
    weight down by lr, far less than half of bf16's spacing of 2^-9 just below 0.5."""
    weight = torch.nn.Parameter(torch.full((size,), 0.5, dtype=torch.bfloat16))
    if mode == "bf16":
        optimizer = torch.optim.AdamW([weight], lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    else:
        optimizer = Fp32StateAdamW([weight], lr=lr, betas=(0.9, 0.999),
                                   rounding="stochastic" if mode == "stochastic-rounding" else "nearest", seed=0)
    for _ in range(steps):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    return weight.detach().double()


def test_updates_below_half_a_bf16_step_add_up_only_with_stochastic_rounding():
    steps, lr = 1000, 1e-4
    # To nearest, 0.5 - 1e-4 is 0.5 again: the update is lost whatever precision the moments have.
    assert (constant_gradient_steps("bf16", steps) == 0.5).all()
    assert (constant_gradient_steps("fp32-state", steps) == 0.5).all()
    stochastic = constant_gradient_steps("stochastic-rounding", steps)
    # Unbiased: the mean is the fp32 trajectory's 0.4. Each weight's rounding errors are at most
    # 2^-9 a step, independent: sd <= sqrt(1000) * 2^-9 / 2 per weight, / sqrt(4096) for the mean.
    assert stochastic.mean().item() == pytest.approx(0.5 - steps * lr, abs=5 * math.sqrt(steps) * 2**-10 / 64)
    assert stochastic.std().item() > 0  # weights round independently


def test_fp32_state_lets_the_second_moment_decay():
    """bf16's second moment never decays at beta2 = 0.999: v * 0.999 rounds back to v."""
    def second_moments(optimizer):
        weight = optimizer.param_groups[0]["params"][0]
        seen = []
        for grad in (1.0,) + (0.0,) * 500:
            weight.grad = torch.full_like(weight, grad)
            optimizer.step()
            seen.append(optimizer.state[weight]["exp_avg_sq"].clone())
        return seen

    def weight():
        return torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))

    bf16 = second_moments(torch.optim.AdamW([weight()], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0))
    assert bf16[0].dtype == torch.bfloat16 and bf16[0].min() > 0 and torch.equal(bf16[-1], bf16[0])  # stuck
    fp32 = second_moments(Fp32StateAdamW([weight()], lr=1e-3, betas=(0.9, 0.999)))
    assert fp32[0].dtype == torch.float32
    assert torch.allclose(fp32[-1], fp32[0] * 0.999**500, rtol=1e-4)  # down to 0.61 of itself


@pytest.mark.parametrize("override,key", [
    ("++trainer.bf16_optimizer=fp32-state", "trainer.bf16_optimizer"),  # precision is fp32
    ("++trainer.bf16_optimizer=fp16", "trainer.bf16_optimizer"),
])
def test_bf16_optimizer_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        cell_config(compose_config([override]))
    assert str(err.value).startswith(key)


def test_the_default_bf16_optimizer_leaves_cell_ids_as_they_were():
    plain = cell_config(compose_config(["precision=bf16"]))
    assert cell_config(compose_config(["precision=bf16", "++trainer.bf16_optimizer=bf16"])).cell_id == plain.cell_id
    ids = {cell_config(compose_config(["precision=bf16", f"++trainer.bf16_optimizer={mode}"])).cell_id
           for mode in BF16_OPTIMIZERS}
    assert len(ids) == 3


TINY = ("trainer.max_steps=60", "trainer.eval_interval=20")


@pytest.fixture(scope="module")
def bf16_cells(tmp_path_factory):
    """One tiny bf16 cell per trainer.bf16_optimizer, and its fp32 twin."""
    cells = {}
    for mode in (*BF16_OPTIMIZERS, "fp32"):
        precision = ["precision=fp32"] if mode == "fp32" else ["precision=bf16", f"++trainer.bf16_optimizer={mode}"]
        run_dir = tmp_path_factory.mktemp(mode)
        cells[mode] = run_dir, run_cell(cell_config(compose_config([*SMALL, *TINY, *precision])), run_dir)
    return cells


@pytest.mark.parametrize("mode", BF16_OPTIMIZERS)
def test_a_bf16_cell_trains_with_each_optimizer_and_says_which(bf16_cells, mode):
    run_dir, record = bf16_cells[mode]
    assert record["status"] == "done" and record["steps"] == 60
    assert (record["precision"], record["param_dtype"], record["bf16_optimizer"]) == ("bf16", "bfloat16", mode)
    assert record["optimizer_state_dtype"] == ("bfloat16" if mode == "bf16" else "float32")
    assert record["memorized_bits"] > 0.25 * record["dataset_bits"]  # it learned
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    assert all(0 <= r["memorized_bits_fp32_forward"] <= record["dataset_bits"] for r in rows)
    assert record["memorized_bits_fp32_forward"] == rows[-1]["memorized_bits_fp32_forward"]
    # The same weights in another arithmetic: close, never the same number.
    assert record["memorized_bits_fp32_forward"] != record["memorized_bits"]
    assert record["memorized_bits_fp32_forward"] == pytest.approx(record["memorized_bits"], rel=0.01)


def test_the_optimizers_train_differently_and_fp32_cells_pay_nothing(bf16_cells):
    assert len({bf16_cells[mode][1]["memorized_bits"] for mode in BF16_OPTIMIZERS}) == 3
    run_dir, fp32 = bf16_cells["fp32"]
    assert (fp32["bf16_optimizer"], fp32["memorized_bits_fp32_forward"]) == (None, None)
    assert fp32["optimizer_state_dtype"] == "float32"
    assert "memorized_bits_fp32_forward" not in metrics_rows(run_dir)[0]


def test_a_stochastic_rounding_cell_resumes_bit_identically(small_cell, tmp_path, monkeypatch):
    cfg = small_cell(*RESUMABLE, "precision=bf16", "++trainer.bf16_optimizer=stochastic-rounding")
    reference = run_cell(cfg, tmp_path / "uninterrupted")
    with monkeypatch.context() as patch:
        signal_at_step(patch, 37)
        assert run_cell(cfg, tmp_path / "resumed")["status"] == "preempted"
    resumed = run_cell(cfg, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 38 and resumed["steps"] == reference["steps"] == 80
    for key in ("memorized_bits", "memorized_bits_fp32_forward", "train_loss", "test_loss"):
        assert resumed[key] == reference[key], key
    for got, want in zip(metrics_rows(tmp_path / "resumed"), metrics_rows(tmp_path / "uninterrupted"), strict=True):
        got.pop("train_seconds"), want.pop("train_seconds")
        assert got == want
