"""`memsweep`: plan a sweep, see where it stands, collect its results.

    memsweep plan experiment=capacity seed=0,1       # dry run: expand, validate, cost (--write: the plan)
    memsweep plan experiment=capacity --pack auto --device gpu   # ... and the packs (memsweep.pack) and their cost
    memsweep submit experiment=capacity cluster=slurm resources=gpu-1   # queue SLURM arrays, exit
    memsweep status runs/sweeps/capacity [--json]     # each cell: done, failed, running, stale, corrupt, ...
    memsweep collect runs/sweeps/capacity --out results.parquet
    memsweep sync runs/sweeps/capacity                # upload the cells' offline W&B runs
    memsweep run experiment=reproduce-small --workers 2   # plan, run here, report
    memsweep report runs/sweeps/reproduce-small       # capacity, alpha, double descent, MI, throughput
    memsweep corpus list | fetch small-mixed          # the built-in text corpora (data=text)
    memsweep perspectives runs/sweeps/reproduce-text-small --n-samples 256   # Chen et al.'s analyses

Each subcommand is a `_add_<name>(subparsers)` function that registers its parser and handler;
adding one (e.g. `submit`) is that function plus a line in COMMANDS. Heavy imports stay inside the
handlers, so `status` answers quickly on a login node.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from memsweep.submit_cli import _pack_value, add_pack_options, add_submit_command

ASSUMED_FLOPS_PER_SECOND = 5e13
"""For the plan's hours column: 50 TFLOP/s sustained, roughly an A100 or H100 at modest MFU in
bf16. Small models reach far less; pass --flops-per-second with a measured figure."""


def _error(message: str) -> int:
    print(f"memsweep: {message}", file=sys.stderr)
    return 2


def _one_line(err: Exception) -> str:
    """A SweepDirError's message (one line already), or an OSError's path and reason."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def _write_failed(out: Path, err: OSError, default_out: bool) -> str:
    """One line for an output that cannot be written; the default one is inside the sweep dir,
    which may be someone else's or read-only."""
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
    hint = "; is the sweep dir read-only? pass --out to write elsewhere" if default_out else ""
    return f"cannot write {out}: {err.strerror or err}{where}{hint}"


def _check_slurm_allocation(plan, overrides: list[str]) -> None:
    """With a SLURM cluster preset, every cell's devices x nodes must match the sbatch tasks."""
    if not any(o.split("=")[0] in ("cluster", "+cluster") and "slurm" in o for o in overrides):
        return
    from memsweep.submit_cli import check_allocation, launch_settings

    check_allocation(plan.cells, launch_settings(overrides).executor_params)


LIST_CELLS_UP_TO = 50
"""`memsweep plan` lists every cell of a grid this small; larger grids get the per-model summary
(pass --cells for the listing)."""


def _plan(args: argparse.Namespace) -> int:
    from memsweep.config import ConfigError
    from memsweep.model import paper_param_count
    from memsweep.sweep import estimated_flops, plan_sweep, write_plan
    from memsweep.sweepstate import cell_state

    try:
        plan = plan_sweep(args.overrides, args.sweep_dir)
        _check_slurm_allocation(plan, args.overrides)
    except ConfigError as err:
        return _error(f"config error: {err}\nnothing was written")
    per_hour = args.flops_per_second * 3600
    rows = []
    for cell in plan.cells:
        m, d = cell.config.model, cell.config.data
        n_params = paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model)
        rows.append((cell, n_params, estimated_flops(cell.config, n_params), cell_state(cell.cell_dir).state,
                     d.n_samples * d.seq_len * math.log2(d.vocab_size)))
    if args.cells or (args.cells is None and len(rows) <= LIST_CELLS_UP_TO):
        print(f"{'cell':12} {'L':>2} {'d':>5} {'P':>13} {'N':>9} {'dataset bits':>14} {'prec':10} {'seed':>4} "
              f"{'PFLOP':>9} {'hours':>8}  state")
        for cell, n_params, flops, state, bits in rows:
            m, d = cell.config.model, cell.config.data
            print(f"{cell.cell_id:12} {m.n_layer:>2} {m.d_model:>5} {n_params:>13,} {d.n_samples:>9,} {bits:>14,.0f} "
                  f"{cell.config.precision:10} {cell.config.seed:>4} {flops / 1e15:>9.3g} {flops / per_hour:>8.3g}  {state}")
    else:
        _plan_summary(rows, per_hour)
    total_flops = sum(r[2] for r in rows)
    done = sum(r[3] == "done" for r in rows)
    print(f"{len(rows)} cells ({done} already done, left untouched) in sweep {plan.name!r}: at most "
          f"{total_flops:.3g} FLOPs, {total_flops / per_hour:.3g} device-hours at an assumed "
          f"{args.flops_per_second:.3g} FLOP/s (upper bound: trainer.max_steps and every wsd decay branch; saturation stops earlier)")
    packs = _plan_packs(plan, [r[0] for r in rows if r[3] != "done"], args) if args.pack else None
    if args.write:
        write_plan(plan, packs)
        print(f"wrote {plan.sweep_dir / 'sweep.json'} and <cell id>/config.yaml under {plan.sweep_dir}")
    else:
        print("nothing written (a dry run); --write writes the plan, `memsweep run`/`submit` write it themselves")
    return 0


def _plan_packs(plan, cells, args: argparse.Namespace) -> list[list[str]]:
    """Print the packs of the cells to train (memsweep.pack.plan); returns them as lists of cell ids."""
    from memsweep.pack.cost import device_of
    from memsweep.pack.plan import pack_lines, plan_packs

    device = args.device or (device_of(cells[0].config) if cells else "cpu")
    packs = plan_packs(cells, args.pack, device, args.flops_per_second)
    listing = args.cells if args.cells is not None else len(packs.packs) <= LIST_CELLS_UP_TO
    print("\n".join(pack_lines(packs, args.pack, list_packs=listing, all_ids=bool(args.cells))))
    return [[c.cell_id for c in p.cells] for p in packs.packs]


def _plan_summary(rows, per_hour: float) -> None:
    """One line per model shape: cells, P, the range of dataset bits, cost, cells already done."""
    models: dict[tuple, list] = {}
    for row in rows:
        m, d = row[0].config.model, row[0].config.data
        models.setdefault((m.n_layer, m.d_model, d.vocab_size, d.seq_len), []).append(row)
    print(f"{'L':>2} {'d':>5} {'V':>6} {'S':>5} {'P':>13} {'cells':>6} {'dataset bits':>21} {'PFLOP':>9} "
          f"{'hours':>8} {'done':>5}")
    for (layers, width, vocab, seq), group in models.items():
        bits = [r[4] for r in group]
        flops = sum(r[2] for r in group)
        print(f"{layers:>2} {width:>5} {vocab:>6} {seq:>5} {group[0][1]:>13,} {len(group):>6} "
              f"{min(bits):>10.3g}-{max(bits):<10.3g} {flops / 1e15:>9.3g} {flops / per_hour:>8.3g} "
              f"{sum(r[3] == 'done' for r in group):>5}")


def _add_plan(commands) -> None:
    p = commands.add_parser("plan", help="expand and validate a grid, print its cost (a dry run unless --write)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for memsweep-train -m (experiment=smoke, seed=0,1)")
    p.add_argument("--sweep-dir", type=Path, help="default: hydra.sweep.dir, i.e. runs/sweeps/<sweep_name>")
    p.add_argument("--flops-per-second", type=float, default=ASSUMED_FLOPS_PER_SECOND,
                   help=f"throughput assumed for the hours column (default {ASSUMED_FLOPS_PER_SECOND:g})")
    listing = p.add_mutually_exclusive_group()
    listing.add_argument("--cells", action="store_true", default=None,
                         help=f"list every cell (the default up to {LIST_CELLS_UP_TO} cells)")
    listing.add_argument("--summary", dest="cells", action="store_false", help="one line per model shape")
    add_pack_options(p)
    p.add_argument("--write", action="store_true", help="write sweep.json (with --pack: its packs) and each "
                   "cell's config.yaml")
    p.set_defaults(handler=_plan)


def _status(args: argparse.Namespace) -> int:
    from memsweep.sweepstate import SweepDirError, counts, sweep_states

    try:
        states = sweep_states(args.sweep_dir)
    except (SweepDirError, OSError) as err:
        return _error(_one_line(err))
    totals = counts(states)
    if args.json:
        print(json.dumps({"sweep_dir": str(args.sweep_dir.resolve()), "counts": totals, "cells": [
            {"cell_id": c.cell_id, "state": c.state, "detail": c.detail, "overrides": list(c.overrides)}
            for c in states]}, indent=2))
        return 0
    for c in states:
        print(f"{c.cell_id:12}  {c.state:11}  {' '.join(c.overrides):50}  {c.detail}".rstrip())
    summary = ", ".join(f"{n} {s}" for s, n in totals.items() if n)
    print(f"{len(states)} cells: {summary}")
    return 0


def _add_status(commands) -> None:
    p = commands.add_parser("status", help="state of every cell of a sweep dir")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_status)


def _collect(args: argparse.Namespace) -> int:
    from memsweep.sweepstate import SweepDirError, result_row, sweep_states, write_table

    try:
        rows = [result_row(c) for c in sweep_states(args.sweep_dir)]
    except (SweepDirError, OSError) as err:
        return _error(_one_line(err))
    out = args.out or args.sweep_dir / "results.csv"
    try:
        write_table(rows, out)
    except RuntimeError as err:
        return _error(str(err))
    except OSError as err:
        return _error(_write_failed(out, err, args.out is None))
    print(f"wrote {len(rows)} rows to {out}")
    return 0


def _add_collect(commands) -> None:
    p = commands.add_parser("collect", help="every result.json of a sweep as one table (CSV or Parquet)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--out", type=Path, help="a .csv or .parquet file (default: <sweep dir>/results.csv)")
    p.set_defaults(handler=_collect)


def offline_wandb_runs(sweep_dir: Path) -> list[Path]:
    """Every offline W&B run written by the cells of a sweep (cell dirs hold their own wandb/)."""
    return sorted(Path(sweep_dir).glob("*/wandb/offline-run-*"))


def _sync(args: argparse.Namespace) -> int:
    runs = offline_wandb_runs(args.sweep_dir)
    if args.dry_run or not runs:
        print("\n".join(map(str, runs)) or f"no offline W&B runs under {args.sweep_dir}")
        return 0
    import subprocess
    import time

    for start in range(0, len(runs), args.batch):  # batches with pauses: W&B rate-limits (wandb #5445)
        batch = [str(run) for run in runs[start : start + args.batch]]
        if subprocess.run(["wandb", "sync", *batch]).returncode:
            return _error(f"wandb sync failed on {batch[0]} ... ({len(batch)} runs); rerun to retry")
        time.sleep(args.pause)
    print(f"synced {len(runs)} runs")
    return 0


def _add_sync(commands) -> None:
    p = commands.add_parser("sync", help="upload a sweep's offline W&B runs (wandb sync, in batches)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--batch", type=int, default=10, help="runs per `wandb sync` call")
    p.add_argument("--pause", type=float, default=5.0, help="seconds between batches")
    p.add_argument("--dry-run", action="store_true", help="list the runs, upload nothing")
    p.set_defaults(handler=_sync)


def _write_report(sweep_dir: Path, out: Path | None, wandb: str, bootstrap: int, peak_tflops: float | None) -> int:
    from memsweep.analysis.report import REPORT_DIR, build_report, write_report
    from memsweep.sweepstate import SweepDirError

    try:
        report = build_report(sweep_dir, n_boot=bootstrap, peak_flops=peak_tflops * 1e12 if peak_tflops else None)
    except (SweepDirError, OSError) as err:
        return _error(_one_line(err))
    target = out or sweep_dir / REPORT_DIR
    try:
        path = write_report(report, target)
    except OSError as err:
        return _error(_write_failed(target, err, out is None))
    for precision, fit in report.summary.get("alpha", {}).items():
        seeds = f", seed range {fit['alpha_seed_range'][0]:.2f}-{fit['alpha_seed_range'][1]:.2f} over " \
                f"{fit['n_seeds']} seeds" if fit["alpha_seed_range"] else ""
        t95 = f", 95% t-interval over {fit['n_seeds']} seeds {fit['alpha_t95'][0]:.2f}-{fit['alpha_t95'][1]:.2f}" \
            if fit["alpha_t95"] else ""
        print(f"alpha {precision}: {fit['alpha']:.2f} bits/param (fit through the origin{seeds}{t95}), "
              f"unweighted mean {fit['mean_bits_per_param']:.2f}, {fit['n_models']} models")
    wrote = f"wrote {path}" if report.written else f"report unchanged: {path}"
    print(f"{report.summary['cells_done']} cells done, {report.summary['cells_missing']} not done; {wrote}")
    if wandb != "off":
        from memsweep.analysis.wandb_report import publish

        print(f"W&B run: {publish(report, target, mode=wandb)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    return _write_report(args.sweep_dir, args.out, args.wandb, args.bootstrap, args.peak_tflops)


def _report_options(p) -> None:
    p.add_argument("--wandb", choices=["auto", "online", "offline", "off"], default="off",
                   help="also log the report to W&B (the sweep's group); auto: online with a key, else offline")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the double-descent peak intervals")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, for MFU where memsweep has no figure (CPUs)")


def _add_report(commands) -> None:
    p = commands.add_parser("report", help="capacity curves, alpha, double descent, membership inference, throughput")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--out", type=Path, help="output dir (default: <sweep dir>/report)")
    _report_options(p)
    p.set_defaults(handler=_report)


def _run(args: argparse.Namespace) -> int:
    from memsweep.config import ConfigError
    from memsweep.console import VERBOSE_ENV
    from memsweep.local_run import default_workers, run_workers
    from memsweep.preemption import EXIT_RESUMABLE
    from memsweep.sweep import plan_sweep, write_plan
    from memsweep.sweepstate import cell_state, counts, sweep_states

    if any(o.split("=")[0].lstrip("+") == "cluster" and "slurm" in o for o in args.overrides):
        return _error("memsweep run trains on this machine; queue a SLURM grid with `memsweep submit`")
    try:
        plan = plan_sweep(args.overrides, args.sweep_dir)
    except ConfigError as err:
        return _error(f"config error: {err}\nnothing was written")
    if args.workers is not None and args.workers < 1:
        return _error(f"--workers must be at least 1, got {args.workers}")
    pack = args.pack
    if pack == "auto":
        packs = _run_auto_packs(plan, args.device)
        pack = "auto" if packs else None  # the workers train sweep.json's packs, the other cells unpacked
        write_plan(plan, packs)
    else:
        write_plan(plan)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # the workers keep Lightning's own messages
    before = counts([cell_state(cell.cell_dir) for cell in plan.cells])
    to_train = len(plan.cells) - before["done"] - before["corrupt"]
    corrupt = f", {before['corrupt']} corrupt" if before["corrupt"] else ""
    stopped_by = None
    if not to_train:
        print(f"{len(plan.cells)} cells in {plan.sweep_dir}: {before['done']} already done{corrupt}; nothing to train"
              if corrupt else f"all {len(plan.cells)} cells already done in {plan.sweep_dir}; nothing to train")
    else:
        workers = args.workers or default_workers()
        print(f"{len(plan.cells)} cells in {plan.sweep_dir}: {before['done']} already done, {to_train} to train"
              f"{corrupt}, {workers} workers" + (", in the packs above" if pack == "auto" else
                                                  f", in packs of up to {pack}" if pack else ""))
        stopped_by = run_workers(plan.sweep_dir, workers, pack)
    totals = counts(sweep_states(plan.sweep_dir))
    left = sum(totals[s] for s in ("pending", "stale", "interrupted", "preempted", "running"))
    if stopped_by is not None:
        print(f"memsweep: {stopped_by}: stopped; {totals['done']} cells done, {left} left (running cells "
              f"checkpointed); rerun the same command to resume", file=sys.stderr)
        return EXIT_RESUMABLE
    if not args.no_report and _write_report(plan.sweep_dir, None, args.wandb, args.bootstrap, args.peak_tflops):
        return 2  # the report's error is already printed; the cells' results are all on disk
    if totals["failed"] or totals["corrupt"] or totals["blocked"]:
        blocked = f", {totals['blocked']} blocked by a failed reference cell" if totals["blocked"] else ""
        return _error(f"{totals['failed']} cells failed{blocked}, {totals['corrupt']} corrupt: "
                      f"`memsweep status {plan.sweep_dir}` names them")
    if left:
        print(f"memsweep: {left} cells not finished; rerun the same command to resume them", file=sys.stderr)
        return EXIT_RESUMABLE
    return 0


def _run_auto_packs(plan, device: str | None) -> list[list[str]]:
    """`run --pack auto`: the packs of the cells to train by the cost model (memsweep.pack.plan, as
    `plan --pack auto` prints them), printed; their cell ids, or [] where packing pays for none."""
    from memsweep.pack.cost import device_of
    from memsweep.pack.plan import AUTO, pack_lines, plan_packs
    from memsweep.sweepstate import cell_state

    cells = [c for c in plan.cells if cell_state(c.cell_dir).state not in ("done", "corrupt")]
    if not cells:
        return []
    packs = plan_packs(cells, AUTO, device or device_of(cells[0].config), ASSUMED_FLOPS_PER_SECOND)
    print("\n".join(pack_lines(packs, AUTO, list_packs=len(packs.packs) <= LIST_CELLS_UP_TO, all_ids=False)))
    if not packs.packs:
        print(f"--pack auto: packing does not pay for any of the {len(cells)} cells by the cost model: "
              "training them unpacked")
    return [[c.cell_id for c in p.cells] for p in packs.packs]


def _add_run(commands) -> None:
    p = commands.add_parser("run", help="plan a grid, run its cells on this machine, write the report")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for memsweep-train -m")
    p.add_argument("--sweep-dir", type=Path, help="default: hydra.sweep.dir, i.e. runs/sweeps/<sweep_name>")
    p.add_argument("--workers", type=int, help="cells trained at once, each in its own process "
                   "(default: one per GPU, or one per CPU core without GPUs)")
    p.add_argument("--pack", type=_pack_value, metavar="K|auto",
                   help="each worker trains up to K compatible cells at once as one stacked model (memsweep.pack; "
                        "text and multi-device cells run unpacked); auto: the packs and K per model shape of the cost "
                        "model (memsweep/pack/cost.py, as `plan --pack auto`), unpacked where packing does not pay; "
                        "default: no packing")
    p.add_argument("--device", choices=("cpu", "gpu"),
                   help="the device the --pack auto cost model assumes (default: the cells' trainer.accelerator; "
                        "auto: this machine)")
    p.add_argument("--no-report", action="store_true", help="skip `memsweep report` at the end")
    p.add_argument("--verbose", action="store_true", help="keep Lightning's banners, tips and warnings")
    _report_options(p)
    p.set_defaults(handler=_run)


def _corpus(args: argparse.Namespace) -> int:
    from memsweep.data.corpora import CorpusMissing, corpus_names
    from memsweep.data.fetch import fetch_corpus
    from memsweep.data.text import default_cache_dir

    if args.action == "list":
        for name, description in corpus_names().items():
            print(f"{name:18s} {description}")
        return 0
    if not args.names:
        return _error("corpus fetch: name the corpora to install (memsweep corpus list shows them)")
    for name in args.names:
        try:
            for step in fetch_corpus(name, default_cache_dir()):
                print(f"memsweep: {name}: {step}")
        except (CorpusMissing, ValueError, OSError) as err:
            return _error(f"corpus fetch {name}: {err}")
    return 0


def _add_corpus(commands) -> None:
    p = commands.add_parser("corpus", help="the built-in text corpora: list them, or install them (fetch)")
    p.add_argument("action", choices=("list", "fetch"))
    p.add_argument("names", nargs="*", help="corpora to install (fetch), e.g. small-mixed english mixed")
    p.set_defaults(handler=_corpus)


def _perspectives(args: argparse.Namespace) -> int:
    """Score the models (memsweep's text cells, Hugging Face causal LMs), then write the report."""
    try:
        import torch

        from memsweep.analysis.perspectives import build_perspectives_report, write_perspectives_report
        from memsweep.perspectives.models import sweep_cells
        from memsweep.perspectives.run import run_perspectives

        if args.threads:
            torch.set_num_threads(args.threads)
        specs = list(args.sources) + list(args.model or [])
        if args.n_samples is not None:  # a sweep dir: its cells trained on exactly that many rows
            specs = [str(c) for spec in specs for c in
                     (sweep_cells(Path(spec), args.n_samples) if Path(spec).is_dir() and not (Path(spec) / "result.json").exists()
                      else [spec])]
        out = run_perspectives(specs, args.corpus, _int_list(args.context), _int_list(args.continuation), args.out,
                               args.max_rows, args.batch_size, args.device, args.hidden_rows, args.seq_len)
        report = build_perspectives_report(out)
        path = write_perspectives_report(report, out)
        if args.wandb:
            from memsweep.analysis.wandb_report import publish_perspectives

            print(f"W&B run: {publish_perspectives(report, out, args.wandb)}")
    except (ValueError, RuntimeError, OSError) as err:
        return _error(f"perspectives: {err}")
    print(f"wrote {path}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _add_perspectives(commands) -> None:
    p = commands.add_parser("perspectives", help="Chen et al. 2024's memorization analyses of text models")
    p.add_argument("sources", nargs="*", help="memsweep sweep or cell dirs of text cells")
    p.add_argument("--model", action="append", help="hf:NAME@REVISION or path:HF_DIR (repeatable); a GGUF model: "
                   "convert it first, python -m memsweep.perspectives.gguf_to_hf FILE.gguf DIR")
    p.add_argument("--corpus", help="a built-in corpus (memsweep corpus list) or hf:DATASET[@REVISION] (its text "
                   "column): for memsweep cells their pool's rows, for HF models tokenized with their own (shared) "
                   "tokenizer, in document order; or path:ROWS.npy (token rows). Default: the cells' own training "
                   "rows")
    p.add_argument("--seq-len", type=int, help="HF models on a named corpus: tokens per row (default: the longest "
                   "context + continuation)")
    p.add_argument("--n-samples", type=int, help="from a sweep dir, the cells trained on this many rows "
                   "(default: the largest N of each model size)")
    p.add_argument("--context", default="32", help="context lengths, comma-separated (default 32)")
    p.add_argument("--continuation", default="16", help="continuation lengths, comma-separated (default 16)")
    p.add_argument("--max-rows", type=int, help="score at most this many rows (the first ones)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden-rows", type=int, default=2048, help="rows whose hidden states are kept (stratified)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the small predictor "
                   "trains ~100x slower with more on a busy CPU); 0 leaves torch's default")
    p.add_argument("--out", type=Path, help="default: <sweep dir>/perspectives")
    p.add_argument("--wandb", choices=("auto", "online", "offline"), help="also log the tables and figures to W&B")
    p.set_defaults(handler=_perspectives)


COMMANDS = [_add_plan, _add_run, add_submit_command, _add_status, _add_collect, _add_report, _add_sync, _add_corpus,
            _add_perspectives]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memsweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for register in COMMANDS:
        register(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
