"""Support shared by tests/ and bench/: real services and worker processes, real bad files.

Not part of xrq itself; bench/ imports from here, never from tests/ (docs/architecture.md).
"""
