"""A worker's walk over the plan with packing (`memsweep run --pack K`): claim up to K compatible
cells at a time and train them as one pack.

Same contract as memsweep.launcher.run_cells (outcomes per cell dir, CellsFailed at the end,
SystemExit after a signal), so memsweep.local_run uses either. Cells are taken in plan order:
the first claimable cell opens a pack and the next claimable cells of its pack key
(memsweep.pack.grouping) fill it, so concurrent workers share the cells out through their claims
alone. A cell that packs not (multi-device, DeepSpeed, ...) or that has Lightning checkpoints of an
unpacked run (resumed as it was started) runs unpacked, through run_cells. A text cell opens a pack
once its reference is done (training it first when nobody does, as run_cell_dir does) and joins one
only if its reference is done.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from memsweep.checkpoint import checkpoints
from memsweep.claim import CellClaim, ClaimLost
from memsweep.config import CONFIG_FILE, CellConfig, load_cell_config
from memsweep.console import emit
from memsweep.launcher import CellsFailed, _interrupted, run_cells
from memsweep.preemption import PreemptionFlag
from memsweep.record import RESULT_FILE, clean_temp_files, is_done, read_result, write_json_atomic
from memsweep.pack.checkpoint import clean_pack_partials, newest_cell_checkpoint
from memsweep.pack.grouping import pack_key
from memsweep.text.reference import ensure_reference, reference_is_done

Member = tuple[str, CellConfig, CellClaim]


def _packable(cell_dir: str) -> tuple[CellConfig, tuple] | None:
    """The cell's config and pack key, or None to run it unpacked (run_cell_dir reports a bad config)."""
    try:
        cfg = load_cell_config(Path(cell_dir) / CONFIG_FILE)
    except Exception:
        return None
    key = pack_key(cfg)
    return None if key is None or checkpoints(Path(cell_dir)) else (cfg, key)


def _claim(cell_dir: str, cfg: CellConfig) -> CellClaim | None:
    """The cell's claim, or None if another process holds it or finished the cell meanwhile."""
    claim = CellClaim(Path(cell_dir), cfg.trainer.lease_seconds)
    return claim if claim.acquire(finished=lambda: is_done(Path(cell_dir))) else None


def run_packed_cells(cell_dirs: list[str], size: int, planned: list[list[str]] | None = None) -> dict[str, str]:
    """Run the cell dirs, packable ones in packs of up to `size`; returns {cell dir: outcome}.
    `planned` (`run --pack auto`: memsweep.pack.plan's packs, lists of cell dirs) replaces `size`:
    a cell packs only with the claimable cells of its planned pack, and one in none trains unpacked."""
    if planned is None and size < 1:
        raise ValueError(f"a pack holds at least one cell, got {size}")
    outcomes: dict[str, str] = {}
    queue = list(cell_dirs)
    packable = {d: _packable(d) for d in queue}  # read once: a pack is filled from the rest of the queue
    sizes = dict.fromkeys(queue, size)
    if planned is not None:
        which = {d: i for i, pack in enumerate(planned) for d in pack}
        packable = {d: None if p is None or d not in which else (p[0], (p[1], which[d])) for d, p in packable.items()}
        sizes = {d: len(planned[which[d]]) if d in which else 1 for d in queue}
    with PreemptionFlag() as guard:
        while queue:
            if guard.requested:
                _interrupted(guard.signal_name, guard.wants_requeue, cell_dirs, outcomes)
            first = queue.pop(0)
            if is_done(Path(first)):
                outcomes[first] = "done"
                continue
            if packable[first] is None:
                try:
                    outcomes.update(run_cells([first], wait_for_reference=False))
                except CellsFailed as err:
                    outcomes[first] = f"failed: {err}"
                continue
            ready = ensure_reference(packable[first][0], Path(first), wait=False)
            if ready != "ready":  # run_cell_dir's outcomes: its reference failed, or another process trains it
                outcomes[first] = ready
                continue
            members = _fill(first, packable, queue, sizes[first])
            if not members:
                outcomes[first] = "claimed"
                continue
            records = train_members(members)
            outcomes.update({d: records[d] for d, _, _ in members})
            stopped = [outcomes[d] for d, _, _ in members if outcomes[d] in ("preempted", "interrupted")]
            if stopped:
                _interrupted(guard.signal_name, stopped[0] == "preempted", cell_dirs, outcomes)
    failed = {d: o for d, o in outcomes.items() if o.startswith("failed")}
    if failed:
        raise CellsFailed(f"{len(failed)} of {len(cell_dirs)} cells failed:\n"
                          + "\n".join(f"  {d}: {e}" for d, e in failed.items()))
    return outcomes


def _fill(first: str, packable: dict[str, tuple[CellConfig, tuple] | None], queue: list[str],
          size: int) -> list[Member]:
    """Claim `first`, then the next claimable cells of the same key (removed from the queue)
    whose reference, if they have one, is done: a text cell never waits in a pack, nor packs
    with the reference it is measured against."""
    cfg, key = packable[first]
    claim = _claim(first, cfg)
    if claim is None:
        return []
    members = [(first, cfg, claim)]
    for cell_dir in list(queue):
        if len(members) == size:
            break
        mate = packable[cell_dir]
        if mate is not None and mate[1] == key and reference_is_done(mate[0], Path(cell_dir)) \
                and (mate_claim := _claim(cell_dir, mate[0])):
            members.append((cell_dir, mate[0], mate_claim))
            queue.remove(cell_dir)
    return members


def train_members(members: list[Member]) -> dict[str, str]:
    """Prepare and train claimed cells as one pack; every claim is released with its cell's status."""
    from memsweep.pack.runner import PackRunner  # torch loads in the worker only

    outcomes: dict[str, str] = {}
    ids = {cfg.cell_id: d for d, cfg, _ in members}
    with PreemptionFlag() as flag:  # a signal during set-up is kept for the pack's first step
        try:
            cells = []
            for cell_dir, cfg, claim in members:
                try:
                    cells.append(_prepare(cell_dir, cfg, claim))
                except ClaimLost as lost:
                    emit(f"memsweep: {lost}")
                    outcomes[cell_dir] = "claim-lost"
                except Exception as err:
                    traceback.print_exc()
                    outcomes[cell_dir] = _record_failure(cell_dir, cfg, claim, err)
            if cells:
                runner = PackRunner(cells, flag)
                try:
                    runner.run()
                finally:
                    outcomes.update({ids[i]: o for i, o in runner.outcomes.items()})
        except Exception as err:
            traceback.print_exc()
            for cell_dir, _, _ in members:
                outcomes.setdefault(cell_dir, f"failed: {type(err).__name__}: {err}")
        finally:
            for cell_dir, _, claim in members:
                claim.release(final_status=outcomes.get(cell_dir, "unknown").split(":")[0])
    return outcomes


def _prepare(cell_dir: str, cfg: CellConfig, claim: CellClaim):
    """What run_cell does before training: clean up, a `running` record, the resources check,
    then the data, the cell's newest packed checkpoint (metrics after it dropped) and, for a text
    cell, its reference and pool check."""
    from memsweep.cell import base_record, start_text_cell, truncate_metrics
    from memsweep.pack.monitor import PackedCell
    from memsweep.preflight import check_resources

    path = Path(cell_dir)
    previous = read_result(path)
    claim.check()
    clean_temp_files(path)
    clean_pack_partials(path)
    write_json_atomic(path / RESULT_FILE, base_record(cfg))
    check_resources(cfg, path)
    cell = PackedCell(cfg, path, claim)
    state = newest_cell_checkpoint(path)
    truncate_metrics(path, state["step"] if state else None)
    cell.reference = start_text_cell(cfg, path, cell.tokens, previous, state is not None, claim)
    if state is not None:
        cell.load_state_dict(state)
    return cell


def _record_failure(cell_dir: str, cfg: CellConfig, claim: CellClaim, err: Exception) -> str:
    from memsweep.cell import base_record

    error = f"{type(err).__name__}: {err}"
    try:
        claim.check()
        write_json_atomic(Path(cell_dir) / RESULT_FILE, {**base_record(cfg), "status": "failed", "error": error,
                                                          "traceback": traceback.format_exc()})
    except ClaimLost:
        return "claim-lost"
    return f"failed: {error}"
