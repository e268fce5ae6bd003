"""Tokens per second per device and model FLOPs utilisation, per cell.

Honest accounting (as torchtitan): tokens/s counts training steps only (the cell's StepTimer
leaves evaluation out), FLOPs are the model's own 6 x matmul weights + attention per token
(memsweep.model.training_flops_per_token), and MFU divides by the device's dense peak for the
cell's precision. Peaks are the vendors' dense (no sparsity) figures; a device not listed (a CPU,
say) gets its achieved FLOP/s but no MFU, unless the caller passes a measured peak
(benchmarks/throughput.py measures one).

Packed cells (memsweep.pack) share their device: a cell's own tokens/s is its tokens over the
pack's step time while it trained there, and its record's `pack` field carries the pack's
tokens/s (every cell's tokens over the same time). Both are shown, each with its MFU: per cell
(what one cell of a pack gets) and per pack (what the device does).
"""

from __future__ import annotations

import pandas as pd

from memsweep.model import training_flops_per_token

PEAK_FLOPS = {
    ("NVIDIA A100", "bf16"): 312e12, ("NVIDIA A100", "fp32"): 19.5e12,
    ("NVIDIA H100", "bf16"): 989e12, ("NVIDIA H100", "fp32"): 67e12,
    ("NVIDIA H200", "bf16"): 989e12, ("NVIDIA H200", "fp32"): 67e12,
}
"""Dense peak FLOP/s by device-name prefix and compute precision (SXM parts; fp32 without TF32,
which memsweep does not enable)."""


def device_peak(device_name: str | None, precision: str) -> float | None:
    compute = "bf16" if precision.startswith("bf16") else "fp32"
    for (prefix, prec), peak in PEAK_FLOPS.items():
        if device_name and device_name.startswith(prefix) and prec == compute:
            return peak
    return None


def device_label(device: str | None, device_name: str | None) -> str:
    """A device as a person names it: 'NVIDIA H100 80GB HBM3', or 'CPU (x86_64)' where the record
    has only the machine's architecture for a CPU."""
    if isinstance(device, str) and device.startswith("cpu"):
        return f"CPU ({device_name})" if device_name and device_name != "cpu" else "CPU"
    return device_name or (device if isinstance(device, str) else "unknown device")


def _pack(c: pd.Series) -> tuple[str | None, int, float | None]:
    """(pack id, pack size, the pack's tokens/s) of a record; an unpacked cell is a pack of one."""
    pack_id = c.get("pack.id")
    if not isinstance(pack_id, str):
        return None, 1, None
    rate = c.get("pack.tokens_per_sec")
    return pack_id, int(c["pack.size"]), float(rate) if _present(rate) else None


def _mfu(tokens_per_sec: float | None, flops_per_token: int, peak: float | None) -> float | None:
    return tokens_per_sec * flops_per_token / peak if peak and tokens_per_sec is not None else None


def _present(value) -> bool:
    return value is not None and not pd.isna(value)


def throughput_table(cells: pd.DataFrame, peak_flops: float | None = None) -> pd.DataFrame:
    """Per cell: tokens/s per device, achieved FLOP/s per device and MFU (None without a peak); for
    a packed cell also its pack (id, size) and the pack's tokens/s and MFU (an unpacked cell's own)."""
    rows = []
    for _, c in cells.iterrows():
        if not c.get("tokens_per_sec"):
            continue
        world = int(c.get("world_size") or 1)
        per_device = float(c["tokens_per_sec"]) / world
        flops_per_token = training_flops_per_token(int(c["vocab_size"]), int(c["seq_len"]), int(c["n_layer"]),
                                                   int(c["d_model"]))
        device_name = c.get("device_name") if isinstance(c.get("device_name"), str) else None
        peak = peak_flops or device_peak(device_name, str(c["precision"]))
        pack_id, size, pack_rate = _pack(c)
        pack_rate = per_device if pack_id is None else pack_rate
        rows.append({"cell_id": c["cell_id"], "model": c["model"], "n_params": int(c["n_params"]),
                     "precision": c["precision"], "device": device_label(c.get("device"), device_name),
                     "world_size": world, "pack_id": pack_id, "pack_size": size,
                     "tokens_per_sec_per_device": per_device, "tflops_per_device": per_device * flops_per_token / 1e12,
                     "mfu": _mfu(per_device, flops_per_token, peak), "pack_tokens_per_sec": pack_rate,
                     "pack_mfu": _mfu(pack_rate, flops_per_token, peak),
                     "train_seconds": c.get("train_seconds")})
    return pd.DataFrame(rows)


def throughput_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median over cells per (model, precision, device, pack size): per cell and per pack."""
    if table.empty:
        return table
    return (table.groupby(["model", "n_params", "precision", "device", "pack_size"], sort=True, dropna=False)
            .agg(cells=("cell_id", "count"), tokens_per_sec_per_device=("tokens_per_sec_per_device", "median"),
                 tflops_per_device=("tflops_per_device", "median"), mfu=("mfu", "median"),
                 pack_tokens_per_sec=("pack_tokens_per_sec", "median"), pack_mfu=("pack_mfu", "median"))
            .reset_index().sort_values(["precision", "n_params", "pack_size"]))


def pack_throughput(table: pd.DataFrame) -> pd.DataFrame:
    """One row per pack: its cells in the report, its tokens/s and MFU, from the record of the cell
    that trained in it longest (the pack's figure is written as each cell leaves, so that one saw
    the whole pack)."""
    packed = table[table["pack_id"].notna()] if "pack_id" in table else table.iloc[0:0]
    if packed.empty:
        return pd.DataFrame()
    rows = []
    for pack_id, g in packed.groupby("pack_id", sort=True):
        last = g.loc[g["train_seconds"].astype(float).fillna(0).idxmax()]
        rows.append({"pack_id": pack_id, "model": last["model"], "precision": last["precision"],
                     "device": last["device"], "pack_size": int(last["pack_size"]), "cells": len(g),
                     "pack_tokens_per_sec": last["pack_tokens_per_sec"], "pack_mfu": last["pack_mfu"],
                     "cell_tokens_per_sec": g["tokens_per_sec_per_device"].median(),
                     "cell_mfu": pd.to_numeric(g["mfu"], errors="coerce").median()})
    return pd.DataFrame(rows)
