"""SLURM fixtures live in tests/conftest.py (shared with the launcher tests)."""
