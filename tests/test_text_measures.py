"""memsweep.text: greedy decoding, extraction, unintended memorization, TF-IDF, scripts, HF export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memsweep.model import GPT, GPTConfig
from memsweep.text.decode import greedy_continue
from memsweep.text.extraction import extraction_rates
from memsweep.text.hf_export import bos_token_id, to_hf_gpt2
from memsweep.text.languages import dominant_script, script_shares
from memsweep.text.tfidf import sequence_tfidf, tfidf_correlation
from memsweep.text.unintended import summarize_unintended, unintended_memorization

V, S = 64, 24
PREFIX_LENGTHS = [0, 1, 3, 7, 12, 5, 9, 2]


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, seq_len=S, n_layer=2, d_model=32, n_head=4)).eval()


@pytest.fixture(scope="module")
def prefixes() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (k,), generator=g).tolist() for k in PREFIX_LENGTHS]


def uncached_greedy(model: GPT, prefix: list[int], n_new: int) -> tuple[list[int], torch.Tensor]:
    """Re-run model(...) on the growing sequence; a dummy last token, since forward never reads it."""
    seq, logits = list(prefix), []
    with torch.no_grad():
        for _ in range(n_new):
            step = model(torch.tensor([seq + [0]]))[0, -1]
            logits.append(step)
            seq.append(int(step.argmax()))
    return seq[len(prefix) :], torch.stack(logits)


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def test_batched_left_padded_equals_one_at_a_time(model, prefixes):
    batched = greedy_continue(model, prefixes, 10, batch_size=3, return_entropy=True, return_hidden=True)
    assert batched.tokens.shape == (len(prefixes), 10)
    for i, prefix in enumerate(prefixes):
        alone = greedy_continue(model, [prefix], 10, return_entropy=True, return_hidden=True)
        assert torch.equal(batched.tokens[i], alone.tokens[0])
        torch.testing.assert_close(batched.entropy[i], alone.entropy[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.hidden[i], alone.hidden[0], rtol=1e-5, atol=1e-5)


def test_cached_equals_uncached_forward(model, prefixes):
    n_new = 12  # the longest prefix (12) then fills all S = 24 positions
    out = greedy_continue(model, prefixes, n_new, return_entropy=True, return_hidden=True)
    for i, prefix in enumerate(prefixes):
        tokens, logits = uncached_greedy(model, prefix, n_new)
        assert out.tokens[i].tolist() == tokens
        torch.testing.assert_close(out.hidden[i] @ model.wte.weight.t(), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.entropy[i], entropy_nats(logits), rtol=0, atol=1e-5)
    # A (B, k) tensor of equal-length prefixes takes the unpadded path and agrees.
    equal = torch.tensor([p[:5] for p in prefixes if len(p) >= 5])
    tokens = greedy_continue(model, equal, 6).tokens
    assert tokens.tolist() == [uncached_greedy(model, row, 6)[0] for row in equal.tolist()]


def test_decoding_refuses_what_does_not_fit(model):
    with pytest.raises(ValueError, match="exceeds the model's seq_len 24"):
        greedy_continue(model, torch.zeros(2, 20, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        greedy_continue(model, [[1, 2, V]], 3)
    assert greedy_continue(model, [], 3).tokens.shape == (0, 3)


def memorized_model(tokens: torch.Tensor, from_position: int) -> tuple[GPT, float]:
    """A tiny GPT trained on `tokens`; returns it and its loss (nats/token) on positions from
    `from_position` on, the ones greedy extraction must reproduce (earlier ones are ambiguous:
    nothing tells the 8 first tokens apart)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, seq_len=tokens.shape[1], n_layer=1, d_model=64, n_head=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        suffix = model(tokens)[:, from_position:]
        suffix_loss = F.cross_entropy(suffix.flatten(0, 1), tokens[:, from_position:].flatten())
    return model.eval(), float(suffix_loss)


def test_extraction_rate_is_one_when_memorized_and_zero_untrained():
    tokens = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(2))
    model, loss = memorized_model(tokens, from_position=4)
    assert loss < 0.01, f"the tiny GPT did not memorize its 8 sequences (loss {loss:.3f} nats/token)"
    rates = extraction_rates(model, tokens.numpy(), prefix_lengths=(4, 8), batch_size=3)
    for k in (4, 8):
        assert rates[k].prefix_length == k and rates[k].n == 8 and rates[k].rate == 1.0
        assert rates[k].extracted.dtype == bool and rates[k].extracted.all()

    torch.manual_seed(3)
    untrained = GPT(GPTConfig(vocab_size=32, seq_len=16, n_layer=1, d_model=64, n_head=4))
    capped = extraction_rates(untrained, tokens.numpy(), prefix_lengths=(4, 8), max_sequences=5)
    # Chance of reproducing 8 or 12 random tokens of V = 32 is at most 32^-8.
    assert {k: (r.n, r.rate) for k, r in capped.items()} == {4: (5, 0.0), 8: (5, 0.0)}
    with pytest.raises(ValueError, match="prefix length 16"):
        extraction_rates(model, tokens.numpy(), prefix_lengths=(16,))


def test_unintended_memorization_against_hand_values():
    model_bits = np.array([10.0, 20.0, 30.0, 5.0])
    reference_bits = np.array([12.0, 15.0, 30.0, 9.0])
    np.testing.assert_array_equal(unintended_memorization(model_bits, reference_bits), [2.0, 0.0, 0.0, 4.0])
    summary = summarize_unintended(model_bits, reference_bits, seq_len=8, vocab_size=16)  # H0 = 32 bits
    assert summary.unintended_bits == 6.0
    assert summary.total_bits == 22.0 + 12.0 + 2.0 + 27.0
    assert summary.generalization_bits == 63.0 - 6.0
    assert (summary.n_samples, summary.n_positive, summary.reference_bits) == (4, 2, 66.0)
    # Samples worse than the uniform code add nothing to total memorization.
    assert summarize_unintended([40.0], [41.0], seq_len=8, vocab_size=16).total_bits == 0.0


def test_unintended_refuses_bad_inputs():
    with pytest.raises(ValueError, match="equal shapes"):
        unintended_memorization(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="reference NLLs hold 1 non-finite"):
        unintended_memorization(np.zeros(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="model NLLs hold 1 non-finite"):
        summarize_unintended(np.array([np.inf, 1.0]), np.zeros(2), seq_len=4, vocab_size=8)


def test_tfidf_equals_hand_computation():
    tokens = np.array([[0, 0, 1, 2], [1, 1, 1, 3], [2, 3, 4, 4]])
    # Counts over D: 0 -> 2, 1 -> 4, 2 -> 2, 3 -> 2, 4 -> 2; |D| = 3 sequences; |d| = 4.
    rare, common = math.log(3 / 2), math.log(3 / 4)
    expected = [(3 * rare + common) / 4, (3 * common + rare) / 4, rare]
    np.testing.assert_allclose(sequence_tfidf(tokens), expected, rtol=1e-12)
    assert sequence_tfidf(tokens).dtype == np.float64


def test_tfidf_correlation_uses_positive_memorization_only():
    tfidf = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    memorization = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.0])  # the outlier has none: left out
    rho, p_value, n = tfidf_correlation(tfidf, memorization)
    assert (rho, n) == (pytest.approx(1.0), 5) and p_value < 0.05
    assert tfidf_correlation(tfidf, np.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.0])) is None


def test_dominant_script():
    assert dominant_script("The quick brown fox, 1984!") == "Latin"
    assert dominant_script("שלום עולם") == "Hebrew"
    assert dominant_script("中华人民共和国万岁") == "Han"
    assert dominant_script("こんにちは") == "Japanese"
    assert dominant_script("囚人は日本語を話す") == "Japanese"  # kanji-majority, but kana make it Japanese
    assert dominant_script("123 !?") == "none"
    assert script_shares("abc שלום") == {"Latin": 3 / 7, "Hebrew": 4 / 7}


def test_hf_export_logits_and_greedy_generate_match(model, prefixes):
    hf = to_hf_gpt2(model)
    bos = bos_token_id(model)
    tokens = torch.randint(0, V, (3, S), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hf_logits = hf(torch.cat([torch.full((3, 1), bos), tokens[:, :-1]], dim=1)).logits
    assert hf_logits.shape[-1] == V + 1
    torch.testing.assert_close(hf_logits[..., :V], model(tokens), rtol=0, atol=1e-5)

    # HF left-pads with an attention mask and counts positions from it: same outputs as ours.
    n_new, longest = 10, max(PREFIX_LENGTHS)
    ids = torch.zeros(len(prefixes), longest + 1, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, prefix in enumerate(prefixes):
        ids[i, longest - len(prefix) :] = torch.tensor([bos, *prefix])
        attention[i, longest - len(prefix) :] = 1
    generated = hf.generate(
        input_ids=ids, attention_mask=attention, max_new_tokens=n_new, output_logits=True, return_dict_in_generate=True
    )
    ours = greedy_continue(model, prefixes, n_new, return_hidden=True)
    assert torch.equal(generated.sequences[:, longest + 1 :], ours.tokens)
    hf_step_logits = torch.stack(generated.logits, dim=1)[..., :V]
    torch.testing.assert_close(ours.hidden @ model.wte.weight.t(), hf_step_logits, rtol=0, atol=1e-5)
