"""What state every cell of a sweep dir is in, read from the files alone, and its record as a row.

Why files alone: a sweep outlives the processes that queued it (`memsweep submit` exits at once),
so `status` and `collect` must work from any login node with nothing but the sweep dir: the plan
(sweep.json), each cell's result.json and the claim a running cell keeps alive with a heartbeat.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memsweep.claim import CLAIM_DIR, UNREADABLE_GRACE_SECONDS, claim_is_live, read_claim
from memsweep.config import CONFIG_FILE
from memsweep.record import RESULT_FILE, read_result
from memsweep.sweep import SWEEP_FILE, SweepDirError, read_plan

STATES = ("done", "failed", "running", "interrupted", "preempted", "stale", "pending", "blocked", "corrupt")
"""running: a live claim, nothing else; interrupted (SIGINT/SIGTERM, a lost claim) and preempted
(requeued): stopped with a checkpoint, resumable; stale: the process is gone without a final
record; pending: never started; blocked: never started because the reference cell it is measured
against failed (text); corrupt: a file that cannot be read (the detail says which)."""
SKIPPED_FIELDS = ("config", "traceback", "status", "cell_id", "detail")
"""Not in a collected row: the nested config (the cell id and overrides identify the cell), the
multi-line traceback (result.json keeps it) and the fields the row sets itself."""


@dataclass(frozen=True)
class CellState:
    cell_id: str
    cell_dir: Path
    state: str
    detail: str
    """failed: the first line of the error; running/stale: who holds the claim; corrupt: what is
    wrong; interrupted/preempted: why it stopped."""
    overrides: tuple[str, ...]
    record: dict[str, Any] | None


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}min" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _holder(claim: dict[str, Any], now: float) -> str:
    job = f" job {claim['slurm_job_id']}" if claim.get("slurm_job_id") else ""
    try:
        beat = f"heartbeat {_age(now - float(claim['heartbeat']))} ago"
    except (KeyError, TypeError, ValueError):
        beat = "no heartbeat"
    return f"{claim.get('host')} pid {claim.get('pid')}{job}, {beat}, generation {claim['generation']}"


def _beating(claim: dict[str, Any], now: float) -> bool:
    try:
        return now - float(claim["heartbeat"]) <= float(claim["lease_seconds"])
    except (KeyError, TypeError, ValueError):
        return False


def _dead_claim(claim: dict[str, Any] | None, now: float) -> str:
    """Why a claim that is not live is dead (or that there is none)."""
    if claim is None:
        return "no claim"
    why = "released" if claim.get("released") else "expired" if not _beating(claim, now) else "holder process gone"
    return f"claim {why} ({_holder(claim, now)})"


def cell_state(cell_dir: Path, overrides: tuple[str, ...] = (), now: float | None = None) -> CellState:
    """The state of one cell by the rules in STATES' doc; never raises on a malformed file."""
    now = time.time() if now is None else now

    def state(name: str, detail: str = "", record: dict[str, Any] | None = None) -> CellState:
        return CellState(cell_dir.name, cell_dir, name, detail, overrides, record)

    try:
        record = read_result(cell_dir)
    except ValueError as err:
        return state("corrupt", str(err))
    status = (record or {}).get("status")
    if status == "done":
        return state("done", "", record)
    try:
        claim = read_claim(cell_dir)
    except OSError as err:  # read_claim lets a permission error through
        return state("corrupt", f"cannot read {cell_dir / CLAIM_DIR} ({err.strerror or err})", record)
    if claim is not None and "unreadable" in claim and claim_is_live(claim, now):
        # What claims do too: presumed live for a grace period after its last change, then dead.
        path = cell_dir / CLAIM_DIR / f"{claim['generation']:09d}.json"
        return state("running", f"{path} is unreadable ({claim['unreadable']}); presumed live for "
                                f"{UNREADABLE_GRACE_SECONDS:.0f} s after its last change", record)
    if claim is not None and claim_is_live(claim, now):
        return state("running", _holder(claim, now), record)
    if status == "failed":
        return state("failed", (str(record.get("error", "")).strip().splitlines() or [""])[0], record)
    if status in ("interrupted", "preempted"):
        why = record.get("stop_cause") or record.get("signal")
        return state(status, f"resumable; stopped by {why}" if why else "resumable", record)
    if status == "running":
        return state("stale", f"process gone: {_dead_claim(claim, now)}; result.json still says running", record)
    if claim is not None:
        return state("stale", f"process gone: {_dead_claim(claim, now)}; no result.json")
    blocker = reference_blocker(cell_dir, now)
    return state("blocked", blocker) if blocker else state("pending")


def reference_blocker(cell_dir: Path, now: float | None = None) -> str | None:
    """Why a cell cannot run: its reference cell (a sibling dir) failed or is corrupt; None if it
    has no reference, or one that is done or can still run."""
    from memsweep.config import ConfigError, load_cell_config

    try:
        if "kind: text" not in (cell_dir / CONFIG_FILE).read_text():
            return None  # a uniform cell: no reference, and no config parse per pending cell
        cfg = load_cell_config(cell_dir / CONFIG_FILE)
    except (ConfigError, OSError, ValueError):
        return None  # a cell without a readable config is reported by whoever runs it
    reference = cfg.reference_config()
    if reference is None or reference.cell_id == cfg.cell_id:
        return None
    ref = cell_state(cell_dir.parent / reference.cell_id, now=now)
    if ref.state in ("failed", "corrupt", "blocked"):
        return f"reference cell {reference.cell_id} {ref.state}: {ref.detail}"
    return None


def _hydra_overrides(cell_dir: Path) -> tuple[str, ...]:
    """A cell run by `memsweep-train -m` without a plan: Hydra records its overrides (a list);
    an unreadable file only loses the overrides column."""
    try:
        overrides = yaml.safe_load((cell_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return ()
    return tuple(map(str, overrides)) if isinstance(overrides, list) else ()


def _is_cell_dir(path: Path) -> bool:
    """A directory with a result, a config or claims; one that cannot be looked into counts if it
    is named like a cell (it is then reported corrupt, with the error)."""
    try:
        return path.is_dir() and any((path / f).exists() for f in (RESULT_FILE, CONFIG_FILE, CLAIM_DIR))
    except OSError:
        return bool(re.fullmatch(r"[0-9a-f]{12}", path.name))


def _not_a_sweep_dir(sweep_dir: Path, why: str) -> SweepDirError:
    """The error for a path that holds no sweep, with close sibling names for a mistyped one."""
    try:
        siblings = [d.name for d in sweep_dir.parent.iterdir() if d.is_dir() and d.name != sweep_dir.name]
    except OSError:
        siblings = []
    close = difflib.get_close_matches(sweep_dir.name, siblings, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(str(sweep_dir.parent / c) for c in close)}?" if close else ""
    return SweepDirError(f"{sweep_dir} is not a sweep dir: {why}{hint}")


def sweep_states(sweep_dir: Path, now: float | None = None) -> list[CellState]:
    """Every cell of a sweep: the planned ones in plan order, then any other cell dir (one with a
    result, a config or claims, e.g. from a plain multirun), by name. Raises SweepDirError for
    a path that is no sweep dir or a malformed sweep.json; a malformed cell is `corrupt`."""
    sweep_dir = Path(sweep_dir)
    try:
        if not sweep_dir.exists():
            raise _not_a_sweep_dir(sweep_dir, "no such directory")
        if not sweep_dir.is_dir():
            raise _not_a_sweep_dir(sweep_dir, "a file, not a directory")
        plan = read_plan(sweep_dir)
        planned = {c["cell_id"]: tuple(c["overrides"]) for c in (plan or {"cells": []})["cells"]}
        others = sorted(name for name in os.listdir(sweep_dir)
                        if name not in planned and _is_cell_dir(sweep_dir / name))
    except OSError as err:
        raise SweepDirError(f"cannot read sweep dir {sweep_dir}: {err.strerror or err}") from None
    if plan is None and not others:
        raise _not_a_sweep_dir(sweep_dir, f"no {SWEEP_FILE} and no cell dirs")
    return [cell_state(sweep_dir / cell_id, planned.get(cell_id) or _hydra_overrides(sweep_dir / cell_id), now)
            for cell_id in [*planned, *others]]


def counts(states: list[CellState]) -> dict[str, int]:
    return {s: sum(c.state == s for c in states) for s in STATES}


def result_row(cell: CellState) -> dict[str, Any]:
    """One tidy row: cell id, state, sweep overrides, then result.json's fields, nested ones
    (versions) flattened to `versions.torch` etc."""
    row: dict[str, Any] = {"cell_id": cell.cell_id, "status": cell.state, "detail": cell.detail,
                           "overrides": " ".join(cell.overrides)}
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
