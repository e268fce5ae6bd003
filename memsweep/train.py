"""`memsweep-train`: the Hydra app that runs one cell (or a multirun grid of cells with -m).

Examples:
    memsweep-train                                     # the default cell, into runs/cells/<cell id>
    memsweep-train model=paper-2L-d128 data.n_samples=4096 precision=bf16
    memsweep-train -m precision=fp32,bf16 seed=0,1     # four cells
    memsweep-train hydra.run.dir=/scratch/cell1        # any run dir
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from memsweep.config import CONFIG_FILE, ConfigError, cell_config, load_cell_config, save_cell_config
from memsweep.preemption import EXIT_RESUMABLE
from memsweep.preflight import check_resources


def _cell_id(*, _root_: DictConfig) -> str:
    """`${memsweep_cell_id:}`: the cell id of the config being composed (for run dir names)."""
    parts = {k: OmegaConf.to_container(_root_[k], resolve=True) if isinstance(_root_[k], DictConfig) else _root_[k]
             for k in ("model", "data", "trainer", "logger", "seed", "precision") if k in _root_}
    try:
        return cell_config(parts).cell_id
    except ConfigError:
        return "invalid-config"  # the app itself reports the error before anything runs


OmegaConf.register_new_resolver("memsweep_cell_id", _cell_id, replace=True)


HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p",
               "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun"}
"""Hydra's own command-line flags: with any of these, Hydra answers and memsweep checks nothing."""


def check_overrides(args: list[str]) -> None:
    """Exit 2 with `memsweep: config error: ...` if any cell of these overrides is invalid (every
    cell of a -m grid): before Hydra composes, so a typo leaves no run dir and needs no torch."""
    if any(a.split("=")[0] in HYDRA_FLAGS for a in args):
        return
    from memsweep.sweep import plan_sweep  # Hydra's planner: no torch

    try:
        plan_sweep([a for a in args if not a.startswith("-")])
    except ConfigError as err:
        print(f"memsweep: config error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The `memsweep-train` entry point: check the overrides, then run Hydra's app."""
    check_overrides(sys.argv[1:])
    app()


@hydra.main(version_base="1.3", config_path="pkg://memsweep.conf", config_name="train")
def app(cfg: DictConfig) -> float:
    from memsweep.cell import run_cell_dir  # torch and Lightning load only where a cell trains
    from memsweep.console import cell_summary, quiet_lightning

    quiet_lightning(verbose=bool(HydraConfig.get().verbose))

    try:
        cell = cell_config(cfg)
    except ConfigError as err:
        print(f"memsweep: config error: {err}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config_file = run_dir / CONFIG_FILE
    existing = load_cell_config(config_file).cell_id if config_file.exists() else cell.cell_id
    if existing != cell.cell_id:
        print(f"memsweep: {run_dir} holds another cell ({existing}, not {cell.cell_id}); "
              "choose another hydra.run.dir", file=sys.stderr)
        sys.exit(2)
    save_cell_config(cell, config_file)
    try:
        check_resources(cell, run_dir)
    except ConfigError as err:
        print(f"memsweep: config error: {err}", file=sys.stderr)
        sys.exit(2)
    record = run_cell_dir(run_dir)
    if record["status"] in ("interrupted", "preempted"):
        print(f"memsweep: cell {cell.cell_id} {record['status']} ({record.get('stop_cause')}) at step "
              f"{record['steps']}, checkpointed; rerun the same command to resume; {run_dir}")
        sys.exit(EXIT_RESUMABLE)
    if record["status"] != "done":
        print(f"memsweep: cell {cell.cell_id} {record['status']}; {run_dir}")
        return float("nan")
    print(f"memsweep: {cell_summary(record)}; {run_dir}/result.json")
    return record["memorized_bits"]


if __name__ == "__main__":
    main()
