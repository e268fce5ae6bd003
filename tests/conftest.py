"""Fixtures that compose the real Hydra config (conf/) and shrink it for a 2-core CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import memsweep.train  # noqa: F401  registers the ${memsweep_cell_id:} resolver
from memsweep.config import CellConfig, cell_config

SMALL = [
    "logger=none",
    "data.n_samples=32",
    "data.n_heldout=64",
    "trainer.max_steps=300",
    "trainer.eval_interval=50",
    "trainer.batch_size=32",
    "trainer.saturation.min_steps=100000",
]


def compose_config(overrides: list[str] = ()):
    with initialize_config_module("memsweep.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def small_cell():
    """A validated CellConfig from conf/train.yaml with SMALL applied, then `overrides`."""

    def make(*overrides: str) -> CellConfig:
        return cell_config(compose_config([*SMALL, *overrides]))

    return make


LOCAL_SLURM = Path(__file__).resolve().parents[1] / "launch" / "local-slurm"
APT_FAILED = 3  # launch/local-slurm's exit code when the packages cannot be installed


def local_slurm(command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SLURM), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    """The real one-node SLURM of launch/local-slurm (root only), started if it is not up and left
    running for the tests after."""
    if os.geteuid() != 0:
        pytest.skip("launch/local-slurm needs root: it installs packages and starts daemons")
    started = local_slurm("start")
    if started.returncode == APT_FAILED:
        pytest.skip(f"apt-get could not install the SLURM packages:\n{started.stderr[-2000:]}")
    assert started.returncode == 0, f"launch/local-slurm start failed:\n{started.stderr}"


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """One corpus/tokenizer/pool cache ($MEMSWEEP_CACHE) per test module: built once, read by every test in it."""
    cache = tmp_path_factory.mktemp("memsweep-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMSWEEP_CACHE", str(cache))
        yield cache


def run_sweep(tmp_path_factory, name: str, grid: list[str], bootstrap: int) -> Path:
    """`memsweep run` a grid with 2 workers into a fresh sweep dir called `name`; that dir."""
    from memsweep.cli import main

    sweep_dir = tmp_path_factory.mktemp(name) / name
    assert main(["run", *grid, "--sweep-dir", str(sweep_dir), "--workers", "2", "--bootstrap", str(bootstrap)]) == 0
    return sweep_dir
