"""A sweep dir as one tidy table of finished cells, plus the list of what is not finished.

The per-cell files are the source of truth (result.json, per_sample_nll_bits.npz); this module
only reads them. A cell that is not done (pending, running, failed, ...) is not an error: it is
listed, so a partial sweep gives a partial report that says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis.capacity import model_label
from memsweep.analysis.membership import loss_threshold_attack
from memsweep.cell import PER_SAMPLE_FILE
from memsweep.sweepstate import CellState, result_row, sweep_states


@dataclass(frozen=True)
class SweepCells:
    done: pd.DataFrame
    """One row per finished cell: result.json's fields, the model label and the attack's scores."""
    missing: list[CellState]
    """Every cell that is not done, with its state and detail."""


def membership_scores(cell_dir: Path, seed: int) -> dict[str, float]:
    """The loss-threshold attack on one cell's final per-sample NLLs; empty if the cell kept none."""
    path = Path(cell_dir) / PER_SAMPLE_FILE
    if not path.exists():
        return {}
    with np.load(path) as nll:
        if "train" not in nll or "heldout" not in nll or min(len(nll["train"]), len(nll["heldout"])) < 4:
            return {}
        attack = loss_threshold_attack(nll["train"], nll["heldout"], seed=seed)
    return {"mi_f1": attack.f1, "mi_f1_oracle": attack.f1_oracle, "mi_auc": attack.auc,
            "mi_threshold_bits": attack.threshold_bits, "mi_n_per_class": attack.n_per_class}


def load_sweep(sweep_dir: Path) -> SweepCells:
    states = sweep_states(Path(sweep_dir))
    rows = []
    for state in states:
        if state.state != "done":
            continue
        row = result_row(state)
        row.update(membership_scores(state.cell_dir, seed=int(row.get("seed", 0))))
        rows.append(row)
    done = pd.DataFrame(rows)
    if not done.empty:
        done["model"] = done.apply(model_label, axis=1)
        done["samples_per_param"] = done["n_samples"] / done["n_params"]
    return SweepCells(done, [s for s in states if s.state != "done"])
