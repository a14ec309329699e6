"""Registers this package's models with BasicSR."""
