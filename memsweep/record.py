"""The cell's record: result.json written atomically, with provenance."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
STATUSES = ("running", "done", "failed", "interrupted", "preempted")
"""Every status a record may have; anything else is a corrupt record."""
TEMP_SUFFIX = ".tmp"


def _process_umask() -> int:
    """The umask, read without changing it (os.umask would, racing with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_file_mode() -> int:
    """0666 less the user's umask: what open() would give, so collaborators on a shared
    filesystem can read records (tempfile.mkstemp alone makes them 0600)."""
    return 0o666 & ~_process_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable. Filesystems that cannot sync a directory (EINVAL) are
    skipped: the rename itself has happened."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _non_finite(value: Any, where: str = "") -> str | None:
    """Where a NaN or infinity sits in a payload (JSON has neither): `test_loss is nan`."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the payload'} is {value!r}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees a half-written file; readable by collaborators
    (shared_file_mode) and durable once this returns (file and directory fsynced). A NaN or
    infinity is refused: it would write a file that strict JSON readers reject."""
    path = Path(path)
    try:
        text = json.dumps(payload, indent=2, default=str, allow_nan=False)
    except ValueError:
        found = _non_finite(payload)
        if found is None:
            raise
        raise ValueError(f"{path}: not written: {found}, which JSON cannot hold") from None
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file of its own (concurrent writers never collide), readable under
    the umask, fsynced, then renamed into place and the directory fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), shared_file_mode())
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def clean_temp_files(directory: Path, older_than_seconds: float = 3600) -> list[Path]:
    """Remove the `.*.tmp` files a killed writer left in `directory`; only old ones, since a live
    writer's temp file is renamed within seconds. Returns what was removed."""
    removed = []
    cutoff = time.time() - older_than_seconds
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
    return removed


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The cell's result.json, or None if there is none. A file that cannot be read, is not a
    JSON object or has no known status is an error (ValueError naming it), never a miss: a
    cell with such a record must not be run over."""
    path = Path(run_dir) / RESULT_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or err})") from None
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{path} is corrupt ({err}); move it aside to re-run this cell") from None
    if not isinstance(record, dict):
        problem = f"not a JSON object but {json.dumps(record)[:40]}"
    elif not isinstance(record.get("status"), str) or record["status"] not in STATUSES:
        problem = f"status {record.get('status')!r} is none of {', '.join(STATUSES)}"
    else:
        return record
    raise ValueError(f"{path} is corrupt ({problem}); move it aside to re-run this cell")


def is_done(run_dir: Path) -> bool:
    """Whether the cell finished: its result says done, or cannot be read (never run over)."""
    try:
        return (read_result(Path(run_dir)) or {}).get("status") == "done"
    except ValueError:
        return True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    source_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict[str, Any]:
    """Code and library versions, so a number can be traced to what produced it."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {
        "memsweep": _version("memsweep"),
        "git_sha": sha,
        "git_dirty": bool(status) if sha else None,
        "torch": _version("torch"),
        "lightning": _version("lightning"),
        "wandb": _version("wandb"),
        "python": platform.python_version(),
        "container_image": os.environ.get("MEMSWEEP_IMAGE"),
    }
