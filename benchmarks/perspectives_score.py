"""Scoring throughput: memsweep perspectives' HF path (`HFModel.score_batch`) against `transformers`
`generate(do_sample=False)`, on the same tiny HF model and the same batches, side by side.

A random-init GPT-NeoX (nothing is trained, nothing is downloaded) is saved with save_pretrained
and loaded back by `path:`, as users' models are. Every row's first --context tokens are continued
for --continuation tokens. Ours also computes what the analyses need (teacher-forced context
entropies, step entropies, and the last-layer state of each generated token); generate is timed
plain (tokens only) and with the same outputs obtained as Chen et al.'s utils obtain them
(output_scores and output_hidden_states, entropies from the scores, a forward over the context).
The three are interleaved over the repeats, the median is reported, and the tokens must be equal.

    python benchmarks/perspectives_score.py              # 4L d128 V4096, 512 rows, 32 -> 16, batch 64
    python benchmarks/perspectives_score.py --quick      # 128 rows, one repeat
    python benchmarks/perspectives_score.py --device cuda --rows 4096 --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.distributions import Categorical
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from memsweep.perspectives.models import load_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 rows, one repeat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--continuation", type=int, default=16)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_rows, repeats = (128, 1) if args.quick else (args.rows, args.repeats)
    k, n = args.context, args.continuation

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=args.vocab_size, hidden_size=args.d_model, num_hidden_layers=args.n_layer,
                           num_attention_heads=4, intermediate_size=4 * args.d_model, max_position_embeddings=k + n,
                           bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with tempfile.TemporaryDirectory() as where:
        GPTNeoXForCausalLM(config).save_pretrained(where)
        [model] = load_models([f"path:{where}"], args.device)
    hf = model.module
    rows = torch.randint(0, args.vocab_size, (n_rows, k + n))
    batches = rows.split(args.batch_size)

    def ours() -> torch.Tensor:
        return torch.cat([model.score_batch(b, k, n, want_hidden=True).generated.cpu() for b in batches])

    def generate(with_outputs: bool = False) -> torch.Tensor:
        """generate's tokens; with_outputs: also what ours returns, the way generate's users get it
        (scores and hidden states from generate, context entropies from a forward, as Chen et al.)."""
        out = []
        with torch.inference_mode():
            for b in batches:
                context = b[:, :k].to(hf.device)
                extra = dict(output_scores=True, output_hidden_states=True, return_dict_in_generate=True)
                result = hf.generate(input_ids=context, attention_mask=torch.ones_like(context), do_sample=False,
                                     max_new_tokens=n, pad_token_id=0, **(extra if with_outputs else {}))
                if with_outputs:
                    Categorical(logits=torch.stack(result.scores, dim=1).float()).entropy()
                    Categorical(logits=hf(context).logits[:, :-1].float()).entropy()
                    result = result.sequences
                out.append(result[:, k:].cpu())
        return torch.cat(out)

    variants = {
        "perspectives HFModel.score_batch (+ entropies, hidden)": ours,
        "HF generate(do_sample=False), tokens only": generate,
        "HF generate + scores, hidden + context forward": lambda: generate(with_outputs=True),
    }
    for fn in variants.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        outputs = []
        for name, fn in variants.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs.append(fn())
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
        for other in outputs[1:]:
            if not torch.equal(outputs[0], other):
                differ = (outputs[0] != other).any(dim=1).sum().item()
                raise SystemExit(f"greedy tokens differ on {differ} of {n_rows} rows")

    rates = {name: n_rows / statistics.median(s) for name, s in seconds.items()}
    print(f"GPT-NeoX {args.n_layer}L d{args.d_model} V{args.vocab_size} ({model.n_params:,} params), "
          f"{next(hf.parameters()).dtype} on {args.device}: {n_rows} rows, context {k} -> {n} new, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {repeats}")
    for name, rate in rates.items():
        print(f"{name:<55} {rate:10.1f} sequences/s")
    ours_rate, plain, same_outputs = rates.values()
    print(f"{'ratio ours / generate (tokens only)':<55} {ours_rate / plain:10.2f}x   tokens identical: True")
    print(f"{'ratio ours / generate with the same outputs':<55} {ours_rate / same_outputs:10.2f}x")

if __name__ == "__main__":
    main()
