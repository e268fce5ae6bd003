"""At most one process trains a cell: numbered claim files, each created complete in one step.

A cell's claims live in `<cell>/claims/` as `000000001.json`, `000000002.json`, ... The highest
number is the current claim (its *generation*, the fencing token). A claim file is written whole
under a temporary name and then hard-linked into place (`os.link` fails if the name exists), so
no reader ever sees a half-written claim and of many processes racing for the same number exactly
one wins: a fresh cell (generation 1) and a takeover of a dead claim (generation g + 1) alike.

A holder keeps its claim alive by rewriting its own file (heartbeat, lease) and, before every
write of the cell's files, checks that its generation is still the highest (`check`). A holder
that was paused past its lease and comes back finds a higher generation, stops, and writes
nothing; it cannot overwrite the new holder's claim because that is a different file. A claim is
released by marking its file `released`, never by deleting it, so the numbers only grow.

A claim is dead when it is released, its heartbeat is older than its lease, or its process is
gone from this host; an unreadable claim file is presumed live for a grace period after its last
modification. A requeued SLURM job takes over the claim of its own job id at once. A finished cell
is never claimed again: a holder writes the cell's result before it releases, so a process that
finds the claim released or dead asks whether the cell is finished before it takes a number.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from memsweep.preemption import slurm_job_id
from memsweep.record import fsync_dir, shared_file_mode, write_text_atomic

CLAIM_DIR = "claims"
DEFAULT_LEASE_SECONDS = 300.0
UNREADABLE_GRACE_SECONDS = DEFAULT_LEASE_SECONDS
"""An unreadable claim file (a disk error, a foreign writer) is live this long after its mtime."""
_NAME = re.compile(r"^(\d{9})\.json$")
_KEEP_GENERATIONS = 3
"""Older claim files are removed by a new holder; the newest few are kept for `status`."""


class ClaimLost(RuntimeError):
    """This process no longer holds the cell's claim: it must stop without writing."""


def claim_dir(cell_dir: Path) -> Path:
    return Path(cell_dir) / CLAIM_DIR


def generations(cell_dir: Path) -> list[int]:
    """Claim generations present, newest first."""
    try:
        names = os.listdir(claim_dir(cell_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((int(m.group(1)) for m in map(_NAME.match, names) if m), reverse=True)


def _claim_path(cell_dir: Path, generation: int) -> Path:
    return claim_dir(cell_dir) / f"{generation:09d}.json"


def _read_generation(cell_dir: Path, generation: int) -> dict[str, Any] | None:
    """The claim of one generation; an unreadable one is described by its mtime and a grace lease."""
    path = _claim_path(cell_dir, generation)
    try:
        claim = json.loads(path.read_text())
        if not isinstance(claim, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = time.time()
        return {"generation": generation, "unreadable": f"{type(err).__name__}: {err}",
                "heartbeat": mtime, "lease_seconds": UNREADABLE_GRACE_SECONDS}
    claim["generation"] = generation
    return claim


def read_claim(cell_dir: Path) -> dict[str, Any] | None:
    """The current (highest-generation) claim of a cell, or None if it was never claimed."""
    for generation in generations(cell_dir):
        claim = _read_generation(cell_dir, generation)
        if claim is not None:
            return claim
    return None


def _process_start(pid: int) -> str | None:
    """The start time of a running process in clock ticks since boot (tells a reused pid apart);
    None if there is no such process or it is a zombie (killed, not yet reaped by its parent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def claim_is_live(claim: dict[str, Any], now: float | None = None) -> bool:
    """Whether a claim's holder is presumed alive: not released, heartbeat within its lease, and
    (on this host) its process still running."""
    now = time.time() if now is None else now
    if claim.get("released"):
        return False
    try:
        if now - float(claim.get("heartbeat", 0)) > float(claim.get("lease_seconds", 0)):
            return False
    except (TypeError, ValueError):
        return False
    if claim.get("host") == socket.gethostname() and isinstance(claim.get("pid"), int):
        started = _process_start(claim["pid"])
        if started is None or (claim.get("pid_start") is not None and started != claim["pid_start"]):
            return False
    return True


class CellClaim:
    """This process's claim on one cell. `acquire`, then `check` before each write, `release`.

    `lost` is set when another process holds a newer generation (stop, write nothing);
    `unrenewable` when the heartbeat could not be written for most of a lease (checkpoint while
    the claim is still ours, then stop): the trainer polls `must_stop` at step boundaries.
    """

    def __init__(self, cell_dir: Path, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.cell_dir = Path(cell_dir)
        self.lease_seconds = float(lease_seconds)
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = False
        self.unrenewable = False
        self.renew_errors = 0
        self._last_renewal = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def must_stop(self) -> bool:
        return self.lost or self.unrenewable

    def _payload(self, **extra: Any) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
                "slurm_job_id": slurm_job_id(), "token": self.token, "heartbeat": time.time(),
                "lease_seconds": self.lease_seconds, **extra}

    def _write_temp(self, payload: dict[str, Any]) -> Path:
        tmp = claim_dir(self.cell_dir) / f".{self.token}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, shared_file_mode())
        return tmp

    def _link(self, generation: int) -> bool:
        """Create generation `generation`, complete, or return False if it exists already."""
        tmp = self._write_temp(self._payload())
        try:
            os.link(tmp, _claim_path(self.cell_dir, generation))
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(claim_dir(self.cell_dir))
        return True

    def _takeable(self, claim: dict[str, Any]) -> bool:
        mine = slurm_job_id()
        if mine is not None and claim.get("slurm_job_id") == mine:
            return True  # this very job, requeued: its earlier run is gone
        return not claim_is_live(claim)

    def acquire(self, finished: Callable[[], bool] = lambda: False) -> bool:
        """True if this process now holds the cell; False if a live holder has it or `finished()`
        says the cell is done (asked after the current claim is seen dead, before taking a number:
        a worker that saw the cell unfinished just before its holder finished does not reclaim it)."""
        claim_dir(self.cell_dir).mkdir(parents=True, exist_ok=True)
        while True:
            top = next(iter(generations(self.cell_dir)), 0)
            if top:
                current = _read_generation(self.cell_dir, top)
                if current is not None and not self._takeable(current):
                    return False
            if finished():
                return False
            if self._link(top + 1):
                break
            # someone else created generation top + 1 first: look again (it is live, normally)
        self.generation = top + 1
        self._last_renewal = time.monotonic()
        for old in generations(self.cell_dir)[_KEEP_GENERATIONS:]:
            _claim_path(self.cell_dir, old).unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="memsweep-claim-heartbeat")
        self._thread.start()
        return True

    def holds(self) -> bool:
        """Whether this process's generation is still the newest (reads the claim directory)."""
        if self.generation is None or self.lost:
            return False
        top = next(iter(generations(self.cell_dir)), 0)
        if top != self.generation:
            self.lost = True
        return not self.lost

    def check(self) -> None:
        """Raise ClaimLost unless this process still holds the cell (call before each write)."""
        if not self.holds():
            raise ClaimLost(f"{self.cell_dir}: claim generation {self.generation} was taken over "
                            f"(now {next(iter(generations(self.cell_dir)), None)}); stopping without writing")

    def _renew(self, **extra: Any) -> None:
        write_text_atomic(_claim_path(self.cell_dir, self.generation), json.dumps(self._payload(**extra)))

    def _beat(self) -> None:
        interval = self.lease_seconds / 4
        while not self._stop.wait(interval):
            try:
                if not self.holds():
                    return  # taken over: the trainer sees `lost` at its next step
                self._renew()
                self._last_renewal = time.monotonic()
            except Exception:  # a transient filesystem error: retry; give up only near the lease
                self.renew_errors += 1
                if time.monotonic() - self._last_renewal > 0.75 * self.lease_seconds:
                    self.unrenewable = True

    def release(self, **final: Any) -> None:
        """Stop the heartbeat and mark the claim released (if it is still ours). Never raises:
        a claim that cannot be marked expires with its lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.holds():
                self._renew(released=True, **final)
        except Exception:
            pass


class NoClaim:
    """The claim of a process that does not claim (a direct `run_cell` call, a rank other than 0):
    always held, never stops anything."""

    must_stop = False
    lost = False
    unrenewable = False

    def acquire(self) -> bool:
        return True

    def check(self) -> None:
        return None

    def release(self, **final: Any) -> None:
        return None
