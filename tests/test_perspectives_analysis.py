"""The Chen et al. 2024 analyses (memsweep.analysis.perspectives*), on synthetic scoring out dirs
written as the contract fixes them (models.json, unigram.npy, scores/<name>__k{k}_n{n}.{csv,npz}
and .hidden.npy) and on hand examples: the five-level binning at its edges, the transition matrix
against a hand crosstab, the log-linear fit, the boundary jump, cosine and Euclidean distance
between group means, the predictor's baselines (computed from the split) and the predictor itself
on signal and on noise, and the report's sections and figures. No model is trained but the
predictor's, on a few hundred synthetic rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memsweep.analysis.perspectives import SECTIONS, build_perspectives_report, write_perspectives_report
from memsweep.analysis.perspectives_data import load_perspectives
from memsweep.analysis.perspectives_dynamics import boundary_effect, dynamics
from memsweep.analysis.perspectives_embeddings import group_moments, pairwise
from memsweep.analysis.perspectives_predictor import (PredictorConfig, balanced_split, baselines, fit_and_evaluate,
                                                      fit_entropy_threshold)
from memsweep.analysis.perspectives_scaling import decade_slopes, log_linear_fit
from memsweep.analysis.perspectives_transitions import LEVELS, five_levels, transition_counts, transitions

V, D = 50, 8
SMALL_PREDICTOR = PredictorConfig(layers=1, heads=2, feedforward=32, projection=32, max_epochs=12, patience=4,
                                  rows_per_level=20, batch_size=64)
"""Small enough to train in a second or two on a busy CPU."""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The predictor's models are tiny: on a shared 2-core machine two threads only contend (100× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_out_dir(path: Path, models: dict[str, int], configs=((32, 16),), rows: int = 240, hidden_per_level: int = 6,
                  seed: int = 0) -> Path:
    """A scoring out dir: the same rows for every model, larger models matching more tokens (a
    contiguous prefix of the continuation), entropy low on matched steps, hidden states shifted by
    the score. The hidden dump keeps up to hidden_per_level rows per score level."""
    rng = np.random.default_rng(seed)
    (path / "scores").mkdir(parents=True)
    (path / "models.json").write_text(json.dumps(
        [{"name": m, "n_params": p, "kind": "text", "source": f"path:/{m}", "vocab_size": V} for m, p in models.items()]))
    np.save(path / "unigram.npy", rng.integers(1, 10_000, V).astype(np.int64))
    memorability = rng.beta(0.5, 0.5, rows)
    idx = rng.permutation(10 * rows)[:rows].astype(np.int64)
    for j, name in enumerate(models):
        for k, n in configs:
            true = rng.integers(0, V, (rows, k + n)).astype(np.int32)
            m = np.clip(np.rint(n * (memorability + 0.1 * j)) + rng.integers(-1, 2, rows), 0, n).astype(int)
            matched = np.arange(n) < m[:, None]
            generated = np.where(matched, true[:, k:], (true[:, k:] + 1) % V).astype(np.int32)
            entropy = rng.gamma(2.0, 1.0, (rows, k + n)).astype(np.float32)
            entropy[:, k:] = np.where(matched, 0.3, 3.0) + rng.normal(0, 0.1, (rows, n))
            entropy[:, 0] = np.nan
            picked = np.concatenate([rng.permutation(np.flatnonzero(m == level))[:hidden_per_level]
                                     for level in range(n + 1)])
            hidden = rng.normal(0, 1, (len(picked), n, D)) + (m[picked] / n)[:, None, None]
            stem = path / "scores" / f"{name}__k{k}_n{n}"
            score = (m / n).astype(np.float32)
            pd.DataFrame({"idx": idx, "score": score}).to_csv(stem.with_suffix(".csv"), index=False)
            np.savez(stem.with_suffix(".npz"), idx=idx, score=score, true=true, generated=generated, entropy=entropy,
                     hidden_idx=idx[picked])
            np.save(f"{stem}.hidden.npy", hidden.astype(np.float16))
    return path


def test_five_levels_at_the_edges_follow_chen():
    """≤0.2 very low, ≤0.4 low, ≤0.6 medium, ≤0.8 high, >0.8 very high, edges inclusive, even as float32."""
    tenths = (np.arange(11) / 10).astype(np.float32)
    assert five_levels(tenths, 10).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    fifths = (np.arange(6) / 5).astype(np.float32)
    assert np.float64(fifths[1]) > 0.2  # the float32 edge lies above 0.2: a float comparison would push it up
    assert five_levels(fifths, 5).tolist() == [0, 0, 1, 2, 3, 4]
    sixteenths = (np.arange(17) / 16).astype(np.float32)
    assert five_levels(sixteenths, 16).tolist() == [0] * 4 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 4


def test_transition_matrix_is_the_hand_crosstab_row_normalised():
    rng = np.random.default_rng(1)
    small = pd.Series(rng.integers(0, 5, 300), index=rng.permutation(400)[:300])
    large = pd.Series(rng.integers(0, 5, 300), index=rng.permutation(400)[:300])
    counts, fractions = transition_counts(small, large)
    joined = pd.DataFrame({"a": small, "b": large}).dropna()
    hand = pd.crosstab(joined["a"], joined["b"])
    assert counts.to_numpy().tolist() == hand.to_numpy().tolist()
    assert np.allclose(fractions.to_numpy(), pd.crosstab(joined["a"], joined["b"], normalize="index").to_numpy())
    assert np.allclose(fractions.sum(axis=1), 1)
    assert list(counts.index) == list(LEVELS)


def test_transitions_between_sizes_have_rows_summing_to_one(tmp_path):
    data = load_perspectives(write_out_dir(tmp_path / "out", {"s": 10**6, "m": 10**7, "l": 10**8}))
    table = transitions(data.at(32, 16))
    assert set(table["direction"]) == {"small→large", "large→small"}
    assert len(table) == 2 * 2 * 25
    sums = table.groupby(["from_model", "to_model", "from_level"])["fraction"].sum(min_count=1).dropna()
    assert np.allclose(sums, 1)
    per_pair = table.groupby(["from_model", "to_model"])["count"].sum()
    assert (per_pair == 240).all()  # every row is in both models


def test_log_linear_fit_and_decade_slopes_by_hand():
    exact = log_linear_fit([1e6, 1e7, 1e8], [10, 20, 30])
    assert exact.slope == pytest.approx(10) and exact.intercept == pytest.approx(-50) and exact.r == pytest.approx(1)
    bent = log_linear_fit([1e6, 1e7, 1e8], [10, 20, 40])  # x − x̄ = −1, 0, 1; Σxy = 30, Σx² = 2, Σy² = 1400/3
    assert bent.slope == pytest.approx(15) and bent.r == pytest.approx(30 / np.sqrt(2 * 1400 / 3))
    with pytest.raises(ValueError, match="needs 3"):
        log_linear_fit([1e6, 1e7], [10, 20])
    indicators = pd.DataFrame({"a": [0, 0, 1, 0], "b": [1, 1, 1, 0]})
    slopes = decade_slopes(indicators, {"a": 10**6, "b": 10**8})
    assert slopes["slope_per_decade"].iloc[0] == pytest.approx(1.0)  # 2 more rows over 2 decades
    assert slopes["slope_se"].iloc[0] == pytest.approx(np.sqrt(4) * np.std([1, 1, 0, 0], ddof=1) / 2)


def test_boundary_effect_by_hand():
    values = np.array([[np.nan, 2.0, 4.0], [1.0, 3.0, 8.0]])
    effect = boundary_effect(values, at=2)
    assert effect["before"] == pytest.approx(2.5) and effect["after"] == pytest.approx(6.0)
    assert effect["change"] == pytest.approx(3.5)  # per row +2 and +5
    assert effect["change_se"] == pytest.approx(np.std([2, 5], ddof=1) / np.sqrt(2))
    assert effect["relative"] == pytest.approx(6.0 / 2.5 - 1)
    assert effect["relative_se"] == pytest.approx(np.std([4 - 2.4 * 2, 8 - 2.4 * 3], ddof=1) / (np.sqrt(2) * 2.5))


def test_dynamics_curves_are_the_hand_means(tmp_path):
    data = load_perspectives(write_out_dir(tmp_path / "out", {"s": 10**6}))
    s = data.at(32, 16)[0]
    curves, effects = dynamics([s], data.unigram)
    full = s.matches == 16
    frequency = curves[(curves["quantity"] == "frequency") & (curves["matched"] == 16)].set_index("position")["mean"]
    assert frequency.to_numpy() == pytest.approx(data.unigram[s.true[full]].mean(0))
    entropy = effects[(effects["quantity"] == "entropy") & (effects["score"] == 0.0)].iloc[0]
    assert entropy["change"] == pytest.approx((s.entropy[s.matches == 0, 32] - s.entropy[s.matches == 0, 31]).mean())
    assert set(effects[effects["boundary"] == "half point"]["score"]) == {0.5}


def test_cosine_and_euclid_between_group_means_by_hand():
    hidden = np.array([[[1.0, 0.0], [2.0, 0.0]], [[3.0, 0.0], [2.0, 2.0]],  # group 0: means (2, 0) then (2, 1)
                       [[0.0, 1.0], [0.0, 1.0]], [[0.0, 3.0], [0.0, 1.0]]])  # group 16: means (0, 2) then (0, 1)
    moments = group_moments(hidden, np.array([0, 0, 16, 16]))
    assert moments[0][0].tolist() == [[2.0, 0.0], [2.0, 1.0]]
    table = pairwise(moments, 16).set_index("step")
    assert table.loc[1, "cosine"] == pytest.approx(0.0) and table.loc[1, "euclidean"] == pytest.approx(np.sqrt(8))
    assert table.loc[2, "cosine"] == pytest.approx(1 / np.sqrt(5)) and table.loc[2, "euclidean"] == pytest.approx(2.0)
    # group 0, step 1: rows (1, 0) and (3, 0), total variance 2; group 16: (0, 1), (0, 3), 2; floor √(2/2 + 2/2)
    assert table.loc[1, "sampling_floor"] == pytest.approx(np.sqrt(2.0))


def _labels(rows_per_level: dict[int, int], n: int = 16, seed: int = 0) -> np.ndarray:
    """Token match labels with the given number of rows per matched count, matches at random steps."""
    rng = np.random.default_rng(seed)
    rows = [np.isin(np.arange(n), rng.permutation(n)[:m]) for m, count in rows_per_level.items() for _ in range(count)]
    return np.array(rows)


def _sentence_baselines(labels: np.ndarray, rows_per_level: int) -> pd.Series:
    split = balanced_split(labels.sum(1), rows_per_level, 0.2, seed=0)
    entropy = np.zeros(labels.shape)
    table = baselines(labels[split.train], entropy[split.train], labels[split.test], entropy[split.test])
    return table.set_index("baseline")["sentence_accuracy"]


def test_sentence_baselines_are_computed_from_the_split():
    balanced = _sentence_baselines(_labels({m: 10 for m in range(17)}), rows_per_level=10)
    assert balanced["always not memorized"] == pytest.approx(1 / 17)
    assert balanced["score-0 and score-1 rows exactly"] == pytest.approx(2 / 17)
    uneven = _labels({0: 20, **{m: 10 for m in range(1, 17)}})
    assert _sentence_baselines(uneven, rows_per_level=10)["always not memorized"] == pytest.approx(1 / 17)
    more_zeros = _sentence_baselines(uneven, rows_per_level=20)  # 4 score-0 test rows among 4 + 16·2
    assert more_zeros["always not memorized"] == pytest.approx(4 / 36)
    assert more_zeros["score-0 and score-1 rows exactly"] == pytest.approx(6 / 36)


def test_token_baselines_come_from_the_training_split():
    train = np.array([[True, True, False]])
    threshold, low = fit_entropy_threshold(np.array([[0.1, 0.2, 3.0]]), train)
    assert low and 0.2 <= threshold < 3.0
    test = np.array([[False, False, True]])
    table = baselines(train, np.array([[0.1, 0.2, 3.0]]), test, np.array([[5.0, 4.0, 0.1]])).set_index("baseline")
    assert table.loc["majority class", "token_accuracy"] == pytest.approx(1 / 3)  # the training majority: match
    assert table.filter(like="entropy", axis=0)["token_accuracy"].iloc[0] == pytest.approx(1.0)
    assert table.loc["always not memorized", "token_accuracy"] == pytest.approx(2 / 3)


def _predictor_set(signal: bool, seed: int = 0):
    labels = _labels({m: 20 for m in range(17)}, seed=seed)
    rng = np.random.default_rng(seed + 1)
    hidden = rng.normal(0, 1, labels.shape + (16,))
    if signal:
        hidden[..., 0] += 3.0 * (2 * labels - 1)
    return hidden.astype(np.float16), rng.gamma(2.0, 1.0, labels.shape), labels


@pytest.mark.parametrize("signal", [True, False])
def test_predictor_beats_majority_only_when_the_hidden_states_carry_the_label(signal):
    hidden, entropy, labels = _predictor_set(signal)
    summary, comparison = fit_and_evaluate(hidden, entropy, labels, 16, SMALL_PREDICTOR)
    majority = comparison[(comparison["baseline"] == "majority class") & (comparison["metric"] == "token_accuracy")]
    assert summary["test_rows"] == 17 * 4 and summary["levels"] == 17
    assert bool(majority["beats"].iloc[0]) is signal
    if signal:
        assert summary["token_accuracy"] > 0.9


def test_report_has_every_section_and_writes_its_figures(tmp_path):
    out = write_out_dir(tmp_path / "out", {"s": 10**6, "m": 10**7, "l": 10**8},
                        configs=((32, 16), (32, 32), (48, 16)))
    report = build_perspectives_report(out, predictor=SMALL_PREDICTOR)
    assert report.summary["not_computed"] == {}
    path = write_perspectives_report(report, tmp_path / "report")
    text = path.read_text()
    positions = [text.index(f". {title}") for title in SECTIONS.values()]
    assert positions == sorted(positions)
    for name in ("histograms", "scaling", "sizes", "transitions", "dynamics", "embedding_distances", "pca"):
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"]({name}.png)" in text
    for name in ("memorized_counts", "transitions", "boundary_effects", "embedding_steps", "predictor_baselines"):
        assert (tmp_path / "report" / f"{name}.csv").exists()
    assert "Pearson r" in text and "baseline" in text
    assert json.loads((tmp_path / "report" / "perspectives.json").read_text())["context"] == 32


def test_one_model_says_transitions_are_not_computed(tmp_path):
    out = write_out_dir(tmp_path / "out", {"only": 10**6})
    report = build_perspectives_report(out, predictor=SMALL_PREDICTOR)
    text = write_perspectives_report(report, tmp_path / "report").read_text()
    assert "Not computed: one model only (only) at 32/16" in text
    assert "cannot be judged" in text
    assert not (tmp_path / "report" / "transitions.png").exists()
    rewritten = build_perspectives_report(out, predictor=SMALL_PREDICTOR)
    write_perspectives_report(rewritten, tmp_path / "report")
    assert rewritten.written == []


def test_scores_are_tabled_by_how_often_their_row_was_seen(tmp_path):
    from types import SimpleNamespace

    from memsweep.analysis.perspectives_repeats import scores_by_repeat_count
    from memsweep.cell import PER_SAMPLE_FILE

    np.savez(tmp_path / PER_SAMPLE_FILE, repeat_count=np.array([4, 4, 2, 2, 1, 1, 1, 1]))
    scored = SimpleNamespace(model="m", n_params=10, idx=np.array([0, 1, 2, 3, 4, 5]),
                             score=np.array([1.0, 1.0, 1.0, 0.5, 0.0, 0.25], dtype=np.float32))
    models = pd.DataFrame([{"name": "m", "source": str(tmp_path)}])
    table = scores_by_repeat_count([scored], models).set_index("repeat_count")
    assert table["n_rows"].to_dict() == {1: 2, 2: 2, 4: 2}
    assert table["fully_memorized_share"].to_dict() == {1: 0.0, 2: 0.5, 4: 1.0}
    assert table.loc[1, "mean_score"] == pytest.approx(0.125)
    models_without = pd.DataFrame([{"name": "m", "source": str(tmp_path / "nowhere")}])
    assert scores_by_repeat_count([scored], models_without).empty
