"""memsweep perspectives: Chen, Han & Miyao 2024's memorization score (greedy continuation of a
training row's context, matched position-wise) with the per-step entropy and hidden states their
analyses read, for memsweep's text cells and for Hugging Face causal LMs.

models.py loads the models, sequences.py says which rows are scored, score.py writes the files,
run.py chains them. The analyses (memsweep.analysis.perspectives) read only what score.py writes.
"""
