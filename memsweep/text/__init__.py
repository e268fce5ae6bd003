"""Measures on text: greedy decoding (decode), extraction rates (extraction), unintended
memorization against a reference model (unintended), TF-IDF of sequences (tfidf), the script of a
text (languages), and export to Hugging Face GPT-2 (hf_export)."""
