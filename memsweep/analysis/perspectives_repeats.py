"""Scores by how often a row was seen per epoch (memsweep cells trained with data.repeat_counts).

Chen et al. analyse Pythia, whose data repeats; on deduplicated text a small model memorizes few
rows. A memsweep ladder plants repetition at known counts, and this table says how the score
grows with the count, per model size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.cell import PER_SAMPLE_FILE


def row_repeat_counts(source: str) -> np.ndarray | None:
    """The per-row repeat counts a memsweep cell recorded, or None (no repetition, or not a cell)."""
    path = Path(source) / PER_SAMPLE_FILE
    if not path.exists():
        return None
    with np.load(path) as arrays:
        return arrays["repeat_count"].copy() if "repeat_count" in arrays else None


def scores_by_repeat_count(sets, models: pd.DataFrame) -> pd.DataFrame:
    """Per model and repeat count: rows, mean score, share fully memorized (score 1)."""
    sources = dict(zip(models["name"], models["source"]))
    rows = []
    for s in sets:
        counts = row_repeat_counts(str(sources.get(s.model, "")))
        if counts is None:
            continue
        seen = counts[s.idx]
        for count in np.unique(seen):
            scores = s.score[seen == count]
            rows.append({"model": s.model, "n_params": s.n_params, "repeat_count": int(count), "n_rows": len(scores),
                         "mean_score": float(scores.mean()), "fully_memorized_share": float((scores == 1).mean())})
    return pd.DataFrame(rows, columns=["model", "n_params", "repeat_count", "n_rows", "mean_score",
                                       "fully_memorized_share"])


def repeat_words(table: pd.DataFrame) -> list[str]:
    lines = []
    for model, g in table.groupby("model", sort=False):
        g = g.sort_values("repeat_count")
        lines.append(f"{model}: fully memorized share by times seen per epoch: "
                     + ", ".join(f"{r.repeat_count}× {r.fully_memorized_share:.0%} ({r.n_rows} rows)"
                                 for r in g.itertuples()) + ".")
    return lines
