"""Train real (tiny) cells end to end on the CPU."""

import csv
import json
import math

import pytest
import torch

from memsweep.cell import run_cell
from tests.wandb_offline import history_and_summary, run_id

RECORD_FIELDS = {
    "status", "n_params", "n_layer", "d_model", "n_head", "vocab_size", "seq_len", "n_samples", "precision",
    "param_dtype", "data_seed", "seed", "dataset_bits", "memorized_bits", "memorized_bits_unclipped",
    "bits_per_param", "train_loss", "train_loss_bits", "test_loss", "test_loss_bits", "steps", "tokens_seen",
    "tokens_per_sec", "wall_seconds", "stop_reason", "config", "versions", "cell_id",
}


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def below_capacity(tmp_path_factory):
    """1L d32 (80k params, ~3e5 bits of capacity) on 32 sequences (22,528 bits)."""
    from tests.conftest import SMALL, compose_config
    from memsweep.config import cell_config

    run_dir = tmp_path_factory.mktemp("below")
    cfg = cell_config(compose_config(SMALL))
    return cfg, run_dir, run_cell(cfg, run_dir)


def test_tiny_cell_below_capacity_memorizes_90_percent(below_capacity):
    cfg, run_dir, record = below_capacity
    assert record["status"] == "done"
    assert record["dataset_bits"] == 32 * 64 * 11
    assert record["memorized_bits"] >= 0.9 * record["dataset_bits"]
    assert record["bits_per_param"] == pytest.approx(record["memorized_bits"] / 80_352)
    # Fresh sequences are not memorized: the held-out loss stays at or above log V.
    assert record["test_loss"] > math.log(2048) - 0.05


def test_memorized_never_exceeds_dataset_bits(below_capacity):
    _, run_dir, record = below_capacity
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(0, 301, 50))
    assert all(0 <= r["memorized_bits"] <= record["dataset_bits"] for r in rows)
    assert all(r["memorized_bits_unclipped"] <= r["memorized_bits"] + 1e-6 for r in rows)


def test_golden_initial_loss(below_capacity):
    # An untrained GPT-2 init predicts nearly uniformly: loss = ln V to within a few hundredths.
    first = metrics_rows(below_capacity[1])[0]
    assert first["step"] == 0
    assert first["train_loss"] == pytest.approx(math.log(2048), abs=0.03)
    assert first["memorized_bits"] < 0.01 * below_capacity[2]["dataset_bits"]


def test_result_json_has_every_field(below_capacity):
    _, run_dir, record = below_capacity
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert RECORD_FIELDS <= set(on_disk)
    assert on_disk["memorized_bits"] == record["memorized_bits"]
    assert on_disk["config"]["model"]["d_model"] == 32
    assert {"memsweep", "git_sha", "git_dirty", "torch", "lightning"} <= set(on_disk["versions"])
    assert on_disk["stop_reason"] == "max_steps" and on_disk["steps"] == 300
    assert on_disk["tokens_seen"] == 300 * 32 * 64


def test_relaunching_a_done_cell_is_a_no_op(below_capacity):
    cfg, run_dir, record = below_capacity
    before = (run_dir / "result.json").read_text()
    assert run_cell(cfg, run_dir) == record
    assert (run_dir / "result.json").read_text() == before


def test_same_seeds_same_data_same_first_losses(small_cell, tmp_path):
    cfg = small_cell("trainer.max_steps=20", "trainer.eval_interval=10")
    first = metrics_rows_of(run_cell(cfg, tmp_path / "a"), tmp_path / "a")
    second = metrics_rows_of(run_cell(cfg, tmp_path / "b"), tmp_path / "b")
    for a, b in zip(first, second):
        assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    other_init = small_cell("trainer.max_steps=20", "trainer.eval_interval=10", "seed=1")
    third = metrics_rows_of(run_cell(other_init, tmp_path / "c"), tmp_path / "c")
    assert third[-1]["train_loss"] != first[-1]["train_loss"]
    assert third[0]["test_loss"] != first[0]["test_loss"]  # same held-out data, other init


def metrics_rows_of(record, run_dir):
    assert record["status"] == "done"
    return metrics_rows(run_dir)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("bf16-mixed", torch.float32),
                                             ("fp32", torch.float32)])
def test_precision_sets_the_parameter_dtype(small_cell, tmp_path, precision, dtype, monkeypatch):
    seen = {}
    import memsweep.cell as cell_module

    original = cell_module.MemorizationModule.training_step

    def spy(self, batch, batch_idx):
        seen["dtype"] = next(self.model.parameters()).dtype
        seen["logits"] = self.model(batch[:1]).dtype
        return original(self, batch, batch_idx)

    monkeypatch.setattr(cell_module.MemorizationModule, "training_step", spy)
    record = run_cell(small_cell(f"precision={precision}", "trainer.max_steps=3"), tmp_path)
    assert seen["dtype"] == dtype
    assert record["param_dtype"] == str(dtype).removeprefix("torch.")
    assert seen["logits"] == (torch.float32 if precision == "fp32" else torch.bfloat16)


def test_saturation_stops_with_cooldown(small_cell, tmp_path):
    cfg = small_cell("trainer.max_steps=2000", "trainer.eval_interval=20", "trainer.saturation.min_steps=100",
                     "trainer.saturation.window=3", "trainer.saturation.tolerance=0.01",
                     "trainer.saturation.cooldown=0.5", "trainer.lr=1e-2")
    record = run_cell(cfg, tmp_path)
    assert record["stop_reason"] == "saturated"
    saturated = record["saturated_at_step"]
    assert saturated is not None and saturated < 2000
    assert record["steps"] == saturated + math.ceil(0.5 * saturated)
    rows = metrics_rows(tmp_path)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-4)


def test_failed_cell_is_recorded(small_cell, tmp_path, monkeypatch):
    import memsweep.cell as cell_module

    def boom(self, batch, batch_idx):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(cell_module.MemorizationModule, "training_step", boom)
    with pytest.raises(RuntimeError, match="synthetic failure"):
        run_cell(small_cell("trainer.max_steps=3"), tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "failed" and "synthetic failure" in record["error"]


def test_wandb_offline_round_trip(small_cell, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = small_cell("logger=wandb", "trainer.max_steps=60", "trainer.eval_interval=20")
    cell_dir = tmp_path / cfg.cell_id  # as in a sweep dir
    record = run_cell(cfg, cell_dir)
    (run_file,) = cell_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert run_id(run_file) == cfg.cell_id
    history, summary = history_and_summary(run_file)
    logged = [row["eval/memorized_bits"] for row in history if "eval/memorized_bits" in row]
    assert logged == pytest.approx([row["memorized_bits"] for row in metrics_rows(cell_dir)])
    assert summary["memorized_bits"] == pytest.approx(record["memorized_bits"])
    assert summary["bits_per_param"] == pytest.approx(record["bits_per_param"])
    # `memsweep sync` finds the sweep's offline runs (a dry run: there is no network here).
    from memsweep.cli import main

    assert main(["sync", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == [str(run_file.parent)]
