"""Batched generation: one report per study from the network. See docs/architecture.md."""
