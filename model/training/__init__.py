"""Training: the loop, its config, data, state and tokenizer training. See docs/architecture.md."""
