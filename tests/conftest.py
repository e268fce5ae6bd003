"""Fixtures that compose the real Hydra config (conf/) and shrink it for a 2-core CPU."""

from __future__ import annotations

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
