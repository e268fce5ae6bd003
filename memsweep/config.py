"""Typed configuration of one cell, checked before any training starts.

The composed Hydra config is built into these dataclasses, so a misspelled key (with the closest
known key) or a wrong type is refused with the key's full name, and `validate` refuses impossible
values, also naming the key. The cell id is a hash of exactly the fields that change the result.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-true", "bf16-mixed": "bf16-mixed"}
"""memsweep's precision names and the Lightning precision each one selects. `bf16` stores the
parameters (and AdamW's state) in bf16: true bf16 training, the setting the paper's precision
result is about. `bf16-mixed` keeps fp32 master weights and computes in bf16."""
BF16_OPTIMIZERS = ("bf16", "fp32-state", "stochastic-rounding")
"""trainer.bf16_optimizer, the optimizer of a precision=bf16 cell (docs/bf16.md): `bf16` is torch's
AdamW with its moments in bf16 (the default, what precision=bf16 always was); `fp32-state` keeps
the moments and the update in fp32 and rounds the new weight to nearest bf16; `stochastic-rounding`
rounds it stochastically (unbiased). The weights are bf16 in all three (memsweep/optim.py)."""
ATTENTION = ("auto", "math", "sdpa")
SCHEDULES = ("constant", "cosine", "wsd")
DATA_KINDS = ("uniform", "text")
TOKENIZERS = ("bpe", "gpt2")
GPT2_VOCAB = 50_257
TEXT_VOCAB = 2048
"""The trained BPE's size when data=text leaves data.vocab_size null."""
REFERENCES = ("pool", "none")
TEXT_ONLY_KEYS = ("corpus", "path", "text_field", "hf_name", "hf_config", "hf_split", "hf_revision",
                  "max_documents", "tokenizer", "heldout_pool", "pool_size", "reference")
"""DataConfig keys that only text cells read; a uniform cell's id leaves them (and `kind`) out,
so uniform cell ids are what they were before text existed."""
LOGGERS = ("csv", "wandb", "none")
SEED_RANGE = (0, 2**32 - 1)
"""Seeds numpy and torch both accept (Lightning's seed_everything refuses anything else)."""
CHECKPOINTS_PER_CELL = 50
"""With checkpoint_every_steps unset, a cell checkpoints every max_steps / 50 steps, so a crash
loses at most 2% of the cell's step budget (plus the time-based checkpoints in between)."""


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the key's full name."""


@dataclass
class ModelConfig:
    n_layer: int = 1
    """Transformer blocks (L)."""
    d_model: int = 32
    """Residual width (d); the MLP is 4d wide."""
    n_head: int = 4
    """Attention heads; must divide d_model. The paper does not state it."""
    attention: str = "auto"
    """`auto` (measured: explicit math on CPU, fused SDPA on CUDA), `math` or `sdpa`."""


@dataclass
class DataConfig:
    kind: str = "uniform"
    """`uniform` (random tokens, Morris et al. section 3) or `text` (a real corpus, sections 4-6)."""
    vocab_size: int | None = 2048
    """V. uniform: tokens are uniform over V values (log2 V bits each). text: the vocabulary of the
    tokenizer (trained to this size for `bpe`; 50257 for `gpt2`); null: the tokenizer's own
    (50257 for gpt2, TEXT_VOCAB for bpe), resolved before the cell id is computed."""
    seq_len: int = 64
    """S: tokens per sequence; also the model's number of positions."""
    n_samples: int = 256
    """N: training sequences. uniform: dataset bits H = N * S * log2 V; text: a prefix of the
    training pool, so a smaller N is nested in a larger one."""
    n_heldout: int = 1024
    """Fresh sequences from the same distribution (text: the first of the held-out pool), for test
    loss, membership inference and the test extraction rate."""
    seed: int = 0
    """Which sequences (text: the shuffle of the deduplicated pool): fixed across model sizes and
    precisions so cells compare."""
    repeat_counts: str | None = None
    """Planted repetition, e.g. "2:8:32" (or "2,8,32" quoted): the first repeat_rows training rows are seen 2 times an
    epoch, the next repeat_rows 8 times, the next 32 (null: every row once; left out of the
    cell id then). For memorization scores across their range (memsweep perspectives)."""
    repeat_rows: int = 16
    """Rows per repeat count."""
    capacity_ratio: float | None = None
    """Uniform only: place N relative to the model's capacity instead of giving it, N =
    round(capacity_ratio * capacity_alpha * P / (seq_len * log2 vocab_size)), so that one grid of
    ratios gives every model of a sweep the same spacing around its own N* (ratio 1: dataset bits =
    alpha * P). Overrides n_samples. The cell id is that of the resolved N (the ratio and alpha
    only choose it), so a cell reached by ratio or by N is one cell."""
    capacity_alpha: float = 3.64
    """The bits/param that define N* for capacity_ratio: Morris et al.'s 3.64 (App. A.1) by default;
    a preset that trains on a smaller budget sets what that budget reaches."""
    # Text only (ignored, and left out of the cell id, when kind=uniform).
    corpus: str = "small-mixed"
    """A built-in corpus (`memsweep corpus list`), `path` (data.path) or `hf` (data.hf_name)."""
    path: str | None = None
    """corpus=path: a .txt/.jsonl/.parquet file, a directory or a glob."""
    text_field: str = "text"
    """The column holding the text in .jsonl/.parquet files and Hugging Face datasets."""
    hf_name: str | None = None
    """corpus=hf: a hub dataset name, or a directory written by `Dataset.save_to_disk`."""
    hf_config: str | None = None
    hf_split: str = "train"
    hf_revision: str | None = None
    max_documents: int | None = None
    """Read at most this many documents of the corpus (null: all), e.g. to cap a hub dataset."""
    tokenizer: str = "bpe"
    """`bpe` (byte-level BPE trained on the corpus at vocab_size, cached by the corpus hash) or
    `gpt2` (GPT-2's own BPE, offline; vocab_size must be 50257)."""
    heldout_pool: int = 10_000
    """Sequences set aside, after deduplication and shuffling, as the held-out pool (at most a
    tenth of the corpus's sequences); a cell uses the first n_heldout of them."""
    pool_size: int | None = None
    """Training pool: the first this many sequences after the held-out pool (null: all of them).
    The reference model is trained on the whole pool."""
    reference: str = "pool"
    """Text memorization is measured against `pool`: the same model trained on the whole training
    pool, a cell of its own that runs first (Morris et al. section 4); `none`: no reference
    (total memorization against the uniform code only)."""

    def repeat_count_list(self) -> tuple[int, ...]:
        """repeat_counts as integers >= 2 (empty: no repetition)."""
        text = self.repeat_counts
        if text is None:
            return ()
        try:
            counts = tuple(int(part) for part in str(text).replace(":", ",").split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"data.repeat_counts: expected integers separated by : such as \"2:8:32\", got {text!r}") from None
        _require(bool(counts) and all(c >= 2 for c in counts), "data.repeat_counts",
                 f"every count must be an integer >= 2, got {text!r}")
        return counts


@dataclass
class SaturationConfig:
    """When a cell has saturated. The rule follows trainer.schedule: `wsd` uses the `doubling`
    rule (gain per doubling of steps after a decay), `constant` and `cosine` the `plateau` rule
    (best of a window against the best before it); memsweep/saturation.py says why."""

    window: int = 10
    """plateau: evaluations to look back over (doubling: unused)."""
    tolerance: float = 0.01
    """plateau: saturated when the best memorized bits of the last `window` evaluations beat the
    best before them by less than this fraction. doubling: saturated when memorized bits after a
    decay gain less than this fraction per doubling of the stable steps."""
    min_steps: int = 1000
    """plateau: never declare saturation before this step. doubling: the first decay branch, at
    stable step min_steps; the next ones at 2x, 4x, ... (the first gain is measured at 2x)."""
    cooldown: float = 0.2
    """plateau: on saturation, decay the learning rate linearly to zero over this fraction of the
    steps taken so far, then stop (0 stops at once). wsd: every decay branch, and the final decay
    that ends at max_steps, lasts this fraction of the stable steps before it (must be > 0)."""


@dataclass
class TrainerConfig:
    max_steps: int = 50_000
    batch_size: int = 128
    lr: float = 1e-2
    lr_reference_width: int | None = None
    """When set, `lr` is the rate of a model of this width, and a model of width d trains at
    lr * lr_reference_width / d (the 1/width rule for Adam in muP, Yang et al. 2021), so one
    grid over model sizes keeps a rate tuned on one width. Resolved into `lr` before the cell id
    is computed, and then cleared: the record and the id hold the rate the cell trained at."""
    warmup_steps: int = 100
    schedule: str = "constant"
    """`constant` (then the saturation cooldown), `cosine` (decay to `min_lr_ratio` at max_steps),
    both with the plateau rule, or `wsd` (warmup-stable-decay: constant, with decay branches
    that measure the gain per doubling of steps, and a final decay to zero at max_steps)."""
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 disables it."""
    eval_interval: int = 100
    """Steps between full evaluations of the training and held-out sets."""
    eval_batch_size: int = 1024
    checkpoint_every_steps: int | None = None
    """Checkpoint every this many steps; null: max_steps / CHECKPOINTS_PER_CELL (at most 2% of
    the cell's steps lost to a crash); 0: by time only."""
    checkpoint_every_minutes: float = 15.0
    """Checkpoint at least this often (0: never by time); preemption always checkpoints."""
    keep_checkpoints: int = 2
    lease_seconds: float = 300.0
    """The cell's claim lease: another process may take the cell over once the holder's heartbeat
    (every lease/4) is older than this. Longer tolerates slower filesystems, shorter recovers a
    dead holder on another node sooner (on this host a dead process is seen at once)."""
    accelerator: str = "auto"
    devices: int = 1
    """Devices per node; under SLURM it must equal --ntasks-per-node (one task per device)."""
    num_nodes: int = 1
    """Nodes; devices x num_nodes is the world size, SLURM's task count under srun."""
    strategy: str = "auto"
    """`auto` (one device; DDP when devices x num_nodes > 1; DeepSpeed ZeRO when the model state
    does not fit a device replicated), `single`, `ddp` or `deepspeed` (memsweep/strategy.py)."""
    deepspeed_stage: int | None = None
    """ZeRO stage 1, 2 or 3 with strategy=deepspeed; null picks the lowest stage that fits."""
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    bf16_optimizer: str = "bf16"
    """precision=bf16 only: `bf16`, `fp32-state` or `stochastic-rounding` (BF16_OPTIMIZERS); it
    separates the optimizer's bf16 rounding from the capacity of bf16 weights."""

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints (0: none by step count)."""
        if self.checkpoint_every_steps is None:
            return max(1, math.ceil(self.max_steps / CHECKPOINTS_PER_CELL))
        return self.checkpoint_every_steps


@dataclass
class LoggerConfig:
    name: str = "csv"
    """`csv` (per-step CSV), `wandb` (real wandb; offline without an API key) or `none`.
    The cell's own result.json and metrics.csv are written whatever this says."""
    project: str = "memsweep"
    entity: str | None = None
    group: str | None = None
    mode: str = "auto"
    """W&B mode: `auto` (online with an API key and network, else offline), `online`, `offline`."""


@dataclass
class CellConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    """Initialisation and batch order (separate from data.seed)."""
    precision: str = "fp32"
    """`fp32`, `bf16` (parameters stored in bf16) or `bf16-mixed` (fp32 weights, bf16 compute)."""

    def validate(self) -> "CellConfig":
        m, d, t, s = self.model, self.data, self.trainer, self.trainer.saturation
        _finite(self)
        for key, value in (("seed", self.seed), ("data.seed", d.seed)):
            _require(SEED_RANGE[0] <= value <= SEED_RANGE[1], key,
                     f"must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value}")
        _positive(self, "model.n_layer", "model.d_model", "model.n_head", "data.vocab_size", "data.seq_len",
                  "data.n_samples", "data.n_heldout", "trainer.max_steps", "trainer.batch_size",
                  "trainer.eval_interval", "trainer.eval_batch_size", "trainer.devices",
                  "trainer.saturation.window", "trainer.keep_checkpoints", "trainer.num_nodes")
        _require(m.d_model % m.n_head == 0, "model.d_model",
                 f"{m.d_model} is not divisible by model.n_head={m.n_head}")
        _choice("model.attention", m.attention, ATTENTION)
        _choice("precision", self.precision, tuple(PRECISIONS))
        _choice("trainer.schedule", t.schedule, SCHEDULES)
        _choice("trainer.bf16_optimizer", t.bf16_optimizer, BF16_OPTIMIZERS)
        _require(t.bf16_optimizer == "bf16" or self.precision == "bf16", "trainer.bf16_optimizer",
                 f"{t.bf16_optimizer} rounds updates into bf16 weights, so it needs precision=bf16 (got "
                 f"precision={self.precision}); leave trainer.bf16_optimizer at bf16")
        if t.schedule == "wsd":
            _require(s.cooldown > 0, "trainer.saturation.cooldown",
                     f"schedule=wsd decays over this fraction of the stable steps; must be > 0, got {s.cooldown}")
            _require(s.min_steps >= 1, "trainer.saturation.min_steps",
                     f"schedule=wsd takes its first decay branch at this step; must be >= 1, got {s.min_steps}")
            _require(t.strategy != "deepspeed", "trainer.strategy",
                     "schedule=wsd snapshots the optimizer state for its decay branches, which DeepSpeed "
                     "shards; use ddp, or schedule=cosine")
        _choice("logger.name", self.logger.name, LOGGERS)
        _choice("logger.mode", self.logger.mode, ("auto", "online", "offline"))
        _require(t.lr > 0, "trainer.lr", f"must be > 0, got {t.lr}")
        _require(0 <= t.min_lr_ratio <= 1, "trainer.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
        _require(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "trainer.beta1/beta2", "must be in [0, 1)")
        _require(t.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
        _require(t.weight_decay >= 0, "trainer.weight_decay", f"must be >= 0, got {t.weight_decay}")
        _require(t.grad_clip >= 0, "trainer.grad_clip", f"must be >= 0, got {t.grad_clip}")
        _require(t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 0, "trainer.checkpoint_every_steps",
                 f"must be >= 0 or null, got {t.checkpoint_every_steps}")
        _require(t.lease_seconds >= 4, "trainer.lease_seconds", f"must be >= 4 (heartbeat every lease/4), got {t.lease_seconds}")
        _require(t.checkpoint_every_minutes >= 0, "trainer.checkpoint_every_minutes",
                 f"must be >= 0, got {t.checkpoint_every_minutes}")
        _require(s.tolerance >= 0, "trainer.saturation.tolerance", f"must be >= 0, got {s.tolerance}")
        _require(s.cooldown >= 0, "trainer.saturation.cooldown", f"must be >= 0, got {s.cooldown}")
        _require(d.vocab_size >= 2, "data.vocab_size", f"needs at least 2 tokens, got {d.vocab_size}")
        _require(d.capacity_alpha > 0, "data.capacity_alpha", f"must be > 0 bits/param, got {d.capacity_alpha}")
        _choice("data.kind", d.kind, DATA_KINDS)
        if d.repeat_counts is not None:
            counts = d.repeat_count_list()
            _require(d.repeat_rows >= 1, "data.repeat_rows", f"must be >= 1, got {d.repeat_rows}")
            _require(len(counts) * d.repeat_rows <= d.n_samples, "data.repeat_counts",
                     f"{len(counts)} counts x data.repeat_rows={d.repeat_rows} rows need data.n_samples >= "
                     f"{len(counts) * d.repeat_rows}, got {d.n_samples}")
        if d.kind == "text":
            self._validate_text()
        from memsweep.strategy import check_strategy  # imported here: memsweep.strategy imports this module

        check_strategy(self.precision, t.accelerator, t.devices, t.num_nodes, t.strategy, t.deepspeed_stage)
        return self

    def _validate_text(self) -> None:
        from memsweep.data.corpora import check_corpus_name  # imported here: it is only needed for text

        d = self.data
        check_corpus_name(d.corpus)
        _require(d.corpus != "path" or bool(d.path), "data.path", "corpus=path needs data.path (a file, directory or glob)")
        _require(d.corpus != "hf" or bool(d.hf_name), "data.hf_name", "corpus=hf needs data.hf_name (a hub name or a saved dataset dir)")
        _choice("data.tokenizer", d.tokenizer, TOKENIZERS)
        _require(d.tokenizer != "gpt2" or d.vocab_size == GPT2_VOCAB, "data.vocab_size",
                 f"GPT-2's tokenizer has {GPT2_VOCAB} tokens; set data.vocab_size={GPT2_VOCAB} (got {d.vocab_size})")
        _require(d.tokenizer != "bpe" or 260 <= d.vocab_size <= 1_000_000, "data.vocab_size",
                 f"a byte-level BPE needs 260 to 1,000,000 tokens (256 bytes and specials first), got {d.vocab_size}")
        _choice("data.reference", d.reference, REFERENCES)
        _require(d.heldout_pool >= d.n_heldout, "data.heldout_pool",
                 f"must hold data.n_heldout={d.n_heldout} sequences, got {d.heldout_pool}")
        _require(d.pool_size is None or d.pool_size >= d.n_samples, "data.pool_size",
                 f"must hold data.n_samples={d.n_samples} sequences, got {d.pool_size}")
        _require(d.max_documents is None or d.max_documents >= 1, "data.max_documents",
                 f"must be >= 1 or null, got {d.max_documents}")
        _require(d.reference != "pool" or d.pool_size is not None, "data.pool_size",
                 "data.reference=pool trains the reference on the whole training pool, so the pool needs a "
                 "size: set data.pool_size (or data.reference=none)")

    def reference_config(self) -> "CellConfig | None":
        """The cell whose per-sample NLLs a text cell's memorization is measured against: the same
        model, recipe and seeds trained on the whole training pool (None: no reference). A cell
        trained on the whole pool is its own reference."""
        d = self.data
        if d.kind != "text" or d.reference == "none":
            return None
        return replace(self, data=replace(d, n_samples=d.pool_size))

    def result_relevant(self) -> dict[str, Any]:
        """Everything that can change the measured result (not where or how it is logged)."""
        relevant = asdict(self)
        del relevant["logger"]
        if self.data.kind == "uniform":
            for key in ("kind", *TEXT_ONLY_KEYS):
                del relevant["data"][key]
        if self.data.repeat_counts is None:
            del relevant["data"]["repeat_counts"], relevant["data"]["repeat_rows"]
        del relevant["data"]["capacity_ratio"], relevant["data"]["capacity_alpha"]  # they only choose n_samples
        del relevant["trainer"]["lr_reference_width"]  # resolved into lr
        for key in ("accelerator", "devices", "num_nodes", "strategy", "deepspeed_stage"):
            del relevant["trainer"][key]  # where it trains: the global batch, hence the run, is the same
        for key in ("eval_batch_size", "checkpoint_every_steps", "checkpoint_every_minutes", "keep_checkpoints",
                    "lease_seconds"):
            del relevant["trainer"][key]
        del relevant["model"]["attention"]
        if self.trainer.bf16_optimizer == "bf16":
            del relevant["trainer"]["bf16_optimizer"]  # the default: ids from before the key stay valid
        return relevant

    @property
    def cell_id(self) -> str:
        """A stable name for this cell: the same config always hashes to the same id."""
        blob = json.dumps(self.result_relevant(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _field(cfg: CellConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _finite(node: Any, prefix: str = "") -> None:
    """Every float in the config is finite: `trainer.lr=inf` would train NaNs to the end."""
    for f in fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            _finite(value, key + ".")
        elif isinstance(value, float):
            _require(math.isfinite(value), key, f"must be a finite number, got {value}")


def _positive(cfg: CellConfig, *keys: str) -> None:
    for key in keys:
        value = _field(cfg, key)
        _require(value >= 1, key, f"must be >= 1, got {value}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, f"unknown value {value!r}; choose one of {', '.join(allowed)}")


def unknown_key_message(full_key: str, known: list[str] | set[str]) -> str:
    """`model.d_modle: unknown key; did you mean model.d_model?` (the closest known key, if any)."""
    parent, _, name = full_key.rpartition(".")
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else \
        f"; the keys there are {', '.join(sorted(known))}"
    return f"{full_key}: unknown key{hint}"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """One value checked against its field's type, converted where OmegaConf would (int -> float,
    a number -> str, a numeric string -> number)."""
    if is_dataclass(hint):
        return _build(hint, value, key)
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        _require(type(None) in allowed, key, "must not be null")
        return None
    base = next(t for t in allowed if t is not type(None))
    if base is bool:
        _require(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if base in (int, float) and isinstance(value, str):
        try:
            value = float(value) if base is float else int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {'a number' if base is float else 'an integer'}, got {value!r}") from None
    if base is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if base is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    _require(isinstance(value, (str, int, float)) and not isinstance(value, bool), key, f"expected a string, got {value!r}")
    return str(value)


def _build(cls: type, raw: Any, key: str) -> Any:
    """A config dataclass from a plain mapping: unknown keys and wrong types are errors naming
    the key. Why not OmegaConf's structured merge: it costs ~30 ms a cell, the bulk of planning
    a 3,000-cell grid; this is the same check in microseconds."""
    _require(isinstance(raw, dict), key, f"expected a mapping, got {raw!r}")
    hints = _hints(cls)
    for name in raw:
        if name not in hints:
            raise ConfigError(unknown_key_message(f"{key}.{name}" if key else str(name), set(hints)))
    return cls(**{name: _coerce(hints[name], value, f"{key}.{name}" if key else name) for name, value in raw.items()})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def cell_config(cfg: DictConfig | dict) -> CellConfig:
    """Typed, validated cell config from a Hydra/OmegaConf config (extra top-level keys such as
    `hydra` or `experiment` metadata are ignored; unknown keys inside a group are errors)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as err:  # e.g. a preset's ${variants.${variant}.lr} with an unknown variant
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from None
    known = {k: raw[k] for k in ("model", "data", "trainer", "logger", "seed", "precision") if k in raw}
    typed: CellConfig = _build(CellConfig, known, "")
    if typed.data.vocab_size is None:
        _require(typed.data.kind == "text", "data.vocab_size", "uniform tokens need a vocabulary size")
        typed.data.vocab_size = GPT2_VOCAB if typed.data.tokenizer == "gpt2" else TEXT_VOCAB
    if typed.data.capacity_ratio is not None:
        typed.data.n_samples = samples_at_capacity_ratio(typed)
    if (width := typed.trainer.lr_reference_width) is not None:
        _require(width >= 1, "trainer.lr_reference_width", f"must be a width >= 1, got {width}")
        typed.trainer.lr = typed.trainer.lr * width / typed.model.d_model
        typed.trainer.lr_reference_width = None
    return typed.validate()


def samples_at_capacity_ratio(cfg: CellConfig) -> int:
    """N for data.capacity_ratio: the sequences whose bits are capacity_ratio x capacity_alpha x P
    (at least 1)."""
    from memsweep.model import paper_param_count  # imported here: memsweep.model imports torch

    d, m = cfg.data, cfg.model
    _require(d.kind == "uniform", "data.capacity_ratio",
             "places N by the bits of uniform sequences (S log2 V each); a text sequence's bits are not "
             "known before training, so give data.n_samples")
    _require(math.isfinite(d.capacity_ratio) and d.capacity_ratio > 0, "data.capacity_ratio",
             f"must be > 0, got {d.capacity_ratio}")
    _require(math.isfinite(d.capacity_alpha) and d.capacity_alpha > 0, "data.capacity_alpha",
             f"must be > 0 bits/param, got {d.capacity_alpha}")
    _require(d.vocab_size >= 2 and d.seq_len >= 1, "data.vocab_size",
             f"needs vocab_size >= 2 and seq_len >= 1, got {d.vocab_size} and {d.seq_len}")
    params = paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model)
    bits_per_sequence = d.seq_len * math.log2(d.vocab_size)
    return max(1, round(d.capacity_ratio * d.capacity_alpha * params / bits_per_sequence))


CONFIG_FILE = "config.yaml"
"""A cell dir's resolved config: written by the planner and the Hydra app, read by the runner."""


def save_cell_config(cfg: CellConfig, path: Path) -> None:
    """Write a cell's full resolved config as YAML (what a queued job reads back)."""
    from memsweep.record import write_text_atomic

    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def load_cell_config(path: Path) -> CellConfig:
    """Read back a config written by `save_cell_config`, validated again."""
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no cell config there") from None
    return cell_config(raw)
