"""The text sections of `memsweep report`, from synthetic text cell dirs (result.json, the
per-sample npz and top_memorized.json with hand-chosen numbers, as a done text cell writes them):
the oracle, the text capacity, the extraction table, the refused membership law, a one-N sweep
that says so, and a mixed sweep that keeps the uniform sections. No training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memsweep.analysis.report import build_report, markdown, write_report
from memsweep.analysis.text import markdown_text
from memsweep.cell import PER_SAMPLE_FILE, TOP_MEMORIZED_FILE
from memsweep.record import RESULT_FILE

V, S, POOL, HELDOUT = 1024, 64, 32, 8
MODELS = {"a": (16, 40_000), "b": (32, 90_000)}
"""Model -> (d_model, n_params); both 2 layers, 2 heads."""
UNINTENDED = {"a": {4: 100.0, 8: 300.0, 16: 200.0}, "b": {4: 200.0, 8: 400.0, 16: 600.0}}
"""a's maximum is bracketed (N = 8), b's at the grid edge (N = 16)."""
TEST_LOSS = {"a": {4: 4.0, 8: 4.5, 16: 4.2, POOL: 3.5}, "b": {4: 4.6, 8: 4.1, 16: 3.9, POOL: 3.0}}
"""b's reference has the lowest test loss: it is every cell's oracle."""
TRAIN_RATE = {4: 1.0, 8: 0.5, 16: 0.25, POOL: 0.125}
ORACLE_TRAIN = 300.0 + np.arange(POOL)
"""b's reference: the NLL bits of the pool's sequences."""
A4_TRAIN = np.array([290.0, 310.0, 320.0, 280.0])
"""a at N = 4: against the oracle max(0, [300, 301, 302, 303] - this) = [10, 0, 0, 23], 33 bits."""
TOP = [{"rank": 1, "idx": 3, "unintended_bits": 50.0, "tfidf": 9.5, "script": "Japanese", "extracted_from": [8, 16],
        "text": "囚人の話" * 40},
       {"rank": 2, "idx": 0, "unintended_bits": 40.0, "tfidf": 7.0, "script": "Latin", "extracted_from": [],
        "text": "a | b\nc"},
       {"rank": 3, "idx": 5, "unintended_bits": 30.0, "tfidf": 8.0, "script": "Hebrew", "extracted_from": [32],
        "text": "שלום"}]
TEXT_INFO = {"corpus": "tinytext", "corpus_sha256": "c" * 64, "n_documents": 10, "n_tokens": 5_000, "n_windows": 40,
             "n_duplicates_dropped": 2, "duplicate_fraction": 0.05, "n_train_pool": POOL, "n_heldout_pool": HELDOUT,
             "seq_len": S, "seed": 0, "tokenizer": {"kind": "bpe", "vocab_size": V, "sha256": "t" * 64},
             "pool_sha256": "p" * 64}


def _base(cell_id: str, model: str, n: int) -> dict:
    d_model, n_params = MODELS[model]
    return {"status": "done", "cell_id": cell_id, "n_params": n_params, "n_samples": n, "n_heldout": HELDOUT,
            "seq_len": S, "vocab_size": V, "n_layer": 2, "d_model": d_model, "n_head": 2, "precision": "fp32",
            "seed": 0, "data_seed": 0, "steps": 100, "stop_reason": "saturated", "tokens_per_sec": 1e4,
            "world_size": 1, "device": "cpu", "device_name": "x86_64"}


def write_text_cell(sweep_dir: Path, model: str, n: int) -> str:
    """One done text cell: the reference when n is the whole pool."""
    is_reference = n == POOL
    cell_id = f"{model}_ref" if is_reference else f"{model}_n{n}"
    unintended = 0.0 if is_reference else UNINTENDED[model][n]
    total = 1_000.0 + unintended
    train = ORACLE_TRAIN[:n] - 5.0 if model == "b" and not is_reference else ORACLE_TRAIN[:n] + 1.0
    train = A4_TRAIN if (model, n) == ("a", 4) else ORACLE_TRAIN if (model, n) == ("b", POOL) else train
    record = {**_base(cell_id, model, n), "data_kind": "text", "text": TEXT_INFO,
              "reference_cell_id": f"{model}_ref", "is_reference": is_reference,
              "memorized_against": "itself (the reference cell)" if is_reference else f"reference cell {model}_ref",
              "train_loss": 3.0, "test_loss": TEST_LOSS[model][n], "train_loss_bits": 3.0 / np.log(2),
              "test_loss_bits": TEST_LOSS[model][n] / np.log(2), "memorized_bits": unintended,
              "unintended_bits": unintended, "total_memorized_bits": total, "generalization_bits": total - unintended,
              "n_memorized_samples": 0 if is_reference else n // 2, "reference_bits": float(train.sum()),
              "dataset_bits": 400.0 * n, "dataset_bits_uniform_code": n * S * np.log2(V),
              "extraction": {str(k): {"train": TRAIN_RATE[n], "heldout": 0.125, "n_train": n, "n_heldout": HELDOUT}
                             for k in (8, 16, 32)},
              "tfidf_spearman": None if is_reference else 0.4 + n / 100, "tfidf_spearman_p": None if is_reference else 0.01,
              "tfidf_n": 0 if is_reference else n // 2}
    cell_dir = sweep_dir / cell_id
    cell_dir.mkdir(parents=True)
    (cell_dir / RESULT_FILE).write_text(json.dumps(record))
    per_sample = np.linspace(0, 10, n) if not is_reference else np.zeros(n)
    np.savez(cell_dir / PER_SAMPLE_FILE, train=train, heldout=np.full(HELDOUT, 600.0), reference_train=train + 1,
             unintended_bits=per_sample, tfidf=np.linspace(1, 5, n),
             **{f"extracted_{k}": np.zeros(n, bool) for k in (8, 16, 32)})
    (cell_dir / TOP_MEMORIZED_FILE).write_text(json.dumps([] if is_reference else TOP))
    return cell_id


def write_uniform_cell(sweep_dir: Path, model: str, n: int) -> None:
    cell_id = f"u{model}_n{n}"
    bits = n * S * np.log2(V)
    record = {**_base(cell_id, model, n), "data_kind": "uniform", "train_loss": 1.0, "test_loss": 7.0,
              "dataset_bits": bits, "memorized_bits": min(bits, 3.0 * MODELS[model][1])}
    (sweep_dir / cell_id).mkdir(parents=True)
    (sweep_dir / cell_id / RESULT_FILE).write_text(json.dumps(record))


def text_sweep(sweep_dir: Path, sizes=(4, 8, 16)) -> Path:
    for model in MODELS:
        for n in (*sizes, POOL):
            write_text_cell(sweep_dir, model, n)
    return sweep_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sweep = text_sweep(tmp_path_factory.mktemp("text") / "sweep")
    report = build_report(sweep, n_boot=20)
    write_report(report, sweep / "report")
    return report, (sweep / "report" / "report.md").read_text()


def test_unintended_against_the_oracle_is_the_hand_computed_sum(built):
    report, text = built
    memorization = report.tables["text_memorization"].set_index("cell_id")
    assert memorization.loc["a_n4", "oracle_cell_id"] == "b_ref"
    assert memorization.loc["a_n4", "oracle_unintended_bits"] == pytest.approx(10 + 23)
    assert memorization.loc["b_n8", "oracle_unintended_bits"] == pytest.approx(5.0 * 8)  # 5 bits under the oracle each
    assert memorization.loc["a_n8", "oracle_unintended_bits"] == 0  # worse than the oracle on every sequence
    assert "b_ref" not in memorization.index and "a_ref" not in memorization.index  # references are not points
    assert "cell b_ref for 6 cell(s)" in text


def test_text_capacity_is_the_maximum_over_n_with_its_position(built):
    report, text = built
    capacity = report.tables["text_capacity"].set_index("model")
    a, b = capacity.loc["2L d16 V1024 S64"], capacity.loc["2L d32 V1024 S64"]
    assert (a["capacity_bits"], a["n_samples_at_max"], a["maximum"]) == (300.0, 8, "bracketed")
    assert a["bits_per_param"] == pytest.approx(300 / 40_000) and a["largest_n_keeps"] == pytest.approx(200 / 300)
    assert (b["capacity_bits"], b["n_samples_at_max"], b["maximum"]) == (600.0, 16, "at grid edge")
    assert "plateaus near the model capacity" in text and "the paper's α (App. A.1)" in text


def test_extraction_table_holds_each_cells_rates(built):
    report, text = built
    table = report.tables["text_extraction"]
    row = table[(table["model"] == "2L d16 V1024 S64") & (table["n_samples"] == 8) & (table["prefix"] == 32)].iloc[0]
    assert (row["train_rate"], row["heldout_rate"], row["n_train"], row["n_heldout"]) == (0.5, 0.125, 8, HELDOUT)
    assert len(table) == 2 * 4 * 3  # references included: they are models trained on the whole pool
    assert "train extraction falls with N (1 at N = 4, 0.125 at N = 32); train − held-out +0.875 → +0" in text


def test_markdown_has_every_text_section_and_the_figures_are_written(built):
    report, text = built
    for heading in ("# Text", "## Corpus", "## Unintended memorization", "### Against the oracle", "## Text capacity",
                    "## Extraction", "## Membership inference (text)", "## TF-IDF and the most memorized sequences",
                    "## Double descent (text)"):
        assert f"\n{heading}\n" in text
    out = report.sweep_dir / "report"
    for name in ("text_memorization", "text_extraction", "text_membership", "text_tfidf", "text_loss"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({name}.png)" in text
    assert "## Capacity" not in text and "no uniform-token cell" in text  # a text-only sweep skips those
    assert json.loads((out / "report.json").read_text())["text"]["top_memorized_cell"] == "b_n16"


def test_a_degenerate_membership_fit_is_refused_with_the_reason(built):
    report, text = built
    law = report.summary["text"]["membership_law"]
    assert law["fit"] is None and "spans only 1.000-1.000" in law["not_fitted"]
    assert "No law fitted to the text cells" in text and "spans only 1.000-1.000" in text
    assert set(report.tables["text_membership_predictions"]["law"]) == {"paper (text)"}


def test_top_sequences_are_escaped_and_their_scripts_counted(built):
    report, text = built
    top = report.tables["text_top_memorized"]
    assert top["text"].iloc[1] == "a \\| b⏎c" and len(top["text"].iloc[0]) == 120
    assert "2 of the top 3 sequences are mostly in a script other than Latin" in text
    assert markdown_text("x" * 200).endswith("…")


def test_double_descent_on_text_locates_a_peak_only_when_bracketed(built):
    report, text = built
    peaks = report.tables["text_double_descent"].set_index("model")
    assert peaks.loc["2L d16 V1024 S64", "maximum"] == "bracketed"
    assert 4 < peaks.loc["2L d16 V1024 S64", "n_samples_at_max"] < 16
    assert peaks.loc["2L d32 V1024 S64", "maximum"] == "at grid edge"
    assert peaks.loc["2L d32 V1024 S64", "n_samples_at_max"] == 4
    assert "(at grid edge: not a peak) at N ≈ 4" in text


def test_a_sweep_with_one_n_says_the_curve_cannot_be_drawn(tmp_path):
    report = build_report(text_sweep(tmp_path / "one", sizes=(8,)), n_boot=20)
    text = markdown(report)
    assert "has one N only (N = 8), so no curve over N can be drawn" in text
    assert "Not computed:" in text.split("## Text capacity")[1].split("##")[0]
    assert "text_memorization" not in report.plots and report.tables["text_capacity"].empty


def test_a_mixed_sweep_keeps_the_uniform_sections(tmp_path):
    sweep = text_sweep(tmp_path / "mixed")
    for model in MODELS:
        for n in (4, 16, 64, 256):
            write_uniform_cell(sweep, model, n)
    report = build_report(sweep, n_boot=20)
    text = write_report(report, tmp_path / "out").read_text()
    assert "## Capacity" in text and "α =" in text and "# Text" in text and "no uniform-token cell" not in text
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert len(cells) == 8 and set(cells["data_kind"]) == {"uniform"} and "text.corpus" not in cells
    assert len(pd.read_csv(tmp_path / "out" / "text_cells.csv")) == 8
    assert "this sweep's uniform-token α" in text  # the text capacity is compared with the sweep's own α


def test_a_uniform_only_sweep_has_no_text_part(tmp_path):
    for model in MODELS:
        for n in (4, 16, 64):
            write_uniform_cell(tmp_path / "uniform", model, n)
    report = build_report(tmp_path / "uniform", n_boot=20)
    write_report(report, tmp_path / "out")
    assert "text" not in report.summary and "# Text" not in markdown(report)
    assert not list((tmp_path / "out").glob("text_*"))


def test_text_records_without_their_optional_files_report_what_they_lack(tmp_path):
    """No npz, no top_memorized.json, no text/extraction/is_reference fields: every section
    still renders, saying what is missing; the reference is known by its own id."""
    sweep = text_sweep(tmp_path / "bare")
    for cell in sweep.iterdir():
        (cell / PER_SAMPLE_FILE).unlink()
        (cell / TOP_MEMORIZED_FILE).unlink()
        record = json.loads((cell / RESULT_FILE).read_text())
        for key in ("text", "extraction", "is_reference", "unintended_bits", "tfidf_spearman"):
            record.pop(key)
        (cell / RESULT_FILE).write_text(json.dumps(record))
    report = build_report(sweep, n_boot=20)
    text = write_report(report, tmp_path / "out").read_text()
    assert report.summary["text"]["references"] == 2
    assert "No oracle" in text and "no text cell recorded extraction rates" in text
    assert f"no text cell kept its {PER_SAMPLE_FILE}" in text and "kept no list of its most memorized" in text


def test_a_text_record_with_a_malformed_extraction_is_corrupt(tmp_path):
    sweep = text_sweep(tmp_path / "bad")
    record = json.loads((sweep / "a_n4" / RESULT_FILE).read_text())
    (sweep / "a_n4" / RESULT_FILE).write_text(json.dumps({**record, "extraction": {"8": 0.5}}))
    report = build_report(sweep, n_boot=20)
    missing = report.tables["missing"].set_index("cell_id")
    assert missing.loc["a_n4", "state"] == "corrupt" and "extraction" in missing.loc["a_n4", "detail"]
