"""Packed cells (issue #13): K GPTs of one shape trained in one process as one stacked model.

Every parameter carries a leading cell dimension K; each cell keeps its own init seed, learning
rate, gradient-norm clip, AdamW state and step count, so a cell of a pack trains as it would alone.

- `model.PackedGPT`: the stacked weights, built from per-cell seeds, and each cell's own GPT back.
- `vmap.VmapForward` / `batched.BatchedForward`: two forwards over the same weights.
- `clip.clip_grad_norms_`: per-cell gradient-norm clipping.
- `optim.PackedAdamW`: K AdamWs as one, with per-cell LR and freezing.
- `step.PackedTrainStep`: one training step of the pack given K batches.
- `evaluate.per_cell_nll_bits`: every cell's per-sample NLL over its own token set.

Sweep integration (`memsweep run --pack K`): `grouping.pack_key` (which cells may share a pack),
`launch.run_packed_cells` (a worker claims and packs cells), `runner.PackRunner` (the training
loop, per-cell records), `monitor.PackedCell` (one cell's evaluation, saturation and timers),
`stack.StackedState` (the stacked state, rebuilt as cells leave), `checkpoint` (per-cell files).
A schedule=wsd cell runs its decay branches in its own slot (`monitor.Branch`), so it packs too.
"""

from memsweep.pack.batched import BatchedForward
from memsweep.pack.clip import clip_grad_norms_
from memsweep.pack.evaluate import per_cell_nll_bits
from memsweep.pack.model import PackedGPT, make_forward
from memsweep.pack.optim import PackedAdamW
from memsweep.pack.step import PackedTrainStep, per_cell_losses
from memsweep.pack.vmap import VmapForward

__all__ = ["BatchedForward", "PackedAdamW", "PackedGPT", "PackedTrainStep", "VmapForward", "clip_grad_norms_",
           "make_forward", "per_cell_losses", "per_cell_nll_bits"]
