"""The soak (issue #12): a sweep on the real local SLURM under seeded fault injection, relaunched
until every cell is done, then checked against the same cells run undisturbed.

    sudo python benchmarks/soak.py --cells 50 --seed 0 --faults 20 --work-dir /tmp/soak
    sudo python benchmarks/soak.py --small --work-dir /tmp/soak-small     # 8 cells, 4 faults
    sudo python benchmarks/soak.py --cells 6 --faults 5 --kinds kill9,scancel,requeue,corrupt,usr2

What it does, in order:
  1. starts the cluster of launch/local-slurm if it is not up (needs root: the cluster, `kill -9`
     of a job's process, `scontrol update` of the node and `mount -t tmpfs` all do);
  2. queues a grid of tiny cells (1L d16, V=64, S=16, `data.n_samples` x `seed`) with
     `memsweep submit ... cluster=slurm-local resources=cpu --sweep-dir <work>/sweep`, and starts
     the undisturbed reference of the same cells, `memsweep run ... --sweep-dir <work>/reference
     --workers 2 --no-report` (niced: it soaks up idle CPU and finishes at the end);
  3. while the sweep runs, injects `--faults` faults, their kinds and targets drawn from
     random.Random(--seed), each logged with its time and target (also to <work>/faults.jsonl):
       kill9          kill -9 the training process of a running cell (the pid of its current claim,
                      `<cell>/claims/<highest>.json`)
       scancel        scancel the cell's job (SIGTERM: checkpoint and stop)
       requeue        scontrol requeue the cell's job mid-training
       usr2           scancel --signal=USR2 the cell's job (preemption: checkpoint, requeue itself)
       corrupt        overwrite bytes in the newest checkpoint of a running cell, then kill -9 its
                      process so that the restart must skip the corrupt checkpoint
       node_down      scontrol update nodename=<node> state=down, a few seconds, then state=resume
       second_submit  a second, concurrent `memsweep submit` of the same sweep
       local_run      a concurrent `memsweep run` of the same cells into the same sweep dir (local
                      workers racing the SLURM jobs for claims), killed (TERM or KILL) after a
                      while or left to finish
       disk_full      a few cells of the grid run by `memsweep run` on a small tmpfs that the soak
                      mounts itself; once they train, a filler file fills it (ENOSPC); then the
                      filler is removed and the cells are rerun until done; unmounted at the end
  4. relaunches (`memsweep submit --retry-failed`) whenever the sweep is idle and not done, for at
     most --rounds rounds, within --max-minutes in all;
  5. checks and prints ONE table: cells, faults by kind, cells finished, results lost (a cell that
     was done and later is not, or whose result.json changed after done), cells trained twice (a
     step twice in `<cell>/metrics.csv`), results equal to the undisturbed run (bit for bit), and
     every failure recorded (`status: failed` and its `error`), with the fault it follows.

Exit status 0 only if nothing was lost, nothing trained twice, every result equals the reference
and every cell is done; 1 otherwise; 2 if it could not run (not root, the cluster does not start).
`--json FILE` also writes the summary as JSON (what tests/test_soak.py reads).

The script uses memsweep only through its commands and its files (sweep.json, result.json,
metrics.csv, checkpoints/, claims/, slurm.json), so it tests what a user runs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = ROOT / "launch" / "local-slurm"
MARKER = ".memsweep-soak"
"""A work dir holding this file was made by the soak and may be wiped by the next one."""

KINDS = ("kill9", "scancel", "requeue", "usr2", "corrupt", "node_down", "second_submit", "local_run", "disk_full")
SLURM_TARGETED = ("kill9", "scancel", "requeue", "usr2", "corrupt")
"""Kinds aimed at one running cell (the rest act on the node, the sweep or a disk)."""
EXTRA_WEIGHTS = {"kill9": 3, "scancel": 2, "requeue": 3, "usr2": 3, "corrupt": 3, "node_down": 1,
                 "second_submit": 1, "local_run": 1}
"""How the faults beyond one of each kind are drawn (disk_full runs at most once)."""

N_SAMPLES = (16, 24, 32, 48, 64)
COMPARED = ("status", "steps", "stop_reason", "saturated_at_step", "memorized_bits", "memorized_bits_unclipped",
            "memorized_fraction", "bits_per_param", "heldout_memorized_bits", "train_loss", "train_loss_bits",
            "test_loss", "test_loss_bits", "tokens_seen")
"""result.json fields that must equal the reference's exactly (timings are left out)."""
TIMING_COLUMNS = {"train_seconds", "wall_seconds"}
"""metrics.csv columns that legitimately differ between runs."""
CLAIM_NAME = re.compile(r"^(\d{9})\.json$")
CKPT_NAME = re.compile(r"^step-(\d+)\.ckpt$")


# ---- logging --------------------------------------------------------------------------------------

class Log:
    def __init__(self, path: Path | None = None):
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.path = path

    def t(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        line = f"[{self.t():7.1f}s] {message}"
        with self.lock:
            print(line, flush=True)
            if self.path is not None:
                with self.path.open("a") as fh:
                    fh.write(line + "\n")


LOG = Log()


# ---- files of a cell --------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def result(cell: Path) -> dict | None:
    value = read_json(cell / "result.json")
    return value if isinstance(value, dict) else None


def status(cell: Path) -> str | None:
    return (result(cell) or {}).get("status")


def current_claim(cell: Path) -> dict | None:
    """The highest-numbered readable claim file of a cell."""
    try:
        names = os.listdir(cell / "claims")
    except OSError:
        return None
    for generation in sorted((int(m.group(1)) for m in map(CLAIM_NAME.match, names) if m), reverse=True):
        claim = read_json(cell / "claims" / f"{generation:09d}.json")
        if isinstance(claim, dict):
            return {**claim, "generation": generation}
    return None


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def live_claim(cell: Path) -> dict | None:
    """The current claim if its process is alive here and it is not released."""
    claim = current_claim(cell)
    if claim is None or claim.get("released") or claim.get("host") != socket.gethostname():
        return None
    return claim if pid_alive(claim.get("pid")) else None


def checkpoints(cell: Path) -> list[Path]:
    """Completed checkpoints, newest first."""
    try:
        names = os.listdir(cell / "checkpoints")
    except OSError:
        return []
    found = [(int(m.group(1)), name) for name, m in ((n, CKPT_NAME.match(n)) for n in names) if m]
    return [cell / "checkpoints" / name for _, name in sorted(found, reverse=True)]


def metrics_rows(cell: Path) -> list[dict[str, str]]:
    try:
        with (cell / "metrics.csv").open(newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []


def plan_cells(sweep: Path) -> list[Path]:
    plan = read_json(sweep / "sweep.json") or {}
    return [sweep / c["cell_id"] for c in plan.get("cells", [])]


# ---- the cluster and the commands ---------------------------------------------------------------

def env() -> dict[str, str]:
    # One thread per process everywhere: the node is 8 advertised CPUs on few cores, and the
    # reference must run the same arithmetic as the jobs (SLURM passes this environment on).
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def memsweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "memsweep.cli", *args]


def sh(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env())
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(command, 124, err.stdout or "", f"timed out after {timeout:.0f} s")
    except FileNotFoundError as err:
        return subprocess.CompletedProcess(command, 127, "", str(err))


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def die(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def ensure_cluster() -> None:
    if os.geteuid() != 0:
        die("must run as root: it starts the local SLURM (launch/local-slurm), kills job processes, "
                 "sets the node down and mounts a tmpfs")
    # `start` is idempotent: it starts only what is down and resumes a drained node.
    up = sh("bash", str(LOCAL_SLURM), "status", timeout=60).returncode == 0
    if not up:
        LOG("starting the local SLURM cluster (launch/local-slurm start)")
    started = sh("bash", str(LOCAL_SLURM), "start", timeout=900)
    if started.returncode:
        print(started.stderr[-3000:], file=sys.stderr)
        die(f"launch/local-slurm start failed (exit {started.returncode})")


def active_jobs() -> set[str] | None:
    """Queued or running job ids, array tasks expanded; None if squeue fails."""
    done = sh("squeue", "-h", "-r", "-o", "%i", timeout=30)
    if done.returncode:
        return None
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def node_name() -> str:
    out = sh("sinfo", "-h", "-N", "-o", "%N").stdout.split()
    return out[0] if out else socket.gethostname().split(".")[0]


def node_state(node: str) -> str:
    return (sh("sinfo", "-h", "-N", "-n", node, "-o", "%T").stdout.split() or ["?"])[0]


def slurmstepds() -> list[int]:
    """Pids of slurmstepd processes: the node still holds job steps while any is left."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "slurmstepd":
                    found.append(int(entry))
            except OSError:
                pass
    return found


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- the grid -----------------------------------------------------------------------------------

def grid(args: argparse.Namespace) -> tuple[list[str], list[int], list[int]]:
    """(fixed overrides, n_samples values, seeds) for at least args.cells cells."""
    # The fewest cells >= args.cells, with as many dataset sizes as that allows.
    k = min(range(1, len(N_SAMPLES) + 1), key=lambda k: (k * math.ceil(args.cells / k), -k))
    seeds = list(range(math.ceil(args.cells / k)))
    fixed = ["experiment=smoke", "model.n_layer=1", "model.d_model=16", "model.n_head=1", "data.vocab_size=64",
             "data.seq_len=16", "data.n_heldout=16", "precision=fp32", "logger=none",
             f"trainer.max_steps={args.steps}", f"trainer.eval_interval={args.eval_interval}",
             f"trainer.checkpoint_every_steps={args.checkpoint_every}", "trainer.saturation.min_steps=1000000"]
    return fixed, list(N_SAMPLES[:k]), seeds


def swept(n_samples: list[int], seeds: list[int]) -> list[str]:
    return [f"data.n_samples={','.join(map(str, n_samples))}", f"seed={','.join(map(str, seeds))}"]


SLURM_PRESET = ["cluster=slurm-local", "resources=cpu", "resources.mem_gb=1"]


# ---- what the soak watches --------------------------------------------------------------------------

class Monitor(threading.Thread):
    """Polls every cell's result.json: a result that was done and is no longer done (or changed)
    is lost; every `failed` record is kept with its error and the time it was seen."""

    def __init__(self, cells: Callable[[], list[Path]], every: float = 0.5):
        super().__init__(daemon=True, name="soak-monitor")
        self.cells, self.every = cells, every
        self.done: dict[Path, tuple[str, float]] = {}
        self.lost: list[dict] = []
        self.failures: list[dict] = []
        self._failure_keys: set[tuple] = set()
        self._lost_cells: set[Path] = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def poll(self) -> None:
        for cell in self.cells():
            try:
                raw = (cell / "result.json").read_bytes()
            except FileNotFoundError:
                raw = None
            except OSError:
                continue  # a transient read error says nothing about the record
            try:
                record = json.loads(raw) if raw is not None else None
            except ValueError:
                record = {"status": "<unreadable>"}
            state = (record or {}).get("status")
            digest = hashlib.sha256(raw).hexdigest() if raw is not None else None
            with self.lock:
                if cell in self.done and cell not in self._lost_cells:
                    first, _ = self.done[cell]
                    if state != "done" or digest != first:
                        self._lost_cells.add(cell)
                        what = "result.json changed after done" if state == "done" else f"done, then {state or 'no result.json'}"
                        self.lost.append({"cell": cell.name, "sweep": cell.parent.name, "t": LOG.t(), "what": what})
                        LOG(f"LOST: {cell.name}: {what}")
                elif state == "done" and cell not in self.done:
                    self.done[cell] = (digest, LOG.t())
                if state == "failed":
                    self.record_failure(cell, record, LOG.t())

    def record_failure(self, cell: Path, record: dict, t: float) -> None:
        error = str(record.get("error", "")).strip()
        key = (str(cell), first_line(error), record.get("wall_seconds"))
        if key in self._failure_keys:
            return
        self._failure_keys.add(key)
        self.failures.append({"cell": cell.name, "sweep": cell.parent.name, "t": t, "error": first_line(error)})
        LOG(f"failure recorded: {cell.name}: {first_line(error)[:160]}")

    def scan_kept_failures(self, cells: list[Path]) -> None:
        """Failed records that a retry moved aside (result.failed-*.json) but polling missed."""
        with self.lock:
            for cell in cells:
                for kept in sorted(cell.glob("result.failed-*.json")):
                    record = read_json(kept)
                    if isinstance(record, dict) and record.get("status") == "failed":
                        self.record_failure(cell, record, float("nan"))

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.poll()
            except Exception as err:  # never let the watcher die silently
                LOG(f"monitor: {type(err).__name__}: {err}")


@dataclass
class Fault:
    kind: str
    t: float
    cell: str | None
    target: str
    detail: str = ""
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))


# ---- the soak -------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work_dir).resolve()
        self.sweep = self.work / "sweep"
        self.reference = self.work / "reference"
        self.mount = self.work / "tmpfs"
        self.disk_sweep = self.mount / "diskfull"
        self.logs = self.work / "logs"
        self.fixed, self.n_samples, self.seeds = grid(args)
        self.slurm_overrides = [*self.fixed, *SLURM_PRESET, *swept(self.n_samples, self.seeds)]
        self.local_overrides = [*self.fixed, *swept(self.n_samples, self.seeds)]
        self.faults: list[Fault] = []
        self.skipped: list[dict] = []
        self.fault_lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.mounted = False
        self.node: str | None = None
        self.node_down = False
        self.rounds = 0
        self.repairs: list[dict] = []
        self.timed_out = False
        self.submits: list[str] = []
        self.disk_cells: list[Path] = []
        self.disk_report: dict[str, Any] = {}
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.monitor = Monitor(self.watched)

    # -- helpers --
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cells(self) -> list[Path]:
        return plan_cells(self.sweep)

    def watched(self) -> list[Path]:
        return [*self.cells(), *self.disk_cells]

    def log_fault(self, kind: str, cell: Path | None, target: str, detail: str = "", t: float | None = None) -> Fault:
        """Log a fault; `t` is when it was injected (a SLURM command may take a while to return)."""
        t = LOG.t() if t is None else t
        fault = Fault(kind, round(t, 1), cell.name if cell is not None else None, target, detail)
        with self.fault_lock:
            self.faults.append(fault)
            with (self.work / "faults.jsonl").open("a") as fh:
                fh.write(json.dumps(fault.__dict__) + "\n")
        LOG(f"FAULT {kind} at {t:.1f}s: {'cell ' + cell.name + ', ' if cell is not None else ''}{target}"
            f"{': ' + detail if detail else ''}")
        return fault

    def popen(self, name: str, command: list[str], nice: int = 0) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.log", "ab")
        if nice:
            command = ["nice", "-n", str(nice), *command]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=self.work,
                                start_new_session=True)
        out.close()
        proc.soak_name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def submit(self, *extra: str, why: str) -> bool:
        done = sh(*memsweep_cmd("submit", *self.slurm_overrides, "--sweep-dir", str(self.sweep), *extra),
                  timeout=300)
        line = first_line(done.stdout) if done.returncode == 0 else first_line(done.stderr) or done.stdout[-300:]
        self.submits.append(f"{why}: rc {done.returncode}: {line}")
        LOG(f"submit ({why}{', ' + ' '.join(extra) if extra else ''}): rc {done.returncode}: {line[:200]}")
        if done.returncode:
            (self.logs / f"submit-failed-{len(self.submits)}.log").write_text(done.stdout + done.stderr)
        return done.returncode == 0

    def sweep_job_ids(self) -> set[str]:
        """Every job submitted for a cell of the sweep (the latest and the earlier ones)."""
        ids = set()
        for cell in self.cells():
            record = read_json(cell / "slurm.json") or {}
            for entry in [record, *record.get("previous", [])]:
                if isinstance(entry, dict) and entry.get("job_id"):
                    ids.add(str(entry["job_id"]))
        return ids

    def sweep_active(self) -> bool:
        active = active_jobs()
        if active is None:
            return True  # squeue failed (e.g. slurmctld busy): assume work is still going on
        if self.sweep_job_ids() & active:
            return True
        return any(live_claim(c) for c in self.cells())

    def fault_threads_alive(self) -> bool:
        """A fault still acting on the SLURM sweep: a node to resume, a submit, a local run."""
        if any(t.is_alive() for t in self.threads if t.name != "disk_full"):
            return True
        return any(p.poll() is None for p in self.procs if getattr(p, "soak_name", "").startswith("local_run"))

    def busy(self) -> bool:
        """Something of ours still works on the SLURM sweep (jobs, local runs, fault threads)."""
        return self.fault_threads_alive() or self.sweep_active()

    # -- setup --
    def prepare_work_dir(self) -> None:
        if self.work.exists() and any(self.work.iterdir()):
            if not (self.work / MARKER).exists():
                die(f"{self.work} is not empty and was not made by the soak; pick another --work-dir")
            if os.path.ismount(self.mount):
                subprocess.run(["umount", "-l", str(self.mount)], check=False)
            active = active_jobs() or set()
            stale = {j for j in self.sweep_job_ids() if j in active}
            if stale:
                LOG(f"cancelling the previous soak's jobs still queued: {' '.join(sorted(stale))}")
                sh("scancel", *sorted(stale))
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        (self.work / MARKER).write_text("made by benchmarks/soak.py; wiped by the next soak in this dir\n")
        self.logs.mkdir()
        LOG.path = self.work / "soak.log"

    def fault_schedule(self) -> list[str]:
        """Each kind once (a seeded sample of them if there are fewer faults than kinds), the rest
        drawn by EXTRA_WEIGHTS, in a seeded order; the disk-full episode first, as it runs beside
        everything else and needs time."""
        kinds, n = list(self.args.kinds), self.args.faults
        if n <= len(kinds):
            schedule = self.rng.sample(kinds, n)
        else:
            extra = [k for k in kinds if k != "disk_full"] or ["kill9"]
            schedule = kinds + self.rng.choices(extra, [EXTRA_WEIGHTS.get(k, 1) for k in extra], k=n - len(kinds))
        self.rng.shuffle(schedule)
        if "disk_full" in schedule:
            schedule.remove("disk_full")
            schedule.insert(0, "disk_full")
        return schedule

    # -- faults aimed at a running cell --
    def targets(self, kind: str) -> list[tuple[Path, dict]]:
        found = []
        for cell in self.cells():
            claim = live_claim(cell)
            # Only cells that train and have checkpointed: the restart must resume. A corrupted
            # checkpoint needs one before it to fall back to.
            if claim is None or status(cell) == "done" or len(checkpoints(cell)) < (2 if kind == "corrupt" else 1):
                continue
            if kind in ("scancel", "requeue", "usr2") and not claim.get("slurm_job_id"):
                continue
            found.append((cell, claim))
        return found

    def hit_cell(self, kind: str) -> bool:
        found = self.targets(kind)
        if not found:
            return False
        cell, claim = self.rng.choice(found)
        pid, job = claim.get("pid"), claim.get("slurm_job_id")
        holder = f"pid {pid}" + (f" job {job}" if job else " (local worker)")
        if kind == "kill9":
            try:
                os.kill(pid, signal.SIGKILL)
                outcome = "killed"
            except ProcessLookupError:
                outcome = "already gone"
            self.log_fault(kind, cell, holder, outcome)
        elif kind in ("scancel", "requeue", "usr2"):
            command = {"scancel": ["scancel", job], "requeue": ["scontrol", "requeue", job],
                       "usr2": ["scancel", "--signal=USR2", job]}[kind]
            t0 = LOG.t()
            fault = self.log_fault(kind, cell, f"{' '.join(command)} ({holder})", "issued", t=t0)

            def signal_job() -> None:
                # Bounded: when slurmctld answers "Job can not be altered now" scancel retries for
                # as long as the job lives, and would signal the job's next run too.
                done = sh(*command, timeout=self.args.signal_timeout)
                # A timed-out USR2 has usually arrived all the same (slurmctld signals the step
                # and still answers "can not be altered"): the cell's status says.
                fault.detail = (f"rc {done.returncode} after {LOG.t() - t0:.1f} s"
                                f"{': ' + first_line(done.stderr) if done.stderr.strip() else ''}; "
                                f"cell status now {status(cell)}")
                LOG(f"FAULT {kind} at {t0:.1f}s on {cell.name}: {fault.detail}")

            self.spawn(f"{kind}-{cell.name}", signal_job)
        elif kind == "corrupt":
            newest = checkpoints(cell)
            if not newest:
                return False
            path = newest[0]
            try:
                size = path.stat().st_size
                offset = self.rng.randrange(max(1, size // 4), max(2, size - 64))
                with path.open("r+b") as fh:
                    fh.seek(offset)
                    old = fh.read(64)
                    fh.seek(offset)
                    fh.write(bytes(b ^ 0xFF for b in old) or b"\xff")
                outcome = f"flipped {len(old)} bytes at offset {offset} of {size}"
            except OSError as err:
                outcome = f"could not corrupt: {err}"
            try:
                os.kill(pid, signal.SIGKILL)
                outcome += f"; then kill -9 pid {pid}"
            except ProcessLookupError:
                outcome += f"; pid {pid} already gone"
            self.log_fault(kind, cell, f"{path.relative_to(cell)} ({holder})", outcome)
        return True

    # -- faults on the node, the sweep, a disk --
    def fault_node_down(self) -> bool:
        victims = [claim["pid"] for c in self.cells() if (claim := live_claim(c)) and claim.get("slurm_job_id")]
        if not victims:
            return False  # down the node while a job trains on it
        self.node = self.node or node_name()
        pause = round(self.rng.uniform(3, 8), 1)
        self.node_down = True
        down = sh("scontrol", "update", f"nodename={self.node}", "state=down", "reason=soak")
        self.log_fault("node_down", None, f"node {self.node} down for {pause} s (and until its jobs' processes "
                       f"({' '.join(map(str, victims))} and every slurmstepd) are gone)",
                       f"rc {down.returncode}{': ' + first_line(down.stderr) if down.stderr.strip() else ''}")

        def resume() -> None:
            time.sleep(pause)
            # As a rebooted node would: back only once what ran on it is gone. Resumed earlier,
            # slurmd still holds the old job steps, refuses the requeued jobs ("Duplicate jobid")
            # and SLURM drains the node.
            deadline = time.monotonic() + 60
            while (any(pid_alive(pid) for pid in victims) or slurmstepds()) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1)
            self.resume_node()

        self.spawn("node_resume", resume)
        return True

    def resume_node(self) -> None:
        if self.node is None:
            return
        for _ in range(30):
            done = sh("scontrol", "update", f"nodename={self.node}", "state=resume")
            state = node_state(self.node)
            if state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing"):
                break
            if done.returncode and "Invalid node state" not in done.stderr:
                LOG(f"node resume: rc {done.returncode}: {first_line(done.stderr)}")
            time.sleep(1)
        self.node_down = False
        LOG(f"node {self.node} resumed: {node_state(self.node)}")

    def repair_cluster(self) -> None:
        """What an admin would do, logged as a repair (not a fault): resume the node if SLURM
        drained or downed it by itself, release our jobs that SLURM put on hold (a job requeued
        after a launch failure is held; a held job never runs and `memsweep submit` skips it as
        queued)."""
        if self.node_down:
            return
        self.node = self.node or node_name()
        state = node_state(self.node)
        if re.match(r"(drain|down|fail)", state):
            shown = sh("scontrol", "show", "node", self.node).stdout
            reason = (re.search(r"Reason=(.*)", shown) or [None, "?"])[1].strip()
            self.repairs.append({"t": round(LOG.t(), 1), "what": f"node {state} ({reason}): resumed"})
            LOG(f"REPAIR: node {self.node} is {state} ({reason}): resuming it")
            self.resume_node()
        queue = sh("squeue", "-h", "-r", "-o", "%i|%r", timeout=30).stdout.splitlines()
        ours = self.sweep_job_ids()
        held = sorted(j for j, _, r in (line.partition("|") for line in queue) if j in ours and "held" in r.lower())
        for job in held:
            reason = next(r for j, _, r in (line.partition("|") for line in queue) if j == job)
            done = sh("scontrol", "release", job)
            self.repairs.append({"t": round(LOG.t(), 1), "what": f"job {job} held ({reason}): released, rc {done.returncode}"})
            LOG(f"REPAIR: job {job} is held ({reason}): scontrol release: rc {done.returncode}")

    def fault_second_submit(self) -> bool:
        self.log_fault("second_submit", None, f"memsweep submit {self.sweep}", "concurrent with the running jobs")
        self.spawn("second_submit", lambda: self.submit(why="second submit (fault)"))
        return True

    def fault_local_run(self) -> bool:
        if all(status(c) == "done" for c in self.cells()):
            return False
        n = sum(p.soak_name.startswith("local_run") for p in self.procs)  # type: ignore[attr-defined]
        proc = self.popen(f"local_run-{n}", memsweep_cmd("run", *self.local_overrides, "--sweep-dir",
                                                         str(self.sweep), "--workers", "1", "--no-report"))
        after = round(self.rng.uniform(8, 25), 1)
        action = self.rng.choice(["SIGTERM", "SIGKILL", "leave"])
        self.log_fault("local_run", None, f"memsweep run --sweep-dir {self.sweep} --workers 1 (pid {proc.pid})",
                       f"then {'left to finish' if action == 'leave' else action + ' to its process group'} "
                       f"after {after} s")
        if action != "leave":
            def stop() -> None:
                time.sleep(after)
                if proc.poll() is None:
                    kill_group(proc, getattr(signal, action))
                    LOG(f"local_run pid {proc.pid}: sent {action} to its process group")
            self.spawn(f"local_run-stop-{n}", stop)
        return True

    def fault_disk_full(self) -> bool:
        if any(f.kind == "disk_full" for f in self.faults):
            return False
        self.log_fault("disk_full", None, f"tmpfs {self.args.tmpfs_mb} MB at {self.mount}",
                       f"{len(self.disk_overrides_seeds())} cells by memsweep run, then a filler fills it")
        self.spawn("disk_full", self.disk_full_episode)
        return True

    def disk_overrides_seeds(self) -> list[int]:
        return self.seeds[: max(1, min(len(self.seeds), self.args.disk_cells))] if self.args.disk_cells else []

    def disk_full_episode(self) -> None:
        seeds = self.disk_overrides_seeds()
        overrides = [*self.fixed, f"data.n_samples={self.n_samples[0]}", f"seed={','.join(map(str, seeds))}"]
        report = self.disk_report
        self.mount.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.args.tmpfs_mb}m", "tmpfs",
                                  str(self.mount)], capture_output=True, text=True)
        if mounted.returncode:
            report["error"] = f"mount failed: {mounted.stderr.strip()}"
            LOG(f"disk_full: {report['error']}")
            return
        self.mounted = True
        run = memsweep_cmd("run", *overrides, "--sweep-dir", str(self.disk_sweep), "--workers", "1", "--no-report")
        proc = self.popen("disk_full-0", run)
        filler = self.mount / "filler"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:  # until a cell has checkpointed
            self.disk_cells = plan_cells(self.disk_sweep)
            if any(checkpoints(c) for c in self.disk_cells):
                break
            time.sleep(0.2)
        self.disk_cells = plan_cells(self.disk_sweep)
        written = 0
        try:
            with filler.open("wb") as fh:
                for chunk in (1 << 20, 1 << 12):
                    block = b"\0" * chunk
                    try:
                        while True:
                            fh.write(block)
                            fh.flush()
                            written += chunk
                    except OSError:
                        pass
        except OSError:
            pass
        free = shutil.disk_usage(self.mount).free
        report["filled_bytes"] = written
        LOG(f"disk_full: filler wrote {written / 2**20:.1f} MB, {free} bytes free; cells training: "
            f"{[c.name for c in self.disk_cells if live_claim(c)]}")
        try:
            proc.wait(timeout=max(10, min(240, self.left() - 60)))
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)
            proc.wait()
            LOG("disk_full: the run on the full disk did not end by itself; killed it")
        report["run_on_full_disk_rc"] = proc.returncode
        report["states_on_full_disk"] = {c.name: status(c) for c in self.disk_cells}
        LOG(f"disk_full: run on the full disk exited {proc.returncode}; states {report['states_on_full_disk']}")
        filler.unlink(missing_ok=True)
        for attempt in range(1, self.args.rounds + 1):
            self.disk_cells = plan_cells(self.disk_sweep)
            if self.disk_cells and all(status(c) == "done" for c in self.disk_cells):
                break
            if self.left() < 30:
                break
            proc = self.popen(f"disk_full-{attempt}", run)
            try:
                proc.wait(timeout=max(10, self.left() - 20))
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
                proc.wait()
            report["reruns"] = attempt
            LOG(f"disk_full: rerun {attempt} exited {proc.returncode}; "
                f"states {[status(c) for c in plan_cells(self.disk_sweep)]}")
        self.disk_cells = plan_cells(self.disk_sweep)

    def spawn(self, name: str, target: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as err:
                LOG(f"{name}: {type(err).__name__}: {err}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def inject(self, kind: str) -> bool:
        if kind in SLURM_TARGETED:
            return self.hit_cell(kind)
        return getattr(self, f"fault_{kind}")()

    # -- the run --
    def run(self) -> dict[str, Any]:
        args = self.args
        self.prepare_work_dir()
        LOG(f"soak: seed {args.seed}, {len(self.n_samples) * len(self.seeds)} cells "
            f"(data.n_samples={self.n_samples} x seed={self.seeds}), {args.faults} faults, "
            f"{args.steps} steps per cell, work dir {self.work}")
        if not self.submit(why="first submit"):
            die(f"the first memsweep submit failed; see {self.logs}")
        self.monitor.start()
        ref = self.popen("reference", memsweep_cmd("run", *self.local_overrides, "--sweep-dir", str(self.reference),
                                                   "--workers", str(args.reference_workers), "--no-report"),
                         nice=10)
        schedule = self.fault_schedule()
        LOG(f"fault schedule: {' '.join(schedule)}")
        next_at = time.monotonic() + self.rng.uniform(1, args.fault_gap)
        next_repair = time.monotonic() + 3
        while True:
            if self.left() <= 0:
                self.timed_out = True
                LOG(f"time limit ({args.max_minutes} min) reached")
                break
            now = time.monotonic()
            if now >= next_repair:
                self.repair_cluster()
                next_repair = now + 3
            if schedule and now >= next_at and self.inject(schedule[0]):
                schedule.pop(0)
                next_at = now + self.rng.uniform(0.5, 1.5) * args.fault_gap
            pending = [c for c in self.cells() if status(c) != "done"]
            if not pending and not self.fault_threads_alive() and not any(live_claim(c) for c in self.cells()):
                break  # every cell is done: faults still scheduled have nothing left to hit
            if pending and not self.busy():
                if self.rounds >= args.rounds:
                    LOG(f"{self.rounds} relaunch rounds done and {len(pending)} cells not done: giving up")
                    break
                self.rounds += 1
                LOG(f"relaunch round {self.rounds}: {len(pending)} cells not done "
                    f"({', '.join(sorted({str(status(c)) for c in pending}))})")
                self.submit("--retry-failed", why=f"relaunch round {self.rounds}")
            time.sleep(0.25)
        for kind in schedule:
            self.skipped.append({"kind": kind, "why": "no running cell to aim at before the sweep finished"
                                 if self.left() > 0 else "time limit"})
        if schedule:
            LOG(f"faults not injected: {' '.join(schedule)}")
        self.settle(ref)
        return self.check()

    def settle(self, ref: subprocess.Popen) -> None:
        """Wait for the disk-full episode, local runs and the reference; stop what outlives the deadline."""
        for thread in self.threads:
            thread.join(timeout=max(1, self.left()))
        for proc in self.procs:
            if proc is ref or proc.poll() is not None:
                continue
            try:
                proc.wait(timeout=max(1, self.left()))
            except subprocess.TimeoutExpired:
                kill_group(proc, signal.SIGKILL)
        deadline = time.monotonic() + min(30, max(1, self.left()))
        while (self.sweep_job_ids() & (active_jobs() or set())) and time.monotonic() < deadline:
            time.sleep(1)  # jobs still queued find their cells done and end; the rest are cancelled
        LOG("waiting for the undisturbed reference run")
        try:
            ref.wait(timeout=max(1, self.left() + 60))
        except subprocess.TimeoutExpired:
            LOG("the reference run did not finish in time")
        time.sleep(self.monitor.every * 2)
        self.monitor.poll()
        self.monitor.stop.set()

    # -- the checks --
    def check(self) -> dict[str, Any]:
        with (self.work / "faults.jsonl").open("w") as fh:  # rewritten: the outcomes are known now
            fh.writelines(json.dumps(f.__dict__) + "\n" for f in self.faults)
        cells, disk = self.cells(), list(self.disk_cells)
        everything = [*cells, *disk]
        self.monitor.scan_kept_failures(everything)
        ref_ids = {c.name for c in plan_cells(self.reference)}
        finished = [c for c in everything if status(c) == "done"]
        not_done = [{"cell": c.name, "sweep": c.parent.name, "status": status(c)} for c in everything
                    if status(c) != "done"]
        twice, history_mismatch = [], []
        matched, mismatched, worst = 0, [], 0.0
        for cell in everything:
            rows = metrics_rows(cell)
            steps = [int(float(r["step"])) for r in rows if r.get("step") not in (None, "")]
            repeated = sorted({s for s in steps if steps.count(s) > 1})
            if repeated:
                twice.append({"cell": cell.name, "sweep": cell.parent.name, "steps": repeated[:10]})
            ref_cell = self.reference / cell.name
            mine, ref = result(cell) or {}, result(ref_cell) or {}
            if cell.name not in ref_ids or ref.get("status") != "done":
                mismatched.append({"cell": cell.name, "why": "no done reference result"})
                continue
            diffs = {}
            for key in COMPARED:
                if key not in ref and key not in mine:
                    continue
                a, b = mine.get(key), ref.get(key)
                if a != b:
                    diffs[key] = (a, b)
                    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                        worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
                    else:
                        worst = math.inf if worst < math.inf else worst
            if diffs:
                mismatched.append({"cell": cell.name, "sweep": cell.parent.name, "diffs": diffs})
            else:
                matched += 1
            if status(cell) == "done":
                strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rs]  # noqa: E731
                if strip(rows) != strip(metrics_rows(ref_cell)):
                    history_mismatch.append(cell.name)
        failures = self.attribute(self.monitor.failures)
        by_kind = {k: sum(f.kind == k for f in self.faults) for k in KINDS if k in self.args.kinds}
        passed = (not self.monitor.lost and not twice and not mismatched and not not_done and bool(everything))
        return {
            "seed": self.args.seed, "work_dir": str(self.work), "elapsed_s": round(LOG.t(), 1),
            "cells": len(everything), "cells_slurm": len(cells), "cells_disk_full": len(disk),
            "faults_injected": len(self.faults), "faults_by_kind": by_kind, "faults_skipped": self.skipped,
            "faults": [f.__dict__ for f in self.faults], "relaunch_rounds": self.rounds, "submits": self.submits,
            "finished": len(finished), "not_done": not_done,
            "lost": len(self.monitor.lost), "lost_events": self.monitor.lost,
            "trained_twice": len(twice), "trained_twice_cells": twice,
            "matched": matched, "mismatched": len(mismatched), "mismatches": mismatched,
            "worst_rel_diff": worst, "history_mismatches": history_mismatch,
            "failures": failures, "unexplained_failures": sum(f["cause"].startswith("UNEXPLAINED") for f in failures),
            "disk_full": self.disk_report, "repairs": self.repairs, "timed_out": self.timed_out, "passed": passed,
        }

    def attribute(self, failures: list[dict]) -> list[dict]:
        """Name the injected fault each failure follows: on the full disk, the disk; on SLURM, the
        last fault aimed at its cell (or at the node, or a concurrent run) before it was seen."""
        out = []
        for failure in failures:
            if failure["sweep"] == self.disk_sweep.name:
                disk_error = re.search(r"No space|ENOSPC|Errno 28|disk", failure["error"], re.IGNORECASE)
                cause = "disk_full" if disk_error else "UNEXPLAINED (during the disk-full episode)"
            else:
                before = [f for f in self.faults if (math.isnan(failure["t"]) or f.t <= failure["t"] + 1)
                          and (f.cell == failure["cell"] or f.cell is None and f.kind != "disk_full")]
                cause = f"after {before[-1].kind} at {before[-1].t:.0f} s" if before else "UNEXPLAINED"
            out.append({**failure, "cause": cause})
        return out

    # -- cleanup --
    def cleanup(self) -> None:
        if self.node_down:
            self.resume_node()
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc, signal.SIGKILL)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        active = active_jobs() or set()
        leftover = sorted(self.sweep_job_ids() & active)
        if leftover:
            LOG(f"cancelling jobs still queued: {' '.join(leftover)}")
            sh("scancel", *leftover)
        if self.mounted:
            done = subprocess.run(["umount", str(self.mount)], capture_output=True, text=True)
            if done.returncode:
                subprocess.run(["umount", "-l", str(self.mount)], check=False)
            self.mounted = False


# ---- the table ------------------------------------------------------------------------------------

def table(s: dict[str, Any]) -> str:
    ok = lambda good: "ok" if good else "FAIL"  # noqa: E731
    rows = [
        ("cells", f"{s['cells']} ({s['cells_slurm']} on SLURM, {s['cells_disk_full']} on the full disk)", ""),
        ("faults injected", str(s["faults_injected"]), ""),
        *[(f"  {kind}", str(n), "") for kind, n in s["faults_by_kind"].items()],
        ("faults not injected", str(len(s["faults_skipped"])),
         ", ".join(sorted({f["kind"] for f in s["faults_skipped"]}))),
        ("relaunch rounds", str(s["relaunch_rounds"]), ""),
        ("cluster repairs (not faults)", str(len(s["repairs"])), "; ".join(r["what"] for r in s["repairs"])[:80]),
        ("time limit reached", "yes" if s["timed_out"] else "no", ""),
        ("cells finished", f"{s['finished']} / {s['cells']}", ok(s["finished"] == s["cells"])),
        ("results lost", str(s["lost"]), ok(s["lost"] == 0)),
        ("cells trained twice", str(s["trained_twice"]), ok(s["trained_twice"] == 0)),
        ("results equal to the undisturbed run", f"{s['matched']} matched, {s['mismatched']} mismatched, "
         f"worst rel. diff {s['worst_rel_diff']:.3g}", ok(s["mismatched"] == 0)),
        ("metrics histories differing", str(len(s["history_mismatches"])), ""),
        ("failures recorded", f"{len(s['failures'])} ({s['unexplained_failures']} with no fault before them)", ""),
    ]
    width = max(len(r[0]) for r in rows) + 2
    value_width = max(len(r[1]) for r in rows) + 2
    lines = [f"soak: seed {s['seed']}, {s['elapsed_s']:.0f} s, work dir {s['work_dir']}", "-" * (width + value_width + 4)]
    lines += [f"{name:<{width}}{value:<{value_width}}{verdict}".rstrip() for name, value, verdict in rows]
    for f in s["failures"]:
        lines.append(f"  {f['sweep']}/{f['cell']} [{f['cause']}] {f['error'][:150]}")
    for item in s["not_done"]:
        lines.append(f"  not done: {item['sweep']}/{item['cell']}: {item['status']}")
    for item in s["lost_events"]:
        lines.append(f"  lost: {item['sweep']}/{item['cell']} at {item['t']:.0f} s: {item['what']}")
    for item in s["trained_twice_cells"]:
        lines.append(f"  trained twice: {item['sweep']}/{item['cell']}: steps {item['steps']}")
    for item in s["mismatches"][:10]:
        lines.append(f"  mismatch: {item['cell']}: {item.get('why') or item.get('diffs')}")
    lines.append("-" * (width + value_width + 4))
    lines.append(f"verdict: {'PASS' if s['passed'] else 'FAIL'}")
    return "\n".join(lines)


# ---- the command ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=50, help="at least this many cells (default 50)")
    p.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault kinds, targets and timing (default 0)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/soak"), help="wiped and recreated (default /tmp/soak)")
    p.add_argument("--small", action="store_true", help="8 cells, 4 faults, shorter cells (a quick check)")
    p.add_argument("--max-minutes", type=float, default=25.0, help="bound on the whole soak (default 25)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds to draw from (default: all: {','.join(KINDS)})")
    p.add_argument("--steps", type=int, help="trainer.max_steps per cell (default 1200; --small 1000)")
    p.add_argument("--eval-interval", type=int, default=100, help="trainer.eval_interval (default 100)")
    p.add_argument("--checkpoint-every", type=int, help="trainer.checkpoint_every_steps (default max_steps/10)")
    p.add_argument("--fault-gap", type=float, default=6.0, help="mean seconds between faults (default 6)")
    p.add_argument("--signal-timeout", type=float, default=10.0,
                   help="seconds a scancel/scontrol of a fault may take before it is stopped (default 10)")
    p.add_argument("--rounds", type=int, default=6, help="relaunch rounds at most (default 6)")
    p.add_argument("--reference-workers", type=int, default=2, help="workers of the undisturbed run (default 2)")
    p.add_argument("--disk-cells", type=int, default=2, help="cells of the disk-full episode (default 2)")
    p.add_argument("--tmpfs-mb", type=int, default=24, help="size of the disk-full episode's tmpfs (default 24)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    if args.small:
        args.cells, args.faults = min(args.cells, 8), min(args.faults, 4)
        args.steps = args.steps or 1000
    args.steps = args.steps or 1200
    args.checkpoint_every = args.checkpoint_every or max(1, args.steps // 10)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        p.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if args.disk_cells < 1:
        args.kinds = [k for k in args.kinds if k != "disk_full"]  # no cells for the full disk: no episode
    if not args.kinds and args.faults:
        p.error("--kinds: no fault kind left to draw from")
    if args.cells < 1 or args.faults < 0:
        p.error("--cells must be >= 1 and --faults >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_cluster()
    soak = Soak(args)
    try:
        summary = soak.run()
    finally:
        soak.cleanup()
    text = table(summary)
    print(text, flush=True)
    (soak.work / "table.txt").write_text(text + "\n")
    (soak.work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
