"""From finished cells to the paper's figures.

cells (read a sweep dir) -> capacity (capacity, alpha), double_descent (test-loss peak),
membership (loss-threshold attack, sigmoid law), throughput (tokens/s, MFU), paper (the paper's
numbers and the comparison) -> plots (PNGs) -> report (tables, Markdown) -> wandb_report.
"""
