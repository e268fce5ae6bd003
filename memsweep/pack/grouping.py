"""Which cells can train in one pack: the same stacked shapes and the same shared arithmetic.

A pack stacks its cells' weights and runs one forward, so they must agree on everything that
shapes a tensor or an op of the whole pack (model shape, V, S, batch size, precision and bf16
optimizer, AdamW's betas, the evaluation batch, the device). Everything else is per cell: lr,
warmup, schedule, weight decay, clip, seeds, N, max_steps, eval_interval, saturation settings.

The schedule is per cell too: schedule=wsd cells pack with each other and with constant or
cosine cells. A wsd cell runs its decay branches in its own slot of the pack while its
pack-mates train on (memsweep.pack.monitor.Branch), and stops, checkpoints and records as its
unpacked run does (the doubling rule's growth_per_doubling, saturated_at_step, branch_steps).

precision=bf16-mixed cells pack with each other: the pack's forward runs under torch.autocast, as
Lightning runs theirs (memsweep.pack.model.AutocastForward).

Text cells pack with each other and with uniform cells of the same shapes: the pack trains on
token ids whatever they encode; each cell keeps its own tokens, reference and text measures
(memsweep.cell.start_text_cell and write_cell_outputs, as its unpacked run), and joins a pack only
once its reference is done (memsweep.pack.launch).

Not packed (they run unpacked): multi-device and DeepSpeed cells.
"""

from __future__ import annotations

import hashlib

from memsweep.config import CellConfig


def pack_key(cfg: CellConfig) -> tuple | None:
    """What cells of one pack share; None for a cell that trains unpacked."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    if (cfg.precision not in ("fp32", "bf16", "bf16-mixed")
            or t.devices * t.num_nodes != 1 or t.strategy not in ("auto", "single")):
        return None
    return (m.n_layer, m.d_model, m.n_head, m.attention, d.vocab_size, d.seq_len, cfg.precision,
            t.bf16_optimizer, t.batch_size, t.beta1, t.beta2, t.eval_batch_size, t.accelerator)


def pack_id(cell_ids: list[str]) -> str:
    """A pack's name, from its cells alone: the planner (memsweep.pack.plan) and the runner agree on it."""
    return hashlib.sha256(",".join(sorted(cell_ids)).encode()).hexdigest()[:12]
