"""Tokens per second per device and model FLOPs utilisation, per cell.

Honest accounting (as torchtitan): tokens/s counts training steps only (the cell's StepTimer
leaves evaluation out), FLOPs are the model's own 6 x matmul weights + attention per token
(memsweep.model.training_flops_per_token), and MFU divides by the device's dense peak for the
cell's precision. Peaks are the vendors' dense (no sparsity) figures; a device not listed (a CPU,
say) gets its achieved FLOP/s but no MFU, unless the caller passes a measured peak
(benchmarks/throughput.py measures one).
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


def throughput_table(cells: pd.DataFrame, peak_flops: float | None = None) -> pd.DataFrame:
    """Per cell: tokens/s per device, achieved FLOP/s per device and MFU (None without a peak)."""
    rows = []
    for _, c in cells.iterrows():
        if not c.get("tokens_per_sec"):
            continue
        world = int(c.get("world_size") or 1)
        per_device = float(c["tokens_per_sec"]) / world
        flops = per_device * training_flops_per_token(int(c["vocab_size"]), int(c["seq_len"]),
                                                      int(c["n_layer"]), int(c["d_model"]))
        device_name = c.get("device_name") if isinstance(c.get("device_name"), str) else None
        peak = peak_flops or device_peak(device_name, str(c["precision"]))
        rows.append({"cell_id": c["cell_id"], "model": c["model"], "n_params": int(c["n_params"]),
                     "precision": c["precision"], "device": device_label(c.get("device"), device_name),
                     "world_size": world, "tokens_per_sec_per_device": per_device,
                     "tflops_per_device": flops / 1e12, "mfu": flops / peak if peak else None})
    return pd.DataFrame(rows)


def throughput_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median over cells per (model, precision, device)."""
    if table.empty:
        return table
    return (table.groupby(["model", "n_params", "precision", "device"], sort=True, dropna=False)
            .agg(cells=("cell_id", "count"), tokens_per_sec_per_device=("tokens_per_sec_per_device", "median"),
                 tflops_per_device=("tflops_per_device", "median"), mfu=("mfu", "median"))
            .reset_index().sort_values(["precision", "n_params"]))
