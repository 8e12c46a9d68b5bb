"""Tiny random-weight models of the real architectures, saved with save_pretrained.

One module per backend, each with ``make(path: Path) -> Path`` that writes a complete
checkpoint folder (config, weights, tokenizer/processor) exactly as a user's would be.
"""
