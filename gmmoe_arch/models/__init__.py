"""Registers this package's models with BasicSR."""

from . import gmmoe_model  # noqa: F401
