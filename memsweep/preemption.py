"""Preemption: memsweep alone owns the requeue signal, and its handler only sets a flag.

SLURM sends USR1/USR2 (`--signal`) before preempting or timing out a job. Checkpointing inside
a signal handler interrupts the training step at an arbitrary point (Lightning #21406), so the
handler records the request and the training loop checkpoints at the next step boundary, then
asks SLURM to requeue the job and exits. Lightning's own SLURM auto-requeue is switched off and
submitit's USR2 handler is replaced while a cell trains, so exactly one component acts.
SIGTERM (`scancel`, `kill`) and SIGINT (Ctrl-C) also checkpoint and stop, but never requeue:
they mean stop, and the cell ends `interrupted` (resumable) instead of `preempted`.
(Single-process Lightning otherwise ignores SIGTERM: its handler only sets a flag that it
broadcasts in distributed runs.)
"""

from __future__ import annotations

import os
import signal
import subprocess

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_RESUMABLE = 75
"""Exit code of a cell or sweep that stopped with work left that a rerun resumes (interrupted,
preempted, claim lost): EX_TEMPFAIL, distinct from 1 (failed) and 2 (bad input)."""


class PreemptionFlag:
    """Context manager: while active, the handled signals set `requested` instead of killing."""

    def __init__(self, signals: tuple[signal.Signals, ...] = REQUEUE_SIGNALS + STOP_SIGNALS):
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @property
    def wants_requeue(self) -> bool:
        return self.signal_name in {s.name for s in REQUEUE_SIGNALS}

    def __enter__(self) -> "PreemptionFlag":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
            outer = getattr(self._previous[sig], "__self__", None)
            if isinstance(outer, PreemptionFlag) and outer.requested:
                # A signal caught by an enclosing flag (the job's, while this cell was being set
                # up) still counts: checkpoint at the first step instead of training on.
                self.requested, self.signal_name = True, outer.signal_name
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
            outer = getattr(handler, "__self__", None)
            if self.requested and isinstance(outer, PreemptionFlag):
                outer.requested, outer.signal_name = True, self.signal_name  # the job still has to act
        self._previous.clear()


def slurm_job_id(environ=os.environ) -> str | None:
    """This job's id as scontrol knows it (array tasks as <array job>_<task>)."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue this job; False outside SLURM. Raises if scontrol refuses."""
    job_id = slurm_job_id()
    if job_id is None:
        return False
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError("scontrol is not on PATH: the image needs SLURM's client tools to requeue "
                           "itself (docker/README.md)") from None
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"scontrol requeue {job_id} failed: {err.stderr.strip()}") from None
    return True
