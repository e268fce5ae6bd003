"""At most one process trains a cell: a claim file created exclusively and kept alive by a heartbeat.

Two launches of the same sweep may reach the same cell at once (marin's "race to claim"). The
first to create `claim.json` with O_EXCL trains it; the other skips it. A claim is taken over only
when it is dead: its heartbeat is older than its lease, its process is gone from this host, or it
belongs to this very SLURM job (a requeued job picking its cell up again). Takeover renames the
dead claim away first, which only one contender can do, so a takeover race also has one winner.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from memsweep.preemption import slurm_job_id

CLAIM_FILE = "claim.json"


def read_claim(cell_dir: Path) -> dict | None:
    try:
        return json.loads((Path(cell_dir) / CLAIM_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def claim_is_live(claim: dict, now: float | None = None) -> bool:
    """Whether a claim's holder is presumed alive (heartbeat within its lease, process present)."""
    now = time.time() if now is None else now
    if now - claim.get("heartbeat", 0) > claim.get("lease_seconds", 0):
        return False
    if claim.get("host") == socket.gethostname() and not Path(f"/proc/{claim.get('pid')}").exists():
        return False
    return True


class CellClaim:
    def __init__(self, cell_dir: Path, lease_seconds: float = 300.0):
        self.path = Path(cell_dir) / CLAIM_FILE
        self.lease_seconds = lease_seconds
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": slurm_job_id(),
                "token": self.token, "heartbeat": time.time(), "lease_seconds": self.lease_seconds}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self._payload(), fh)
        return True

    def _dead_or_ours(self, claim: dict) -> bool:
        mine = slurm_job_id()
        return not claim_is_live(claim) or (mine is not None and claim.get("slurm_job_id") == mine)

    def acquire(self) -> bool:
        """True if this process now holds the claim."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            current = read_claim(self.path.parent)
            if current is not None and not self._dead_or_ours(current):
                return False
            try:
                os.replace(self.path, self.path.with_name(f".{CLAIM_FILE}.dead-{self.token}"))
            except FileNotFoundError:
                pass  # another contender took it over first; the create below decides
            if not self._create():
                return False
        self._thread = threading.Thread(target=self._beat, daemon=True, name="memsweep-claim-heartbeat")
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            tmp = self.path.with_name(f".{CLAIM_FILE}.{self.token}.tmp")
            tmp.write_text(json.dumps(self._payload()))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_claim(self.path.parent)
        if current is not None and current.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        for dead in self.path.parent.glob(f".{CLAIM_FILE}.dead-*"):
            dead.unlink(missing_ok=True)
