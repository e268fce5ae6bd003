"""Room kept on disk for a cell's last word: its final record must be writable on a full disk.

Why: when training dies of ENOSPC, writing `failed` into result.json needs a few KB that are no
longer there, and the record would say `running` for ever. A cell keeps a small allocated file
in its run dir while it trains and deletes it just before writing its final record.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

RESERVE_FILE = ".final-record-reserve"
RESERVE_BYTES = 1 << 20


class SpaceReserve:
    def __init__(self, run_dir: Path, size: int = RESERVE_BYTES):
        self.path = Path(run_dir) / RESERVE_FILE
        self.size = size

    def hold(self) -> None:
        """Allocate the reserve (raises OSError, e.g. ENOSPC, if even that does not fit)."""
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


def is_disk_full(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) is ENOSPC/EDQUOT; torch.save reports it as a
    RuntimeError whose message carries the OS error text."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
