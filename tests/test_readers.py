"""Readers never trust the files they read: malformed records, claims and plans, mistyped or
unwritable sweep dirs and hostile sbatch settings give one clear line, never a traceback
(hand-written files in tmp_path, no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import pytest

from memsweep.claim import CLAIM_DIR
from memsweep.cli import main
from memsweep.config import ConfigError
from memsweep.launcher import is_queued, make_executor, slurm_record
from memsweep.local_run import plan_cell_dirs
from memsweep.record import RESULT_FILE, clean_temp_files, read_result, write_json_atomic
from memsweep.sweep import SWEEP_FILE, SweepDirError, check_cell_id
from tests.test_cli import write_claim

GOOD, BAD = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
FULL = {"status": "done", "cell_id": GOOD, "n_params": 37104, "n_samples": 8, "n_layer": 1, "d_model": 16,
        "n_head": 2, "vocab_size": 2048, "seq_len": 64, "precision": "fp32", "seed": 0, "memorized_bits": 4356.5,
        "dataset_bits": 5632.0, "test_loss": 7.7, "train_loss": 2.1, "stop_reason": "max_steps",
        "tokens_per_sec": 1000.0, "world_size": 1, "device": "cpu", "device_name": None}
"""A done record with every field the report reads."""


def make_sweep(root: Path, bad: str | None = None) -> Path:
    """A planned two-cell sweep: one complete done cell and one whose result.json is `bad`
    (written verbatim; "DIR" makes result.json a directory)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SWEEP_FILE).write_text(json.dumps({"name": "t", "cells": [
        {"cell_id": GOOD, "overrides": ["seed=0"]}, {"cell_id": BAD, "overrides": ["seed=1"]}]}))
    write_json_atomic(root / GOOD / RESULT_FILE, FULL)
    (root / BAD).mkdir()
    if bad == "DIR":
        (root / BAD / RESULT_FILE).mkdir()
    elif bad is not None:
        (root / BAD / RESULT_FILE).write_text(bad)
    return root


def status_of(sweep_dir: Path, capsys) -> dict[str, dict]:
    assert main(["status", str(sweep_dir), "--json"]) == 0
    return {c["cell_id"]: c for c in json.loads(capsys.readouterr().out)["cells"]}


def report_missing(sweep_dir: Path, capsys) -> dict[str, dict]:
    assert main(["report", str(sweep_dir), "--bootstrap", "10"]) == 0
    capsys.readouterr()
    with (sweep_dir / "report" / "missing.csv").open() as fh:
        return {row["cell_id"]: row for row in csv.DictReader(fh)}


CORRUPT = {
    "array": ("[1, 2]", "not a JSON object"),
    "unknown status": ('{"status": "weird"}', "status 'weird' is none of running, done"),
    "no status": ('{"n_params": 3}', "status None is none of"),
    "not json": ('{"status": "do', "is corrupt (Unterminated string"),
    "directory": ("DIR", "cannot be read (Is a directory)"),
}


@pytest.mark.parametrize("content, reason", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_malformed_record_is_listed_corrupt_by_status_collect_and_report(tmp_path, capsys, content, reason):
    sweep_dir = make_sweep(tmp_path / "s", content)
    cells = status_of(sweep_dir, capsys)
    assert cells[GOOD]["state"] == "done"
    assert cells[BAD]["state"] == "corrupt" and reason in cells[BAD]["detail"]
    assert str(sweep_dir / BAD / RESULT_FILE) in cells[BAD]["detail"]

    assert main(["status", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(BAD) and "corrupt" in line and reason in line for line in lines)
    assert lines[-1] == "2 cells: 1 done, 1 corrupt"

    assert main(["collect", str(sweep_dir)]) == 0
    with (sweep_dir / "results.csv").open() as fh:
        rows = {row["cell_id"]: row for row in csv.DictReader(fh)}
    assert rows[BAD]["status"] == "corrupt" and reason in rows[BAD]["detail"]

    missing = report_missing(sweep_dir, capsys)
    assert missing[BAD]["state"] == "corrupt" and reason in missing[BAD]["detail"]
    assert GOOD not in missing


@pytest.mark.parametrize("record, reason", [
    ({"status": "done"}, "done record lacks fields: n_params, n_samples, n_layer"),
    ({k: v for k, v in FULL.items() if k != "test_loss"}, "done record lacks fields: test_loss"),
    ({**FULL, "cell_id": BAD, "n_params": "many"}, "done record has invalid values: n_params='many'"),
    ({**FULL, "cell_id": BAD, "seed": True, "precision": 32}, "invalid values: seed=True, precision=32"),
    ({**FULL, "cell_id": BAD, "tokens_per_sec": "fast"}, "invalid values: tokens_per_sec='fast'"),
], ids=["bare", "no loss", "text", "bool and number", "optional"])
def test_a_done_record_the_report_cannot_use_is_corrupt_there(tmp_path, capsys, record, reason):
    sweep_dir = make_sweep(tmp_path / "s", json.dumps(record))
    assert status_of(sweep_dir, capsys)[BAD]["state"] == "done"  # finished: status and plan leave it alone
    missing = report_missing(sweep_dir, capsys)
    assert missing[BAD]["state"] == "corrupt" and reason in missing[BAD]["detail"]
    assert "1 cells done, 1 not done" in (sweep_dir / "report" / "report.md").read_text()


def test_a_diverged_cell_with_null_losses_is_reported(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s", json.dumps({**FULL, "cell_id": BAD, "seed": 1, "test_loss": None,
                                                        "train_loss": None}))
    (sweep_dir / GOOD / RESULT_FILE).write_text(json.dumps({**FULL, "test_loss": None, "train_loss": None}))
    assert report_missing(sweep_dir, capsys) == {}
    assert "2 cells done, 0 not done" in (sweep_dir / "report" / "report.md").read_text()


def test_a_corrupt_per_sample_file_makes_the_cell_corrupt_in_the_report(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s")
    (sweep_dir / GOOD / "per_sample_nll_bits.npz").write_bytes(b"PK\x03\x04 truncated")
    missing = report_missing(sweep_dir, capsys)
    assert missing[GOOD]["state"] == "corrupt" and "per_sample_nll_bits.npz is corrupt" in missing[GOOD]["detail"]


def test_a_running_record_without_a_live_claim_is_stale_never_running(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s", '{"status": "running"}')
    other = sweep_dir / "cccccccccccc"
    write_json_atomic(other / RESULT_FILE, {"status": "running"})
    write_claim(other, generation=3, heartbeat=time.time(), released=True)
    cells = status_of(sweep_dir, capsys)
    assert cells[BAD]["state"] == "stale"
    assert cells[BAD]["detail"] == "process gone: no claim; result.json still says running"
    assert cells["cccccccccccc"]["state"] == "stale"
    assert "claim released (gpu-node-7 pid 4242, heartbeat 0s ago, generation 3)" in cells["cccccccccccc"]["detail"]


def test_a_garbage_claim_is_live_for_its_grace_period_then_stale(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s", '{"status": "running"}')
    (sweep_dir / BAD / CLAIM_DIR).mkdir()
    garbage = sweep_dir / BAD / CLAIM_DIR / "000000001.json"
    garbage.write_text("\x00garbage")
    cell = status_of(sweep_dir, capsys)[BAD]
    assert cell["state"] == "running" and f"{CLAIM_DIR}/000000001.json is unreadable" in cell["detail"]
    os.utime(garbage, (time.time() - 3600,) * 2)
    assert status_of(sweep_dir, capsys)[BAD]["state"] == "stale"


def test_cells_are_found_by_their_claims_dir(tmp_path, capsys):
    write_claim(tmp_path / "s" / "dddddddddddd", heartbeat=time.time())
    assert status_of(tmp_path / "s", capsys)["dddddddddddd"]["state"] == "running"


def not_a_sweep(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "capacity-sweep" / GOOD).mkdir(parents=True)
    write_json_atomic(tmp_path / "capacity-sweep" / GOOD / RESULT_FILE, FULL)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    return {"no such directory": tmp_path / "nope", "a file, not a directory": tmp_path / "a-file",
            "no sweep.json and no cell dirs": tmp_path / "empty",
            f"no such directory; did you mean {tmp_path / 'capacity-sweep'}?": tmp_path / "capacity-swep"}


@pytest.mark.parametrize("command", ["status", "collect", "report"])
def test_a_path_that_is_no_sweep_dir_is_one_line_and_exit_2(tmp_path, capsys, command):
    for why, path in not_a_sweep(tmp_path).items():
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err == f"memsweep: {path} is not a sweep dir: {why}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "capacity-sweep", "empty"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is malformed: not an object with a list of cells"),
    ('{"cells": {"a": 1}}', "is malformed: not an object with a list of cells"),
    ('{"cells": [{"overrides": []}]}', "is malformed: cells[0]: cell id None is not 12 lowercase hex digits"),
    ('{"cells": [{"cell_id": "../../x", "overrides": []}]}', "cells[0]: cell id '../../x' is not 12 lowercase hex"),
    (f'{{"cells": [{{"cell_id": "{GOOD}", "overrides": "seed=0"}}]}}', "cells[0]: overrides is not a list of strings"),
], ids=["not json", "array", "cells not a list", "no cell id", "traversal", "overrides"])
def test_a_malformed_sweep_json_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    sweep_dir = make_sweep(tmp_path / "sweeps" / "s")
    (sweep_dir / SWEEP_FILE).write_text(content)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / RESULT_FILE).write_text(json.dumps(FULL))
    before = sorted(tmp_path.rglob("*"))
    for command in ("status", "collect", "report"):
        assert main([command, str(sweep_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"memsweep: {sweep_dir / SWEEP_FILE}") and message in err and err.count("\n") == 1
    with pytest.raises(SweepDirError, match="not 12 lowercase hex|malformed|not valid JSON"):
        plan_cell_dirs(sweep_dir)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, inside the sweep dir or out of it


def test_check_cell_id():
    assert check_cell_id("0123456789ab") == "0123456789ab"
    for bad in ["../../x", "0123456789AB", "0123456789a", "0123456789abc", "/tmp/abcdefabcd", 12, None]:
        with pytest.raises(ValueError, match="is not 12 lowercase hex digits"):
            check_cell_id(bad)


@pytest.mark.parametrize("command, default_out", [("collect", "results.csv"), ("report", "report")])
def test_an_unwritable_default_output_names_it_and_suggests_out(tmp_path, capsys, monkeypatch, command, default_out):
    sweep_dir = make_sweep(tmp_path / "s")
    real_open, real_mkdir = Path.open, Path.mkdir

    def refuse(real):
        def guarded(self, *args, **kwargs):
            if self.parent == sweep_dir and self.name == default_out:  # what a read-only sweep dir does
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return guarded

    monkeypatch.setattr(Path, "open", refuse(real_open))
    monkeypatch.setattr(Path, "mkdir", refuse(real_mkdir))
    assert main([command, str(sweep_dir)]) == 2
    assert capsys.readouterr().err == (f"memsweep: cannot write {sweep_dir / default_out}: Permission denied; "
                                       "is the sweep dir read-only? pass --out to write elsewhere\n")
    out = tmp_path / "elsewhere" / ("r.csv" if command == "collect" else "r")
    assert main([command, str(sweep_dir), "--out", str(out)]) == 0 and out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 directory")
def test_a_read_only_sweep_dir(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s")
    sweep_dir.chmod(0o555)
    try:
        for command in ("collect", "report"):
            assert main([command, str(sweep_dir)]) == 2
            assert "Permission denied; is the sweep dir read-only? pass --out" in capsys.readouterr().err
    finally:
        sweep_dir.chmod(0o755)


def test_an_out_path_under_a_file_is_one_line(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path / "s")
    (tmp_path / "f").write_text("x")
    assert main(["collect", str(sweep_dir), "--out", str(tmp_path / "f" / "r.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memsweep: cannot write {tmp_path / 'f' / 'r.csv'}: ") and err.count("\n") == 1
    assert "--out" not in err
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "f" / "r")]) == 2
    assert capsys.readouterr().err.startswith(f"memsweep: cannot write {tmp_path / 'f' / 'r'}: ")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_records_are_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / RESULT_FILE, {"status": "done"})
    finally:
        os.umask(old)
    assert (tmp_path / RESULT_FILE).stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_record_with_nan_or_infinity_is_refused(tmp_path, value):
    path = tmp_path / RESULT_FILE
    with pytest.raises(ValueError, match=rf"{path}: not written: metrics\.1\.test_loss is {value!r}"):
        write_json_atomic(path, {"status": "done", "metrics": [{"test_loss": 1.0}, {"test_loss": value}]})
    assert list(tmp_path.iterdir()) == []


def test_read_result_refuses_what_is_not_a_record(tmp_path):
    assert read_result(tmp_path) is None
    assert read_result(tmp_path / "no-such-cell") is None
    (tmp_path / RESULT_FILE).write_text('{"status": ["done"]}')
    with pytest.raises(ValueError, match=r"result\.json is corrupt \(status \['done'\] is none of"):
        read_result(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file/result\.json cannot be read \(Not a directory\)"):
        read_result(tmp_path / "file")


def test_clean_temp_files_removes_only_old_temp_files(tmp_path):
    old, fresh, other = tmp_path / ".result.json.x1.tmp", tmp_path / ".result.json.x2.tmp", tmp_path / "keep.tmp"
    for path in (old, fresh, other):
        path.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert clean_temp_files(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
    assert clean_temp_files(tmp_path / "missing") == []


@pytest.mark.parametrize("params, message", [
    ({"env": {"A;rm -rf /": "1"}}, r"hydra\.job\.env_set: 'A;rm -rf /' is not a shell variable name"),
    ({"env": {"1X": "1"}}, r"hydra\.job\.env_set: '1X' is not a shell variable name"),
    ({"env": {"X": "1\nrm -rf /"}}, r"hydra\.job\.env_set\.X: '1\\nrm -rf /' holds a newline"),
    ({"setup": ["module load x", "echo\nrm -rf /"]}, r"hydra\.launcher\.setup\[1\]: .* holds a newline"),
    ({"partition": "debug\x00"}, r"hydra\.launcher\.partition: .* holds a newline or NUL"),
    ({"python": "python\r"}, r"cluster\.python: .* holds a newline"),
    ({"additional_parameters": {"Mail Type": "END"}}, r"additional_parameters: 'Mail Type' is not an sbatch option"),
    ({"additional_parameters": {"mail-type": "END\n#SBATCH --x"}}, r"additional_parameters\.mail-type: .* newline"),
    ({"additional_parameters": {"a\nb": "1"}}, r"hydra\.launcher\.additional_parameters: 'a\\nb' holds a newline"),
], ids=["injection", "digit", "env value", "setup", "nul", "python", "option name", "option value", "option key"])
def test_make_executor_refuses_what_would_inject_sbatch_lines(tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        make_executor(tmp_path, params)


def test_make_executor_keeps_valid_settings_and_names_an_unknown_key_as_a_config_error(tmp_path):
    executor = make_executor(tmp_path, {"env": {"OMP_NUM_THREADS": "2", "_X": "a b"}, "setup": ["echo hi"],
                                        "additional_parameters": {"mail-type": "END"}, "timeout_min": 5})
    assert executor._executor.parameters["setup"] == ["export OMP_NUM_THREADS=2", "export _X='a b'", "echo hi"]
    with pytest.raises(ConfigError, match=r"hydra\.launcher: Unknown argument 'no_such_option'"):
        make_executor(tmp_path, {"no_such_option": 1})  # submitit's NameError, which submit did not catch


def test_submit_reports_an_injected_setup_line_as_a_config_error(tmp_path, capsys):
    args = ["submit", "experiment=smoke", "cluster=slurm-local", "resources=cpu",
            'hydra.launcher.setup=["echo a\nrm -rf x"]', "--sweep-dir", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("memsweep: config error: hydra.launcher.setup[0]: 'echo a\\nrm -rf x' holds a newline")
    assert err.endswith("nothing was queued\n") and not (tmp_path / "s").exists()


def test_a_slurm_json_that_is_no_object_is_no_record(tmp_path):
    (tmp_path / "slurm.json").write_text("[1]")
    assert slurm_record(tmp_path) is None and not is_queued(tmp_path, {"1"})
