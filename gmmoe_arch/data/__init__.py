"""Registers this package's data with BasicSR."""

from . import llie_paired_dataset, mixed_dataset  # noqa: F401  (registration)
