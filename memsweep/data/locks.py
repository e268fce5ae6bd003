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
