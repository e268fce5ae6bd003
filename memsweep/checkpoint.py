"""Checkpoints a cell resumes from: complete or absent, verified before use, newest valid wins.

A checkpoint is written under a temporary name, its SHA-256 is written beside the final name,
and only then is it renamed into place, so `step-N.ckpt` exists only when complete and its digest
says whether it is still intact. On resume the newest checkpoint whose digest matches is used; a
corrupt or partial one is reported and skipped in favour of the one before it (litgpt's
resume="auto", torchtitan's load_step=-1). DeepSpeed writes directories; those are verified by
their completed rename alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import warnings
from pathlib import Path

import lightning as L

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


def save_checkpoint(trainer: L.Trainer, run_dir: Path, keep: int = 2) -> Path:
    """Checkpoint the trainer at its current step (call on every rank; rank 0 finalises)."""
    directory = checkpoint_dir(run_dir)
    final = directory / f"step-{trainer.global_step:09d}.ckpt"
    partial = directory / f".step-{trainer.global_step:09d}.partial"
    if trainer.is_global_zero:
        directory.mkdir(parents=True, exist_ok=True)
    trainer.strategy.barrier("memsweep-checkpoint-dir")
    trainer.save_checkpoint(partial)
    if trainer.is_global_zero:
        if partial.is_file():
            _digest_path(final).write_text(file_sha256(partial) + "\n")
        _remove(final)
        os.replace(partial, final)
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


def newest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint; corrupt ones are warned about and skipped."""
    for path in checkpoints(run_dir):
        if is_intact(path):
            return path
        warnings.warn(f"memsweep: checkpoint {path} is corrupt or incomplete (digest mismatch); "
                      "falling back to the previous one", stacklevel=2)
    return None
