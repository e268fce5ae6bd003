"""Time to capacity: memorized bits against training tokens for trainer.schedule=wsd cells.

A wsd cell measures its memorized bits after every decay branch (docs/recipe.md, "Saturation"):
those decayed points are the curve that says how far a cell is from its plateau, the constant-LR
run between them carries optimizer noise. Where memorization grows by b bits per doubling of the
tokens, a target T is reached after about 2^((T - M_last) / b) times the last point's tokens;
that holds only while b does not fall, so the report says whether the measured b falls.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis.paper import TABLE1

METRICS_FILE = "metrics.csv"


def decayed_points(cells: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """One row per decay (branch or final) of each wsd cell: tokens behind the decayed model
    (stable plus decay steps, at the cell's tokens per step from its metrics.csv), its memorized
    bits and bits/param, and the gain per doubling the saturation rule measured."""
    rows = []
    for cell in cells.itertuples(index=False):
        entries = json.loads(getattr(cell, "growth_per_doubling", None) or "[]")
        main = _main_run(Path(sweep_dir) / cell.cell_id / METRICS_FILE) if entries else None
        if main is None or main.empty or main["step"].iloc[-1] <= 0:
            continue
        tokens_per_step = main["tokens_seen"].iloc[-1] / main["step"].iloc[-1]  # global batch x S
        for e in entries:
            rows.append({"cell_id": cell.cell_id, "model": cell.model, "precision": cell.precision,
                         "n_samples": cell.n_samples, "n_params": cell.n_params, "seed": cell.seed,
                         "overrides": getattr(cell, "overrides", ""), "stable_steps": e["step"], "decay_steps": e["decay_steps"],
                         "tokens": (e["step"] + e["decay_steps"]) * tokens_per_step,
                         "memorized_bits": e["memorized_bits"],
                         "bits_per_param": e["memorized_bits"] / cell.n_params,
                         "gain_per_doubling": e.get("gain_per_doubling"), "final": bool(e.get("final"))})
    return pd.DataFrame(rows)


def stable_curves(cells: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """The constant-LR run of each wsd cell between its decays (metrics.csv rows of the main run)."""
    frames = []
    for cell in cells.itertuples(index=False):
        main = (_main_run(Path(sweep_dir) / cell.cell_id / METRICS_FILE)
                if json.loads(getattr(cell, "growth_per_doubling", None) or "[]") else None)
        if main is None or main.empty:
            continue
        frames.append(pd.DataFrame({"cell_id": cell.cell_id, "model": cell.model, "precision": cell.precision,
                                    "n_samples": cell.n_samples, "tokens": main["tokens_seen"],
                                    "memorized_bits": main["memorized_bits"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _main_run(path: Path) -> pd.DataFrame | None:
    """metrics.csv's evaluations of the main run (not its decay branches), or None without one."""
    if not path.exists():
        return None
    metrics = pd.read_csv(path).dropna(subset=["memorized_bits"])
    if "branch_steps" in metrics:
        metrics = metrics[metrics["branch_steps"].fillna(0) == 0]
    return metrics


def growth_laws(points: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell with >= 2 decayed points: b, the bits gained per doubling of tokens between its
    last two decays and over all of them (least squares on log2 tokens), whether b falls, and
    the tokens at which the last b would reach Table 1's value for the same config."""
    rows = []
    for cell_id, p in points.groupby("cell_id", sort=False):
        p = p.sort_values("tokens")
        if len(p) < 2:
            continue
        x, y = np.log2(p["tokens"].to_numpy()), p["memorized_bits"].to_numpy()
        last = (y[-1] - y[-2]) / (x[-1] - x[-2])
        slopes = np.diff(y) / np.diff(x)
        cell = cells.loc[cells["cell_id"] == cell_id].iloc[0]
        target = _table1_bits_per_param(cell)
        ratio = slopes[-1] / slopes[-2] if len(slopes) >= 2 and slopes[-2] > 0 else None
        plateau = y[-1] + slopes[-1] * ratio / (1 - ratio) if ratio is not None and 0 < ratio < 1 else None
        row = {"cell_id": cell_id, "model": cell["model"], "precision": cell["precision"],
               "overrides": cell.get("overrides", ""),
               "n_samples": int(cell["n_samples"]), "n_params": int(cell["n_params"]), "n_decays": len(p),
               "last_tokens": p["tokens"].iloc[-1], "last_bits_per_param": y[-1] / cell["n_params"],
               "bits_per_doubling_last": last, "bits_per_doubling_fit": float(np.polyfit(x, y, 1)[0]),
               "per_doubling_falls": bool(len(slopes) >= 2 and slopes[-1] < slopes[-2]),
               "gain_ratio": ratio,
               "plateau_bits_per_param": plateau / cell["n_params"] if plateau is not None else None,
               "table1_bits_per_param": target, "tokens_to_table1": None, "doublings_to_table1": None}
        if target is not None and last > 0:
            doublings = max(0.0, (target * cell["n_params"] - y[-1]) / last)
            row["doublings_to_table1"] = doublings
            row["tokens_to_table1"] = p["tokens"].iloc[-1] * 2.0 ** doublings
        rows.append(row)
    return pd.DataFrame(rows)


def _table1_bits_per_param(cell: pd.Series) -> float | None:
    if cell["vocab_size"] != 2048 or cell["seq_len"] != 64 or cell["precision"] not in ("fp32", "bf16"):
        return None
    row = TABLE1[(TABLE1["n_layer"] == cell["n_layer"]) & (TABLE1["d_model"] == cell["d_model"])]
    return float(row[f"alpha_{cell['precision']}"].iloc[0]) if len(row) else None


def growth_lines(laws: pd.DataFrame) -> list[str]:
    """One sentence per cell: the measured growth, and what it implies, with its assumption."""
    lines = []
    labels = _distinguishing(laws["overrides"].fillna("").astype(str).tolist()) if len(laws) else []
    for law, label in zip(laws.itertuples(index=False), labels):
        text = (f"{law.model} {law.precision} N = {law.n_samples:,}{f' ({label})' if label else ''}: "
                f"{law.last_bits_per_param:.2f} bits/param after "
                f"{law.last_tokens:.3g} tokens ({law.n_decays} decays), gaining {law.bits_per_doubling_last:,.0f} bits "
                f"({law.bits_per_doubling_last / law.n_params:.3f} bits/param) per doubling of tokens at the last "
                f"decay ({law.bits_per_doubling_fit:,.0f} fitted over all)")
        if law.doublings_to_table1 is not None and not math.isnan(law.doublings_to_table1):
            text += (f"; at that rate Table 1's {law.table1_bits_per_param:.2f} needs {law.doublings_to_table1:.1f} more "
                     f"doublings ({law.tokens_to_table1:.3g} tokens)")
            text += (", and since the gain per doubling is falling that is a lower bound on the tokens"
                     if law.per_doubling_falls else "")
        if law.plateau_bits_per_param is not None and not math.isnan(law.plateau_bits_per_param):
            text += (f"; the gain per doubling shrank by {law.gain_ratio:.2f}x at the last doubling, and if it keeps "
                     f"shrinking so the curve levels off at {law.plateau_bits_per_param:.2f} bits/param (a projection)")
        lines.append(text + ".")
    return lines


def _distinguishing(overrides: list[str]) -> list[str]:
    """Each cell's sweep overrides less those every cell shares: what sets it apart (a variant)."""
    tokens = [line.split() for line in overrides]
    shared = set.intersection(*map(set, tokens)) if tokens else set()
    return [" ".join(t for t in line if t not in shared) for line in tokens]
