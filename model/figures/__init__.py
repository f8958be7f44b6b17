"""Figures: evaluation plots, picture sheets and training curves (matplotlib, file-only). See
docs/architecture.md.
"""
