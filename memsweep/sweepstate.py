"""What state every cell of a sweep dir is in, read from the files alone, and its record as a row.

Why files alone: a sweep outlives the processes that queued it (`memsweep submit` exits at once),
so `status` and `collect` must work from any login node with nothing but the sweep dir: the plan
(sweep.json), each cell's result.json and the claim a running cell keeps alive with a heartbeat.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from memsweep.claim import CLAIM_FILE, claim_is_live, read_claim
from memsweep.record import RESULT_FILE, read_result
from memsweep.config import CONFIG_FILE
from memsweep.sweep import read_plan

STATES = ("done", "failed", "running", "stale", "preempted", "pending", "corrupt")
"""pending: no result yet; running: a live claim (or a running record without a claim);
stale: a dead claim and no final result (the process died); corrupt: unreadable result.json."""
SKIPPED_FIELDS = ("config", "traceback", "status", "cell_id")
"""Not in a collected row: the nested config (the cell id and overrides identify the cell), the
multi-line traceback (result.json keeps it) and the fields the row sets itself."""


@dataclass(frozen=True)
class CellState:
    cell_id: str
    cell_dir: Path
    state: str
    detail: str
    """failed: the first line of the error; running/stale: who holds the claim; else empty."""
    overrides: tuple[str, ...]
    record: dict[str, Any] | None


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}min" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def cell_state(cell_dir: Path, overrides: tuple[str, ...] = (), now: float | None = None) -> CellState:
    now = time.time() if now is None else now
    try:
        record = read_result(cell_dir)
    except ValueError as err:
        return CellState(cell_dir.name, cell_dir, "corrupt", str(err), overrides, None)
    status = (record or {}).get("status")
    claim = read_claim(cell_dir)
    holder = ""
    if claim is not None:
        job = f" job {claim['slurm_job_id']}" if claim.get("slurm_job_id") else ""
        holder = f"{claim.get('host')} pid {claim.get('pid')}{job}, heartbeat {_age(now - claim.get('heartbeat', 0))} ago"
    if status == "done":
        state, detail = "done", ""
    elif claim is not None and claim_is_live(claim, now):
        state, detail = "running", holder
    elif status == "failed":
        state, detail = "failed", (str(record.get("error", "")).strip().splitlines() or [""])[0]
    elif status == "preempted":
        state, detail = "preempted", ""
    elif claim is not None:
        state, detail = "stale", f"claim expired ({holder}); no result"
    elif status == "running":
        state, detail = "running", "no claim file: liveness unknown"
    elif record is None:
        state, detail = "pending", ""
    else:
        state, detail = "corrupt", f"unknown status {status!r}"
    return CellState(str((record or {}).get("cell_id", cell_dir.name)), cell_dir, state, detail, overrides, record)


def _hydra_overrides(cell_dir: Path) -> tuple[str, ...]:
    """A cell run by `memsweep-train -m` without a plan: Hydra records its overrides."""
    path = cell_dir / ".hydra" / "overrides.yaml"
    return tuple(OmegaConf.load(path)) if path.exists() else ()


def sweep_states(sweep_dir: Path, now: float | None = None) -> list[CellState]:
    """Every cell of a sweep: the planned ones in plan order, then any other cell dir (one with a
    result, a config or a claim, e.g. from a plain multirun), by name."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir) or {"cells": []}
    planned = {c["cell_id"]: tuple(c["overrides"]) for c in plan["cells"]}
    others = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and d.name not in planned
                    and any((d / f).exists() for f in (RESULT_FILE, CONFIG_FILE, CLAIM_FILE)))
    return [cell_state(sweep_dir / cell_id, planned.get(cell_id) or _hydra_overrides(sweep_dir / cell_id), now)
            for cell_id in [*planned, *others]]


def counts(states: list[CellState]) -> dict[str, int]:
    return {s: sum(c.state == s for c in states) for s in STATES}


def result_row(cell: CellState) -> dict[str, Any]:
    """One tidy row: cell id, state, sweep overrides, then result.json's fields, nested ones
    (versions) flattened to `versions.torch` etc."""
    row: dict[str, Any] = {"cell_id": cell.cell_id, "status": cell.state, "overrides": " ".join(cell.overrides)}
    for key, value in (cell.record or {}).items():
        if key in SKIPPED_FIELDS:
            continue
        if isinstance(value, dict):
            row.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif isinstance(value, list):
            row[key] = json.dumps(value)
        else:
            row[key] = value
    return row


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """CSV, or Parquet when `out` ends in .parquet (needs pyarrow)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError(f"writing {out.name} needs pyarrow (pip install pyarrow), or write .csv") from None
        pq.write_table(pa.Table.from_pylist(rows), out)
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
