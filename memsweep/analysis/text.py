"""The text part of `memsweep report` (Morris et al. 2025, sections 3-6 on text): tables from the
done text cells and their cell dirs, and sentences that set the measured numbers beside the
paper's claims without asserting them.

Why the cell dirs too: load_sweep's rows drop nested dicts of dicts (extraction rates, the
tokenizer), and the oracle needs per-sequence NLLs (per_sample_nll_bits.npz). A text model is an
architecture, a precision and a token pool (pool_sha256); its cells differ in N, and the first N
sequences of a pool are the same in every cell trained on it, so any cell trained on N' >= N
sequences of the pool can code a cell's N sequences. The reference cell (the model trained on
the whole pool) is what unintended memorization is measured against: it is listed as the
reference, never as a point of a memorization curve; extraction, membership and loss are its own
measurements and it is a point there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from memsweep.analysis.capacity import AT_GRID_EDGE, BRACKETED, maximum_position
from memsweep.analysis.cells import NEEDED_NUMBERS
from memsweep.analysis.double_descent import locate_peak
from memsweep.analysis.membership import PAPER_LAW, LawFit, fit_law, law_f1
from memsweep.analysis.paper import APPENDIX_A1_ALPHA
from memsweep.cell import PER_SAMPLE_FILE, TOP_MEMORIZED_FILE
from memsweep.record import RESULT_FILE

TEXT_KIND = "text"
"""data_kind of a text cell; anything else (or none, in old records) is uniform tokens."""
MIN_SIZES_FOR_CURVE = 2
"""A curve over N, and a maximum over it, need two dataset sizes."""
MIN_SIZES_FOR_PEAK = 3
"""A test-loss peak needs a measured N on both sides of it."""
TOP_SHOWN = 20
"""The paper lists its 20 most memorized sequences."""
TEXT_CHARS = 120
"""A memorized sequence is shown cut to this many characters."""
NO_SCRIPT = ("Latin", "none")
"""Scripts that do not count as non-Latin ("none": no letters at all)."""


def split_by_kind(done: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(uniform cells, text cells). The uniform rows of a mixed sweep lose the columns that only
    text records fill (a needed number stays, even if null), so the uniform sections see what a
    uniform-only sweep would give them."""
    is_text = done["data_kind"].eq(TEXT_KIND) if "data_kind" in done else pd.Series(False, index=done.index)
    if not is_text.any():
        return done, done.iloc[:0]
    uniform = done[~is_text]
    only_text = [c for c in uniform if uniform[c].isna().all() and c not in NEEDED_NUMBERS]
    return uniform.drop(columns=only_text), _with_text_columns(done[is_text].reset_index(drop=True))


def _column(cells: pd.DataFrame, name: str, default) -> pd.Series:
    return cells[name].where(cells[name].notna(), default) if name in cells else pd.Series(default, index=cells.index)


def _with_text_columns(cells: pd.DataFrame) -> pd.DataFrame:
    """The columns the text tables group by: corpus, pool, is_reference, and a model label that
    names the precision and the corpus when the sweep has more than one of either."""
    cells = cells.copy()
    cells["corpus"] = _column(cells, "text.corpus", "unknown corpus").astype(str)
    cells["pool"] = _column(cells, "text.pool_sha256", "").astype(str)
    cells["pool"] = cells["pool"].where(cells["pool"] != "", cells["corpus"])
    cells["is_reference"] = _column(cells, "is_reference", False).astype(bool) | (
        _column(cells, "reference_cell_id", "") == cells["cell_id"])
    cells["unintended_bits"] = _column(cells, "unintended_bits", np.nan).fillna(cells["memorized_bits"]).astype(float)
    for name in ("total_memorized_bits", "generalization_bits", "n_memorized_samples"):
        cells[name] = _column(cells, name, np.nan).astype(float)
    label = cells["model"]
    if cells["precision"].nunique() > 1:
        label = label + " " + cells["precision"]
    if cells["pool"].nunique() > 1:
        label = label + " " + cells["corpus"] + " " + cells["pool"].str[:6]
    cells["model"] = label
    return cells


def read_record(sweep_dir: Path, cell_id: str) -> dict:
    return json.loads((Path(sweep_dir) / cell_id / RESULT_FILE).read_text())


def read_arrays(sweep_dir: Path, cell_id: str) -> dict[str, np.ndarray]:
    """The cell's per-sequence arrays; empty if it kept none."""
    path = Path(sweep_dir) / cell_id / PER_SAMPLE_FILE
    if not path.exists():
        return {}
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def corpus_table(cells: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """One row per token pool: what the cells were trained on and how it was deduplicated."""
    rows = []
    for pool, group in cells.groupby("pool", sort=True):
        text = read_record(sweep_dir, group["cell_id"].iloc[0]).get("text") or {}
        tokenizer = text.get("tokenizer") or {}
        rows.append({"corpus": group["corpus"].iloc[0], "pool_sha256": str(text.get("pool_sha256", ""))[:12] or None,
                     "tokenizer": tokenizer.get("kind"), "vocab_size": tokenizer.get("vocab_size"),
                     **{k: text.get(k) for k in ("n_documents", "n_tokens", "n_windows", "n_duplicates_dropped",
                                                 "duplicate_fraction", "n_train_pool", "n_heldout_pool")},
                     "seq_len": text.get("seq_len"), "n_cells": len(group)})
    return pd.DataFrame(rows)


def references(cells: pd.DataFrame) -> pd.DataFrame:
    """The reference cells: each model's run on the whole pool, the code unintended bits are against."""
    ref = cells[cells["is_reference"]]
    return pd.DataFrame({"model": ref["model"], "cell_id": ref["cell_id"], "seed": ref["seed"],
                         "n_samples": ref["n_samples"], "test_loss_bits": ref["test_loss"] / math.log(2),
                         "reference_bits": ref["dataset_bits"]}).sort_values(["model", "seed"]).reset_index(drop=True)


def _oracle(cell: pd.Series, cells: pd.DataFrame, train: dict[str, np.ndarray]) -> str | None:
    """The text cell of the same pool with the lowest test loss whose training set covers the
    cell's N sequences (the paper's oracle: the best compressor of the evaluation data)."""
    covering = cells[(cells["pool"] == cell["pool"]) & cells["test_loss"].notna()
                     & cells["cell_id"].map(lambda c: c in train and len(train[c]) >= cell["n_samples"])]
    if covering.empty:
        return None
    return covering.sort_values(["test_loss", "cell_id"])["cell_id"].iloc[0]


MEAN_COLUMNS = ("unintended_bits", "total_memorized_bits", "generalization_bits", "unintended_bits_per_sequence",
                "oracle_unintended_bits", "oracle_unintended_bits_per_sequence", "oracle_generalization_bits")
"""The memorization columns averaged over seeds."""


def memorization_table(cells: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """Per non-reference cell: unintended (against its reference), total (against the uniform
    code) and generalization bits, and the unintended bits against the oracle,
    sum of max(0, NLL_oracle - NLL_cell) over the cell's N sequences."""
    train = {c: a["train"] for c in cells["cell_id"] if "train" in (a := read_arrays(sweep_dir, c))}
    rows = []
    for _, cell in cells[~cells["is_reference"]].iterrows():
        oracle = _oracle(cell, cells, train) if cell["cell_id"] in train else None
        own = train.get(cell["cell_id"])
        oracle_bits = float(np.maximum(train[oracle][: len(own)] - own, 0).sum()) if oracle else np.nan
        n = int(cell["n_samples"])
        rows.append({"model": cell["model"], "precision": cell["precision"], "seed": int(cell["seed"]),
                     "n_samples": n, "n_params": int(cell["n_params"]), "cell_id": cell["cell_id"],
                     "unintended_bits": cell["unintended_bits"], "total_memorized_bits": cell["total_memorized_bits"],
                     "generalization_bits": cell["generalization_bits"],
                     "n_memorized_samples": cell["n_memorized_samples"],
                     "unintended_bits_per_sequence": cell["unintended_bits"] / n,
                     "unintended_bits_per_param": cell["unintended_bits"] / cell["n_params"],
                     "reference_cell_id": cell.get("reference_cell_id"), "oracle_cell_id": oracle,
                     "oracle_unintended_bits": oracle_bits, "oracle_unintended_bits_per_sequence": oracle_bits / n,
                     "oracle_generalization_bits": cell["total_memorized_bits"] - oracle_bits})
    if not rows:
        return pd.DataFrame(columns=["model", "precision", "n_params", "n_samples", "seed", "oracle_cell_id", *MEAN_COLUMNS])
    return pd.DataFrame(rows).sort_values(["model", "n_samples", "seed"]).reset_index(drop=True)


def memorization_means(table: pd.DataFrame) -> pd.DataFrame:
    """The memorization curve per model: the mean over seeds at each N, with the unintended bits'
    range over seeds."""
    if table.empty:
        return table
    return (table.groupby(["model", "precision", "n_params", "n_samples"], sort=True)
            .agg(**{c: (c, "mean") for c in MEAN_COLUMNS}, unintended_min=("unintended_bits", "min"),
                 unintended_max=("unintended_bits", "max"), n_seeds=("seed", "nunique"))
            .reset_index())


def short_curves(curves: pd.DataFrame, what: str) -> list[str]:
    """A sentence for each model whose `what` has fewer than MIN_SIZES_FOR_CURVE dataset sizes."""
    if curves.empty:
        return []
    sizes = curves.groupby("model")["n_samples"].agg(lambda n: sorted(set(n)))
    return [f"{model}: {what} has one N only (N = {n[0]:,}), so no curve over N can be drawn"
            for model, n in sizes.items() if len(n) < MIN_SIZES_FOR_CURVE]


def text_capacity(means: pd.DataFrame) -> pd.DataFrame:
    """Per model with a curve: the maximum over N of the mean unintended bits, where it sits (at
    the grid edge it is a lower bound, as a uniform capacity there), and what the largest N keeps
    of it (a plateau keeps nearly all)."""
    rows = []
    for model, group in (means.groupby("model", sort=True) if len(means) else []):
        group = group.sort_values("n_samples")
        if len(group) < MIN_SIZES_FOR_CURVE:
            continue
        values = group["unintended_bits"].to_numpy(float)
        i = int(np.argmax(values))
        rows.append({"model": model, "precision": group["precision"].iloc[0], "n_params": int(group["n_params"].iloc[0]),
                     "capacity_bits": values[i], "bits_per_param": values[i] / group["n_params"].iloc[0],
                     "n_samples_at_max": int(group["n_samples"].iloc[i]), "maximum": maximum_position(i, len(values)),
                     "lower_bound": maximum_position(i, len(values)) == AT_GRID_EDGE,
                     "largest_n_keeps": values[-1] / values[i] if values[i] > 0 else np.nan,
                     "n_sizes": len(values), "n_seeds": int(group["n_seeds"].min())})
    return pd.DataFrame(rows)


def extraction_table(cells: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """Per cell and prefix length k: the share of training and of held-out sequences whose whole
    suffix greedy decoding reproduces from their first k tokens."""
    rows = []
    for _, cell in cells.iterrows():
        for k, rates in (read_record(sweep_dir, cell["cell_id"]).get("extraction") or {}).items():
            rows.append({"model": cell["model"], "precision": cell["precision"], "n_params": int(cell["n_params"]),
                         "seed": int(cell["seed"]), "n_samples": int(cell["n_samples"]),
                         "is_reference": bool(cell["is_reference"]),
                         "prefix": int(k), "train_rate": rates.get("train"), "heldout_rate": rates.get("heldout"),
                         "n_train": rates.get("n_train"), "n_heldout": rates.get("n_heldout")})
    if not rows:
        return pd.DataFrame(rows)
    table = pd.DataFrame(rows).astype({"train_rate": float, "heldout_rate": float})
    table["train_minus_heldout"] = table["train_rate"] - table["heldout_rate"]
    return table.sort_values(["model", "prefix", "n_samples", "seed"]).reset_index(drop=True)


def membership_table(cells: pd.DataFrame) -> pd.DataFrame:
    """The loss-threshold attack's scores per text cell (computed by load_sweep from the npz)."""
    if "mi_f1" not in cells:
        return pd.DataFrame()
    scored = cells.dropna(subset=["mi_f1"])
    columns = ["model", "precision", "seed", "n_samples", "n_params", "samples_per_param", "is_reference",
               "mi_f1", "mi_f1_oracle", "mi_auc", "mi_n_per_class"]
    return scored[[c for c in columns if c in scored]].sort_values(["model", "n_samples", "seed"]).reset_index(drop=True)


def fit_text_law(table: pd.DataFrame) -> tuple[LawFit | None, str | None]:
    """The membership law fitted over text cells only, or why it was not (fit_law's refusal)."""
    if table.empty:
        return None, f"no text cell kept its {PER_SAMPLE_FILE}"
    try:
        return fit_law(table["samples_per_param"].to_numpy(), table["mi_f1"].to_numpy()), None
    except (ValueError, RuntimeError) as err:
        return None, str(err)


def tfidf_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho of TF-IDF and unintended bits per non-reference cell, over its sequences
    with positive unintended memorization (the paper's subset)."""
    cells = cells[~cells["is_reference"]]
    return pd.DataFrame({"model": cells["model"], "seed": cells["seed"], "n_samples": cells["n_samples"],
                         "cell_id": cells["cell_id"], "unintended_bits": cells["unintended_bits"],
                         **{c: _column(cells, c, np.nan).astype(float)
                            for c in ("tfidf_spearman", "tfidf_spearman_p", "tfidf_n")}}
                        ).sort_values(["model", "n_samples", "seed"]).reset_index(drop=True)


def most_memorizing_cell(cells: pd.DataFrame) -> str | None:
    """The non-reference cell with the most unintended bits: the one whose top sequences say most."""
    candidates = cells[~cells["is_reference"] & (cells["unintended_bits"] > 0)]
    return None if candidates.empty else candidates.sort_values(["unintended_bits", "cell_id"],
                                                                ascending=[False, True])["cell_id"].iloc[0]


def markdown_text(text: str, limit: int = TEXT_CHARS) -> str:
    """A sequence for a Markdown table cell: cut to `limit` characters, newlines shown as ⏎, pipes escaped."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return cut.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")


def top_sequences(sweep_dir: Path, cell_id: str) -> pd.DataFrame:
    """The cell's most memorized sequences (top_memorized.json), text made fit for a table."""
    path = Path(sweep_dir) / cell_id / TOP_MEMORIZED_FILE
    rows = json.loads(path.read_text()) if path.exists() else []
    return pd.DataFrame([{"rank": r.get("rank"), "unintended_bits": r.get("unintended_bits"), "tfidf": r.get("tfidf"),
                          "script": r.get("script"), "non_latin": r.get("script") not in NO_SCRIPT,
                          "extracted_from": ", ".join(str(k) for k in r.get("extracted_from") or []) or "–",
                          "text": markdown_text(str(r.get("text", "")))} for r in rows[:TOP_SHOWN]])


def capacity_alpha(precision: str, uniform_alpha: dict[str, float]) -> tuple[float, str]:
    """bits/param for a model's capacity alpha P: this sweep's uniform fit of the precision, else
    the paper's App. A.1 alpha (the paper divides text dataset bits by the same alpha P)."""
    if precision in uniform_alpha:
        return uniform_alpha[precision], "this sweep's uniform-token α"
    return APPENDIX_A1_ALPHA, "the paper's α (App. A.1)"


def loss_curves(cells: pd.DataFrame, uniform_alpha: dict[str, float]) -> pd.DataFrame:
    """Train and test loss in bits per token per (model, N), mean over seeds, with x as dataset
    bits (the reference's code length) / capacity alpha P."""
    bits = cells.assign(train_loss_bits=cells["train_loss"] / math.log(2), test_loss_bits=cells["test_loss"] / math.log(2))
    curves = (bits.groupby(["model", "precision", "n_params", "n_samples"], sort=True)
              .agg(dataset_bits=("dataset_bits", "mean"), train_loss_bits=("train_loss_bits", "mean"),
                   test_loss_bits=("test_loss_bits", "mean"), is_reference=("is_reference", "any"),
                   n_seeds=("seed", "nunique"))
              .reset_index())
    alpha = [capacity_alpha(p, uniform_alpha) for p in curves["precision"]]
    curves["capacity_bits"] = [a * p for (a, _), p in zip(alpha, curves["n_params"])]
    curves["capacity_from"] = [source for _, source in alpha]
    curves["capacity_ratio"] = curves["dataset_bits"] / curves["capacity_bits"]
    return curves


def loss_peaks(curves: pd.DataFrame) -> pd.DataFrame:
    """Per model with MIN_SIZES_FOR_PEAK sizes: where the test loss is highest, interpolated in
    log N when bracketed; a maximum at the grid edge is not a peak."""
    rows = []
    for model, group in curves.groupby("model", sort=True):
        group = group.dropna(subset=["test_loss_bits"]).sort_values("n_samples")
        if len(group) < MIN_SIZES_FOR_PEAK:
            continue
        log_n = np.log10(group["n_samples"].to_numpy(float))
        loss = group["test_loss_bits"].to_numpy(float)
        peak = locate_peak(log_n, loss)
        ratio = 10 ** np.interp(peak.log_ratio, log_n, np.log10(group["capacity_ratio"].to_numpy(float)))
        rows.append({"model": model, "n_params": int(group["n_params"].iloc[0]),
                     "maximum": BRACKETED if peak.bracketed else AT_GRID_EDGE,
                     "n_samples_at_max": int(round(10 ** peak.log_ratio)), "test_loss_bits_at_max": float(loss.max()),
                     "capacity_ratio_at_max": float(ratio), "capacity_from": group["capacity_from"].iloc[0],
                     "n_sizes": len(group)})
    return pd.DataFrame(rows)


# The sentences: each sets a measured number beside a claim of the paper, in words.


def _trend(first: float, last: float) -> str:
    return "falls" if last < first else "rises" if last > first else "stays flat"


def reference_words(means: pd.DataFrame) -> list[str]:
    """Against the same-size reference, the paper: per-sequence memorization rises with P and falls with N."""
    lines = []
    for model, g in means.groupby("model", sort=True):
        g = g.sort_values("n_samples")
        if len(g) < MIN_SIZES_FOR_CURVE:
            continue
        per_seq, n = g["unintended_bits_per_sequence"].to_numpy(), g["n_samples"].to_numpy()
        total = g["unintended_bits"].to_numpy()
        lines.append(f"{model}: unintended bits per sequence {_trend(per_seq[0], per_seq[-1])} with N, {per_seq[0]:.3g} "
                     f"at N = {n[0]:,} to {per_seq[-1]:.3g} at N = {n[-1]:,} (the paper: it falls with N); the total "
                     f"over the training set goes from {total[0]:,.0f} to {total[-1]:,.0f} bits.")
    shared = means.groupby("n_samples").filter(lambda g: g["n_params"].nunique() > 1)
    if len(shared):
        grows = sum(bool(np.all(np.diff(g.sort_values("n_params")["unintended_bits_per_sequence"].to_numpy()) > 0))
                    for _, g in shared.groupby("n_samples"))
        n = shared["n_samples"].nunique()
        lines.append(f"At the {n} N measured for more than one model, unintended memorization rises with parameters "
                     f"at {grows} of them (the paper: it rises with P).")
    return lines


def oracle_words(table: pd.DataFrame, means: pd.DataFrame) -> list[str]:
    """Which cell is the oracle, and whether memorization against it first rises then falls with N (the paper's claim)."""
    if table.empty or table["oracle_cell_id"].isna().all():
        return ["No oracle: no text cell of the same pool kept per-sequence NLLs covering these training sets."]
    oracles = table["oracle_cell_id"].dropna().value_counts()
    lines = [f"Oracle (lowest test loss among the text cells of the same pool whose training set covers the cell's "
             f"sequences): {', '.join(f'cell {c} for {n} cell(s)' for c, n in oracles.items())}."]
    for model, g in means.groupby("model", sort=True):
        g = g.dropna(subset=["oracle_unintended_bits"]).sort_values("n_samples")
        if len(g) < MIN_SIZES_FOR_CURVE:
            continue
        i = int(np.argmax(g["oracle_unintended_bits"].to_numpy()))
        shape = ("first rises then falls" if maximum_position(i, len(g)) == BRACKETED
                 else "only falls" if i == 0 else "only rises")
        lines.append(f"{model}: against the oracle, unintended memorization {shape} over the N measured "
                     f"(highest, {g['oracle_unintended_bits'].iloc[i]:,.0f} bits, at N = {int(g['n_samples'].iloc[i]):,}); "
                     "the paper: it first rises, then falls once the model starts to generalize.")
    return lines


def capacity_words(capacity: pd.DataFrame, uniform_alpha: dict[str, float]) -> list[str]:
    """App. A.2: text memorization 'plateaus near the model capacity'; compared, not asserted."""
    lines = []
    for row in capacity.itertuples():
        alpha, source = capacity_alpha(row.precision, uniform_alpha)
        keeps = f"; the largest N keeps {row.largest_n_keeps:.0%} of it" if np.isfinite(row.largest_n_keeps) else ""
        share = 100 * row.bits_per_param / alpha
        lines.append(f"{row.model}: maximum {row.capacity_bits:,.0f} bits ({row.bits_per_param:.3g} bits/param, "
                     f"{row.maximum}, at N = {row.n_samples_at_max:,}), {share:.3g}% of the capacity α·P with "
                     f"α = {alpha:.2f} ({source}){keeps}.")
    if lines:
        lines.append("The paper (App. A.2) reports that text memorization plateaus near the model capacity; a plateau "
                     "near capacity would show as a maximum near 100% that the largest N keeps.")
    return lines


def extraction_words(table: pd.DataFrame) -> list[str]:
    """The paper: extraction falls with N and converges to the held-out (test) rate."""
    lines = []
    means = table.groupby(["model", "prefix", "n_samples"], sort=True)[["train_rate", "heldout_rate",
                                                                       "train_minus_heldout"]].mean().reset_index()
    for (model, k), g in means.groupby(["model", "prefix"], sort=True):
        if len(g) < MIN_SIZES_FOR_CURVE:
            continue
        first, last = g.iloc[0], g.iloc[-1]
        lines.append(f"{model}, {k}-token prefix: train extraction {_trend(first['train_rate'], last['train_rate'])} with N "
                     f"({first['train_rate']:.3g} at N = {int(first['n_samples']):,}, {last['train_rate']:.3g} at "
                     f"N = {int(last['n_samples']):,}); train − held-out {first['train_minus_heldout']:+.3g} → "
                     f"{last['train_minus_heldout']:+.3g} (held-out {last['heldout_rate']:.3g} at the largest N).")
    if lines:
        lines.append("The paper: extraction falls with N and converges to nearly exactly the test (held-out) rate, "
                     "so a gap near 0 at the largest N is what it reports.")
    return lines


def membership_words(table: pd.DataFrame) -> list[str]:
    """Measured F1 at the smallest and largest |D|/P beside what the paper's law predicts there."""
    lines = []
    for model, g in table.groupby("model", sort=True):
        g = g.sort_values("samples_per_param")
        if g["n_samples"].nunique() < MIN_SIZES_FOR_CURVE:
            continue
        first, last = g.iloc[0], g.iloc[-1]
        paper = law_f1(np.array([first["samples_per_param"], last["samples_per_param"]]), *PAPER_LAW)
        lines.append(f"{model}: F1 {first['mi_f1']:.3f} at |D|/P = {first['samples_per_param']:.3g} and "
                     f"{last['mi_f1']:.3f} at {last['samples_per_param']:.3g}; the paper's law predicts "
                     f"{paper[0]:.3f} and {paper[1]:.3f} there.")
    return lines


def tfidf_words(tfidf: pd.DataFrame, top: pd.DataFrame) -> list[str]:
    """The paper: for memorized samples, memorization correlates strongly with TF-IDF, and all but
    3 of its top 20 contain non-English tokens."""
    rho = tfidf.dropna(subset=["tfidf_spearman"])
    lines = []
    if len(rho):
        lines.append(f"Spearman's rho of TF-IDF and unintended bits over {len(rho)} cell(s): "
                     f"{rho['tfidf_spearman'].min():+.2f} to {rho['tfidf_spearman'].max():+.2f}, "
                     f"{int((rho['tfidf_spearman'] > 0).sum())} positive (the paper: strongly positive, rarer words "
                     "memorized more).")
    if len(top):
        lines.append(f"{int(top['non_latin'].sum())} of the top {len(top)} sequences are mostly in a script other than "
                     f"Latin (by their letters' dominant script; the paper: {TOP_SHOWN - 3} of its top {TOP_SHOWN} contain "
                     "non-English tokens, which counts a sequence with any such token).")
    return lines


def double_descent_words(peaks: pd.DataFrame) -> list[str]:
    """The paper: on text the test-loss peak moves right with model size, and double descent
    begins where dataset bits reach the capacity (ratio 1)."""
    lines = [f"{r.model}: test-loss maximum {'(a peak)' if r.maximum == BRACKETED else '(at grid edge: not a peak)'} at "
             f"N ≈ {r.n_samples_at_max:,}, {r.test_loss_bits_at_max:.3g} bits/token, where dataset bits / α·P = "
             f"{r.capacity_ratio_at_max:.3g} (α: {r.capacity_from}; the paper puts the onset at 1)."
             for r in peaks.itertuples()]
    bracketed = peaks[peaks["maximum"] == BRACKETED].sort_values("n_params") if len(peaks) else peaks
    if len(bracketed) >= 2:
        right = bool(np.all(np.diff(bracketed["n_samples_at_max"].to_numpy()) > 0))
        moves = "moves right" if right else "does not move steadily right"
        lines.append(f"Across the {len(bracketed)} models with a peak it {moves} with model size (the paper: it moves right).")
    return lines


@dataclass
class TextPart:
    """What the text sections show: tables (written as CSVs), summary (report.json's "text", with
    each section's sentences under "findings"), figures to draw and the fitted law."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    plots: dict[str, tuple] = field(default_factory=dict)
    law: LawFit | None = None
    """The membership law fitted over the text cells, when their F1 determines one."""


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records") if len(df) else []


def _not_computed(t: dict[str, pd.DataFrame], top_cell: str | None) -> dict[str, str]:
    """Why a section cannot be computed, by section: the report prints this instead of numbers."""
    means, extraction, missing = t["text_memorization_mean"], t["text_extraction"], {}
    short = short_curves(means, "unintended memorization")
    if means.empty:
        missing["memorization"] = "every text cell is a reference cell: there is nothing to measure against one"
    elif len(short) == means["model"].nunique():
        missing["memorization"] = "; ".join(short)
    if t["text_capacity"].empty:
        missing["capacity"] = missing.get("memorization", "no model has two dataset sizes")
    if extraction.empty:
        missing["extraction"] = "no text cell recorded extraction rates"
    elif extraction.groupby("model")["n_samples"].nunique().max() < MIN_SIZES_FOR_CURVE:
        missing["extraction"] = "; ".join(short_curves(extraction, "extraction"))
    if top_cell is None:
        missing["tfidf"] = "no non-reference cell has positive unintended memorization"
    if t["text_double_descent"].empty:
        missing["double_descent"] = f"no model has the {MIN_SIZES_FOR_PEAK} dataset sizes a test-loss maximum needs"
    return missing


def _figures(t: dict[str, pd.DataFrame], missing: dict[str, str], sweep_dir: Path, top_cell: str | None,
             law: LawFit | None) -> dict[str, tuple]:
    """The figures whose data is there: report.plots entries (function name, its arguments)."""
    plots = {}
    if "memorization" not in missing:
        plots["text_memorization"] = ("text_plots.memorization", t["text_memorization_mean"])
    if "extraction" not in missing:
        plots["text_extraction"] = ("text_plots.extraction", t["text_extraction"])
    if len(t["text_membership"]):
        plots["text_membership"] = ("membership", t["text_membership"], law)
    arrays = read_arrays(sweep_dir, top_cell) if top_cell else {}
    if {"tfidf", "unintended_bits"} <= arrays.keys():
        row = t["text_tfidf"].set_index("cell_id").loc[top_cell]
        plots["text_tfidf"] = ("text_plots.tfidf", arrays["unintended_bits"], arrays["tfidf"],
                               f"{row['model']}, N = {int(row['n_samples']):,}", row["tfidf_spearman"])
    curves = t["text_loss_curves"]
    if curves.groupby("model")["n_samples"].nunique().max() >= MIN_SIZES_FOR_CURVE:
        plots["text_loss"] = ("text_plots.loss", curves, t["text_double_descent"])
    return plots


def build_text_part(cells: pd.DataFrame, sweep_dir: Path, uniform_alpha: dict[str, float]) -> TextPart:
    """Every text table, sentence and figure; a section that cannot be computed says why in
    summary["not_computed"]. uniform_alpha: this sweep's uniform-token alpha per precision."""
    t = {"text_cells": cells, "text_corpora": corpus_table(cells, sweep_dir), "text_references": references(cells)}
    t["text_memorization"] = table = memorization_table(cells, sweep_dir)
    t["text_memorization_mean"] = means = memorization_means(table)
    t["text_capacity"] = capacity = text_capacity(means)
    t["text_extraction"] = extraction = extraction_table(cells, sweep_dir)
    t["text_membership"] = mi = membership_table(cells)
    t["text_tfidf"] = tfidf_table(cells)
    top_cell = most_memorizing_cell(cells)
    t["text_top_memorized"] = top_sequences(sweep_dir, top_cell) if top_cell else pd.DataFrame()
    t["text_loss_curves"] = curves = loss_curves(cells, uniform_alpha)
    t["text_double_descent"] = peaks = loss_peaks(curves)
    law, not_fitted = fit_text_law(mi)
    missing = _not_computed(t, top_cell)
    summary = {
        "cells": len(cells), "references": len(t["text_references"]), "corpora": _records(t["text_corpora"]),
        "capacity": _records(capacity), "double_descent": _records(peaks), "top_memorized_cell": top_cell,
        "membership_law": {"paper": dict(zip(("c1", "c2", "c3"), PAPER_LAW)), "fit": asdict(law) if law else None,
                           **({"not_fitted": not_fitted} if not_fitted else {})},
        "not_computed": missing,
        "findings": {"memorization": short_curves(means, "unintended memorization") + reference_words(means),
                     "oracle": oracle_words(table, means), "capacity": capacity_words(capacity, uniform_alpha),
                     "extraction": extraction_words(extraction) if len(extraction) else [],
                     "membership": membership_words(mi) if len(mi) else [],
                     "tfidf": tfidf_words(t["text_tfidf"], t["text_top_memorized"]),
                     "double_descent": double_descent_words(peaks)},
    }
    return TextPart(t, summary, _figures(t, missing, sweep_dir, top_cell, law), law)
