"""`memsweep run` a small real sweep (the README's preset, shrunk), then `memsweep report` it:
figures, tables, the attack on real losses, W&B offline read back, and partial sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memsweep.analysis.membership import loss_threshold_attack
from memsweep.analysis.report import build_report, write_report
from memsweep.cell import PER_SAMPLE_FILE
from memsweep.cli import main
from memsweep.record import RESULT_FILE, write_json_atomic
from memsweep.sweep import plan_sweep, write_plan
from tests.conftest import run_sweep
from tests.wandb_offline import history_and_summary, records

GRID = ["experiment=reproduce-quick", "model.d_model=8,16", "data.capacity_ratio=null", "data.n_samples=8,32,128", "data.n_heldout=512",
        "trainer.max_steps=200", "trainer.batch_size=32", "trainer.eval_interval=50"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return run_sweep(tmp_path_factory, "reproduce-quick", GRID, bootstrap=200)


def test_run_trains_every_cell_and_writes_the_report(sweep):
    report_dir = sweep / "report"
    cells = pd.read_csv(report_dir / "cells.csv")
    assert len(cells) == 6 and set(cells["n_samples"]) == {8, 32, 128}
    for name in ("capacity_curves", "alpha_fit", "double_descent", "membership", "throughput"):
        assert (report_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in (report_dir / "report.md").read_text()
    summary = json.loads((report_dir / "report.json").read_text())
    alpha = summary["alpha"]["fp32"]
    capacity = pd.read_csv(report_dir / "capacity_summary.csv")
    assert alpha["n_models"] == 2
    assert 0 < alpha["alpha"] < 8  # tiny budget: a real but small number, never above V's log2 per param
    assert (capacity["capacity_bits"] == cells.groupby("model")["memorized_bits"].max().reindex(capacity["model"]).values).all()
    assert len(pd.read_csv(report_dir / "double_descent.csv")) == 2


def test_the_report_of_a_one_seed_two_model_sweep_fits_only_what_it_can(sweep):
    """The fixture is one seed x two models: no intercept fit, no 'mean over seeds', no
    membership predictions from this sweep unless its F1 range determines the law."""
    text = (sweep / "report" / "report.md").read_text()
    assert "With an intercept" not in text and "No fit with an intercept" in text
    assert "mean over seeds" not in text.lower() and "One seed: no confidence intervals" in text
    assert "V = 256, S = 64, 1 layer" in text and "docs/papers.md" in text and "shared/reference" not in text
    predictions = pd.read_csv(sweep / "report" / "membership_predictions.csv")
    fitted = json.loads((sweep / "report" / "report.json").read_text())["membership_law"]["fit"]
    assert ("this sweep" in set(predictions["law"])) == (fitted is not None)
    assert (fitted is None) == ("No law fitted to this sweep" in text)


def test_a_rerun_over_an_unchanged_sweep_rewrites_nothing(sweep):
    report_dir = sweep / "report"
    before = {p.name: p.stat().st_mtime_ns for p in report_dir.iterdir()}
    report = build_report(sweep, n_boot=200)  # what `memsweep run ... --bootstrap 200` wrote
    write_report(report, report_dir)
    assert report.written == []
    assert before == {p.name: p.stat().st_mtime_ns for p in report_dir.iterdir()}


def test_attack_on_a_memorizing_cell_scores_one(sweep):
    cells = pd.read_csv(sweep / "report" / "cells.csv")
    memorized = cells[(cells["n_samples"] == 32) & (cells["memorized_fraction"] > 0.95)]
    assert len(memorized), "a 32-sequence cell should memorize its data in 200 steps"
    assert (memorized["mi_f1"] == 1.0).all() and (memorized["mi_auc"] == 1.0).all()


def test_attack_on_sequences_the_model_never_saw_scores_one_half(sweep):
    """The members here are held-out sequences too: the real model never saw either class."""
    cell = pd.read_csv(sweep / "report" / "cells.csv").sort_values("memorized_fraction").iloc[-1]
    with np.load(sweep / cell["cell_id"] / PER_SAMPLE_FILE) as nll:
        heldout = nll["heldout"]
    never_seen = loss_threshold_attack(heldout[:256], heldout[256:])
    assert never_seen.f1 == pytest.approx(0.5, abs=0.12)
    assert never_seen.auc == pytest.approx(0.5, abs=0.12)


def test_report_goes_to_wandb_offline(sweep, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["report", str(sweep), "--out", str(tmp_path), "--wandb", "offline", "--bootstrap", "100"]) == 0
    run_file = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    history, summary = history_and_summary(run_file)
    logged = {k: v for row in history for k, v in row.items()}
    assert logged["table/capacity_summary/_type"] == "table-file"
    assert logged["figure/capacity_curves/_type"] == "image-file"
    assert logged["chart/capacity_curves_table/_type"] == "table-file"
    media = run_file.parent / "files"
    table = json.loads((media / logged["table/capacity_summary/path"]).read_text())
    assert len(table["data"]) == len(pd.read_csv(tmp_path / "capacity_summary.csv"))
    assert (media / logged["figure/capacity_curves/path"]).exists()
    report_json = json.loads((tmp_path / "report.json").read_text())
    assert summary["alpha/fp32"] == pytest.approx(report_json["alpha"]["fp32"]["alpha"])
    run = next(r.run for r in records(run_file) if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.job_type) == ("reproduce-quick", "report")  # beside the cells' own runs


def test_a_partial_sweep_reports_what_is_missing(sweep, tmp_path):
    partial = tmp_path / "reproduce-quick"
    shutil.copytree(sweep, partial, ignore=shutil.ignore_patterns("report"))
    write_plan(plan_sweep([*GRID, "data.n_samples=8,32,128,512"], partial))  # 2 more cells, never run
    failed = next(c for c in partial.iterdir() if c.is_dir() and not (c / RESULT_FILE).exists())
    write_json_atomic(failed / RESULT_FILE, {"status": "failed", "cell_id": failed.name,
                                             "error": "RuntimeError: out of memory in the test"})
    report = build_report(partial, n_boot=50)
    text = (write_report(report, tmp_path / "out")).read_text()
    assert report.summary["cells_done"] == 6 and report.summary["cells_missing"] == 2
    assert "1 failed" in text and "1 pending" in text and "out of memory in the test" in text
    assert "α =" in text  # what is there is still analysed


def test_report_of_a_sweep_with_nothing_done(tmp_path, capsys):
    write_plan(plan_sweep(GRID, tmp_path / "empty"))
    assert main(["report", str(tmp_path / "empty"), "--bootstrap", "10"]) == 0
    text = (tmp_path / "empty" / "report" / "report.md").read_text()
    assert "0 cells done, 6 not done" in text and "no cell has finished" in text


def test_report_of_a_missing_dir_and_run_on_slurm_are_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["run", "experiment=smoke", "cluster=slurm"]) == 2
    assert "memsweep submit" in capsys.readouterr().err


def test_workers_split_the_cores_and_take_one_gpu_each(monkeypatch):
    from memsweep.local_run import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert [worker_env(i, 4, ["0", "1", "2", "3"])["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "2", "3"]
    assert worker_env(0, 4, [])["OMP_NUM_THREADS"] == "4" and "CUDA_VISIBLE_DEVICES" not in worker_env(0, 4, [])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert worker_env(0, 4, [])["OMP_NUM_THREADS"] == "2"  # the user's setting wins
