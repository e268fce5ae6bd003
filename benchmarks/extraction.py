"""Extraction throughput: memsweep's KV-cached `greedy_continue` against Hugging Face `generate`.

One random-init memsweep GPT (nothing is trained) and its exact GPT-2 export decode the same
sequences greedily, prefix 32 -> 32 new tokens, with the same batch size; the two are
interleaved over several repeats, the median is reported, and their outputs must be identical.

    python benchmarks/extraction.py            # 2L d64, V 4096, S 64, 1,024 sequences, batch 256
    python benchmarks/extraction.py --quick    # 256 sequences, one repeat
    python benchmarks/extraction.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memsweep.model import GPT, GPTConfig
from memsweep.text.decode import greedy_continue
from memsweep.text.hf_export import bos_token_id, to_hf_gpt2


def hf_greedy(hf, prefixes: torch.Tensor, n_new: int, batch_size: int, bos: int) -> torch.Tensor:
    outputs = []
    for batch in prefixes.split(batch_size):
        ids = torch.cat([torch.full((len(batch), 1), bos), batch], dim=1)
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
        )
        outputs.append(out[:, ids.shape[1] :])
    return torch.cat(outputs)


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 sequences, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--n-new", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_sequences, repeats = (256, 1) if args.quick else (1024, args.repeats)

    torch.manual_seed(0)
    seq_len = args.prefix + args.n_new
    cfg = GPTConfig(vocab_size=args.vocab_size, seq_len=seq_len, n_layer=args.n_layer, d_model=args.d_model, n_head=4)
    model = GPT(cfg).eval()
    hf = to_hf_gpt2(model)
    prefixes = torch.randint(0, cfg.vocab_size, (n_sequences, args.prefix))

    def ours() -> torch.Tensor:
        return greedy_continue(model, prefixes, args.n_new, batch_size=args.batch_size).tokens

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return hf_greedy(hf, prefixes, args.n_new, args.batch_size, bos_token_id(model))

    ours(), theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        seconds, ours_out = timed(ours)
        ours_s.append(seconds)
        seconds, theirs_out = timed(theirs)
        theirs_s.append(seconds)
        if not torch.equal(ours_out, theirs_out):
            rows = (ours_out != theirs_out).any(dim=1).sum().item()
            raise SystemExit(f"outputs differ on {rows} of {n_sequences} sequences")

    ours_rate = n_sequences / statistics.median(ours_s)
    theirs_rate = n_sequences / statistics.median(theirs_s)
    print(
        f"{cfg.n_layer}L d{cfg.d_model} V{cfg.vocab_size} S{cfg.seq_len}: {n_sequences} sequences, "
        f"prefix {args.prefix} -> {args.n_new} new, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {repeats}"
    )
    print(f"memsweep greedy_continue: {ours_rate:10.1f} sequences/s")
    print(f"HF generate (greedy):     {theirs_rate:10.1f} sequences/s")
    print(f"ratio memsweep / HF:      {ours_rate / theirs_rate:10.2f}x   outputs identical: True")


if __name__ == "__main__":
    main()
