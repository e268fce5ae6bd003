"""Packed cells (memsweep.pack): every cell of a pack trains as its unpacked cell would.

The unpacked reference is memsweep's own pieces run as Lightning runs a cell: MemorizationModule
(its GPT, loss and configure_optimizers: AdamW and the LambdaLR of LRSchedule),
torch.nn.utils.clip_grad_norm_ over the optimizer's parameters, and ShuffledBatches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memsweep.config import TrainerConfig
from memsweep.data.batches import ShuffledBatches, TokenRows
from memsweep.data.uniform import random_tokens
from memsweep.evaluation import per_sample_nll_bits, uniform_memorization
from memsweep.model import GPTConfig
from memsweep.module import MemorizationModule
from memsweep.pack import PackedAdamW, PackedGPT, PackedTrainStep, clip_grad_norms_, make_forward, per_cell_nll_bits
from memsweep.pack.model import seeded_gpt
from memsweep.schedule import LRSchedule

GPT_CFG = GPTConfig(vocab_size=64, seq_len=16, n_layer=1, d_model=16, n_head=2, attention="math")
IMPLS = ("vmap", "batched")


def trainer(**overrides) -> TrainerConfig:
    """Warmup, then cosine; weight decay on; a clip small enough to bite at some steps."""
    settings = dict(batch_size=8, lr=1e-2, warmup_steps=5, schedule="cosine", max_steps=40, weight_decay=0.1,
                    grad_clip=0.3)
    return TrainerConfig(**{**settings, **overrides})


def dataset(n_samples: int, data_seed: int) -> np.ndarray:
    return random_tokens(n_samples, GPT_CFG.seq_len, GPT_CFG.vocab_size, seed=data_seed)


def batch_stream(tokens: np.ndarray, batch_size: int, seed: int):
    rows = TokenRows(tokens)
    return (rows[indices] for indices in ShuffledBatches(len(tokens), batch_size, seed))


def unpacked_run(t: TrainerConfig, seed: int, tokens: np.ndarray, steps: int, dtype=torch.float32):
    """An unpacked cell, step for step as Lightning trains it; returns (module, losses)."""
    torch.manual_seed(seed)  # cell.py seeds, then builds the module
    module = MemorizationModule(GPT_CFG, t).to(dtype)  # bf16-true casts the module before the optimizer
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batches, losses = batch_stream(tokens, t.batch_size, seed), []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss(next(batches))
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
    return module, torch.stack(losses)


def packed_setup(ts: list[TrainerConfig], seeds: list[int], impl: str, dtype=torch.float32):
    pack = PackedGPT.from_seeds(GPT_CFG, seeds, dtype=dtype)
    optimizer = PackedAdamW(pack.params, betas=(ts[0].beta1, ts[0].beta2), weight_decays=[t.weight_decay for t in ts],
                            bf16_optimizer=ts[0].bf16_optimizer, seeds=seeds)
    step = PackedTrainStep(pack, make_forward(impl, GPT_CFG), optimizer, [t.lr for t in ts],
                           [LRSchedule(t) for t in ts], [t.grad_clip for t in ts])
    return pack, optimizer, step


def packed_batches(ts, seeds, token_sets):
    streams = [batch_stream(tokens, t.batch_size, seed) for t, seed, tokens in zip(ts, seeds, token_sets)]
    while True:
        yield torch.stack([next(stream) for stream in streams])


def train(step: PackedTrainStep, batches, steps: int, before_step=lambda i: None) -> torch.Tensor:
    losses = []
    for i in range(steps):
        before_step(i)
        losses.append(step(next(batches)))
    return torch.stack(losses, dim=1)  # (K, steps)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap has no batching rule for CPU SDPA
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("attention", ("math", "sdpa"))
def test_both_forwards_give_the_logits_of_separate_gpts(impl, attention):
    cfg = GPTConfig(**{**GPT_CFG.__dict__, "n_layer": 2, "attention": attention})
    seeds = [3, 1, 4]
    pack = PackedGPT.from_seeds(cfg, seeds)
    tokens = torch.randint(0, cfg.vocab_size, (3, 5, cfg.seq_len))
    logits = make_forward(impl, cfg)(pack.params, tokens)
    for cell, seed in enumerate(seeds):
        expected = seeded_gpt(cfg, seed)(tokens[cell])
        torch.testing.assert_close(logits[cell], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pack.cell_model(cell)(tokens[cell]), expected, rtol=0, atol=0)


def test_batched_linear_gives_each_cell_the_gradients_of_its_own_linear():
    """BatchedLinear's hand-written backward (the weight gradient in the weight's layout) against
    autograd through K separate F.linear calls; the weight gradient comes out contiguous."""
    from memsweep.pack.batched import BatchedLinear

    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 10, 8), torch.randn(3, 5, 8), torch.randn(3, 5)
    grad = torch.randn(3, 10, 5)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    BatchedLinear.apply(*leaves).backward(grad)
    for cell in range(3):
        one = [t[cell].clone().requires_grad_() for t in (x, weight, bias)]
        torch.nn.functional.linear(*one).backward(grad[cell])
        for packed, alone in zip(leaves, one):
            torch.testing.assert_close(packed.grad[cell], alone.grad, rtol=1e-6, atol=1e-6)
    assert leaves[1].grad.is_contiguous()


@pytest.mark.parametrize("dtype,bf16_optimizer", [(torch.float32, "bf16"), (torch.bfloat16, "bf16"),
                                                  (torch.bfloat16, "fp32-state"),
                                                  (torch.bfloat16, "stochastic-rounding")])
def test_a_pack_of_one_trains_bit_for_bit_as_the_unpacked_cell(dtype, bf16_optimizer):
    t, seed, steps = trainer(bf16_optimizer=bf16_optimizer), 7, 20
    tokens = dataset(24, data_seed=5)
    module, expected_losses = unpacked_run(t, seed, tokens, steps, dtype)
    pack, _, step = packed_setup([t], [seed], "vmap", dtype)
    losses = train(step, packed_batches([t], [seed], [tokens]), steps)
    assert torch.equal(losses[0], expected_losses)
    for name, p in module.model.named_parameters():
        assert torch.equal(pack.params[name][0], p), name


@pytest.mark.parametrize("impl", IMPLS)
def test_each_cell_of_a_pack_of_four_matches_its_unpacked_run(impl):
    ts = [trainer(lr=lr, warmup_steps=warmup, schedule=schedule, weight_decay=decay, max_steps=120, grad_clip=1.0)
          for lr, warmup, schedule, decay in ((1e-2, 5, "cosine", 0.1), (5e-3, 10, "constant", 0.0),
                                              (2e-2, 3, "cosine", 0.1), (1e-2, 8, "constant", 0.05))]
    seeds, token_sets = [0, 1, 2, 3], [dataset(n, data_seed) for n, data_seed in ((8, 0), (16, 1), (24, 2), (12, 0))]
    steps = 120
    pack, _, step = packed_setup(ts, seeds, impl)
    losses = train(step, packed_batches(ts, seeds, token_sets), steps)
    packed_bits = per_cell_nll_bits(make_forward(impl, GPT_CFG), pack.params, token_sets, batch_size=8)
    for cell, (t, seed, tokens) in enumerate(zip(ts, seeds, token_sets)):
        module, expected_losses = unpacked_run(t, seed, tokens, steps)
        expected = uniform_memorization(per_sample_nll_bits(module.model, tokens, 8, torch.device("cpu")),
                                        GPT_CFG.seq_len, GPT_CFG.vocab_size)
        measured = uniform_memorization(packed_bits[cell], GPT_CFG.seq_len, GPT_CFG.vocab_size)
        assert expected.memorized_bits > 0.2 * expected.dataset_bits  # a test of something memorized
        assert measured.memorized_bits == pytest.approx(expected.memorized_bits, rel=1e-4)
        assert measured.loss_nats == pytest.approx(expected.loss_nats, rel=1e-4)
        torch.testing.assert_close(losses[cell], expected_losses, rtol=1e-4, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_non_finite_cell_leaves_its_pack_mates_bit_identical(impl):
    ts, seeds = [trainer()] * 4, [0, 1, 2, 3]
    token_sets = [dataset(16, s) for s in seeds]

    def poison(i):
        if i == 3:
            with torch.no_grad():
                poisoned.params["h.0.mlp.c_fc.weight"][2, 0, 0] = float("nan")

    clean, _, clean_step = packed_setup(ts, seeds, impl)
    clean_losses = train(clean_step, packed_batches(ts, seeds, token_sets), 8)
    poisoned, _, poisoned_step = packed_setup(ts, seeds, impl)
    poisoned_losses = train(poisoned_step, packed_batches(ts, seeds, token_sets), 8, before_step=poison)

    assert poisoned_step.first_nonfinite_steps() == [None, None, 4, None]
    assert clean_step.first_nonfinite_steps() == [None] * 4
    assert poisoned_losses[2, 3:].isnan().all()
    for name, p in poisoned.params.items():
        assert p[2].isnan().all(), name  # the NaN spread through all of its own cell ...
        for cell in (0, 1, 3):  # ... and to nothing of the others
            assert torch.equal(p[cell], clean.params[name][cell]), (name, cell)
    assert torch.equal(poisoned_losses[[0, 1, 3]], clean_losses[[0, 1, 3]])


def test_clipping_is_per_cell():
    torch.manual_seed(0)
    grads = [torch.randn(3, 20, 8) * 0.01, torch.randn(3, 8) * 0.01]  # norms about 0.13: under the clip
    grads[0][0] *= 1e8  # cell 0's gradients are huge
    grads[1][2] *= 1e5  # cell 2's too, but its clip is off
    clipped = [g.clone() for g in grads]
    totals = clip_grad_norms_(clipped, [1.0, 1.0, None])
    for cell in range(3):
        alone = [torch.nn.Parameter(g[cell].clone()) for g in grads]
        for p in alone:
            p.grad = p.detach().clone()
        max_norm = 1.0 if cell < 2 else float("inf")
        total = torch.nn.utils.clip_grad_norm_(alone, max_norm)
        assert torch.equal(totals[cell], total)
        for g, p in zip(clipped, alone):
            assert torch.equal(g[cell], p.grad), cell
    assert torch.equal(clipped[0][1], grads[0][1]) and torch.equal(clipped[1][1], grads[1][1])  # small: untouched
    assert torch.equal(clipped[1][2], grads[1][2])  # unclipped cell: untouched
    assert torch.linalg.vector_norm(torch.cat([clipped[0][0].flatten(), clipped[1][0]])) == pytest.approx(1.0, rel=1e-5)


def test_a_frozen_cell_stops_changing_and_the_others_go_on_unchanged():
    ts, seeds = [trainer()] * 3, [0, 1, 2]
    token_sets = [dataset(16, s) for s in seeds]
    free, _, free_step = packed_setup(ts, seeds, "batched")
    train(free_step, packed_batches(ts, seeds, token_sets), 10)
    pack, optimizer, step = packed_setup(ts, seeds, "batched")
    snapshot = {}

    def freeze_cell_1(i):
        if i == 4:
            optimizer.freeze(1)
            snapshot.update(weights=pack.cell_state_dict(1), state=optimizer.state_dict())

    train(step, packed_batches(ts, seeds, token_sets), 10, before_step=freeze_cell_1)
    assert optimizer.steps == [10, 4, 10]
    for name, p in pack.params.items():
        assert torch.equal(p[1], snapshot["weights"][name]), name
        for key, moment in optimizer.state[name].items():
            assert torch.equal(moment[1], snapshot["state"]["state"][name][key][1]), (name, key)
        for cell in (0, 2):
            assert torch.equal(p[cell], free.params[name][cell]), (name, cell)


def test_a_pack_resumed_from_its_state_continues_as_if_uninterrupted():
    t = trainer(bf16_optimizer="stochastic-rounding")
    ts, seeds, dtype = [t, t], [0, 1], torch.bfloat16
    token_sets = [dataset(16, s) for s in seeds]
    whole, _, whole_step = packed_setup(ts, seeds, "batched", dtype)
    train(whole_step, packed_batches(ts, seeds, token_sets), 10)

    first, first_optimizer, first_step = packed_setup(ts, seeds, "batched", dtype)
    batches = packed_batches(ts, seeds, token_sets)
    train(first_step, batches, 5)
    resumed, resumed_optimizer, resumed_step = packed_setup(ts, seeds, "batched", dtype)
    for cell in range(2):
        resumed.load_cell(cell, first.cell_state_dict(cell))
    resumed_optimizer.load_state_dict(first_optimizer.state_dict())
    train(resumed_step, batches, 5)
    for name, p in resumed.params.items():
        assert torch.equal(p, whole.params[name]), name


def test_packed_evaluation_covers_every_row_of_sets_of_different_sizes():
    seeds, token_sets = [0, 1, 2], [dataset(n, s) for n, s in ((5, 0), (19, 1), (11, 2))]
    pack = PackedGPT.from_seeds(GPT_CFG, seeds)
    bits = per_cell_nll_bits(make_forward("batched", GPT_CFG), pack.params, token_sets, batch_size=4)
    for cell, tokens in enumerate(token_sets):
        expected = per_sample_nll_bits(seeded_gpt(GPT_CFG, seeds[cell]), tokens, 4, torch.device("cpu"))
        np.testing.assert_allclose(bits[cell], expected, rtol=1e-6)
