"""What memsweep prints while it trains: Lightning kept quiet, and the progress of a cell and a sweep.

Why: Lightning repeats the same banners, tips and deprecation warnings for every cell, and a cell
trains for minutes with nothing to show. A terminal (stderr) gets tqdm bars; anything else (a pipe, a SLURM
log) gets plain lines at a modest rate, since a bar's carriage returns make one endless log line.
No torch or Lightning import at module level: `memsweep run`'s parent uses this too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import IO, Any

from tqdm import tqdm

VERBOSE_ENV = "MEMSWEEP_VERBOSE"
"""`1`: keep Lightning's own messages (set by `memsweep run --verbose`; workers inherit it)."""
LINE_SECONDS_ENV = "MEMSWEEP_PROGRESS_SECONDS"
LINE_SECONDS = 30.0
"""Off a terminal, a cell prints a progress line at an evaluation at most this often (seconds;
MEMSWEEP_PROGRESS_SECONDS overrides it, 0: at every evaluation)."""
QUIET_WARNINGS = (
    r"The `srun` command is available on your system but is not used",  # local runs on a SLURM host
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's _pytree against newer torch
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_lightning(verbose: bool = False) -> None:
    """Silence Lightning's info banners (GPU/TPU available, the litlogger tip, "`Trainer.fit`
    stopped") and the known harmless warnings, for the rest of this process, unless `verbose` or
    MEMSWEEP_VERBOSE. `verbose=True` also sets MEMSWEEP_VERBOSE, so later calls (each cell makes
    one) and child processes keep the messages."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose():
        return
    import lightning.pytorch  # noqa: F401  its import sets its loggers to INFO: lower them after it

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def on_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def line_seconds() -> float:
    return float(os.environ.get(LINE_SECONDS_ENV, LINE_SECONDS))


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cell_summary(record: dict[str, Any]) -> str:
    """A finished cell in one line: what it memorized, per parameter, and how long it took."""
    if record.get("data_kind") == "text":
        against = "it is the reference" if record.get("is_reference") else f"against {record['memorized_against']}"
        extraction = ", ".join(f"{k}: {v['train']:.1%}" for k, v in (record.get("extraction") or {}).items())
        return (f"{record['cell_id']} done: {record['memorized_bits']:,.0f} bits of unintended memorization "
                f"({against}), {record['bits_per_param']:.3f} bits/param; test loss "
                f"{record['test_loss_bits']:.3f} bits/token; extracted from prefixes {extraction}; "
                f"{record['steps']:,} steps ({record['stop_reason']}), {duration(record['wall_seconds'])}")
    return (f"{record['cell_id']} done: memorized {record['memorized_bits']:,.0f} of "
            f"{record['dataset_bits']:,.0f} bits ({100 * record['memorized_fraction']:.1f}%), "
            f"{record['bits_per_param']:.3f} bits/param, {record['steps']:,} steps ({record['stop_reason']}), "
            f"{duration(record['wall_seconds'])}")


def emit(line: str, stream: IO[str] | None = None) -> None:
    """Print a progress line; a reader that went away (a closed pipe) never fails a cell.
    The line and its newline go out in one write: workers share the parent's pipe, and under
    PYTHONUNBUFFERED `print` writes them separately, so two workers' lines ran together."""
    stream = stream or sys.stderr
    try:
        stream.write(line + "\n")
        stream.flush()
    except OSError:
        pass


class SweepProgress:
    """`memsweep run`'s view of the whole sweep, polled from the cells' files: one tqdm bar on a
    terminal (the workers' output is relayed above it), else a line whenever the counts change.
    The ETA is the cells still to settle over the rate at which cells settled in this run, timed
    from when the first cell was seen running (the workers' start-up is not a cell's cost)."""

    def __init__(self, totals: dict[str, int], stream: IO[str] | None = None):
        self.n_cells, self.stream = sum(totals.values()), stream or sys.stderr
        self.bar = (tqdm(total=self.n_cells, initial=totals["done"], desc="sweep", unit="cell", file=self.stream,
                         bar_format="{desc} {n_fmt}/{total_fmt} done |{bar}| [{elapsed}{postfix}]")
                    if on_terminal(self.stream) else None)
        self._settled0 = self._settled(totals)
        self._started: float | None = None
        self._shown: tuple[int, ...] | None = None
        self._relays: list[threading.Thread] = []

    @staticmethod
    def _settled(totals: dict[str, int]) -> int:
        return totals["done"] + totals["failed"] + totals["corrupt"] + totals["blocked"]

    def text(self, totals: dict[str, int]) -> str:
        settled = self._settled(totals)
        parts = [f"{totals['running']} running"]
        parts += [f"{totals[s]} {s}" for s in ("failed", "blocked", "corrupt") if totals[s]]
        parts.append(f"{self.n_cells - settled - totals['running']} left")
        if self._started is None and (totals["running"] or settled > self._settled0):
            self._started = time.monotonic()
        if self._started is not None and self._settled0 < settled < self.n_cells:
            rate = (settled - self._settled0) / max(time.monotonic() - self._started, 1e-3)
            parts.append(f"ETA {duration((self.n_cells - settled) / rate)}")
        return ", ".join(parts)

    def update(self, totals: dict[str, int]) -> None:
        if self.bar is not None:
            self.bar.n = totals["done"]
            self.bar.set_postfix_str(self.text(totals))  # also redraws the elapsed time
            return
        shown = tuple(totals[s] for s in ("done", "running", "failed", "blocked", "corrupt"))
        if shown != self._shown:
            self._shown = shown
            emit(f"memsweep: sweep {totals['done']}/{self.n_cells} done, {self.text(totals)}", self.stream)

    def write(self, line: str, stream: IO[str]) -> None:
        """A line above the bar, or just a line."""
        if self.bar is None:
            emit(line, stream)
        else:
            tqdm.write(line, file=stream)

    def relay(self, source: IO[str], stream: IO[str]) -> None:
        """Copy a worker's output, line by line, above the bar (until the worker closes it)."""
        def copy() -> None:
            for line in source:
                self.write(line.rstrip("\n"), stream)

        thread = threading.Thread(target=copy, daemon=True)
        thread.start()
        self._relays.append(thread)

    def close(self) -> None:
        for thread in self._relays:
            thread.join(timeout=5)
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "SweepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
