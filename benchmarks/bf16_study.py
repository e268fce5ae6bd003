"""The bf16 study (conf/experiment/bf16-study.yaml, docs/bf16.md): how much of the bf16 - fp32
capacity gap is the optimizer's rounding, how much the bf16 forward's arithmetic, and how much
is left for the capacity of bf16 weights.

    OMP_NUM_THREADS=1 python benchmarks/bf16_study.py --run   # train or resume the cells, then the tables
    python benchmarks/bf16_study.py                           # the tables of the cells done so far

--run is `memsweep run experiment=bf16-study --workers 1 --no-report` (one worker: a 2-core CPU
shared with other work; the cells resume from their checkpoints when it is run again; SIGTERM
checkpoints and stops). The first table has one row per seed, N and arm: memorized bits and
bits/param as trained (bf16 forward for bf16 cells) and with the same weights in an fp32 forward,
each with its gap to the fp32 cell of the same seed and N, its share of the data ceiling, and what
the second half of training (the low-learning-rate end of the cosine) added. The second averages
each gap over the seeds; the third is each arm's capacity (its maximum over N) per seed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

from memsweep.config import CellConfig
from memsweep.metrics import data_ceiling_bits
from memsweep.model import paper_param_count
from memsweep.record import read_result
from memsweep.sweep import plan_sweep

EXPERIMENT = "experiment=bf16-study"
ARMS = ("fp32", "bf16", "bf16-fp32-state", "bf16-stochastic-rounding")
FORWARDS = {"memorized_bits": "", "memorized_bits_fp32_forward": " (fp32 fwd)"}


def arm(cfg: CellConfig) -> str:
    if cfg.precision == "fp32":
        return "fp32"
    return "bf16" if cfg.trainer.bf16_optimizer == "bf16" else f"bf16-{cfg.trainer.bf16_optimizer}"


def results(sweep_dir: Path) -> dict[tuple[int, int, str], dict]:
    """(seed, N, arm) -> the cell's record (with P and its late gain), or its status if not done."""
    found = {}
    for cell in plan_sweep([EXPERIMENT], sweep_dir).cells:
        c = cell.config
        record = read_result(cell.cell_dir) or {"status": "not started"}
        if record["status"] == "done":
            m, d = c.model, c.data
            record = {**record, "P": paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model),
                      "ceiling": record["memorized_bits"] / data_ceiling_bits(d.n_samples, d.seq_len, d.vocab_size),
                      "late_gain": late_gain(cell.cell_dir / "metrics.csv")}
        found[(c.seed, c.data.n_samples, arm(c))] = record
    return found


def late_gain(metrics: Path) -> float:
    """Memorized bits the second half of the steps added (last row minus the row at half its step)."""
    with metrics.open() as fh:
        rows = [(int(r["step"]), float(r["memorized_bits"])) for r in csv.DictReader(fh)]
    last_step, last = rows[-1]
    return last - min(rows, key=lambda r: abs(r[0] - last_step / 2))[1]


def bpp(record: dict | None, key: str = "memorized_bits") -> float | None:
    if record is None or record.get("status") != "done" or record.get(key) is None:
        return None
    return record[key] / record["P"]


def _f(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def _gap(value: float | None, fp32: float | None) -> str:
    return "–" if value is None or fp32 is None else f"{value - fp32:+.3f}"


def cells_table(found: dict[tuple[int, int, str], dict]) -> str:
    lines = ["| seed | N | arm | memorized bits | bits/param | − fp32 | fp32-forward bits | bits/param | − fp32 "
             "| of ceiling | 2nd-half gain | stop |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, n in sorted({(s, n) for s, n, _ in found}):
        fp32 = bpp(found.get((seed, n, "fp32")))
        for a in ARMS:
            r = found.get((seed, n, a))
            if r is None:
                continue
            if r["status"] != "done":
                lines.append(f"| {seed} | {n} | {a} | {r['status']} |" + " |" * 8)
                continue
            f32, f32_bpp = r.get("memorized_bits_fp32_forward"), bpp(r, "memorized_bits_fp32_forward")
            lines.append(f"| {seed} | {n} | {a} | {r['memorized_bits']:,.0f} | {bpp(r):.3f} | {_gap(bpp(r), fp32)} | "
                         f"{_f(f32, ',.0f')} | {_f(f32_bpp, '.3f')} | {_gap(f32_bpp, fp32)} | {r['ceiling']:.1%} | "
                         f"{r['late_gain']:+,.0f} | {r['steps']:,} {r['stop_reason']} |")
    return "\n".join(lines)


def _mean_and_range(values: list[float]) -> str:
    spread = f" ({min(values):+.3f} to {max(values):+.3f})" if len(values) > 1 else ""
    return f"{sum(values) / len(values):+.3f}{spread}"


def gaps_table(found: dict[tuple[int, int, str], dict]) -> str:
    """Per N and arm, the gap to fp32 in bits/param averaged over the seeds where both are done."""
    seeds, ns = sorted({s for s, _, _ in found}), sorted({n for _, n, _ in found})
    lines = ["| N | arm | − fp32, as trained: mean (range) | − fp32, fp32 forward: mean (range) | seeds |",
             "|---|---|---|---|---|"]
    for n in ns:
        for a in ARMS[1:]:
            pairs = [(found[(s, n, a)], bpp(found[(s, n, "fp32")])) for s in seeds
                     if None not in (bpp(found.get((s, n, a))), bpp(found.get((s, n, "fp32"))))]
            if pairs:
                gaps = {key: [bpp(r, key) - fp32 for r, fp32 in pairs] for key in FORWARDS}
                lines.append(f"| {n} | {a} | {_mean_and_range(gaps['memorized_bits'])} | "
                             f"{_mean_and_range(gaps['memorized_bits_fp32_forward'])} | {len(pairs)} |")
    return "\n".join(lines)


def capacity_table(found: dict[tuple[int, int, str], dict]) -> str:
    """Each arm's capacity, the maximum over N of bits/param, per seed with every N done; `*` marks
    a maximum above 0.9 of its data ceiling: a lower bound, set by the data more than the model."""
    seeds, ns = sorted({s for s, _, _ in found}), sorted({n for _, n, _ in found})
    capacity: dict[tuple[str, str, int], tuple[float, bool]] = {}
    for seed in seeds:
        for a in ARMS:
            records = [found.get((seed, n, a)) for n in ns]
            for key in FORWARDS:
                if all(bpp(r, key) is not None for r in records):  # fp32 cells have no fp32-forward column
                    best = max(records, key=lambda r: bpp(r, key))
                    capacity[(a, key, seed)] = (bpp(best, key), best["ceiling"] > 0.9)
    lines = ["| arm | forward | " + " | ".join(f"seed {s}" for s in seeds) + " | − fp32 (mean) | seeds |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for a in ARMS:
        for key, label in FORWARDS.items():
            done = [s for s in seeds if (a, key, s) in capacity]
            if not done:
                continue
            both = [s for s in done if ("fp32", "memorized_bits", s) in capacity]
            gaps = [capacity[(a, key, s)][0] - capacity[("fp32", "memorized_bits", s)][0] for s in both]
            cells = [f"{capacity[(a, key, s)][0]:.3f}{'*' if capacity[(a, key, s)][1] else ''}"
                     if (a, key, s) in capacity else "–" for s in seeds]
            lines.append(f"| {a} | {'fp32' if label else 'as trained'} | " + " | ".join(cells)
                         + f" | {_mean_and_range(gaps) if gaps and a != 'fp32' else '–'} | {len(done)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="train (or resume) the study's cells first")
    parser.add_argument("--sweep-dir", type=Path, default=Path("runs/sweeps/bf16-study"))
    args = parser.parse_args(argv)
    if args.run:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        code = subprocess.run(["memsweep", "run", EXPERIMENT, "--workers", "1", "--no-report",
                               "--sweep-dir", str(args.sweep_dir)], env=env).returncode
        if code:
            print(f"memsweep run exited {code}; the tables show the cells done so far", file=sys.stderr)
    found = results(args.sweep_dir)
    print(cells_table(found), "", "Gap to fp32 per N, bits/param, over the seeds with both cells done:", "",
          gaps_table(found), "", "Capacity, bits/param: the maximum over N, for seeds with every N done (* above "
          "0.9 of the data ceiling N (S log2 V - log2 N): a lower bound):", "", capacity_table(found), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
