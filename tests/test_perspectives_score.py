"""memsweep.perspectives' scoring core: Chen et al.'s score, step entropies and hidden states for
memsweep GPTs and Hugging Face models saved locally (never downloaded), and the files it writes."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
import transformers

from memsweep.checkpoint import file_sha256
from memsweep.config import CellConfig, DataConfig, ModelConfig, save_cell_config
from memsweep.model import GPT, GPTConfig
from memsweep.perspectives.models import MemsweepModel, TrainedPool, hf_greedy, load_models
from memsweep.perspectives.run import run_perspectives
from memsweep.perspectives.score import score_grid, score_rows
from memsweep.perspectives.sequences import ScoredRows, check_models_read, rows_for, token_counts
from memsweep.text.hf_export import to_hf_gpt2
from tests.test_text_measures import memorized_model

V, S = 32, 16


@pytest.fixture(scope="module")
def train_rows() -> torch.Tensor:
    return torch.randint(0, V, (8, S), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def memorized(train_rows) -> GPT:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: on 2 busy shared cores, 2 threads train this tiny GPT 40x slower
    try:
        model, loss = memorized_model(train_rows, from_position=4)
    finally:
        torch.set_num_threads(threads)
    assert loss < 0.01, f"the tiny GPT did not memorize its rows (loss {loss:.3f} nats/token)"
    return model


@pytest.fixture(scope="module")
def untrained() -> GPT:
    torch.manual_seed(3)
    return GPT(GPTConfig(vocab_size=V, seq_len=S, n_layer=2, d_model=32, n_head=4)).eval()


def hand_greedy(gpt: GPT, context: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(greedy tokens (B, n), logits (B, k+n, V) predicting every position) by repeated full
    forwards; the dummy last token is never read by forward."""
    seq, steps = context, []
    with torch.no_grad():
        for _ in range(n):
            logits = gpt(torch.cat([seq, torch.zeros_like(seq[:, :1])], dim=1))[:, -1]
            steps.append(logits)
            seq = torch.cat([seq, logits.argmax(dim=-1, keepdim=True)], dim=1)
        return seq[:, context.shape[1] :], torch.cat([gpt(context), torch.stack(steps, dim=1)], dim=1)


def hand_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), dim=-1)
    return -(p * p.log()).sum(dim=-1)


def leveled_rows(gpt: GPT, levels: list[int], k: int, n: int, seed: int = 0) -> np.ndarray:
    """Rows whose true continuation is the model's own greedy one with n - level positions changed:
    the model never reads the true continuation, so each row scores exactly level / n."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(0, V, (len(levels), k), generator=g)
    true = hand_greedy(gpt, context, n)[0].clone()
    for i, level in enumerate(levels):
        wrong = torch.randperm(n, generator=g)[: n - level]
        true[i, wrong] = (true[i, wrong] + 1) % V
    return torch.cat([context, true], dim=1).numpy()


def test_memorized_rows_score_one(memorized, train_rows, tmp_path):
    npz = np.load(score_rows(MemsweepModel(memorized, "memorized"), train_rows.numpy(), 4, 12, out_dir=tmp_path,
                             batch_size=3))
    assert npz["score"].tolist() == [1.0] * 8
    assert (npz["generated"] == train_rows[:, 4:].numpy()).all()


def test_untrained_score_and_entropy_match_hand_greedy(untrained, tmp_path):
    k, n = 5, 11
    rows = leveled_rows(untrained, [0, 3, 11, 7, 0, 5, 9], k, n)
    npz = np.load(score_rows(MemsweepModel(untrained, "untrained"), rows, k, n, out_dir=tmp_path, batch_size=4))
    tokens, logits = hand_greedy(untrained, torch.as_tensor(rows[:, :k]), n)
    assert (npz["generated"] == tokens.numpy()).all()
    hand_score = (tokens.numpy() == rows[:, k:]).mean(axis=1)
    assert np.array_equal(hand_score, np.array([0, 3, 11, 7, 0, 5, 9]) / n)
    assert npz["score"].dtype == np.float32 and np.array_equal(npz["score"], hand_score.astype(np.float32))
    np.testing.assert_allclose(npz["entropy"], hand_entropy(logits).numpy(), rtol=0, atol=1e-5)


def tiny_hf(kind: str):
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "neox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**common))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **common))


@pytest.mark.parametrize("kind", ["neox", "llama"])
def test_hf_batched_left_padded_equals_one_at_a_time(kind, tmp_path):
    torch.manual_seed(0)
    tiny_hf(kind).save_pretrained(tmp_path / kind)
    [model] = load_models([f"path:{tmp_path / kind}"], "cpu")
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(0, 64, (length,), generator=g) for length in (1, 3, 7, 12, 5, 9, 2)]
    batched = hf_greedy(model.module, prefixes, 8, want_hidden=True)
    for i, prefix in enumerate(prefixes):
        alone = hf_greedy(model.module, [prefix], 8, want_hidden=True)
        assert torch.equal(batched.tokens[i], alone.tokens[0])
        torch.testing.assert_close(batched.entropy[i], alone.entropy[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batched.hidden[i], alone.hidden[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batched.prefix_entropy[i, -len(prefix):], alone.prefix_entropy[0],
                                   rtol=0, atol=1e-5, equal_nan=True)
        assert batched.prefix_entropy[i, : 13 - len(prefix)].isnan().all()  # pads and the first token
        # By hand: one uncached forward over prefix + generated tokens predicts every step.
        with torch.no_grad():
            logits = model.module(torch.cat([prefix, alone.tokens[0]])[None]).logits[0]
        assert torch.equal(logits[len(prefix) - 1 : -1].argmax(-1), alone.tokens[0])
        torch.testing.assert_close(alone.entropy[0], hand_entropy(logits[len(prefix) - 1 : -1]).float(),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(alone.prefix_entropy[0, 1:], hand_entropy(logits[: len(prefix) - 1]).float(),
                                   rtol=0, atol=1e-5)
    scored = model.score_batch(torch.stack([p[:2] for p in prefixes[1:]]), 2, 4, want_hidden=False)
    assert scored.entropy.shape == (6, 6)
    assert scored.entropy[:, 0].isnan().all() and not scored.entropy[:, 1:].isnan().any()


def test_hf_export_scores_exactly_like_the_memsweep_model(memorized, train_rows, tmp_path):
    rows = torch.cat([train_rows, torch.randint(0, V, (8, S), generator=torch.Generator().manual_seed(5))]).numpy()
    np.save(tmp_path / "rows.npy", rows)
    to_hf_gpt2(memorized).save_pretrained(tmp_path / "export")
    [hf] = load_models([f"path:{tmp_path / 'export'}"], "cpu")
    assert hf.max_tokens == S and hf.vocab_size == V + 1  # it reads BOS + S - 1 positions; BOS is token V
    ours = np.load(score_rows(MemsweepModel(memorized, "ms"), rows, 4, 12, out_dir=tmp_path / "ms", batch_size=5))
    run_perspectives([f"path:{tmp_path / 'export'}"], f"path:{tmp_path / 'rows.npy'}", [4], [12],
                     out_dir=tmp_path / "hf", batch_size=5, device="cpu")
    theirs = np.load(tmp_path / "hf" / "scores" / "export__k4_n12.npz")
    assert ours["score"][:8].tolist() == [1.0] * 8 and ours["score"][8:].max() < 1
    for key in ("idx", "score", "true", "generated", "hidden_idx"):
        assert np.array_equal(ours[key], theirs[key]), key
    np.testing.assert_allclose(ours["entropy"], theirs["entropy"], rtol=0, atol=1e-5)
    ours_h, theirs_h = (np.load(tmp_path / d / "scores" / f"{name}__k4_n12.hidden.npy") for d, name in
                        (("ms", "ms"), ("hf", "export")))
    np.testing.assert_allclose(ours_h.astype(np.float32), theirs_h.astype(np.float32), rtol=1e-2, atol=1e-3)


def test_sizes_are_refused_before_any_model_loads(tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((4, S), dtype=np.int64))
    missing = f"path:{tmp_path / 'no-such-model'}"
    with pytest.raises(ValueError, match=r"context 8 \+ continuation 12 = 20 tokens is longer than the scored "
                                         r"sequences \(16 tokens\)"):
        run_perspectives([missing], f"path:{tmp_path / 'rows.npy'}", [4, 8], [12], out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="no such directory"):  # fits: only now is the model looked for
        run_perspectives([missing], f"path:{tmp_path / 'rows.npy'}", [4], [12], out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"--seq-len 12: the rows of .*rows.npy have 16 tokens"):
        run_perspectives([missing], f"path:{tmp_path / 'rows.npy'}", [4], [8], out_dir=tmp_path / "out", seq_len=12)


def test_vocab_and_tokenizer_mismatches_are_refused_naming_both(untrained, tmp_path):
    bpe = {"kind": "bpe", "vocab_size": V, "sha256": "a" * 64}
    model = MemsweepModel(untrained, "tiny", tokenizer_id=bpe)
    rows = np.full((2, S), 5)
    rows[1, 3] = 40
    np.save(tmp_path / "rows.npy", rows)
    with pytest.raises(ValueError, match="model tiny has a vocabulary of 32 tokens, but the rows hold token id 40"):
        rows_for([model], f"path:{tmp_path / 'rows.npy'}")
    other = {**bpe, "sha256": "b" * 64}
    with pytest.raises(ValueError, match=r"reads tokenizer bpe \(vocab 32, sha256 aaaaaaaaaaaa\), but the rows were "
                                         r"tokenized with bpe \(vocab 32, sha256 bbbbbbbbbbbb\)"):
        check_models_read([model], rows[:1], other)
    check_models_read([model], rows[:1], bpe)  # the same tokenizer reads them
    a, b = (MemsweepModel(untrained, name, pool=TrainedPool(DataConfig(kind="text"), sha * 64), trained_rows=8)
            for name, sha in (("a", "1"), ("b", "2")))
    with pytest.raises(ValueError, match="model a trained on pool 111111111111 but b on pool 222222222222"):
        rows_for([a, b], None)


def test_a_missing_transformers_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(RuntimeError, match=r'needs transformers: pip install -e "\.\[text\]"'):
        load_models([f"path:{tmp_path}"], "cpu")


def test_files_match_the_contract_and_the_hidden_dump_is_stratified(untrained, tmp_path):
    k, n, per_level = 3, 4, 3
    counts = {0: 20, 1: 9, 3: 6, 4: 2}  # no row scores 2/4
    levels = [level for level, count in counts.items() for _ in range(count)]
    levels = [levels[i] for i in np.random.default_rng(0).permutation(len(levels))]
    rows = leveled_rows(untrained, levels, k, n, seed=1)
    model = MemsweepModel(untrained, "tiny", source="a cell dir")
    corpus = ScoredRows(rows, token_counts(rows, V), "test rows", "test rows", None)
    score_grid([model], corpus, [k], [n], tmp_path / "a", batch_size=5, hidden_rows=per_level * (n + 1))

    out = tmp_path / "a"
    assert json.loads((out / "models.json").read_text()) == [
        {"name": "tiny", "n_params": untrained.n_params, "kind": "memsweep", "source": "a cell dir", "vocab_size": V,
         "hidden_size": 32, "trained_rows": None, "tokenizer": None}]
    unigram = np.load(out / "unigram.npy")
    assert unigram.dtype == np.int64 and np.array_equal(unigram, np.bincount(rows.ravel(), minlength=V))
    assert sorted(p.name for p in (out / "scores").iterdir()) == [
        "tiny__k3_n4.csv", "tiny__k3_n4.hidden.npy", "tiny__k3_n4.npz"]  # no slot or partial file left
    csv = (out / "scores" / "tiny__k3_n4.csv").read_text().splitlines()
    assert csv[0] == "idx,score" and csv[1:] == [f"{i},{level / n:g}" for i, level in enumerate(levels)]

    npz = np.load(out / "scores" / "tiny__k3_n4.npz")
    R = len(rows)
    expected = {"idx": (np.int64, (R,)), "score": (np.float32, (R,)), "true": (np.int32, (R, k + n)),
                "generated": (np.int32, (R, n)), "entropy": (np.float32, (R, k + n))}
    for key, (dtype, shape) in expected.items():
        assert npz[key].dtype == dtype and npz[key].shape == shape, key
    assert np.array_equal(npz["idx"], np.arange(R)) and np.array_equal(npz["true"], rows)
    assert np.array_equal(npz["score"], np.array(levels, np.float32) / n)

    hidden_idx, hidden = npz["hidden_idx"], np.load(out / "scores" / "tiny__k3_n4.hidden.npy")
    kept = {level: min(per_level, count) for level, count in counts.items()}
    assert hidden_idx.dtype == np.int64 and np.all(np.diff(hidden_idx) > 0)
    assert {lv: int(c) for lv, c in zip(*np.unique(np.array(levels)[hidden_idx], return_counts=True))} == kept
    assert hidden.dtype == np.float16 and hidden.shape == (sum(kept.values()), n, 32)
    states = model.score_batch(torch.as_tensor(rows[hidden_idx]), k, n, want_hidden=True).hidden
    np.testing.assert_allclose(hidden, states.numpy(), rtol=1e-3, atol=1e-3)

    # The sample is seeded, not an artefact of the batching.
    score_grid([model], corpus, [k], [n], tmp_path / "b", batch_size=7, hidden_rows=per_level * (n + 1))
    again = np.load(tmp_path / "b" / "scores" / "tiny__k3_n4.npz")
    assert np.array_equal(again["hidden_idx"], hidden_idx)
    assert np.array_equal(np.load(tmp_path / "b" / "scores" / "tiny__k3_n4.hidden.npy"), hidden)


def fake_text_cell(cell_dir, n_layer: int, n_samples: int, *, reference: bool = False, status: str = "done",
                   checkpoint: bool = False, seed: int = 0) -> GPT:
    """A text cell as a finished run leaves it: config.yaml, result.json and its weights, in
    model.pt or (cells finished before model.pt existed) a verified Lightning checkpoint."""
    cfg = CellConfig(model=ModelConfig(n_layer=n_layer, d_model=16, n_head=2),
                     data=DataConfig(kind="text", vocab_size=260, seq_len=S, n_samples=n_samples, n_heldout=8,
                                     heldout_pool=8, pool_size=1024), seed=seed).validate()
    torch.manual_seed(n_layer * 1000 + n_samples)
    gpt = GPT(GPTConfig(vocab_size=260, seq_len=S, n_layer=n_layer, d_model=16, n_head=2))
    cell_dir.mkdir(parents=True)
    save_cell_config(cfg, cell_dir / "config.yaml")
    record = {"status": status, "data_kind": "text", "is_reference": reference, "n_params": gpt.n_params,
              "n_samples": n_samples, "seed": seed, "precision": "fp32", "steps": 300, "seq_len": S,
              "text": {"pool_sha256": "p" * 64, "tokenizer": {"kind": "bpe", "vocab_size": 260, "sha256": "t" * 64}}}
    (cell_dir / "result.json").write_text(json.dumps(record))
    if checkpoint:
        (cell_dir / "checkpoints").mkdir()
        path = cell_dir / "checkpoints" / "step-000000300.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in gpt.state_dict().items()}, "optimizer_states": [],
                    "global_step": 300, "loops": {}, "callbacks": {}}, path)
        path.with_name(path.name + ".sha256").write_text(file_sha256(path) + "\n")
    else:
        torch.save({"gpt_config": dataclasses.asdict(gpt.cfg), "state_dict": gpt.state_dict()}, cell_dir / "model.pt")
    return gpt


def test_a_sweep_scores_the_largest_n_of_each_size_from_model_pt_or_its_final_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    fake_text_cell(sweep / "small-64", 1, 64)
    small = fake_text_cell(sweep / "small-256", 1, 256)
    fake_text_cell(sweep / "small-ref", 1, 1024, reference=True)
    fake_text_cell(sweep / "small-seed1", 1, 512, seed=1)
    large = fake_text_cell(sweep / "large-128", 2, 128, checkpoint=True)
    fake_text_cell(sweep / "large-512", 2, 512, status="failed")
    models = load_models([str(sweep)], "cpu")
    assert [m.source for m in models] == [str(sweep / "small-256"), str(sweep / "large-128")]
    for model, gpt in zip(models, (small, large)):
        assert model.n_params == gpt.n_params
        for key, value in gpt.state_dict().items():
            assert torch.equal(model.gpt.state_dict()[key], value), key
    assert [m.trained_rows for m in models] == [256, 128]

    record = json.loads((sweep / "large-128" / "result.json").read_text())
    (sweep / "large-128" / "result.json").write_text(json.dumps({**record, "steps": 400}))
    with pytest.raises(ValueError, match="step-000000300.ckpt is at step 300, but the cell finished at step 400"):
        load_models([str(sweep / "large-128")], "cpu")


def test_hf_models_need_a_corpus_and_do_not_share_one_with_memsweep_cells(tmp_path):
    missing = f"path:{tmp_path / 'no-such-model'}"
    with pytest.raises(ValueError, match=r"is not a memsweep cell: name the text to score it on, --corpus NAME"):
        run_perspectives([missing], None, [4], [8], out_dir=tmp_path / "out")
    fake_text_cell(tmp_path / "cell", 1, 64)
    with pytest.raises(ValueError, match=rf"model {missing} reads the corpus through its own tokenizer, cell "
                                         rf"{tmp_path / 'cell'} through its training pool's"):
        run_perspectives([str(tmp_path / "cell"), missing], "small-mixed", [4], [8], out_dir=tmp_path / "out")
