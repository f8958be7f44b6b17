"""The encoder-decoder and its files: the modelling code, a model's identity, its directory, building, loading
and saving. See docs/architecture.md.
"""
