"""A sweep's cells as packs (`memsweep plan|submit --pack K|auto`): which cells train together.

Why a plan of packs, when `memsweep run --pack K` packs as its workers claim: a SLURM array task
must know its cells when it is queued (one pack per task), and `plan` shows the packs and their
cost before anything runs. Cells are grouped by memsweep.pack.grouping.pack_key (the one rule of
what may share a pack; text references apart from the cells measured against them) in plan order
and cut into packs of K; `auto` takes K per group from the
cost model (memsweep.pack.cost). A cell left alone (no key, K = 1, the last of its group) trains
unpacked, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from memsweep.model import paper_param_count
from memsweep.pack.cost import GPU_STEP_OVERHEAD_S, PAYS_ABOVE, auto_size, pack_seconds, speedup, tokens_per_step
from memsweep.pack.grouping import pack_id, pack_key
from memsweep.sweep import PlannedCell, estimated_flops

AUTO = "auto"


@dataclass(frozen=True)
class Pack:
    id: str
    cells: tuple[PlannedCell, ...]
    speedup: float
    """The cost model's K t_unpacked / t_pack for this pack."""
    seconds_unpacked: float
    seconds_packed: float


@dataclass(frozen=True)
class PackPlan:
    device: str
    """The device the cost model assumed: cpu or gpu."""
    flops_per_second: float
    """The FLOP/s the estimates assumed."""
    packs: list[Pack]
    unpacked: list[tuple[PlannedCell, str]]
    """Cells that train alone, each with the reason."""
    tasks: list[tuple[PlannedCell, ...]]
    """What each array task trains, in plan order: a pack's cells, or one unpacked cell."""
    seconds_unpacked: float
    """Every cell trained alone, by the cost model."""
    seconds_packed: float
    """The packs and the unpacked cells."""


def plan_packs(cells: list[PlannedCell], size: int | str, device: str, flops_per_second: float) -> PackPlan:
    """Group `cells` (those to train, in plan order) into packs of `size` cells, or of the cost
    model's K per group for `auto`, on `device` (cpu or gpu) at the assumed FLOP/s."""
    groups: dict[tuple, list[PlannedCell]] = {}
    unpacked: list[tuple[PlannedCell, str]] = []
    for cell in cells:
        key = pack_key(cell.config)
        if key is None:
            unpacked.append((cell, "trains unpacked (multi-device or DeepSpeed: memsweep.pack.grouping)"))
        else:
            groups.setdefault((key, _needs_reference(cell)), []).append(cell)
    packs: list[Pack] = []
    for group in groups.values():
        k, why = (size, f"--pack {size}") if size != AUTO else auto_size(device, group[0].config, len(group),
                                                                         flops_per_second)
        for start in range(0, len(group), k):
            members = group[start:start + k]
            gain = speedup(device, members[0].config, len(members), flops_per_second)
            if len(members) == 1 or (size == AUTO and gain <= PAYS_ABOVE):  # auto: the rest of a group, too few
                rest = "the last of its kind: alone" if len(members) == 1 else \
                    f"the rest of its kind: a pack of {len(members)} would gain {gain:.3f}x, <= {PAYS_ABOVE}"
                unpacked += [(cell, why if k == 1 else rest) for cell in members]
                continue
            alone, packed = _seconds(device, members, flops_per_second)
            packs.append(Pack(pack_id([c.cell_id for c in members]), tuple(members), gain, alone, packed))
    order = {c.cell_id: i for i, c in enumerate(cells)}
    tasks = sorted([p.cells for p in packs] + [(c,) for c, _ in unpacked], key=lambda t: order[t[0].cell_id])
    alone = sum(_seconds(device, [c], flops_per_second)[0] for c, _ in unpacked)
    return PackPlan(device, flops_per_second, packs, unpacked, tasks, alone + sum(p.seconds_unpacked for p in packs),
                    alone + sum(p.seconds_packed for p in packs))


def _needs_reference(cell: PlannedCell) -> bool:
    """A text cell measured against a reference cell: it packs only with others that need one,
    never with references, which must be done before it starts (memsweep.text.reference)."""
    reference = cell.config.reference_config()
    return reference is not None and reference.cell_id != cell.cell_id


def _seconds(device: str, cells: list[PlannedCell], flops_per_second: float) -> tuple[float, float]:
    return pack_seconds(device, [(c.config, _flops(c)) for c in cells], flops_per_second)


def _flops(cell: PlannedCell) -> float:
    m, d = cell.config.model, cell.config.data
    return estimated_flops(cell.config, paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model))


def shape(cell: PlannedCell) -> str:
    """A pack's shape as the listing shows it: 1L d32 h4 V2048 S64 fp32 b128."""
    m, d, t = cell.config.model, cell.config.data, cell.config.trainer
    return f"{m.n_layer}L d{m.d_model} h{m.n_head} V{d.vocab_size} S{d.seq_len} {cell.config.precision} b{t.batch_size}"


def cost_model(device: str, flops_per_second: float) -> str:
    """What the estimates rest on, in words."""
    if device == "gpu":
        return (f"GPU: FLOPs at an assumed {flops_per_second:.3g} FLOP/s (--flops-per-second) plus an ASSUMED "
                f"{1e3 * GPU_STEP_OVERHEAD_S:g} ms launch overhead a step, paid once a pack step "
                "(memsweep/pack/cost.py; benchmarks/gpu.sh has not run yet)")
    return (f"CPU: FLOPs at {flops_per_second:.3g} FLOP/s (--flops-per-second), divided by the packed/unpacked "
            "step-time ratio measured by benchmarks/pack.py (memsweep/pack/cost.py CPU_RATIOS)")


LIST_IDS = 3
"""Cell ids shown per pack unless every cell is listed."""


def pack_lines(pp: PackPlan, size: int | str, list_packs: bool, all_ids: bool) -> list[str]:
    """The packs (one line each, or one per shape and K), the unpacked cells by reason, the total."""
    lines = [f"packs (--pack {size}); cost model {cost_model(pp.device, pp.flops_per_second)}:"]
    if pp.packs:
        lines.append(f"{'pack':12} {'K':>3} {'shape':34} {'tokens/cell-step':>16} {'speedup':>8} "
                     f"{'h unpacked':>10} {'h packed':>9}  cells")
    rows: dict[tuple, list[Pack]] = {}
    for p in pp.packs:
        rows.setdefault((p.id,) if list_packs else (shape(p.cells[0]), len(p.cells)), []).append(p)
    for group in rows.values():
        first = group[0].cells[0]
        alone, packed = sum(p.seconds_unpacked for p in group) / 3600, sum(p.seconds_packed for p in group) / 3600
        ids = [c.cell_id for p in group for c in p.cells]
        shown = ids if all_ids else ids[:LIST_IDS]
        cells = " ".join(shown) + (f" (+{len(ids) - len(shown)})" if len(ids) > len(shown) else "")
        name = group[0].id if list_packs else f"{len(group)} packs"
        lines.append(f"{name:12} {len(group[0].cells):>3} {shape(first):34} {tokens_per_step(first.config):>16,} "
                     f"{group[0].speedup:>7.2f}x {alone:>10.3g} {packed:>9.3g}  {cells}")
    reasons: dict[str, int] = {}
    for _, why in pp.unpacked:
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in reasons.items():
        lines.append(f"unpacked, {n} cell{'s' * (n > 1)}: {why}")
    n_packed = sum(len(p.cells) for p in pp.packs)
    lines.append(f"{n_packed} cells in {len(pp.packs)} packs, {len(pp.unpacked)} unpacked, {len(pp.tasks)} tasks: "
                 f"{pp.seconds_unpacked / 3600:.3g} device-hours unpacked, {pp.seconds_packed / 3600:.3g} packed "
                 f"({pp.seconds_unpacked / pp.seconds_packed if pp.seconds_packed else 1:.2f}x; estimated upper "
                 "bounds at trainer.max_steps)")
    return lines
