"""Resource checks before a cell trains (and when a sweep is planned): refuse what cannot fit.

Why: a dataset too large for the disk memory-maps a sparse file and dies of SIGBUS when the disk
fills (exit 135, no message, result.json left `running`); one too large for memory is killed by
the OOM killer. Both are known from the config alone, so they are refused up front, naming the
key and the numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from memsweep.config import CellConfig, ConfigError
from memsweep.storage import MEMMAP_BYTES, token_bytes

HEADROOM = 1.25
"""Space asked for beyond the data itself: checkpoints, metrics and the record need room too."""


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_resources(cfg: CellConfig, run_dir: Path) -> None:
    """Raise ConfigError (key `data.n_samples`) if the cell's token sets cannot fit: a training set
    above MEMMAP_BYTES is memory-mapped in the run dir and needs that much free disk; a smaller
    one, and the held-out set, live in memory."""
    d = cfg.data
    train = token_bytes(d.n_samples, d.seq_len, d.vocab_size)
    heldout = token_bytes(d.n_heldout, d.seq_len, d.vocab_size)
    in_memory = heldout + (0 if train > MEMMAP_BYTES else train)
    if train > MEMMAP_BYTES:
        where = _existing_parent(run_dir)
        free = shutil.disk_usage(where).free
        if train * HEADROOM > free:
            raise ConfigError(f"data.n_samples: {d.n_samples:,} sequences need {_gb(train)} on disk "
                              f"(memory-mapped in the run dir), but {where} has {_gb(free)} free")
    memory = available_memory_bytes()
    if memory is not None and in_memory * HEADROOM > memory:
        key = "data.n_heldout" if heldout * HEADROOM > memory else "data.n_samples"
        raise ConfigError(f"{key}: the token sets need {_gb(in_memory)} of memory, "
                          f"but this machine has {_gb(memory)} available")
