"""Plan a sweep: expand a grid exactly as `memsweep-train -m` would, validate every cell before
anything runs, and write one resolved config per cell.

Why a planner next to Hydra's multirun: multirun validates and trains in one blocking process. A
plan is the dry run (every cell, its size and cost, before anything is queued) and the input of a
launcher that queues cells and exits: each `<sweep dir>/<cell id>/config.yaml` is what
`memsweep.cell.run_cell_dir` reads back.

The expansion is Hydra's own, so the cells and their order are the ones multirun runs: overrides
are parsed by Hydra's OverridesParser; the preset's `hydra.sweeper.params` come first and a
command-line override of the same key replaces it; BasicSweeper.split_arguments forms the cross
product. Hydra's full compose costs ~70 ms a cell, too slow for a 3,000-cell grid, so a cell is
composed the way compose works inside: the defaults list (config-group choices, split from the
value overrides by Hydra's own `Overrides`) is composed once per distinct choice, then the cell's
value overrides are applied with the function compose applies them with. Those are Hydra
internals; hydra-core is pinned (==1.3.8), and tests compare the result with a real multirun.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.defaults_list import Overrides
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError

from memsweep.config import CONFIG_FILE, CellConfig, ConfigError, cell_config, save_cell_config, unknown_key_message
from memsweep.preflight import check_resources
from memsweep.saturation import decay_steps, probe_steps
from memsweep.record import read_result, write_json_atomic

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class PlannedCell:
    cell_id: str
    cell_dir: Path
    config: CellConfig
    overrides: tuple[str, ...]
    """The Hydra overrides that produced this cell (those of its multirun job)."""


@dataclass(frozen=True)
class SweepPlan:
    name: str
    """sweep_name: names the sweep dir and the W&B group."""
    sweep_dir: Path
    cells: list[PlannedCell]
    """De-duplicated by cell id, in grid order."""
    overrides: tuple[str, ...] = ()
    """The command-line overrides the plan was made from (recorded in sweep.json)."""


class _Composer:
    """Hydra composition of many configs that share a few defaults lists (see the module doc)."""

    def __init__(self) -> None:
        self.repo = GlobalHydra.instance().config_loader().repository
        self.parser = OverridesParser.create()
        self.bases: dict[tuple[tuple[str, ...], bool], DictConfig] = {}
        self.parsed: dict[str, Override] = {}

    def parse(self, lines: list[str]) -> list[Override]:
        """Parsed overrides, each line parsed once: a grid repeats the same few lines."""
        for line in lines:
            if line not in self.parsed:
                try:
                    self.parsed[line] = self.parser.parse_overrides([line])[0]
                except HydraException as err:
                    raise ConfigError(f"{line}: {_first_line(err)}") from None
        return [self.parsed[line] for line in lines]

    def compose(self, lines: list[str], with_hydra: bool = False) -> DictConfig:
        """What `compose("train", lines)` returns (no sweep overrides in `lines`)."""
        parsed = self.parse(lines)
        app = [o for o in parsed if not o.is_hydra_override()]
        try:
            values = Overrides(self.repo, app).config_overrides
        except HydraException as err:
            raise ConfigError(f"defaults: {_first_line(err)}") from None
        value_ids = {id(o) for o in values}
        defaults = tuple(o.input_line for o in parsed if id(o) not in value_ids)
        key = (defaults, with_hydra)
        if key not in self.bases:
            try:
                self.bases[key] = compose("train", overrides=list(defaults), return_hydra_config=with_hydra)
            except MissingConfigException as err:
                group, _, name = (err.missing_cfg_file or "defaults").rpartition("/")
                choices = f"; choose one of {', '.join(sorted(err.options))}" if err.options else ""
                raise ConfigError(f"{group or 'defaults'}: no option {name!r}{choices}") from None
            except HydraException as err:
                raise ConfigError(f"defaults: {_first_line(err)}") from None
        cfg = copy.deepcopy(self.bases[key])
        for override in values:
            try:
                ConfigLoaderImpl._apply_overrides_to_config([override], cfg)
            except HydraException as err:
                if isinstance(err.__cause__, ConfigAttributeError):  # a key the config does not have
                    parent, _, _ = override.key_or_group.rpartition(".")
                    node = OmegaConf.select(cfg, parent) if parent else cfg
                    known = list(node.keys()) if isinstance(node, DictConfig) else []
                    raise ConfigError(unknown_key_message(override.key_or_group, known)) from None
                raise ConfigError(f"{override.key_or_group}: {_first_line(err)}") from None
        return cfg


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def plan_sweep(overrides: list[str], sweep_dir: Path | None = None) -> SweepPlan:
    """Expand and validate a grid; raises ConfigError (key first, then the cell's overrides)."""
    with initialize_config_module("memsweep.conf", version_base="1.3"):
        composer = _Composer()
        parsed = composer.parse(list(overrides))
        for o in parsed:
            if o.is_sweep_override() and (o.is_hydra_override() or not o.is_discrete_sweep()):
                raise ConfigError(f"{o.get_key_element()}: the basic sweeper cannot sweep {o.input_line!r} "
                                  "(Hydra's own settings and interval sweeps are not expandable)")
        hydra_lines = [o.input_line for o in parsed if o.is_hydra_override()]
        master = composer.compose([o.input_line for o in parsed if not o.is_sweep_override()], with_hydra=True)
        params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
        task = [o.input_line for o in parsed if not o.is_hydra_override()]
        jobs = BasicSweeper.split_arguments(composer.parse(params + task), max_batch_size=None)[0]
        root = Path(sweep_dir if sweep_dir is not None else master.hydra.sweep.dir).resolve()
        cells: dict[str, PlannedCell] = {}
        for job in jobs:
            try:
                composed = composer.compose(job + hydra_lines)
                _check_one_way_to_n(composed, job)
                config = cell_config(composed)
                check_resources(config, root / config.cell_id)
            except ConfigError as err:
                raise ConfigError(f"{err} (cell: {' '.join(job) or 'no overrides'})") from None
            cells.setdefault(config.cell_id, PlannedCell(config.cell_id, root / config.cell_id, config, tuple(job)))
        return SweepPlan(str(master.sweep_name), root, with_references(list(cells.values()), root), tuple(overrides))


def _check_one_way_to_n(composed: DictConfig, job: list[str]) -> None:
    """Refuse data.n_samples given beside data.capacity_ratio, which would silently override it."""
    ratio = OmegaConf.select(composed, "data.capacity_ratio", default=None)
    if ratio is not None and any(line.split("=", 1)[0].lstrip("+~") == "data.n_samples" for line in job):
        raise ConfigError(f"data.n_samples: this grid places N by data.capacity_ratio={ratio}, which sets "
                          "data.n_samples from the model; give one of them (data.capacity_ratio=null to set N "
                          "directly)")


def with_references(cells: list[PlannedCell], root: Path) -> list[PlannedCell]:
    """The grid's cells with the reference cells their text memorization is measured against
    (memsweep.text.reference) added where the grid lacks them, references first: workers walk
    the plan in order, so the references start before the cells that need them."""
    references: dict[str, PlannedCell] = {}
    for cell in cells:
        reference = cell.config.reference_config()
        if reference is None or reference.cell_id in references:
            continue
        overrides = (*(o for o in cell.overrides if not o.startswith("data.n_samples=")),
                     f"data.n_samples={reference.data.n_samples}")
        references[reference.cell_id] = next((c for c in cells if c.cell_id == reference.cell_id),
                                             PlannedCell(reference.cell_id, root / reference.cell_id, reference, overrides))
    return [*references.values(), *(c for c in cells if c.cell_id not in references)]


def reference_of(cell: PlannedCell) -> str | None:
    """The id of the cell `cell` must wait for, if any."""
    reference = cell.config.reference_config()
    return None if reference is None or reference.cell_id == cell.cell_id else reference.cell_id


def _finished(cell_dir: Path) -> bool:
    """A done cell is never touched; neither is one whose result.json cannot be read."""
    try:
        return (read_result(cell_dir) or {}).get("status") == "done"
    except ValueError:
        return True


def write_plan(plan: SweepPlan, packs: list[list[str]] | None = None) -> None:
    """Write `<cell dir>/config.yaml` for every cell that is not done, then `sweep.json`; with
    `packs` (lists of cell ids, memsweep.pack.plan), which cells were planned to train together."""
    for cell in plan.cells:
        if not _finished(cell.cell_dir):
            save_cell_config(cell.config, cell.cell_dir / CONFIG_FILE)
    write_json_atomic(plan.sweep_dir / SWEEP_FILE, {
        "name": plan.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sweep_dir": str(plan.sweep_dir),
        "overrides": list(plan.overrides),
        "cells": [{"cell_id": c.cell_id, "overrides": list(c.overrides), "after": reference_of(c)} for c in plan.cells],
        **({"packs": packs} if packs is not None else {}),
    })


class SweepDirError(ValueError):
    """A sweep dir, or its sweep.json, that cannot be used; the message is one line naming it."""


def check_cell_id(cell_id: object) -> str:
    """A cell id names a directory inside the sweep dir, so it must be exactly what config.py
    makes (12 lowercase hex digits), never a path like `../../x`."""
    if not isinstance(cell_id, str) or not re.fullmatch(r"[0-9a-f]{12}", cell_id):
        raise ValueError(f"cell id {cell_id!r} is not 12 lowercase hex digits")
    return cell_id


def read_plan(sweep_dir: Path) -> dict | None:
    """sweep.json of a sweep dir, or None if the sweep was not planned (e.g. a plain multirun).
    Checked before anyone uses it: a list of cells, each with a valid cell id and its overrides."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SweepDirError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise SweepDirError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("cells"), list):
        raise SweepDirError(f"{path} is malformed: not an object with a list of cells")
    for i, cell in enumerate(plan["cells"]):
        try:
            if not isinstance(cell, dict):
                raise ValueError("not an object")
            check_cell_id(cell.get("cell_id"))
            overrides = cell.get("overrides")
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ValueError("overrides is not a list of strings")
        except ValueError as err:
            raise SweepDirError(f"{path} is malformed: cells[{i}]: {err}") from None
    return plan


def estimated_flops(cfg: CellConfig, n_params: int) -> float:
    """An upper bound on a cell's compute: 6·P per trained token (forward and backward) for all
    max_steps·batch·S tokens and, under schedule=wsd, every decay branch's steps, plus 2·P per
    token for the full evaluation of the training and held-out sets every eval_interval steps and
    after each branch. Saturation usually stops a cell earlier."""
    d, t = cfg.data, cfg.trainer
    steps, evaluations = t.max_steps, t.max_steps // t.eval_interval
    if t.schedule == "wsd":
        branches = probe_steps(t.saturation.min_steps, t.max_steps, t.saturation.cooldown)
        steps += sum(decay_steps(step, t.saturation.cooldown) for step in branches)
        evaluations += len(branches)
    train_tokens = steps * t.batch_size * d.seq_len
    eval_tokens = evaluations * (d.n_samples + d.n_heldout) * d.seq_len
    return 6.0 * n_params * train_tokens + 2.0 * n_params * eval_tokens
