"""Offline generators of the reference fixtures in tests/fixtures/ (never product code, never run in CI)."""
