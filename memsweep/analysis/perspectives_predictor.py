"""Chen et al.'s token-level memorization predictor (§4.5), next to baselines from the same split.

For each generated token: does the greedy token equal the true one? The classifier is theirs
(models.py TransformerPredictor): an nn.TransformerEncoder over the LLM's last-layer hidden states of
the generated tokens (no causal mask), Linear(d → 512) + ReLU, the step's entropy concatenated,
Linear(513 → 2). The data are balanced by score level (at most rows_per_level rows per level m/n),
split 80/20 per level with a seed, so on n + 1 equally filled levels the trivial sentence-level
baselines are exactly 1/(n+1) (always "not memorized": right on the score-0 rows only) and
2/(n+1) (right on exactly the score-0 and score-1 rows). Every baseline is computed from the split
in use, never typed in. The predictor is said to beat one only when its accuracy is higher by more
than Z_BEATS standard errors of the difference, paired over the test rows (at token level the
binomial standard error over tokens would be too small: the tokens of one row are not independent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from memsweep.analysis.perspectives_data import ScoreSet


@dataclass(frozen=True)
class PredictorConfig:
    """Scaled down from the paper's (PAPER_CONFIG) so that it trains on a CPU."""
    layers: int = 1
    heads: int = 2
    feedforward: int = 256
    projection: int = 512
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 30
    patience: int = 5
    rows_per_level: int = 2_000
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    """Of the training split: early stopping looks at this part, never at the test split."""
    seed: int = 0


PAPER_CONFIG = {"layers": 4, "heads": 8, "feedforward": 2048, "projection": 512, "lr": 1e-4, "batch_size": 128,
                "max_epochs": 30, "patience": 5, "rows_per_level": 2_000, "test_fraction": 0.2}
MIN_SPLIT_ROWS = 2
"""A split part with fewer rows has no standard error."""
Z_BEATS = 2.0
"""With one standard error a predictor of pure noise "beats" a baseline about one time in six."""
PAPER_ACCURACY = {"token": (0.774, 0.821), "sentence_n16": (0.083, 0.109)}
"""Chen et al.'s Table 2 (context 32): token accuracy over sizes and continuations, sentence accuracy at n = 16."""


@dataclass
class Split:
    train: np.ndarray
    test: np.ndarray
    """Positions in the hidden dump."""


def balanced_split(levels: np.ndarray, rows_per_level: int, test_fraction: float, seed: int) -> Split:
    """At most rows_per_level rows of each level, a seeded shuffle, round(test_fraction · count) of them to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for level in np.unique(levels):
        rows = rng.permutation(np.flatnonzero(levels == level))[:rows_per_level]
        cut = int(round(test_fraction * len(rows)))
        test.append(rows[:cut])
        train.append(rows[cut:])
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test)))


def fit_entropy_threshold(entropy: np.ndarray, labels: np.ndarray) -> tuple[float, bool]:
    """(threshold, low_means_match) with the best training accuracy of the rule "a match iff the
    entropy is ≤ threshold" (low_means_match) or "iff it is > threshold" (not)."""
    e, y = np.asarray(entropy, float).ravel(), np.asarray(labels, bool).ravel()
    order = np.argsort(e, kind="stable")
    e, y = e[order], y[order]
    ends = np.flatnonzero(np.r_[e[1:] != e[:-1], True])  # a threshold between runs of equal entropies
    matches_below, tokens_below = np.r_[0, np.cumsum(y)[ends]], np.r_[0, ends + 1]
    right_if_low = matches_below + (~y).sum() - (tokens_below - matches_below)
    right_if_high = len(y) - right_if_low
    candidates = np.r_[-np.inf, e[ends]]
    i, j = int(np.argmax(right_if_low)), int(np.argmax(right_if_high))
    return (float(candidates[i]), True) if right_if_low[i] >= right_if_high[j] else (float(candidates[j]), False)


def _row_right(predicted: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the share of its tokens predicted right, and whether all of them are."""
    right = predicted == labels
    return right.mean(1), right.all(1)


def baseline_rows(train_labels: np.ndarray, train_entropy: np.ndarray, test_labels: np.ndarray,
                  test_entropy: np.ndarray) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Per baseline, per test row, (share of tokens right, all right) for: the training split's
    majority label, the entropy threshold fitted on the training split, always "not memorized", and
    a predictor right on exactly the score-0 and score-1 rows (no token predictions: None)."""
    majority = bool(train_labels.mean() > 0.5)
    threshold, low_means_match = fit_entropy_threshold(train_entropy, train_labels)
    by_entropy = test_entropy <= threshold if low_means_match else test_entropy > threshold
    return {"majority class": _row_right(np.full(test_labels.shape, majority), test_labels),
            f"entropy {'≤' if low_means_match else '>'} {threshold:.3g} nats → match": _row_right(by_entropy, test_labels),
            "always not memorized": _row_right(np.zeros(test_labels.shape, bool), test_labels),
            "score-0 and score-1 rows exactly": (None, ~test_labels.any(1) | test_labels.all(1))}


def baselines(train_labels: np.ndarray, train_entropy: np.ndarray, test_labels: np.ndarray,
              test_entropy: np.ndarray) -> pd.DataFrame:
    """Each baseline's token- and sentence-level accuracy on the test rows (see baseline_rows)."""
    rows = baseline_rows(train_labels, train_entropy, test_labels, test_entropy)
    return pd.DataFrame([(name, np.nan if token is None else float(token.mean()), float(sentence.mean()))
                         for name, (token, sentence) in rows.items()],
                        columns=["baseline", "token_accuracy", "sentence_accuracy"])


def compare(predicted: np.ndarray, test_labels: np.ndarray, rows: dict) -> pd.DataFrame:
    """The predictor against each baseline of baseline_rows, paired over the test rows: the mean
    difference, its standard error (tokens of one row are not independent, so the unit is the row)
    and whether it beats the baseline by more than Z_BEATS of them."""
    mine, out = _row_right(predicted, test_labels), []
    for name, theirs in rows.items():
        for metric, own, other in zip(("token_accuracy", "sentence_accuracy"), mine, theirs):
            if other is None:
                continue
            d = own.astype(float) - other.astype(float)
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            out.append({"baseline": name, "metric": metric, "baseline_accuracy": float(other.mean()),
                        "predictor_accuracy": float(own.mean()), "difference": float(d.mean()), "difference_se": se,
                        "beats": bool(d.mean() > Z_BEATS * se)})
    return pd.DataFrame(out)


class TokenPredictor(nn.Module):
    """Chen et al.'s TransformerPredictor: encoder (no mask), Linear(d → 512) + ReLU, entropy
    concatenated, Linear(513 → 2)."""

    def __init__(self, d_model: int, config: PredictorConfig):
        super().__init__()
        heads = max(h for h in range(1, config.heads + 1) if d_model % h == 0)
        layer = nn.TransformerEncoderLayer(d_model, heads, config.feedforward, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.project = nn.Sequential(nn.Linear(d_model, config.projection), nn.ReLU())
        self.classify = nn.Linear(config.projection + 1, 2)

    def forward(self, hidden: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """(B, n, d), (B, n) -> logits (B, n, 2)."""
        return self.classify(torch.cat([self.project(self.encoder(hidden)), entropy[..., None]], -1))


class _Tokens:
    """Standardised model inputs (mean and sd from the training rows), read batch by batch from
    the hidden dump so that it is never copied whole."""

    def __init__(self, hidden, entropy: np.ndarray, labels: np.ndarray, train: np.ndarray):
        self.hidden, self.entropy, self.labels = hidden, np.nan_to_num(entropy), labels
        sums = np.zeros(hidden.shape[-1]), np.zeros(hidden.shape[-1])
        for start in range(0, len(train), 1024):
            x = np.asarray(hidden[train[start:start + 1024]], np.float64).reshape(-1, hidden.shape[-1])
            sums = sums[0] + x.sum(0), sums[1] + (x ** 2).sum(0)
        count = len(train) * hidden.shape[1]
        self.mean = sums[0] / count
        self.sd = np.sqrt(np.maximum(sums[1] / count - self.mean ** 2, 0)) + 1e-6
        self.e_mean, self.e_sd = self.entropy[train].mean(), self.entropy[train].std() + 1e-6

    def batch(self, rows: np.ndarray):
        x = (np.asarray(self.hidden[rows], np.float64) - self.mean) / self.sd
        e = (self.entropy[rows] - self.e_mean) / self.e_sd
        return (torch.tensor(x, dtype=torch.float32), torch.tensor(e, dtype=torch.float32),
                torch.tensor(self.labels[rows], dtype=torch.long))


def _predict(model: TokenPredictor, tokens: _Tokens, rows: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            x, e, _ = tokens.batch(rows[start:start + batch_size])
            out.append(model(x, e).argmax(-1).numpy().astype(bool))
    return np.concatenate(out)


def train_predictor(tokens: _Tokens, train: np.ndarray, config: PredictorConfig) -> tuple[TokenPredictor, int]:
    """Adam on cross-entropy (the paper's NLL of a log-softmax); keeps the state with the best
    validation token accuracy and stops after `patience` epochs without a better one."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    shuffled = rng.permutation(train)
    cut = max(1, int(round(config.validation_fraction * len(train))))
    validation, fit = np.sort(shuffled[:cut]), shuffled[cut:]
    model = TokenPredictor(tokens.hidden.shape[-1], config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    best, best_state, since, epochs = -1.0, None, 0, 0
    for epochs in range(1, config.max_epochs + 1):
        model.train()
        for start in range(0, len(fit), config.batch_size):
            x, e, y = tokens.batch(fit[start:start + config.batch_size])
            loss = nn.functional.cross_entropy(model(x, e).reshape(-1, 2), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fit = rng.permutation(fit)
        accuracy = float((_predict(model, tokens, validation, config.batch_size) == tokens.labels[validation]).mean())
        if accuracy > best:
            best, best_state, since = accuracy, {k: v.clone() for k, v in model.state_dict().items()}, 0
        elif (since := since + 1) >= config.patience:
            break
    model.load_state_dict(best_state)
    return model, epochs


def fit_and_evaluate(hidden, entropy: np.ndarray, labels: np.ndarray, n: int,
                     config: PredictorConfig = PredictorConfig()) -> tuple[dict, pd.DataFrame]:
    """(the predictor's test accuracies and split sizes, its comparison with every baseline): hidden
    (H, n, d), entropy and labels (H, n) at the generated steps."""
    labels = np.asarray(labels, bool)
    split = balanced_split(labels.sum(1), config.rows_per_level, config.test_fraction, config.seed)
    if min(len(split.train), len(split.test)) < MIN_SPLIT_ROWS:
        raise ValueError(f"{len(labels)} hidden rows split into {len(split.train)} training and {len(split.test)} test "
                         f"rows; each needs {MIN_SPLIT_ROWS}")
    tokens = _Tokens(hidden, np.asarray(entropy, float), labels, split.train)
    model, epochs = train_predictor(tokens, split.train, config)
    predicted, test = _predict(model, tokens, split.test, config.batch_size), labels[split.test]
    token_right, sentence_right = _row_right(predicted, test)
    rows = baseline_rows(labels[split.train], tokens.entropy[split.train], test, tokens.entropy[split.test])
    summary = {"n": n, "d_model": int(hidden.shape[-1]), "levels": int(len(np.unique(test.sum(1)))),
               "train_rows": len(split.train), "test_rows": len(split.test), "test_tokens": int(test.size),
               "token_accuracy": float(token_right.mean()), "sentence_accuracy": float(sentence_right.mean()),
               "epochs": epochs, "test_match_share": float(test.mean()),
               **{f"config_{k}": v for k, v in asdict(config).items()}}
    return summary, compare(predicted, test, rows)


def predictor_inputs(s: ScoreSet) -> tuple[np.ndarray, np.ndarray]:
    """(entropy, labels) at the generated steps of the hidden rows; the labels must give back each row's score."""
    rows = s.hidden_rows
    labels = s.generated[rows] == s.true[rows, s.k:s.k + s.n]
    if not np.array_equal(labels.sum(1), s.matches[rows]):
        raise ValueError(f"{s.path.name}: generated == true does not give back the stored scores")
    return s.entropy[rows, s.k:s.k + s.n], labels


def predictor_words(summary: pd.DataFrame, comparison: pd.DataFrame) -> list[str]:
    """Each model's accuracies beside each baseline, in so many words whether it beats it."""
    lines = []
    for row in summary.itertuples():
        c = comparison[comparison["model"] == row.model]
        for metric, what, units in (("token_accuracy", "token", f"{row.test_tokens:,} test tokens"),
                                    ("sentence_accuracy", "sentence (all n tokens right)", f"{row.test_rows:,} test rows")):
            versus = "; ".join(f"{b.baseline} {b.baseline_accuracy:.1%} ({100 * b.difference:+.1f} ± "
                               f"{100 * b.difference_se:.1f} points): {'beats it' if b.beats else 'does not beat it'}"
                               for b in c[c["metric"] == metric].itertuples())
            lines.append(f"{row.model}, {what} accuracy {getattr(row, metric):.1%} on {units} ({row.levels} score "
                         f"levels); against {versus}.")
    lines.append(f"Beating a baseline means an accuracy higher by more than {Z_BEATS:g} standard errors of the difference, "
                 "paired over the test rows. Chen et al.: token accuracy "
                 f"{PAPER_ACCURACY['token'][0]:.1%}–{PAPER_ACCURACY['token'][1]:.1%}, sentence accuracy "
                 f"{PAPER_ACCURACY['sentence_n16'][0]:.1%}–{PAPER_ACCURACY['sentence_n16'][1]:.1%} at n = 16, where on "
                 "their balanced split docs/papers.md derives the trivial 1/17 = 5.9% and 2/17 = 11.8% and a token label share "
                 "of about 50%, so their sentence accuracy is close to trivial.")
    return lines
