"""Data sets: the IU X-ray CSVs and the seeded synthetic set. See docs/architecture.md."""
