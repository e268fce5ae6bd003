"""A sweep dir as one tidy table of finished cells, plus the list of what is not finished.

The per-cell files are the source of truth (result.json, per_sample_nll_bits.npz); this module
only reads them. A cell that is not done (pending, running, failed, ...) is not an error: it is
listed, so a partial sweep gives a partial report that says what is missing.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis.capacity import model_label
from memsweep.analysis.membership import loss_threshold_attack
from memsweep.cell import PER_SAMPLE_FILE
from memsweep.sweepstate import CellState, result_row, sweep_states

NEEDED_NUMBERS = ("n_params", "n_samples", "n_layer", "d_model", "n_head", "vocab_size", "seq_len", "seed",
                  "memorized_bits", "dataset_bits", "test_loss", "train_loss")
"""The numbers of a done record the report computes with (capacity, fits, double descent)."""
MAY_BE_NAN = ("test_loss", "train_loss")
"""A diverged cell's losses (null in JSON, which has no NaN); every other needed number is finite."""
OPTIONAL_NUMBERS = ("tokens_per_sec", "world_size")
"""Throughput: may be absent (null), but a number when present."""
TEXT_NUMBERS = ("unintended_bits", "total_memorized_bits", "generalization_bits", "n_memorized_samples",
                "reference_bits", "tfidf_spearman", "tfidf_spearman_p", "tfidf_n")
"""Text records' measures (memsweep.text.measure): may be absent (null), but a number when present."""
TEXT_MAPPINGS = ("text", "extraction")
"""Text records' nested fields the report reads (the pool, extraction per prefix): objects when present."""


@dataclass(frozen=True)
class SweepCells:
    done: pd.DataFrame
    """One row per finished cell: result.json's fields, the model label and the attack's scores."""
    missing: list[CellState]
    """Every cell that is not done, with its state and detail; a done cell whose record the
    report cannot use is here as `corrupt`."""


def _is_number(value: object, finite: bool = True) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def check_done_record(record: dict) -> None:
    """Raise ValueError saying why a done record cannot go into the report (a hand-edited or
    foreign result.json): the report would otherwise fail on it, far from the cause."""
    lacking = [k for k in (*NEEDED_NUMBERS, "precision")
               if k not in record or (record[k] is None and k not in MAY_BE_NAN)]
    if lacking:
        raise ValueError(f"done record lacks fields: {', '.join(lacking)}")
    bad = [k for k in NEEDED_NUMBERS if not (record[k] is None and k in MAY_BE_NAN)
           and not _is_number(record[k], finite=k not in MAY_BE_NAN)]
    bad += [k for k in (*OPTIONAL_NUMBERS, *TEXT_NUMBERS) if record.get(k) is not None and not _is_number(record[k])]
    bad += [k for k in TEXT_MAPPINGS if record.get(k) is not None and not isinstance(record[k], dict)]
    if isinstance(record.get("extraction"), dict) and not all(isinstance(v, dict) for v in record["extraction"].values()):
        bad.append("extraction")
    bad += [] if isinstance(record["precision"], str) else ["precision"]
    if bad:
        raise ValueError(f"done record has invalid values: {', '.join(f'{k}={record[k]!r}' for k in bad)}")


def membership_scores(cell_dir: Path, seed: int) -> dict[str, float]:
    """The loss-threshold attack on one cell's final per-sample NLLs; empty if the cell kept none.
    Raises ValueError naming the file if it cannot be read."""
    path = Path(cell_dir) / PER_SAMPLE_FILE
    if not path.exists():
        return {}
    try:
        with np.load(path) as nll:
            if "train" not in nll or "heldout" not in nll or min(len(nll["train"]), len(nll["heldout"])) < 4:
                return {}
            attack = loss_threshold_attack(nll["train"], nll["heldout"], seed=seed)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is corrupt ({type(err).__name__}: {err})") from None
    return {"mi_f1": attack.f1, "mi_f1_oracle": attack.f1_oracle, "mi_auc": attack.auc,
            "mi_threshold_bits": attack.threshold_bits, "mi_n_per_class": attack.n_per_class}


def _done_row(state: CellState) -> dict:
    check_done_record(state.record)
    return {**result_row(state), **membership_scores(state.cell_dir, seed=int(state.record["seed"]))}


def load_sweep(sweep_dir: Path) -> SweepCells:
    """The done cells as a table; the rest, and done cells with an unusable record, as missing."""
    rows, missing = [], []
    for state in sweep_states(Path(sweep_dir)):
        if state.state == "done":
            try:
                rows.append(_done_row(state))
                continue
            except ValueError as err:
                state = replace(state, state="corrupt", detail=str(err))
        missing.append(state)
    done = pd.DataFrame(rows)
    if not done.empty:
        done = done.astype({k: float for k in MAY_BE_NAN})  # a null loss is NaN, even in every cell
        done["model"] = done.apply(model_label, axis=1)
        done["samples_per_param"] = done["n_samples"] / done["n_params"]
    return SweepCells(done, missing)
