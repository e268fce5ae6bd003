"""Checkpoints a cell resumes from: complete or absent, verified before use, newest valid wins.

A checkpoint is written under a temporary name, its SHA-256 is written beside the final name,
and only then is it renamed into place, so `step-N.ckpt` exists only when complete and its digest
says whether it is still intact. On resume the newest checkpoint whose digest matches is used; a
corrupt or partial one is reported and skipped in favour of the one before it (litgpt's
resume="auto", torchtitan's load_step=-1). A checkpoint whose digest matches but which does not
load (written by a broken writer, or not a checkpoint at all) is set aside the same way. Loading
is always `weights_only=True`: a checkpoint holds tensors and primitives only, so a planted
pickle cannot run code. DeepSpeed writes directories; those are verified by their completed
rename alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import warnings
from pathlib import Path

from typing import Callable

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from memsweep.record import fsync_dir

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.ckpt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DirectCheckpointIO(TorchCheckpointIO):
    """`torch.save` straight into the partial file that `save_checkpoint` renames into place.
    Lightning's default buffers the whole checkpoint in memory, writes it to the system temp dir
    (fsspec's local transaction) and copies it over: every checkpoint is written twice, twice the
    memory is needed, and a full /tmp fails the cell. memsweep's rename already makes it atomic."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with open(path, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())


REQUIRED_KEYS = ("state_dict", "optimizer_states", "global_step", "loops", "callbacks")
"""What a Lightning checkpoint of a cell must hold for the cell to resume from it."""


def _no_fence() -> None:
    return None


def save_checkpoint(trainer: L.Trainer, run_dir: Path, keep: int = 2, fence: Callable[[], None] = _no_fence) -> Path:
    """Checkpoint the trainer at its current step (call on every rank; rank 0 finalises).

    `fence` is called just before the checkpoint is put in place: it raises if this process no
    longer holds the cell, so a process that lost its claim never replaces the holder's files."""
    directory = checkpoint_dir(run_dir)
    final = directory / f"step-{trainer.global_step:09d}.ckpt"
    partial = directory / f".step-{trainer.global_step:09d}.partial"
    if trainer.is_global_zero:
        directory.mkdir(parents=True, exist_ok=True)
    trainer.strategy.barrier("memsweep-checkpoint-dir")
    trainer.save_checkpoint(partial, weights_only=False)  # the full state (optimizer, loops, callbacks)
    if trainer.is_global_zero:
        try:
            fence()
        except BaseException:
            _remove(partial)
            raise
        if partial.is_file():
            _digest_path(final).write_text(file_sha256(partial) + "\n")
        _remove(final)
        os.replace(partial, final)
        fsync_dir(directory)
        for old in checkpoints(run_dir)[keep:]:
            _remove(old)
            _digest_path(old).unlink(missing_ok=True)
    trainer.strategy.barrier("memsweep-checkpoint-done")
    return final


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoints, newest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=step_of, reverse=True)


def step_of(path: Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))


def is_intact(path: Path) -> bool:
    if path.is_dir():
        return True
    digest = _digest_path(path)
    return digest.exists() and digest.read_text().strip() == file_sha256(path)


def load_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be resumed from (None if it can): it must load with
    `weights_only=True` and hold every key Lightning restores from."""
    if path.is_dir():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a pickle with code in it, a truncated zip, not a checkpoint at all
        return f"does not load with weights_only=True ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    return f"lacks {', '.join(missing)}" if missing else None


def set_aside(path: Path, reason: str) -> Path:
    """Rename a checkpoint that cannot be used out of the resume order (kept for inspection)."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another rank of the same launch set it aside first
        return aside
    _digest_path(path).unlink(missing_ok=True)
    warnings.warn(f"memsweep: checkpoint {path} {reason}; set aside as {aside.name}, "
                  "falling back to the previous one", stacklevel=3)
    return aside


def newest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint that loads; corrupt ones are set aside with a warning."""
    for path in checkpoints(run_dir):
        try:
            intact = is_intact(path)
        except FileNotFoundError:  # set aside by another rank meanwhile
            continue
        if not intact:
            set_aside(path, "is corrupt or incomplete (digest mismatch)")
            continue
        problem = load_problem(path)
        if problem is None:
            return path
        set_aside(path, problem)
    return None


def clean_partials(run_dir: Path) -> None:
    """Remove partial checkpoints an interrupted save left behind (only the holder calls this)."""
    directory = checkpoint_dir(run_dir)
    if directory.is_dir():
        for partial in directory.glob(".step-*.partial"):
            _remove(partial)
