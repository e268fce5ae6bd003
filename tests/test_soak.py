"""The soak (benchmarks/soak.py, issue #12) in small: a few tiny cells on the real local SLURM,
hit by kill -9, scancel, scontrol requeue, USR2 and a corrupted checkpoint, relaunched until done,
and compared bit for bit with the same cells run undisturbed.

Needs root (launch/local-slurm starts a real cluster); about 2-3 minutes on 2 cores. The full soak
is `python benchmarks/soak.py --cells 50 --faults 20` (see its docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOAK = ROOT / "benchmarks" / "soak.py"
KINDS = ("kill9", "scancel", "requeue", "corrupt", "usr2")



@pytest.mark.slurm
@pytest.mark.slow
def test_small_soak_loses_nothing_trains_nothing_twice_and_matches_the_undisturbed_run(cluster, tmp_path):
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--cells", "6", "--faults", str(len(KINDS)), "--kinds", ",".join(KINDS),
         "--seed", "0", "--steps", "1200", "--fault-gap", "3", "--work-dir", str(tmp_path / "soak"),
         "--max-minutes", "3.5", "--json", str(summary_path)],
        capture_output=True, text=True, timeout=330, cwd=tmp_path)
    output = done.stdout[-6000:] + done.stderr[-3000:]
    assert summary_path.exists(), output
    summary = json.loads(summary_path.read_text())

    # Every planned fault was injected, each kind at least once, each logged with time and target.
    assert summary["faults_by_kind"] == {kind: 1 for kind in KINDS}, output
    assert all(f["t"] > 0 and f["target"] and f["cell"] for f in summary["faults"]), summary["faults"]
    # The invariants of the table.
    assert summary["lost"] == 0, summary["lost_events"]
    assert summary["trained_twice"] == 0, summary["trained_twice_cells"]
    assert summary["cells"] >= 6 and summary["finished"] == summary["cells"], summary["not_done"]
    assert summary["matched"] == summary["cells"] and summary["mismatched"] == 0, summary["mismatches"]
    assert summary["worst_rel_diff"] == 0
    # Kill -9, scancel and the rest leave no `failed` record: nothing failed that a fault did not explain.
    assert summary["unexplained_failures"] == 0, summary["failures"]
    assert summary["passed"] and done.returncode == 0, output
    # One table, printed at the end.
    assert "results lost" in done.stdout and "verdict: PASS" in done.stdout
