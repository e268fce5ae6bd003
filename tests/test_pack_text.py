"""Text cells in packs (memsweep.pack): each ends as its unpacked run ends (the same text measures
against the same reference, the same files beside the record), and a cell packs only once its
reference is done, never with the reference it is measured against."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from memsweep.cell import MODEL_FILE, PER_SAMPLE_FILE, TOP_MEMORIZED_FILE, run_cell_dir
from memsweep.claim import CellClaim
from memsweep.config import CONFIG_FILE, save_cell_config
from memsweep.pack.launch import run_packed_cells
from memsweep.pack.plan import plan_packs
from memsweep.record import write_json_atomic
from memsweep.sweep import plan_sweep
from tests.test_pack_run import packed
from tests.test_text_cell import text_cell

TEXT_FIELDS = ("unintended_bits", "total_memorized_bits", "generalization_bits", "reference_bits", "memorized_bits",
               "bits_per_param", "train_loss", "test_loss", "tfidf_spearman")


@pytest.fixture(scope="module")
def solo_sweep(text_cache, tmp_path_factory):
    """Two text cells of one model (N 32 and 64, seeds 0 and 1) run unpacked, after their reference."""
    root = tmp_path_factory.mktemp("solo")
    cfgs = [text_cell("data.n_samples=32", "seed=0"), text_cell("data.n_samples=64", "seed=1")]
    for cfg in cfgs:
        save_cell_config(cfg, root / cfg.cell_id / CONFIG_FILE)
        assert run_cell_dir(root / cfg.cell_id)["status"] == "done"
    return root, cfgs


def with_solo_reference(solo_root: Path, cfg, root: Path) -> None:
    """The unpacked sweep's reference, copied: packed and unpacked cells measure against the same one."""
    ref_id = cfg.reference_config().cell_id
    if not (root / ref_id).exists():
        shutil.copytree(solo_root / ref_id, root / ref_id)


def outputs(cell_dir: Path) -> tuple[dict, dict[str, np.ndarray], list, dict[str, torch.Tensor]]:
    record = json.loads((cell_dir / "result.json").read_text())
    with np.load(cell_dir / PER_SAMPLE_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    top = json.loads((cell_dir / TOP_MEMORIZED_FILE).read_text())
    weights = torch.load(cell_dir / MODEL_FILE, weights_only=True)["state_dict"]
    return record, arrays, top, weights


def test_a_text_cell_packed_alone_is_bit_identical_to_its_unpacked_run(solo_sweep, tmp_path):
    solo_root, cfgs = solo_sweep
    cfg = cfgs[1]
    with_solo_reference(solo_root, cfg, tmp_path)
    packed([cfg], tmp_path)
    record, arrays, top, weights = outputs(tmp_path / cfg.cell_id)
    expected, expected_arrays, expected_top, expected_weights = outputs(solo_root / cfg.cell_id)
    assert record["status"] == "done" and record["pack"]["size"] == 1
    assert set(record) - set(expected) == {"pack"} and set(expected) - set(record) == set()
    for key in (*TEXT_FIELDS, "extraction", "text", "reference_cell_id", "memorized_against", "steps", "tfidf_n"):
        assert record[key] == expected[key], key
    assert set(arrays) == set(expected_arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, expected_arrays[name], err_msg=name)
    assert top == expected_top and top
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[n], expected_weights[n]) for n in weights)


def test_text_cells_in_one_pack_match_their_unpacked_runs(solo_sweep, tmp_path):
    solo_root, cfgs = solo_sweep
    for cfg in cfgs:
        with_solo_reference(solo_root, cfg, tmp_path)
    records = packed(cfgs, tmp_path)
    for cfg in cfgs:
        record, arrays, _, _ = outputs(tmp_path / cfg.cell_id)
        expected, expected_arrays, _, _ = outputs(solo_root / cfg.cell_id)
        assert record["pack"]["size"] == 2 and records[cfg.cell_id]["status"] == "done"
        assert record["steps"] == expected["steps"] and record["n_samples"] == cfg.data.n_samples
        for key in TEXT_FIELDS:
            assert record[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
        np.testing.assert_allclose(arrays["unintended_bits"], expected_arrays["unintended_bits"], rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(arrays["reference_train"], expected_arrays["reference_train"])


def test_a_text_cell_packs_only_once_its_reference_is_done_and_never_with_it(text_cache, tmp_path):
    """In plan order (the reference first), run_packed_cells trains the reference without its
    cells in its pack, then the cells together, measured against it."""
    cfgs = [text_cell("data.n_samples=32"), text_cell("data.n_samples=64")]  # one seed: one reference
    reference = cfgs[0].reference_config()
    assert cfgs[1].reference_config().cell_id == reference.cell_id
    dirs = []
    for cfg in (reference, *cfgs):
        save_cell_config(cfg, tmp_path / cfg.cell_id / CONFIG_FILE)
        dirs.append(str(tmp_path / cfg.cell_id))
    outcomes = run_packed_cells(dirs, size=3)
    assert list(outcomes.values()) == ["done"] * 3
    records = [json.loads((Path(d) / "result.json").read_text()) for d in dirs]
    assert records[0]["is_reference"] and records[0]["pack"]["cell_ids"] == [reference.cell_id]
    assert records[1]["pack"]["cell_ids"] == records[2]["pack"]["cell_ids"] == [c.cell_id for c in cfgs]
    assert all(r["reference_cell_id"] == reference.cell_id and r["unintended_bits"] > 0 for r in records[1:])


def test_a_text_cell_whose_reference_is_elsewhere_waits_and_one_whose_reference_failed_is_blocked(text_cache,
                                                                                                 tmp_path):
    waiting, blocked = text_cell("data.n_samples=32"), text_cell("data.n_samples=32", "data.pool_size=192")
    for cfg in (waiting, blocked):
        save_cell_config(cfg, tmp_path / cfg.cell_id / CONFIG_FILE)
        save_cell_config(cfg.reference_config(), tmp_path / cfg.reference_config().cell_id / CONFIG_FILE)
    ref_dir = tmp_path / waiting.reference_config().cell_id
    claim = CellClaim(ref_dir, 600)  # a live process trains the reference
    assert claim.acquire()
    write_json_atomic(ref_dir / "result.json", {"status": "running", "cell_id": ref_dir.name})
    failed_ref = tmp_path / blocked.reference_config().cell_id
    write_json_atomic(failed_ref / "result.json", {"status": "failed", "cell_id": failed_ref.name, "error": "boom"})
    outcomes = run_packed_cells([str(tmp_path / waiting.cell_id), str(tmp_path / blocked.cell_id)], size=2)
    assert outcomes == {str(tmp_path / waiting.cell_id): "waiting", str(tmp_path / blocked.cell_id): "blocked"}
    assert not (tmp_path / waiting.cell_id / "result.json").exists()
    assert not (tmp_path / blocked.cell_id / "result.json").exists()
    claim.release()


def test_the_pack_planner_never_packs_a_reference_with_the_cells_measured_against_it(tmp_path):
    plan = plan_sweep(["experiment=reproduce-text-quick"], tmp_path)
    packs = plan_packs(plan.cells, 4, "cpu", 1e11).packs
    assert packs, "the text grid's cells pack"
    for pack in packs:
        ids = {c.cell_id for c in pack.cells}
        for cell in pack.cells:
            reference = cell.config.reference_config().cell_id
            assert reference == cell.cell_id or reference not in ids  # a reference is its own
