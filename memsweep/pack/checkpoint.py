"""A packed cell's checkpoints: its own slice of the pack's state, in its own cell dir.

Why one file per cell rather than one per pack: each cell's state (weights, AdamW moments and
step, rounding stream, schedule, saturation history, timers; for a wsd cell in a decay branch,
the branch's progress and slice beside the stable state at its start) is independent of its
pack-mates, so a cell resumes from its own step in any pack, of any size or composition, and
each file is fenced by that cell's own claim. The pack checkpoints all its cells at the same moments.

They live in `<cell>/pack-checkpoints/`, apart from the Lightning checkpoints of an unpacked run
(`checkpoints/`), which they do not resemble: an unpacked run never mistakes one for a corrupt
Lightning checkpoint, and a packed run never resumes a Lightning one (memsweep.pack.launch runs
such a cell unpacked); an unpacked run of a cell with packed checkpoints only resumes it as a
pack of one (memsweep.cell.run_cell_dir), bit for bit the unpacked cell, so no steps are lost.
Written, digested and renamed into place as memsweep.checkpoint does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from memsweep.checkpoint import _digest_path, file_sha256, is_intact, set_aside, step_of
from memsweep.record import fsync_dir

PACK_CHECKPOINT_DIR = "pack-checkpoints"
FORMAT = "memsweep-packed-cell-1"
REQUIRED_KEYS = ("format", "step", "model", "optimizer", "lr_schedule", "monitor", "timer")


def pack_checkpoint_dir(cell_dir: Path) -> Path:
    return Path(cell_dir) / PACK_CHECKPOINT_DIR


def pack_checkpoints(cell_dir: Path) -> list[Path]:
    """Completed packed-cell checkpoints, newest first."""
    directory = pack_checkpoint_dir(cell_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.name.startswith("step-") and p.name.endswith(".ckpt")]
    return sorted(found, key=step_of, reverse=True)


def save_cell_checkpoint(cell_dir: Path, state: dict[str, Any], keep: int, fence: Callable[[], None]) -> Path:
    """Write one cell's state at its step; `fence` (the cell's claim check) runs before the rename."""
    directory = pack_checkpoint_dir(cell_dir)
    directory.mkdir(parents=True, exist_ok=True)
    step = state["step"]
    final, partial = directory / f"step-{step:09d}.ckpt", directory / f".step-{step:09d}.partial"
    with open(partial, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        fence()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _digest_path(final).write_text(file_sha256(partial) + "\n")
    os.replace(partial, final)
    fsync_dir(directory)
    for old in pack_checkpoints(cell_dir)[keep:]:
        old.unlink(missing_ok=True)
        _digest_path(old).unlink(missing_ok=True)
    return final


def newest_cell_checkpoint(cell_dir: Path) -> dict[str, Any] | None:
    """The state of the newest intact checkpoint that loads; bad ones are set aside with a warning."""
    for path in pack_checkpoints(cell_dir):
        if not is_intact(path):
            set_aside(path, "is corrupt or incomplete (digest mismatch)")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            set_aside(path, f"does not load with weights_only=True ({type(err).__name__})")
            continue
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing or state["format"] != FORMAT:
            set_aside(path, f"is not a {FORMAT} checkpoint (lacks {', '.join(missing) or 'the format'})")
            continue
        return state
    return None


def clean_pack_partials(cell_dir: Path) -> None:
    """Remove the partial checkpoints an interrupted save left (only the holder calls this)."""
    directory = pack_checkpoint_dir(cell_dir)
    if directory.is_dir():
        for partial in directory.glob(".step-*.partial"):
            partial.unlink(missing_ok=True)
