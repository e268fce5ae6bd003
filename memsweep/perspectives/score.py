"""Chen et al.'s memorization score, the step entropies and a bounded hidden-state sample, written
per (model, context k, continuation n) for the analyses to read.

    <out>/models.json                          [{name, n_params, kind, source, vocab_size, ...}], smallest first
    <out>/unigram.npy                          (V,) int64: each token id's count over the rows' source
    <out>/corpus.json                          what the rows are and where the counts come from
    <out>/scores/<name>__k{k}_n{n}.csv         idx,score
    <out>/scores/<name>__k{k}_n{n}.npz         idx (R,) int64, score (R,) float32, true (R, k+n) int32,
                                               generated (R, n) int32, entropy (R, k+n) float32 nats,
                                               hidden_idx (H,) int64
    <out>/scores/<name>__k{k}_n{n}.hidden.npy  (H, n, d) float16: the states of rows hidden_idx

score = the fraction of the n continuation positions where the greedy token equals the true one,
the model continuing from its own tokens (position-wise, not longest-prefix). The .npz is renamed
into place last, so a score set that is listed is whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memsweep.perspectives.models import ScoringModel
from memsweep.perspectives.sequences import ScoredRows
from memsweep.record import write_json_atomic

SCORES_DIR, MODELS_FILE, UNIGRAM_FILE, CORPUS_FILE = "scores", "models.json", "unigram.npy", "corpus.json"
HIDDEN_SEED = 0
"""Seeds the keys that pick the hidden-state rows: the same rows for every model at a level."""
COPY_ROWS = 256


def score_name(model_name: str, k: int, n: int) -> str:
    return f"{model_name}__k{k}_n{n}"


def score_grid(models: Sequence[ScoringModel], rows: ScoredRows, contexts: Sequence[int],
               continuations: Sequence[int], out_dir: Path, batch_size: int = 64, hidden_rows: int = 2048) -> Path:
    """Score every model at every (context, continuation) pair; returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / MODELS_FILE, [m.describe() for m in models])
    write_json_atomic(out_dir / CORPUS_FILE, {**rows.describe(), "contexts": sorted(contexts),
                                               "continuations": sorted(continuations)})
    np.save(out_dir / UNIGRAM_FILE, rows.unigram.astype(np.int64))
    for model in models:
        for k in sorted(contexts):
            score_context(model, rows.rows, k, continuations, out_dir=out_dir, batch_size=batch_size,
                          hidden_rows=hidden_rows)
    return out_dir


def score_rows(model: ScoringModel, rows: np.ndarray, k: int, n: int, *, out_dir: Path, batch_size: int = 64,
               hidden_rows: int = 2048) -> Path:
    """The score set of one (model, k, n); returns the path of its .npz."""
    return score_context(model, rows, k, [n], out_dir=out_dir, batch_size=batch_size, hidden_rows=hidden_rows)[0]


def score_context(model: ScoringModel, rows: np.ndarray, k: int, continuations: Sequence[int], *, out_dir: Path,
                  batch_size: int = 64, hidden_rows: int = 2048) -> list[Path]:
    """The score sets of one model and context for every continuation n, from ONE greedy decode of
    the longest: greedy decoding is deterministic, so the first n tokens of a longer continuation
    (their entropies and states too) are the shorter one. Returns the .npz paths, in order."""
    continuations = sorted(set(continuations))
    n_max, n_rows = continuations[-1], len(rows)
    if k + n_max > rows.shape[1]:
        raise ValueError(f"context {k} + continuation {n_max} is longer than the rows ({rows.shape[1]} tokens)")
    scores_dir = Path(out_dir) / SCORES_DIR
    scores_dir.mkdir(parents=True, exist_ok=True)
    true = np.empty((n_rows, k + n_max), dtype=np.int32)
    generated = np.empty((n_rows, n_max), dtype=np.int32)
    entropy = np.empty((n_rows, k + n_max), dtype=np.float32)
    samples = {n: HiddenSample(scores_dir / f"{score_name(model.name, k, n)}.hidden.npy", n_rows, n,
                               hidden_rows // (n + 1)) for n in continuations}
    want_hidden = any(s.per_level for s in samples.values())
    started = time.perf_counter()
    for start in range(0, n_rows, batch_size):
        batch = torch.from_numpy(np.array(rows[start : start + batch_size, : k + n_max], dtype=np.int64))
        out = model.score_batch(batch, k, n_max, want_hidden)
        tokens = out.generated.cpu()
        end = start + len(batch)
        true[start:end], generated[start:end] = batch.numpy(), tokens.numpy()
        entropy[start:end] = out.entropy.float().cpu().numpy()
        matched = (tokens == batch[:, k:]).cumsum(dim=1).numpy()
        for n, sample in samples.items():
            sample.offer(start, matched[:, n - 1], None if out.hidden is None else out.hidden[:, :n])
    seconds = time.perf_counter() - started
    paths, summary = [], []
    for n in continuations:
        matches = (generated[:, :n] == true[:, k : k + n]).sum(axis=1)
        score = (matches / n).astype(np.float32)
        hidden_idx = samples[n].finish(model.hidden_size)
        paths.append(_write_set(scores_dir, score_name(model.name, k, n), score, true[:, : k + n],
                                generated[:, :n], entropy[:, : k + n], hidden_idx))
        summary.append(f"n={n}: {np.mean(matches == n):.2%} fully memorized, mean score {score.mean():.3f}")
    print(f"memsweep perspectives: {model.name} k={k}: {n_rows:,} rows in {seconds:.1f} s "
          f"({n_rows / max(seconds, 1e-9):,.0f} rows/s); {'; '.join(summary)}", flush=True)
    return paths


def _write_set(scores_dir: Path, stem: str, score: np.ndarray, true: np.ndarray, generated: np.ndarray,
               entropy: np.ndarray, hidden_idx: np.ndarray) -> Path:
    idx = np.arange(len(score), dtype=np.int64)
    np.savetxt(scores_dir / f"{stem}.csv", np.column_stack([idx, score]), fmt=["%d", "%.8g"], delimiter=",",
               header="idx,score", comments="")
    final, partial = scores_dir / f"{stem}.npz", scores_dir / f".{stem}.npz.partial"
    with open(partial, "wb") as fh:
        np.savez(fh, idx=idx, score=score, true=true, generated=generated, entropy=entropy, hidden_idx=hidden_idx)
    os.replace(partial, final)
    return final


class HiddenSample:
    """A fixed, seeded, stratified sample of the rows' hidden states, streamed to disk.

    Every row gets a seeded random key; of each score level (0..n matched positions) the
    `per_level` rows with the smallest keys are kept. So the sample does not depend on the batch
    size, every level that occurs is in it (with min(per_level, its rows) rows), and the states
    of at most per_level * (n + 1) rows are kept, in a memory-mapped slot file written batch by
    batch; `finish` copies them, in row order, into the final file and removes the slots.
    """

    def __init__(self, path: Path, n_rows: int, n: int, per_level: int):
        self.path, self.n, self.per_level = Path(path), n, per_level
        self.keys = np.random.default_rng(HIDDEN_SEED).random(n_rows)
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        """level -> (row indices, their slots)."""
        self.slot_path = self.path.with_name(f".{self.path.name}.slots")
        self.slots: np.ndarray | None = None

    def offer(self, start: int, matches: np.ndarray, hidden: torch.Tensor | None) -> None:
        """Rows start..start+len(matches)-1 with their matched-position counts and states (B, n, d)."""
        if not self.per_level:
            return
        if self.slots is None:
            self.slots = np.lib.format.open_memmap(self.slot_path, mode="w+", dtype=np.float16,
                                                   shape=(self.per_level * (self.n + 1), self.n, hidden.shape[-1]))
        for level in np.unique(matches):
            new = start + np.flatnonzero(matches == level)
            old, old_slots = self.kept.get(int(level), (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            candidates = np.concatenate([old, new])
            keep = candidates[np.argsort(self.keys[candidates], kind="stable")[: self.per_level]]
            staying = np.isin(old, keep)
            entering = new[np.isin(new, keep)]
            level_slots = np.arange(level * self.per_level, (level + 1) * self.per_level)
            free = np.setdiff1d(level_slots, old_slots[staying])[: len(entering)]
            if len(entering):
                states = hidden[torch.as_tensor(entering - start, device=hidden.device)]
                self.slots[free] = states.to(device="cpu", dtype=torch.float16).numpy()
            self.kept[int(level)] = (np.concatenate([old[staying], entering]),
                                     np.concatenate([old_slots[staying], free]))

    def finish(self, hidden_size: int) -> np.ndarray:
        """Write the (H, n, d) float16 file in row order; returns its row indices (hidden_idx)."""
        rows = np.concatenate([r for r, _ in self.kept.values()] or [np.zeros(0, np.int64)])
        slots = np.concatenate([s for _, s in self.kept.values()] or [np.zeros(0, np.int64)])
        order = np.argsort(rows)
        if self.slots is None or not len(rows):
            np.save(self.path, np.zeros((0, self.n, hidden_size), dtype=np.float16))
        else:
            out = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16,
                                            shape=(len(rows), self.n, self.slots.shape[-1]))
            for begin in range(0, len(rows), COPY_ROWS):
                out[begin : begin + COPY_ROWS] = self.slots[slots[order[begin : begin + COPY_ROWS]]]
            out.flush()
            del out
        self.slots = None
        self.slot_path.unlink(missing_ok=True)
        return rows[order].astype(np.int64)
