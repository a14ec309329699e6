"""Registers this package's losses with BasicSR."""
