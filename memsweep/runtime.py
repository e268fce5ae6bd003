"""Process-level settings that make CPU training fast, applied once per process.

glibc hands every allocation above its mmap threshold (at most 32 MiB by default) straight to
mmap and back to the kernel when freed, so a training step that allocates tens of MiB of logits
page-faults them in again on every step. Raising the threshold keeps those pages in the heap;
benchmarks/throughput.py measures the effect (x1.25 tokens/s for 2L d128 at batch 64 on the
2-core CPU of this project's CI; docs/recipe.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_HEAP_BYTES = 1 << 30


def keep_large_allocations_in_heap() -> bool:
    """Raise glibc's mmap and trim thresholds; returns False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, _HEAP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _HEAP_BYTES))
    except (OSError, AttributeError):
        return False
