"""Registers this package's losses with BasicSR."""

from . import psnr_loss  # noqa: F401
