"""`memsweep perspectives`' scoring: check the sizes, load the models, pick the rows, score the grid.

The order matters: a context + continuation longer than the rows is refused from the records, the
.npy header or --seq-len alone, and HF models' tokenizers are found and compared, before any model
is loaded (a large HF model takes minutes to load).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from memsweep.perspectives.models import is_hf_spec, load_models
from memsweep.perspectives.score import score_grid
from memsweep.perspectives.sequences import check_fits, corpus_tokenizer, rows_for, sequence_length
from memsweep.record import RESULT_FILE

OUT_DIR_NAME = "perspectives"


def default_out_dir(model_specs: Sequence[str]) -> Path:
    """<sweep dir>/perspectives for a sweep (or a cell dir's sweep); HF models need an explicit one."""
    first = model_specs[0] if model_specs else ""
    if not first or is_hf_spec(first):
        raise ValueError("scoring Hugging Face models needs an output directory (--out DIR)")
    first_path = Path(first)
    return (first_path.parent if (first_path / RESULT_FILE).exists() else first_path) / OUT_DIR_NAME


def run_perspectives(model_specs: Sequence[str], corpus_spec: str | None = None, contexts: Sequence[int] = (32,),
                     continuations: Sequence[int] = (16,), out_dir: Path | None = None, max_rows: int | None = None,
                     batch_size: int = 64, device: str = "auto", hidden_rows: int = 2048,
                     seq_len: int | None = None) -> Path:
    """Score every model the specs name on the corpus's rows at every (context, continuation) pair
    and return the out dir (default: default_out_dir). The analyses read it afterwards. seq_len:
    the row length S for HF models on a named corpus (default: the longest context + continuation)."""
    if not model_specs:
        raise ValueError("name at least one model (a memsweep sweep or cell dir, hf:NAME@REVISION or path:DIR)")
    seq_len = sequence_length(model_specs, corpus_spec, contexts, continuations, seq_len)
    check_fits(contexts, continuations, seq_len, "the scored sequences")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model_specs)
    tokenizer = corpus_tokenizer(model_specs, corpus_spec)
    models = load_models(model_specs, device)
    for model in models:
        if model.max_tokens is not None:
            check_fits(contexts, continuations, model.max_tokens, f"what model {model.name} can read")
    rows = rows_for(models, corpus_spec, max_rows, seq_len, tokenizer)
    return score_grid(models, rows, contexts, continuations, out_dir, batch_size=batch_size, hidden_rows=hidden_rows)
