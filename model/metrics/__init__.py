"""Scoring reports: text normalisation, corpus scores, the finding labeller and one evaluation. See
docs/architecture.md.
"""
