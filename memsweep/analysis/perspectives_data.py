"""The scoring core's out dir, read for the Chen et al. 2024 analyses (memsweep.perspectives writes it).

<dir>/models.json lists the models; <dir>/unigram.npy counts each token id over the corpus the rows
come from; per (model, context k, continuation n) <dir>/scores/<name>__k{k}_n{n}.npz holds idx,
score, true (R, k+n), generated (R, n), entropy (R, k+n) and hidden_idx (H,), with the last-layer
hidden states of those H rows in the sibling <name>__k{k}_n{n}.hidden.npy (H, n, d), float16.
The large arrays are read only when an analysis asks for them, the hidden dump through mmap, so a
large run is never held in memory whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_CONTEXT, DEFAULT_CONTINUATION = 32, 16
"""Chen et al.'s default configuration (their file tag 32_48)."""
MODELS_FILE, UNIGRAM_FILE, SCORES_DIR = "models.json", "unigram.npy", "scores"
MODEL_FIELDS = ["name", "n_params", "kind", "source", "vocab_size"]
_SCORE_FILE = re.compile(r"^(?P<name>.+)__k(?P<k>\d+)_n(?P<n>\d+)\.npz$")


def matched_tokens(score: np.ndarray, n: int) -> np.ndarray:
    """Scores (multiples of 1/n, stored as float32) as the integer number of matched positions:
    every comparison with a bin edge is then exact."""
    return np.rint(np.asarray(score, np.float64) * n).astype(np.int64)


@dataclass
class ScoreSet:
    """One (model, k, n) score file; idx and score are read at once, the rest on first use."""
    model: str
    n_params: int
    k: int
    n: int
    path: Path

    @cached_property
    def _arrays(self):
        return np.load(self.path)

    @cached_property
    def idx(self) -> np.ndarray:
        """Unique, or a join on it would multiply rows (and give transition counts no crosstab of
        the rows could)."""
        idx = self._arrays["idx"].astype(np.int64)
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"{self.path.name}: {len(idx) - len(np.unique(idx))} duplicated idx values")
        return idx

    @cached_property
    def score(self) -> np.ndarray:
        return self._arrays["score"].astype(np.float64)

    @cached_property
    def matches(self) -> np.ndarray:
        return matched_tokens(self.score, self.n)

    @cached_property
    def true(self) -> np.ndarray:
        return self._arrays["true"]

    @cached_property
    def generated(self) -> np.ndarray:
        return self._arrays["generated"]

    @cached_property
    def entropy(self) -> np.ndarray:
        return self._arrays["entropy"].astype(np.float64)

    @cached_property
    def hidden_idx(self) -> np.ndarray:
        return self._arrays["hidden_idx"].astype(np.int64) if "hidden_idx" in self._arrays.files else np.zeros(0, np.int64)

    @property
    def hidden_path(self) -> Path:
        return self.path.with_name(self.path.name[: -len(".npz")] + ".hidden.npy")

    @cached_property
    def hidden(self) -> np.ndarray | None:
        """(H, n, d) float16, memory-mapped; None when the run kept no dump."""
        return np.load(self.hidden_path, mmap_mode="r") if self.hidden_path.exists() and len(self.hidden_idx) else None

    @cached_property
    def hidden_rows(self) -> np.ndarray:
        """For each hidden row, its position in idx (the dump names rows by their idx)."""
        where = pd.Index(self.idx).get_indexer(self.hidden_idx)
        if (where < 0).any():
            raise ValueError(f"{self.hidden_path.name}: {int((where < 0).sum())} hidden_idx values are not in idx")
        return where

    @property
    def d_model(self) -> int | None:
        return None if self.hidden is None else int(self.hidden.shape[2])


@dataclass
class PerspectivesData:
    models: pd.DataFrame
    """models.json, smallest model first."""
    unigram: np.ndarray | None
    sets: dict[tuple[str, int, int], ScoreSet] = field(default_factory=dict)

    @property
    def configs(self) -> list[tuple[int, int]]:
        return sorted({(k, n) for _, k, n in self.sets})

    def at(self, k: int, n: int) -> list[ScoreSet]:
        """The score sets of one configuration, smallest model first."""
        return sorted((s for (_, kk, nn), s in self.sets.items() if (kk, nn) == (k, n)), key=lambda s: s.n_params)

    def default_config(self) -> tuple[int, int] | None:
        """Chen et al.'s 32/16 when it was scored, else the configuration with the most models (the
        shortest on a tie)."""
        if not self.configs:
            return None
        if (DEFAULT_CONTEXT, DEFAULT_CONTINUATION) in self.configs:
            return DEFAULT_CONTEXT, DEFAULT_CONTINUATION
        return max(self.configs, key=lambda c: (len(self.at(*c)), -c[0], -c[1]))


def load_perspectives(scores_dir: Path) -> PerspectivesData:
    """Read the out dir's index; score files of models that models.json does not list are refused."""
    scores_dir = Path(scores_dir)
    models = pd.DataFrame(json.loads((scores_dir / MODELS_FILE).read_text()), columns=MODEL_FIELDS)
    models = models.sort_values("n_params", kind="stable").reset_index(drop=True)
    unigram_path = scores_dir / UNIGRAM_FILE
    data = PerspectivesData(models, np.load(unigram_path) if unigram_path.exists() else None)
    params = dict(zip(models["name"], models["n_params"].astype(np.int64)))
    for path in sorted((scores_dir / SCORES_DIR).glob("*.npz")):
        if not (m := _SCORE_FILE.match(path.name)):
            continue
        name, k, n = m["name"], int(m["k"]), int(m["n"])
        if name not in params:
            raise ValueError(f"{path.name}: model {name!r} is not in {MODELS_FILE}")
        data.sets[name, k, n] = ScoreSet(name, int(params[name]), k, n, path)
    return data
