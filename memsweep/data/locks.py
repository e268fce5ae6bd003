"""Cache-building helpers shared by the text pipeline: a file lock so concurrent workers build a
cached file once, and a collaborator-readable staging directory to rename into place whole."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

from memsweep.record import shared_file_mode

INFO_FILE = "info.json"
"""What a published cache directory was built from (publish_arrays)."""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be): concurrent workers on this node, or
    on a shared filesystem with working flock (NFSv4, Lustre), build a cached file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_shared_dir(parent: Path, prefix: str) -> Path:
    """A fresh staging directory under `parent`, readable by collaborators as open() would make a
    file (mkdtemp alone gives 0700), to be renamed into place when complete."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    mode = shared_file_mode()
    os.chmod(staging, mode | (mode & 0o444) >> 2)
    return staging


def publish_arrays(directory: Path, arrays: dict, info: dict) -> None:
    """Write `arrays` (file name -> numpy array, saved as .npy) and `info` (INFO_FILE) into a
    staging directory and rename it to `directory` whole, so a reader sees all of it or none.
    Call it holding the directory's file_lock: stale staging dirs of a killed builder are removed."""
    import shutil

    import numpy as np

    from memsweep.record import fsync_dir, write_json_atomic

    for stale in directory.parent.glob(f".{directory.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = make_shared_dir(directory.parent, f".{directory.name}.")
    for name, array in arrays.items():
        with open(staging / name, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array))
            handle.flush()
            os.fsync(handle.fileno())
    write_json_atomic(staging / INFO_FILE, info)
    staging.rename(directory)
    fsync_dir(directory.parent)
