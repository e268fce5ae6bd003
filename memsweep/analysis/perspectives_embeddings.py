"""Last-layer hidden states of the generated tokens per score group (Chen et al. 2024 §4.4.1).

Per model, score group m/n and generated step: the group mean of the hidden state; between every
two groups, the cosine similarity and Euclidean distance of their means, step by step. The paper
reads these as "the angle is stable while the magnitude converges" (cosine flat, distance shrinking
over steps) and "larger models separate the groups more" (larger distances, lower cosine). A mean
over few rows is noisy, which alone puts distance between groups; the sampling floor (the distance
expected from that noise, √(tr Σa/na + tr Σb/nb)) is reported beside it. The hidden dump is read
in chunks from its memory map, never whole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memsweep.analysis.perspectives_data import ScoreSet

CHUNK_ROWS = 1024
MAX_PCA_ROWS = 5_000
"""The PCA plot's rows, a seeded sample: enough to show the structure, small enough for an SVD on a login node."""


def group_moments(hidden: np.ndarray, labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """Per label: (mean (n, d), total variance per step (n,), rows), accumulated in float64 chunk by chunk."""
    sums, squares, counts = {}, {}, {}
    for start in range(0, len(labels), CHUNK_ROWS):
        chunk = np.asarray(hidden[start:start + CHUNK_ROWS], np.float64)
        for m in np.unique(labels[start:start + CHUNK_ROWS]):
            rows = chunk[labels[start:start + CHUNK_ROWS] == m]
            sums[m] = sums.get(m, 0.0) + rows.sum(0)
            squares[m] = squares.get(m, 0.0) + (rows ** 2).sum(0)
            counts[m] = counts.get(m, 0) + len(rows)
    moments = {}
    for m in sorted(sums):
        mean = sums[m] / counts[m]
        variance = (squares[m] / counts[m] - mean ** 2).sum(-1) * counts[m] / max(counts[m] - 1, 1)
        moments[int(m)] = (mean, np.maximum(variance, 0.0), counts[m])
    return moments


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis."""
    return (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))


def euclidean(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.linalg.norm(u - v, axis=-1)


def pairwise(moments: dict[int, tuple[np.ndarray, np.ndarray, int]], n: int) -> pd.DataFrame:
    """Every pair of groups a < b at every step: cosine, Euclidean distance and the sampling floor."""
    rows, levels = [], sorted(moments)
    for i, a in enumerate(levels):
        for b in levels[i + 1:]:
            (ma, va, na), (mb, vb, nb) = moments[a], moments[b]
            rows.append(pd.DataFrame({"step": np.arange(1, ma.shape[0] + 1), "score_a": a / n, "score_b": b / n,
                                      "cosine": cosine(ma, mb), "euclidean": euclidean(ma, mb),
                                      "sampling_floor": np.sqrt(va / na + vb / nb)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def hidden_labels(s: ScoreSet) -> np.ndarray:
    """The matched count of each row of the hidden dump."""
    return s.matches[s.hidden_rows]


def embedding_distances(sets: list[ScoreSet]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every pair per step, the mean over pairs per step) for the models whose run kept a hidden dump
    with at least two score groups."""
    pairs = []
    for s in sets:
        if s.hidden is None:
            continue
        table = pairwise(group_moments(s.hidden, hidden_labels(s)), s.n)
        if len(table):
            pairs.append(table.assign(model=s.model, n_params=s.n_params, d_model=s.d_model))
    if not pairs:
        return pd.DataFrame(), pd.DataFrame()
    pairs = pd.concat(pairs, ignore_index=True)
    by_step = (pairs.groupby(["model", "n_params", "d_model", "step"], sort=False)
               .agg(cosine=("cosine", "mean"), euclidean=("euclidean", "mean"),
                    sampling_floor=("sampling_floor", "mean"), n_pairs=("cosine", "size")).reset_index())
    return pairs, by_step


def row_mean_pca(s: ScoreSet, max_rows: int = MAX_PCA_ROWS, seed: int = 0) -> pd.DataFrame:
    """Each hidden row's mean over the generated steps, projected on its first two principal
    components (SVD of the centred matrix); explained is each component's share of the variance."""
    rows = np.arange(len(s.hidden_idx))
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    x = np.stack([np.asarray(s.hidden[i], np.float64).mean(0) for i in rows])
    x -= x.mean(0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    explained = sv ** 2 / (sv ** 2).sum() if sv.sum() > 0 else np.zeros_like(sv)
    pcs = u[:, :2] * sv[:2] if len(sv) >= 2 else np.zeros((len(rows), 2))
    return pd.DataFrame({"model": s.model, "n_params": s.n_params, "idx": s.hidden_idx[rows],
                         "score": s.score[s.hidden_rows[rows]], "pc1": pcs[:, 0], "pc2": pcs[:, 1],
                         "pc1_explained": explained[0] if len(sv) else np.nan,
                         "pc2_explained": explained[1] if len(sv) >= 2 else np.nan})


def _trend(values: np.ndarray) -> str:
    return "rises" if np.all(np.diff(values) > 0) else "falls" if np.all(np.diff(values) < 0) else "is not monotone"


def embedding_words(by_step: pd.DataFrame) -> list[str]:
    """The paper's two embedding findings, from the mean over group pairs."""
    lines, per_model = [], []
    for model, g in by_step.groupby("model", sort=False):
        g = g.sort_values("step")
        first, last = g.iloc[0], g.iloc[-1]
        cos_change = (last["cosine"] - first["cosine"]) / abs(first["cosine"])
        dist_change = (last["euclidean"] - first["euclidean"]) / first["euclidean"]
        holds = dist_change < 0 and abs(cos_change) < abs(dist_change)
        lines.append(f"{model} (d = {int(first['d_model'])}): over steps {int(first['step'])}→{int(last['step'])} the mean "
                     f"cosine between group means goes {first['cosine']:.3f} → {last['cosine']:.3f} ({cos_change:+.1%}) and "
                     f"the mean Euclidean distance {first['euclidean']:.3g} → {last['euclidean']:.3g} ({dist_change:+.1%}; "
                     f"sampling floor {g['sampling_floor'].mean():.3g}): "
                     + ("as the paper reads it, the angle steadier than the distance, which shrinks" if holds else
                        "not the paper's reading (a cosine steadier than a shrinking distance)") + ".")
        per_model.append((model, int(first["n_params"]), g["cosine"].mean(), g["euclidean"].mean()))
    if len(per_model) >= 2:
        sizes = sorted(per_model, key=lambda m: m[1])
        cos, dist = np.array([m[2] for m in sizes]), np.array([m[3] for m in sizes])
        lines.append("From the smallest model to the largest the mean Euclidean distance " + _trend(dist) + " ("
                     + ", ".join(f"{d:.3g}" for d in dist) + ") and the mean cosine " + _trend(cos) + " ("
                     + ", ".join(f"{c:.3f}" for c in cos) + "); the paper: larger models, larger distances and lower "
                     "cosine, which it ties to the hidden size (raw distances grow with d and with the states' norm).")
    return lines
