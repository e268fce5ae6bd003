import math

import numpy as np
import pytest
import torch

from memsweep.metrics import data_ceiling_bits, memorization, sequence_nll_bits, uniform_reference_bits


def test_uniform_logits_cost_exactly_log2_v_per_token():
    V, S = 2048, 64
    targets = torch.randint(0, V, (3, S))
    bits = sequence_nll_bits(torch.zeros(3, S, V), targets)
    assert bits.dtype == torch.float64
    np.testing.assert_allclose(bits.numpy(), S * 11.0, rtol=1e-6)
    assert uniform_reference_bits(S, V) == 704.0


def test_known_probabilities_give_known_bits():
    # Target logit log(3) against three zeros: p = 3 / (3 + 3) = 1/2 -> exactly 1 bit per token.
    V, S = 4, 5
    targets = torch.tensor([[0, 1, 2, 3, 0]])
    logits = torch.zeros(1, S, V)
    logits[0, torch.arange(S), targets[0]] = math.log(3.0)
    assert sequence_nll_bits(logits, targets).item() == pytest.approx(5.0, abs=1e-6)
    # bf16 logits are upcast before the softmax, so the same answer comes out.
    assert sequence_nll_bits(logits.bfloat16(), targets).item() == pytest.approx(5.0, abs=2e-2)


def test_memorization_clips_each_sample_at_zero():
    ref = 704.0
    nll = np.array([104.0, 704.0, 804.0, 0.0])  # gains 600, 0, -100 (clipped), 704
    m = memorization(nll, ref, tokens_per_sample=64)
    assert m.dataset_bits == 4 * 704.0
    assert m.memorized_bits == pytest.approx(600 + 0 + 0 + 704)
    assert m.memorized_bits_unclipped == pytest.approx(600 + 0 - 100 + 704)
    assert m.loss_bits == pytest.approx(nll.sum() / 256)
    assert m.loss_nats == pytest.approx(nll.sum() * math.log(2) / 256)
    assert m.memorized_bits <= m.dataset_bits


def test_sums_are_float64_exact():
    # A million samples of 704 - 1e-4 bits each: float32 accumulation loses the 100-bit gain.
    nll = np.full(1_000_000, 704.0 - 1e-4)
    m = memorization(nll, 704.0, 64)
    assert m.memorized_bits == pytest.approx(100.0, rel=1e-6)
    float32_gain = np.float32(704.0) * 1_000_000 - np.sum(nll.astype(np.float32), dtype=np.float32)
    assert abs(float32_gain - 100.0) > 1.0  # what the float64 path avoids


def test_per_sample_reference_bits():
    m = memorization(np.array([5.0, 5.0]), np.array([10.0, 3.0]), tokens_per_sample=2)
    assert m.dataset_bits == 13.0
    assert m.memorized_bits == 5.0
    assert m.memorized_bits_unclipped == 3.0


class HalfBitModel(torch.nn.Module):
    """Puts probability 1/2 on the true next token: every token costs exactly 1 bit."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        return logits.scatter(-1, tokens.unsqueeze(-1), math.log(self.vocab_size - 1))


def test_evaluation_of_a_model_with_known_logits():
    from memsweep.data.uniform import random_tokens
    from memsweep.evaluation import per_sample_nll_bits, uniform_memorization

    V, S, N = 16, 8, 10
    tokens = random_tokens(N, S, V, seed=0)
    nll = per_sample_nll_bits(HalfBitModel(V), tokens, batch_size=3, device=torch.device("cpu"))
    np.testing.assert_allclose(nll, S * 1.0, rtol=1e-6)
    m = uniform_memorization(nll, S, V)
    assert m.dataset_bits == N * S * 4
    assert m.memorized_bits == pytest.approx(N * S * 3, rel=1e-6)  # log2(16) - 1 bit per token


def test_data_ceiling_is_the_dataset_bits_less_n_log2_n():
    # 4 sequences of 2 tokens over V = 4: 4 bits each, 16 in all; coding 4 of them costs >= 2 bits each
    assert data_ceiling_bits(4, 2, 4) == 4 * (4 - 2)
    assert data_ceiling_bits(4096, 64, 2048) == 4096 * (704 - 12)
    # S log2 V = log2 N = 2: all 4 at p = 1/4 memorize nothing; one at p = 1 (or two at 1/2) memorize 2 bits
    assert data_ceiling_bits(4, 1, 4) == 2.0
    assert data_ceiling_bits(0, 64, 2048) == 0.0
