"""The reference cell a text cell is measured against, and the order the two must run in.

Morris et al. (section 4) measure a text model's unintended memorization of a sample against a
reference: the model of the same size trained on the whole dataset. In memsweep that reference is
just another cell (`CellConfig.reference_config`: the same config with N = the training pool), in
a sibling directory of the cell (`<sweep dir>/<reference id>`), so a sweep trains each reference
once and every cell of that model reads its per-sample NLLs. A cell needs its reference done
before it starts; whoever runs a cell whose reference has not run trains the reference first.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from memsweep.config import CONFIG_FILE, CellConfig, save_cell_config
from memsweep.console import emit

WAIT_POLL_SECONDS = 10.0


class ReferenceUnavailable(RuntimeError):
    """The reference cell failed, is corrupt, or does not match the cell (another corpus)."""


def reference_dir(cfg: CellConfig, cell_dir: Path) -> Path | None:
    """Where the reference of `cfg` lives, or None when the cell needs none (or is its own)."""
    reference = cfg.reference_config()
    if reference is None or reference.cell_id == cfg.cell_id:
        return None
    return Path(cell_dir).parent / reference.cell_id


def reference_is_done(cfg: CellConfig, cell_dir: Path) -> bool:
    """Whether the cell can start now, neither waiting for its reference nor training it (a
    cell that needs none can): what a pack asks of the cells it takes in beside its first."""
    from memsweep.sweepstate import cell_state

    ref_dir = reference_dir(cfg, cell_dir)
    return ref_dir is None or cell_state(ref_dir).state == "done"


def ensure_reference(cfg: CellConfig, cell_dir: Path, wait: bool = True) -> str:
    """Make sure the reference of `cfg` is done before the cell trains: `ready` (done, or none
    needed), `blocked` (it failed or is corrupt: the detail is in the sweep's status) or, with
    wait=False, `waiting` (another live process is training it). A reference that nobody runs is
    trained here, in this process, first."""
    from memsweep.sweepstate import cell_state

    ref_dir = reference_dir(cfg, cell_dir)
    if ref_dir is None:
        return "ready"
    reference = cfg.reference_config()
    while True:
        state = cell_state(ref_dir).state
        if state == "done":
            return "ready"
        if state in ("failed", "corrupt", "blocked"):
            return "blocked"
        if state == "running":
            if not wait:
                return "waiting"
            emit(f"memsweep: cell {cfg.cell_id} waits for its reference cell {reference.cell_id} "
                 f"(trained by another process in {ref_dir})", sys.stdout)
            time.sleep(WAIT_POLL_SECONDS)
            continue
        from memsweep.cell import run_cell_dir  # the reference is a cell like any other

        if not (ref_dir / CONFIG_FILE).exists():
            save_cell_config(reference, ref_dir / CONFIG_FILE)
        emit(f"memsweep: training the reference cell {reference.cell_id} (N = {reference.data.n_samples:,}, "
             f"the whole training pool) before cell {cfg.cell_id}", sys.stdout)
        record = run_cell_dir(ref_dir)
        if record["status"] not in ("done", "claimed"):
            return "blocked" if record["status"] == "failed" else record["status"]


def reference_nll_bits(cfg: CellConfig, cell_dir: Path, pool_sha256: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(the reference's record, its per-sample NLL bits of this cell's training and held-out
    sequences). Training rows are a prefix of the pool, so the cell's N rows are the first N of
    the reference's; the same holds for the held-out rows. Refuses a reference that saw another
    pool (another corpus text, tokenizer or split) or another tokenizer."""
    from memsweep.cell import PER_SAMPLE_FILE
    from memsweep.record import read_result

    ref_dir = reference_dir(cfg, cell_dir)
    if ref_dir is None:
        raise ValueError(f"cell {cfg.cell_id} has no reference (it is its own, or data.reference=none)")
    record = read_result(ref_dir)
    if not record or record.get("status") != "done":
        raise ReferenceUnavailable(f"reference cell {ref_dir.name} is not done ({ref_dir})")
    if record.get("text", {}).get("pool_sha256") != pool_sha256:
        raise ReferenceUnavailable(
            f"reference cell {ref_dir.name} was trained on another pool ({record.get('text', {}).get('pool_sha256')}, "
            f"this cell's is {pool_sha256}): the corpus text or tokenizer changed between them; retrain the reference")
    with np.load(ref_dir / PER_SAMPLE_FILE) as nll:
        train, heldout = nll["train"], nll["heldout"]
    d = cfg.data
    if len(train) < d.n_samples or len(heldout) < d.n_heldout:
        raise ReferenceUnavailable(f"reference cell {ref_dir.name} has NLLs of {len(train)} training and "
                                   f"{len(heldout)} held-out sequences; this cell needs {d.n_samples} and {d.n_heldout}")
    return record, {"train": train[: d.n_samples].copy(), "heldout": heldout[: d.n_heldout].copy()}
