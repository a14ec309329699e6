"""Registers this package's data with BasicSR."""
