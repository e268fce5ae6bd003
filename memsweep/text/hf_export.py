"""Export memsweep's GPT to Hugging Face `GPT2LMHeadModel`, numerically the same model.

Why: the anchors' tools (pythia's eval_memorization, Chen et al.'s batch_generate) take an HF
causal LM. memsweep's GPT is GPT-2 laid out like HF's, except for two things handled here:
HF's Conv1D stores weights transposed against nn.Linear, and memsweep reads a learned BOS vector
at position 0. That vector becomes vocabulary row V (vocab V + 1, still tied to the head), fed as
the first token: HF logits[:, :, :V] on [V] + x[:-1] equal memsweep's logits on x. Token V is
forbidden in generation (generation_config.suppress_tokens), so greedy `generate` from
[V] + prefix continues the prefix as `memsweep.text.decode.greedy_continue` does.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from memsweep.model import GPT


def bos_token_id(model: GPT) -> int:
    """The HF token id of memsweep's BOS vector: one past memsweep's vocabulary."""
    return model.cfg.vocab_size


def to_hf_gpt2(model: GPT) -> GPT2LMHeadModel:
    """An eval-mode GPT2LMHeadModel with model's weights (copied), dtype and device."""
    cfg, V = model.cfg, model.cfg.vocab_size
    config = GPT2Config(
        vocab_size=V + 1,
        n_positions=cfg.seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.d_model,
        activation_function="gelu_new",  # the tanh approximation memsweep's MLP uses
        layer_norm_epsilon=1e-5,  # torch's LayerNorm default
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=V,
        eos_token_id=None,
        pad_token_id=None,
    )
    weight = model.wte.weight
    hf = GPT2LMHeadModel(config).to(device=weight.device, dtype=weight.dtype)
    hf.load_state_dict(_hf_state_dict(model), strict=True)
    hf.tie_weights()
    hf.generation_config = GenerationConfig(
        do_sample=False, bos_token_id=V, eos_token_id=None, pad_token_id=None, suppress_tokens=[V]
    )
    return hf.eval()


def _hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """memsweep parameter names and layouts mapped onto GPT2LMHeadModel's."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": torch.cat([sd.pop("wte.weight"), sd.pop("bos")[None]]),
        "transformer.wpe.weight": sd.pop("wpe.weight"),
        "transformer.ln_f.weight": sd.pop("ln_f.weight"),
        "transformer.ln_f.bias": sd.pop("ln_f.bias"),
    }
    out["lm_head.weight"] = out["transformer.wte.weight"]
    linears = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for name, value in sd.items():
        is_linear_weight = name.endswith(".weight") and name.removesuffix(".weight").split(".", 2)[-1] in linears
        out[f"transformer.{name}"] = value.t().contiguous() if is_linear_weight else value
    return out
