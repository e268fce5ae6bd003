import pytest
import torch

from memsweep.model import GPT, GPTConfig, paper_param_count

# Morris et al. 2025 Table 1 configs (V=2048, S=64) and their published parameter counts.
PAPER_CONFIGS = [(1, 32, 80_352), (1, 128, 468_864), (2, 128, 667_136), (4, 256, 3_700_224), (8, 256, 6_859_264)]


@pytest.mark.parametrize("n_layer,d_model,expected", PAPER_CONFIGS)
def test_param_count_matches_paper(n_layer, d_model, expected):
    model = GPT(GPTConfig(vocab_size=2048, seq_len=64, n_layer=n_layer, d_model=d_model, n_head=4))
    assert model.n_params == expected
    assert paper_param_count(2048, 64, n_layer, d_model) == expected
    counts = model.param_counts_by_component()
    parts = sum(v for k, v in counts.items() if k not in ("total (paper P)", "bos (not in P)"))
    assert parts == expected
    assert model.n_params_bos == d_model


def test_every_token_is_predicted_causally():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, seq_len=8, n_layer=2, d_model=16, n_head=2)).eval()
    tokens = torch.randint(0, 50, (2, 8))
    logits = model(tokens)
    assert logits.shape == (2, 8, 50)
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 50
    logits2 = model(changed)
    # Position t predicts token t from tokens < t: changing token 3 moves predictions 4.. only.
    torch.testing.assert_close(logits[:, :4], logits2[:, :4])
    assert not torch.allclose(logits[:, 4:], logits2[:, 4:])
    # The last token is never an input, only a target.
    last = tokens.clone()
    last[:, -1] = (last[:, -1] + 1) % 50
    torch.testing.assert_close(model(last), logits)


def test_math_and_sdpa_attention_agree():
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, seq_len=16, n_layer=2, d_model=32, n_head=4)
    math_model = GPT(GPTConfig(**cfg, attention="math")).eval()
    sdpa_model = GPT(GPTConfig(**cfg, attention="sdpa")).eval()
    sdpa_model.load_state_dict(math_model.state_dict())
    tokens = torch.randint(0, 64, (3, 16))
    torch.testing.assert_close(math_model(tokens), sdpa_model(tokens), rtol=1e-5, atol=1e-5)


def test_bad_model_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="flash")
