"""Where a cell's token rows come from: `uniform` (random tokens from a seed, Morris et al.
section 3) and `text` (a real corpus, tokenized, cut into sequences, deduplicated and split);
`batches` feeds either to the trainer."""
