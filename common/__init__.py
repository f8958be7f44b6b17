"""What every package may import: the root of xrq's errors. Imports nothing of ours (docs/architecture.md)."""
