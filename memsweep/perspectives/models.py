"""The models `memsweep perspectives` scores, behind one interface: memsweep's own text cells and
Hugging Face causal LMs (a hub name at a revision, or a local directory).

Why one interface: Chen et al.'s score, the per-step entropy and the hidden states mean the same
whatever the model; only how a model reads its rows differs. memsweep's GPT reads a learned BOS
vector at position 0, so it predicts every token, the first included; an HF model predicts from
its first token on, so its entropy at position 0 is NaN (a memsweep export, whose BOS is a token
it never emits, is fed that token first and then reads rows exactly as memsweep's GPT does).

Greedy is the plain argmax of the next-token distribution (the first maximum on a tie), with no
end-of-text suppression: the anchors' `generate(min_length=...)` forbids EOS before the length is
reached, so there a true continuation that holds an EOS can never be matched.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from memsweep.config import CONFIG_FILE, DataConfig, load_cell_config
from memsweep.model import GPT, GPTConfig, pick_attention
from memsweep.perspectives.hf_tokenizer import (HF_PREFIX, PATH_PREFIX, find_tokenizer, hf_location,
                                                require_transformers, tokenizer_identity)
from memsweep.record import RESULT_FILE, read_result
from memsweep.text.decode import greedy_continue

ENTROPY_CHUNK_ELEMENTS = 1 << 24
"""Logits turned into float32 probabilities at a time (64 MiB)."""
SUPPRESSED_LOGIT = torch.finfo(torch.float32).min
"""What a suppressed token's logit becomes: probability 0, like -inf, but 0 * it is 0 in the entropy."""


class Scored(NamedTuple):
    generated: torch.Tensor
    """(B, n) int64: the greedy continuation of each row's k-token context."""
    entropy: torch.Tensor
    """(B, k+n) float32 nats: [:, t] is the entropy of the distribution predicting position t,
    teacher-forced over the true context for t < k, over the model's own tokens for t >= k."""
    hidden: torch.Tensor | None
    """(B, n, d): the last-layer state (the output head's input) whose logits chose each token."""


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dimension, in float32: log Z - E_p[z] for
    z = logits - max (measured faster on CPU than -sum p log p from log_softmax, and as exact)."""
    z = logits.float()
    z = z - z.amax(dim=-1, keepdim=True)
    weights = z.exp()
    total = weights.sum(dim=-1)
    return total.log() - torch.linalg.vecdot(weights, z) / total


class ScoringModel(ABC):
    """What the scorer needs of a model; `describe()` is its models.json entry."""

    kind: ClassVar[str]
    name: str
    """Unique in a run; names the score files (`<name>__k{k}_n{n}.npz`)."""
    n_params: int
    source: str
    """What loads it again: a cell dir, `hf:NAME@REVISION` or `path:DIR`."""
    vocab_size: int
    """Token ids the model reads must lie below this."""
    hidden_size: int
    max_tokens: int | None
    """The longest context + continuation it can score (None: no stated limit)."""
    tokenizer_id: dict | None
    """Comparable with a corpus's tokenizer identity by its `sha256` (None: unknown)."""
    trained_rows: int | None
    """memsweep cells: the cell trains on the first trained_rows rows of its pool."""
    device: torch.device

    @abstractmethod
    def score_batch(self, rows: torch.Tensor, k: int, n: int, want_hidden: bool) -> Scored:
        """Greedy continuation of rows[:, :k] for n tokens, with entropies (and hidden states)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_params": self.n_params, "kind": self.kind, "source": self.source,
                "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "trained_rows": self.trained_rows,
                "tokenizer": self.tokenizer_id}


@dataclass(frozen=True)
class TrainedPool:
    """Where a memsweep cell's training rows come from: its data config and the pool's hash."""
    data: DataConfig
    pool_sha256: str


class MemsweepModel(ScoringModel):
    kind = "memsweep"

    def __init__(self, gpt: GPT, name: str, source: str = "", tokenizer_id: dict | None = None,
                 pool: TrainedPool | None = None, trained_rows: int | None = None):
        self.gpt = gpt.eval()
        self.name, self.source, self.tokenizer_id = name, source, tokenizer_id
        self.pool, self.trained_rows = pool, trained_rows
        cfg = gpt.cfg
        self.n_params, self.vocab_size, self.hidden_size = gpt.n_params, cfg.vocab_size, cfg.d_model
        self.max_tokens = cfg.seq_len
        self.device = gpt.wte.weight.device

    def score_batch(self, rows: torch.Tensor, k: int, n: int, want_hidden: bool) -> Scored:
        context = rows[:, :k].to(self.device)
        with torch.no_grad():
            cont = greedy_continue(self.gpt, context, n, batch_size=len(rows), return_entropy=True,
                                   return_hidden=want_hidden)
            context_entropy = softmax_entropy(self.gpt(context))  # logits[:, t] predict token t, t = 0 from BOS
        return Scored(cont.tokens, torch.cat([context_entropy, cont.entropy], dim=1), cont.hidden)


class HFModel(ScoringModel):
    kind = "hf"

    def __init__(self, module, name: str, source: str, tokenizer_id: dict | None = None):
        self.module = module.eval()
        self.name, self.source, self.tokenizer_id, self.trained_rows = name, source, tokenizer_id, None
        config, generation = module.config, module.generation_config
        self.suppressed = [int(t) for t in (generation.suppress_tokens or [])]
        bos = generation.bos_token_id
        self.start_token = int(bos) if bos is not None and int(bos) in self.suppressed else None
        """A BOS it may never emit (a memsweep export's learned start vector): fed before every row."""
        self.n_params = module.num_parameters()
        self.vocab_size = module.get_output_embeddings().weight.shape[0]
        self.hidden_size = config.hidden_size
        positions = getattr(config, "max_position_embeddings", None)
        # The last generated token is never fed: [start token] + k + n - 1 positions are read.
        self.max_tokens = None if positions is None else positions + 1 - (self.start_token is not None)
        self.device = module.device

    def score_batch(self, rows: torch.Tensor, k: int, n: int, want_hidden: bool) -> Scored:
        context = rows[:, :k].to(self.device)
        if self.start_token is not None:
            context = torch.cat([torch.full_like(context[:, :1], self.start_token), context], dim=1)
        out = hf_greedy(self.module, context, n, self.suppressed, want_hidden)
        context_entropy = out.prefix_entropy[:, 1:] if self.start_token is not None else out.prefix_entropy
        return Scored(out.tokens, torch.cat([context_entropy, out.entropy], dim=1), out.hidden)


class HFContinuation(NamedTuple):
    tokens: torch.Tensor
    """(B, n_new) int64."""
    entropy: torch.Tensor
    """(B, n_new) float32 nats, of the distribution each generated token was the argmax of."""
    hidden: torch.Tensor | None
    """(B, n_new, d): the output head's input that chose each token."""
    prefix_entropy: torch.Tensor
    """(B, L) float32 nats over the left-padded prefix columns: [:, j] is the entropy of the
    distribution predicting column j; NaN where no real column precedes it (pads, first token)."""


@torch.inference_mode()
def hf_greedy(model, prefixes: torch.Tensor | Sequence[torch.Tensor], n_new: int, suppressed: Sequence[int] = (),
              want_hidden: bool = False) -> HFContinuation:
    """Batched, KV-cached greedy decoding for an HF causal LM, equal to one-at-a-time decoding.

    Prefixes of different lengths are LEFT padded; the attention mask hides the pads and the
    position ids count from each row's own first token, so a row decodes as it would alone.
    `suppressed` token ids get probability 0 (as generate's suppress_tokens), in the entropies too.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be at least 1, got {n_new}")
    device = model.device
    ids, real = _left_padded(prefixes, device)
    mask = real.long()
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    # transformers 5 names the cache argument `cache`; 4.x `past_key_values`.
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    head_inputs: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: head_inputs.append(args[0][:, -1].float())) if want_hidden else None
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        blocked = torch.zeros(out.logits.shape[-1], dtype=torch.bool, device=device)
        blocked[list(suppressed)] = True
        prefix_entropy = torch.full(ids.shape, math.nan, device=device)
        prefix_entropy[:, 1:] = _entropies(out.logits[:, :-1], blocked if suppressed else None)
        prefix_entropy[:, 1:][~real[:, :-1]] = math.nan
        tokens, entropies = [], []
        for step in range(n_new):
            logits = out.logits[:, -1].float()
            if suppressed:
                logits = logits.masked_fill(blocked, SUPPRESSED_LOGIT)
            tokens.append(logits.argmax(dim=-1))
            entropies.append(softmax_entropy(logits))
            if step == n_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                        **{cache_argument: _cache_of(out)})
    finally:
        if hook is not None:
            hook.remove()
    if want_hidden and len(head_inputs) != n_new:
        raise RuntimeError(f"{type(model).__name__} did not call its output head once per step; "
                           "its hidden states cannot be read")
    return HFContinuation(torch.stack(tokens, dim=1), torch.stack(entropies, dim=1),
                          torch.stack(head_inputs, dim=1) if want_hidden else None, prefix_entropy)


def _left_padded(prefixes: torch.Tensor | Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L) right-aligned with pad id 0, real (B, L) bool)."""
    if isinstance(prefixes, torch.Tensor):
        ids = prefixes.long().to(device)
        return ids, torch.ones_like(ids, dtype=torch.bool)
    rows = [torch.as_tensor(row, dtype=torch.long).reshape(-1) for row in prefixes]
    if not rows or min(len(row) for row in rows) == 0:
        raise ValueError("every prefix needs at least one token (a Hugging Face model has no start vector)")
    longest = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    real = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, longest - len(row):], real[i, longest - len(row):] = row, True
    return ids.to(device), real.to(device)


def _entropies(logits: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """softmax_entropy of (B, L, V) logits, a few columns at a time: the float32 copy of all of
    them would be B*L*V*4 bytes (1.6 GB at B 256, L 32, V 50k)."""
    columns = max(1, ENTROPY_CHUNK_ELEMENTS // max(1, logits.shape[0] * logits.shape[2]))
    return torch.cat([softmax_entropy(part if blocked is None else part.float().masked_fill(blocked, SUPPRESSED_LOGIT))
                      for part in logits.split(columns, dim=1)], dim=1)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_hf_spec(spec: str) -> bool:
    return spec.startswith((HF_PREFIX, PATH_PREFIX))


def expand_specs(specs: Sequence[str]) -> list[str]:
    """Each spec as the models it names, reading only records: a sweep dir becomes its chosen
    cell dirs (`sweep_cells`), a cell dir and `hf:`/`path:` specs stay as they are."""
    expanded: list[str] = []
    for spec in specs:
        path = Path(spec)
        if is_hf_spec(spec) or (path / RESULT_FILE).exists():
            expanded.append(spec)
        elif not path.is_dir():
            raise ValueError(f"{spec}: no such directory; a model is a memsweep cell or sweep dir, "
                             f"{HF_PREFIX}NAME@REVISION or {PATH_PREFIX}HF_DIR")
        else:
            expanded.extend(str(cell) for cell in sweep_cells(path))
    return expanded


def sweep_cells(sweep_dir: Path, n_samples: int | None = None) -> list[Path]:
    """One cell per model size of a sweep: among its done text cells that are not references, of
    its lowest seed, the one trained on the MOST rows (fp32 first on a tie), or on exactly
    `n_samples` rows when given (a small N is where a ladder memorizes most).

    Why the largest N: Chen et al. score a model's own training rows, and a sweep's cells of one
    size differ only in N; the largest is the most data the ladder gives that size (the
    reference, trained on the whole pool, is the baseline unintended memorization is measured
    against, so it is left out). All chosen cells share the pool, so their first rows are
    training rows of every one of them.
    """
    from memsweep.sweepstate import sweep_states

    cells = [c for c in sweep_states(sweep_dir)
             if c.state == "done" and c.record.get("data_kind") == "text" and not c.record.get("is_reference")]
    if not cells:
        raise ValueError(f"sweep {sweep_dir} has no done text cell that is not a reference cell "
                         f"(see memsweep status {sweep_dir})")
    pools = sorted({c.record["text"]["pool_sha256"] for c in cells})
    if len(pools) > 1:
        raise ValueError(f"sweep {sweep_dir} holds text cells of {len(pools)} training pools "
                         f"({', '.join(p[:12] for p in pools)}); pass the cell dirs of one pool instead")
    if n_samples is not None:
        cells = [c for c in cells if c.record["n_samples"] == n_samples]
        if not cells:
            raise ValueError(f"sweep {sweep_dir} has no done text cell trained on {n_samples:,} rows")
    seed = min(c.record["seed"] for c in cells)
    chosen: dict[int, Any] = {}
    for cell in (c for c in cells if c.record["seed"] == seed):
        rank = (cell.record["n_samples"], cell.record.get("precision") == "fp32", cell.cell_id)
        best = chosen.get(cell.record["n_params"])
        if best is None or rank > (best.record["n_samples"], best.record.get("precision") == "fp32", best.cell_id):
            chosen[cell.record["n_params"]] = cell
    return [chosen[p].cell_dir for p in sorted(chosen)]


def load_models(specs: Sequence[str], device: str | torch.device = "auto") -> list[ScoringModel]:
    """Every model the specs name (hf:NAME@REVISION, path:HF_DIR, a memsweep cell or sweep dir),
    smallest first. Refuses two models of the same name (their score files would collide)."""
    device = resolve_device(device)
    models = [load_hf(spec, device) if is_hf_spec(spec) else load_memsweep_cell(Path(spec), device)
              for spec in expand_specs(specs)]
    names = [m.name for m in models]
    if doubled := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two models are named {doubled[0]!r}; pass each model once")
    return sorted(models, key=lambda m: m.n_params)


def load_memsweep_cell(cell_dir: Path, device: torch.device) -> MemsweepModel:
    """A done text cell's trained GPT, in the dtype it was trained and measured in."""
    record = done_text_record(cell_dir)
    cfg = load_cell_config(cell_dir / CONFIG_FILE)
    gpt_cfg, state = _trained_weights(cell_dir, cfg, record)
    gpt = GPT(replace(gpt_cfg, attention=pick_attention(device)))
    gpt.to(next(v.dtype for v in state.values() if v.is_floating_point())).load_state_dict(state)
    name = f"L{cfg.model.n_layer}-d{cfg.model.d_model}-N{cfg.data.n_samples}-{cfg.cell_id}"
    text = record["text"]
    return MemsweepModel(gpt.to(device), name, str(cell_dir), text["tokenizer"],
                         TrainedPool(cfg.data, text["pool_sha256"]), cfg.data.n_samples)


def done_text_record(cell_dir: Path) -> dict:
    """The record of a done text cell; refuses any other cell."""
    record = read_result(cell_dir)
    if not record or record.get("status") != "done":
        raise ValueError(f"{cell_dir} is not a done memsweep cell (status {(record or {}).get('status')})")
    if record.get("data_kind") != "text":
        raise ValueError(f"{cell_dir} trained on random tokens; perspectives scores text cells")
    return record


def _trained_weights(cell_dir: Path, cfg, record: dict) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """model.pt (cells finished since it was written), else the newest valid checkpoint, which
    must be at the cell's final step: an earlier one is not the model the record measured."""
    from memsweep.cell import MODEL_FILE, gpt_config
    from memsweep.checkpoint import newest_valid_checkpoint, step_of

    if (cell_dir / MODEL_FILE).exists():
        blob = torch.load(cell_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        return GPTConfig(**blob["gpt_config"]), blob["state_dict"]
    checkpoint = newest_valid_checkpoint(cell_dir)
    if checkpoint is None or checkpoint.is_dir():
        raise ValueError(f"{cell_dir} has no {MODEL_FILE} and no readable checkpoint: its trained weights are gone")
    if step_of(checkpoint) != record.get("steps"):
        raise ValueError(f"{cell_dir}: its newest checkpoint {checkpoint.name} is at step {step_of(checkpoint)}, "
                         f"but the cell finished at step {record.get('steps')}: not the model its record measured")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return gpt_config(cfg, torch.device("cpu")), {k.removeprefix("model."): v for k, v in state.items()
                                                  if k.startswith("model.")}


def load_hf(spec: str, device: torch.device) -> HFModel:
    """`hf:NAME@REVISION` from the hub (or its cache), `path:DIR` from a save_pretrained dir; in
    fp32 on CPU, on CUDA in the 16-bit dtype the checkpoint declares (else bf16, or fp16 where
    bf16 is unsupported)."""
    transformers = require_transformers()
    where, revision = hf_location(spec)
    if spec.startswith(HF_PREFIX):
        name = where.replace("/", "--") + (f"@{revision}" if revision else "")
    else:
        name = Path(where).resolve().name
    config = transformers.AutoConfig.from_pretrained(where, revision=revision)
    module = transformers.AutoModelForCausalLM.from_pretrained(
        where, revision=revision, **{dtype_keyword(transformers): _hf_dtype(config, device)})
    tokenizer = find_tokenizer(spec)
    return HFModel(module.to(device), name, spec, None if tokenizer is None else tokenizer_identity(tokenizer, spec))


def dtype_keyword(transformers) -> str:
    """from_pretrained's dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    return "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def _hf_dtype(config, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    declared = getattr(torch, declared) if isinstance(declared, str) else declared
    if declared in (torch.float16, torch.bfloat16):
        return declared
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
