"""Registers this package's metrics with BasicSR."""
